"""RL ablations on a finished `agrl reproduce` directory: one RL run per variant, from the
same DPO model, with the same training seed and the same b_eval records as the run's own
methods, compared with paired bootstrap intervals (agrl.eval.bootstrap) to the run's GRPO and
to the variant's base method.

  python scripts/ablate_rl.py --run DIR [--seed 0] --base agrl --name NAME key=value ...

The variant's config is DIR/seed<S>/rl_<base>/config.json with the overrides on top (for
example guidance.slots_per_batch=16, loss.forced_tokens=include, optim.lr=1e-4). It trains in
DIR/ablations/seed<S>/NAME (an ordinary RL run directory: rerunning the same command resumes
it) and appends one row to DIR/ablations/ablations.jsonl: the overrides, wall time, b_eval
macro-F1 and accuracy, accuracy where the teacher is wrong / right, and the differences to
GRPO and to the base method in percentage points with 95% intervals. It trains the way the
run trained its methods (run.json's `workers`): in a worker process on its own share of the
cores when the run used them, so that a variant without overrides reproduces the base
method's predictions exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from compare_runs import paired_points

from agrl.config import ConfigError
from agrl.config.io import apply_overrides, config_from_dict
from agrl.experiments.schedule import Job, run_jobs
from agrl.train.stages import run_rl


def _eval(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    if not path.exists():
        sys.exit(f"{path}: missing (is {run_dir.parent} a finished `agrl reproduce` run?)")
    return json.loads(path.read_text())


def difference(a: dict, b: dict, seed: int) -> dict:
    """metric(a) - metric(b) on the same records, in points, with its 95% interval."""
    pa, pb = a["predictions"], b["predictions"]
    if pa["gold_label"] != pb["gold_label"]:
        raise ValueError("the two evaluations cover different records")
    run = (np.asarray(pa["gold_label"]), np.asarray(pa["pred_label"]), np.asarray(pb["pred_label"]))
    return paired_points([run], seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="an `agrl reproduce --out` directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default="agrl", help="the method whose config is varied")
    ap.add_argument("--name", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    seed_dir = Path(args.run) / f"seed{args.seed}"
    base_dir = seed_dir / f"rl_{args.base}"
    if not (base_dir / "config.json").exists():
        sys.exit(f"{base_dir / 'config.json'}: missing; --base names a method of the run")
    out = Path(args.run) / "ablations" / f"seed{args.seed}" / args.name
    data = json.loads((base_dir / "config.json").read_text())
    data["paths"]["out"] = str(out)
    try:
        cfg = config_from_dict(apply_overrides(data, args.overrides))
    except ConfigError as e:
        sys.exit(f"error: {e}")
    t = time.perf_counter()
    workers = json.loads((Path(args.run) / "run.json").read_text()).get("workers", 1)
    job = Job(args.name, run_rl, (cfg, out.exists()))
    run_jobs([job], workers, on_start=lambda j: None, on_finish=lambda j, s: None)
    wall = time.perf_counter() - t

    ev, split = _eval(out), "teacher_split"
    row = {
        "name": args.name,
        "seed": args.seed,
        "base": args.base,
        "overrides": args.overrides,
        "wall_s": round(wall, 1),
        "macro_f1": round(100 * ev["macro_f1"], 2),
        "accuracy": round(100 * ev["accuracy"], 2),
        **{k: round(100 * ev[split][k]["accuracy"], 1) for k in ev.get(split, {})},
        "vs_grpo": difference(ev, _eval(seed_dir / "rl_grpo"), args.seed),
        f"vs_{args.base}": difference(ev, _eval(base_dir), args.seed),
    }
    with open(Path(args.run) / "ablations" / "ablations.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
