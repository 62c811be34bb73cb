"""Paired difference of two sets of finished runs on the same evaluation records: A - B in
b_eval macro-F1 and accuracy (points), per pair and pooled over the pairs, with 95% paired
bootstrap intervals (agrl.eval.bootstrap, the same statistics as `agrl reproduce`'s
comparisons to GRPO).

  python scripts/compare_runs.py --a RUN_A1 RUN_A2 ... --b RUN_B1 RUN_B2 ...

Each RUN is a run directory holding eval.json (for example DIR/seed1/rl_agrl of `agrl
reproduce`, or DIR/ablations/seed1/NAME of scripts/ablate_rl.py); A_i is paired with B_i,
which must cover the same records in the same order (the same seed's evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agrl.eval.bootstrap import paired_bootstrap


def _labels(run: Path) -> tuple[np.ndarray, np.ndarray]:
    path = run / "eval.json"
    if not path.exists():
        sys.exit(f"{path}: missing (not a finished run directory)")
    pred = json.loads(path.read_text())["predictions"]
    return np.asarray(pred["gold_label"]), np.asarray(pred["pred_label"])


def paired_points(runs: list[tuple], seed: int = 0) -> dict:
    """{metric: {delta, lo, hi, resolved}} of A - B in points, pooled over `runs`, each
    (gold [N], pred_a [N], pred_b [N]) on the same records (agrl.eval.bootstrap)."""
    return {
        metric: {**{k: round(100 * r[k], 2) for k in ("delta", "lo", "hi")},
                 "resolved": bool(r["resolved"])}
        for metric, r in paired_bootstrap(runs, seed=seed).items()
    }  # fmt: skip


def compare(a: list[Path], b: list[Path], seed: int = 0) -> dict:
    """{'pairs': [per pair], 'pooled': ...}: each {metric: {delta, lo, hi, resolved}} in
    points for A - B."""
    if len(a) != len(b) or not a:
        sys.exit(f"--a has {len(a)} runs and --b {len(b)}: give the same number, at least one")
    runs = []
    for ra, rb in zip(a, b, strict=True):
        (gold_a, pred_a), (gold_b, pred_b) = _labels(ra), _labels(rb)
        if not np.array_equal(gold_a, gold_b):
            sys.exit(f"{ra} and {rb}: evaluated on different records")
        runs.append((gold_a, pred_a, pred_b))

    pairs = [paired_points([r], seed) for r in runs]
    return {"pairs": pairs, "pooled": paired_points(runs, seed)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", nargs="+", type=Path, required=True)
    ap.add_argument("--b", nargs="+", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = ap.parse_args(argv)
    out = compare(args.a, args.b, args.seed)
    rows = [*zip(map(str, args.a), out["pairs"], strict=True), ("pooled", out["pooled"])]
    for name, row in rows:
        cells = [
            f"{m} {r['delta']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]"
            + (" resolved" if r["resolved"] else "")
            for m, r in row.items()
        ]
        print(f"{name}: " + "; ".join(cells))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
