"""Measure an SFT recipe over seeds: the oracle (gold responses) and, optionally, the teacher
SFT, each evaluated greedily on b_eval, with the teacher-wrong / teacher-right split.

The testbed issue's question is which SFT recipe makes the oracle generalise; this script is
how docs/results.md's SFT tables are made. It uses `agrl reproduce`'s defaults, world and
overrides (same keys), writes one directory per (recipe, seed) under --out and appends one
JSON line per finished run to --out/calibration.jsonl.

    python scripts/calibrate_sft.py --out runs/cal --name wd1 --seeds 0,1,2 \
        optim.weight_decay=1.0 world.n_b_eval=1000 train.eval_size=1000

A finished (recipe, seed) directory is reused, so an interrupted sweep continues. With
`sft.eval_every=N train.eval_curve_size=M` each row also carries the learning curve
(macro-F1 on the first M b_eval records every N steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agrl.experiments.reproduce import _prepare_world
from agrl.experiments.setup import build_plan, with_run
from agrl.train.stages import run_sft


def _summary(ev: dict) -> dict:
    out = {
        "macro_f1": round(100 * ev["macro_f1"], 2),
        "accuracy": round(100 * ev["accuracy"], 2),
        "class_f1": [round(100 * ev[f"f1_{c}"], 1) for c in range(1, 5) if f"f1_{c}" in ev],
    }
    ts = ev.get("teacher_split")
    if ts:
        out["teacher_wrong"] = round(100 * ts["teacher_wrong"]["accuracy"], 2)
        out["teacher_right"] = round(100 * ts["teacher_right"]["accuracy"], 2)
    if "accuracy_by_type" in ev:
        out["by_type"] = {k: round(100 * v, 1) for k, v in ev["accuracy_by_type"].items()}
    return out


def _curve(run_dir: Path) -> list[list[float]]:
    """[step, macro-F1 %] points of the run's learning curve (sft.eval_every > 0)."""
    path = run_dir / "evals.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    return [[r["step"], round(100 * r["macro_f1"], 1)] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="sweep directory (world shared by all runs)")
    ap.add_argument("--name", required=True, help="recipe name (a directory under --out)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
    ap.add_argument("--teacher", action="store_true", help="also train the teacher SFT")
    ap.add_argument("overrides", nargs="*", help="section.key=value, as `agrl reproduce`")
    args = ap.parse_args()
    plan = build_plan(out=args.out, overrides=args.overrides)
    world_dir = _prepare_world(plan)  # also checks the vocabulary against the tokenizer
    log = Path(args.out) / "calibration.jsonl"
    kinds = [("oracle", str(world_dir / "sft_gold.jsonl"))]
    if args.teacher:
        kinds.append(("sft", str(world_dir / "sft.jsonl")))
    for seed in (int(x) for x in args.seeds.split(",")):
        for kind, data in kinds:
            run_dir = Path(args.out) / args.name / f"seed{seed}" / kind
            if (run_dir / "eval.json").exists():
                continue
            cfg = with_run(plan.cfg, seed=seed, world=str(world_dir), train_data=data,
                           out=str(run_dir))  # fmt: skip
            t = time.perf_counter()
            run_sft(cfg, resume=True)
            wall = time.perf_counter() - t
            ev = json.loads((run_dir / "eval.json").read_text())
            row = {"name": args.name, "kind": kind, "seed": seed, "wall_s": round(wall, 1),
                   "overrides": args.overrides, **_summary(ev),
                   "curve": _curve(run_dir)}  # fmt: skip
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
