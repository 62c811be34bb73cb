"""The prompt-only ceiling and the fact exposure of a relevance world (docs/world.md).

A rule-based reader (agrl/world/reader.py) parses each record's query and title with the
catalog and judges them with the gold machinery: where its label differs from gold, the
prompt does not carry what the gold judgement used. Then, for every evaluation record whose
gold judgement needs a knowledge fact ("nylon is waterproof"), how many `sft` gold
rationales (what the oracle SFT reads) and teacher responses state that fact correctly.

    python scripts/world_ceiling.py                       # the `agrl reproduce` world
    python scripts/world_ceiling.py world.n_b_eval=1000   # its overrides (world.* keys)

Prints markdown tables (the ones docs/world.md shows).
"""

from __future__ import annotations

import argparse
from collections import Counter

from agrl.experiments.setup import build_plan
from agrl.task.data import QUERY_TYPES
from agrl.world import generate_world
from agrl.world.reader import fact_exposure, needed_fact, prompt_ceiling

EXPOSURE_BINS = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 9), (10, 10**9))


def _ceiling_table(split: str, records: list[dict]) -> str:
    cells = prompt_ceiling(records)
    lines = [
        f"| {split}: reader right / records | label 1 | label 2 | label 3 | label 4 | all |",
        "|---|---|---|---|---|---|",
    ]
    for qtype in (*QUERY_TYPES, "all"):
        row, ok_t, n_t = [], 0, 0
        for label in (1, 2, 3, 4):
            keys = [k for k in cells if k[1] == label and qtype in (k[0], "all")]
            ok, n = sum(cells[k][0] for k in keys), sum(cells[k][1] for k in keys)
            ok_t, n_t = ok_t + ok, n_t + n
            row.append(f"{ok}/{n}" if n else "-")
        pct = f"{ok_t}/{n_t} ({100 * ok_t / n_t:.1f}%)" if n_t else "-"
        lines.append(f"| {qtype} | " + " | ".join(row) + f" | {pct} |")
    return "\n".join(lines)


def _bin(n: int) -> str:
    for lo, hi in EXPOSURE_BINS:
        if lo <= n <= hi:
            return str(lo) if lo == hi else f"{lo}+" if hi > 10**8 else f"{lo}-{hi}"
    raise AssertionError(n)


def _exposure_table(world: dict, split: str) -> str:
    gold = fact_exposure(world["sft"], field="rationale")
    teacher = fact_exposure(world["sft"], field="response")
    needed = [f for f in (needed_fact(r) for r in world[split]) if f is not None]
    bins = [_bin(lo) for lo, _ in EXPOSURE_BINS]
    by_gold, by_teacher = (
        Counter(_bin(gold[f]) for f in needed),
        Counter(_bin(teacher[f]) for f in needed),
    )
    lines = [
        f"{len(needed)} of {len(world[split])} {split} records need a knowledge fact "
        f"({len(set(needed))} distinct facts); sft gold rationales state {len(gold)} distinct "
        f"facts, median {sorted(gold.values())[len(gold) // 2]} times each.",
        "",
        f"| times the needed fact is stated correctly in sft | {' | '.join(bins)} |",
        "|---|" + "---|" * len(bins),
        "| gold rationales (oracle SFT) | " + " | ".join(str(by_gold[b]) for b in bins) + " |",
        "| teacher responses (SFT) | " + " | ".join(str(by_teacher[b]) for b in bins) + " |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="world.key=value, as `agrl reproduce`")
    args = ap.parse_args()
    plan = build_plan(out="unused", overrides=args.overrides)
    print(f"world: seed {plan.world.seed}, sft {plan.world.n_sft}, b_eval {plan.world.n_b_eval}, "
          f"w_eval {plan.world.n_w_eval}\n")  # fmt: skip
    world = generate_world(plan.world)
    for split in ("b_eval", "w_eval"):
        print(_ceiling_table(split, world[split]) + "\n")
    print(_exposure_table(world, "b_eval"))


if __name__ == "__main__":
    main()
