"""One RL iteration of agrl, split into its stages, vs TRL's GRPO step, same machine, same run.

The shared configuration (../shared/bench/README.md): tiny random Qwen3 (vocab 2048, hidden
256, intermediate 768, 4 layers, 4 heads, 2 kv heads, head_dim 64, tied, f32), 8 prompts x
G=8 = 64 completions, 48 prompt tokens, 64 new tokens (no EOS id, so every row decodes all
64), temperature 1 (no top-k / top-p), mu = 1, beta = 0.02 (k3), lr 1e-5.

What is timed: `RLRun.step` of `agrl.train.rl_run.prepare_rl`, i.e. one
`agrl.train.rollout.rl_iteration`, the composition training uses (sampler -> text decode +
parse -> jitted scoring and guidance -> reference logps -> update), on a synthetic prompt
pool (random prompt ids over a real word-level tokenizer built by
`agrl.task.tokenizer.build_tokenizer`, random gold labels and verdicts). The stage times are
the ones rl_iteration reports in its metrics. `--method grpo` (default) is plain GRPO, the peers'
algorithm; `--method agrl` adds RRS + AGR (a random policy fails every group, so the guided
re-rollout of 8 slots runs every iteration).

MFU = model FLOPs / time / peak, with the README's arithmetic: 2 x matmul params per token
forward, 3x that for forward + backward, over 64 x (48 + 64) tokens for generation, the
reference forward and the update (attention FLOPs and agrl's single prefill per group are not
counted, so every implementation is credited the same work); peak = a jitted 2048^3 f32
matmul measured in the same run.

Peers run in their own virtual environments (never agrl dependencies), in the same run:
  --trl-python /work/trl-venv/bin/python   runs ../shared/bench/trl_grpo.py
  --tunix-python PATH                      runs ../shared/bench/tunix_grpo.py

  python scripts/bench_rl.py [--iters 8] [--method grpo|agrl] [--trl-python PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import Config, build_config
from agrl.model import preset
from agrl.model.params import init_params
from agrl.task.rules import R
from agrl.task.tokenizer import LABEL_WORDS, build_tokenizer
from agrl.train.pool import PromptPool
from agrl.train.rl_run import RLRun, prepare_rl

STAGES = ("time_sample", "time_parse_reward", "time_ref_logps", "time_update", "time_iteration")
BENCH_DIR = Path(__file__).resolve().parents[2] / "shared" / "bench"


def matmul_peak(repeats: int = 20) -> float:
    """GFLOP/s of a jitted 2048 x 2048 f32 matmul (median of `repeats`)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def bench_config(method: str, P: int, T: int, B: int, G: int) -> Config:
    """The shared configuration on top of the method's preset (agrl.config.build_config)."""
    base = {
        "model": asdict(preset("tiny")),
        "sampling": {"group_size": G, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                     "max_new_tokens": T, "prompt_buckets": [P]},
        "loss": {"kl_beta": 0.02, "kl_estimator": "k3", "mu": 1},
        "optim": {"lr": 1e-5},
        "train": {"method": method, "prompts_per_step": B, "steps": 1000},
    }  # fmt: skip
    return build_config(base=base)


def synthetic_pool(tok, M: int, P: int, rng: np.random.Generator) -> PromptPool:
    """M random prompts of exactly P word tokens with random gold labels, verdicts, gold."""
    V, first = len(tok), 8  # ids 0..7: specials and the 4 label words
    gold_len = 24
    gold_ids = rng.integers(first, V, (M, gold_len)).astype(np.int32)
    gold_ids[:, 0] = rng.integers(4, 8, M)  # label first
    return PromptPool(
        prompt_ids=tuple(rng.integers(first, V, P).astype(np.int32) for _ in range(M)),
        gold_label=rng.integers(1, 5, M).astype(np.int32),
        gold_verdicts=rng.integers(-1, 3, (M, R)).astype(np.int32),
        has_verdicts=np.ones(M, bool),
        gold_ids=gold_ids,
        gold_len=np.full(M, gold_len, np.int32),
        query_type=("",) * M,
    )


def run_peer(python: str, script: Path, steps: int, pattern: str) -> float | None:
    """Seconds per step printed by a peer script (its own median over steps after the first)."""
    if not (python and Path(python).exists() and script.exists()):
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    proc = subprocess.run(
        [python, str(script), str(steps)], capture_output=True, text=True, env=env, check=False
    )
    m = re.search(pattern, proc.stdout + proc.stderr)
    if m is None:
        print(f"[{script.name} failed]\n{(proc.stdout + proc.stderr)[-2000:]}", file=sys.stderr)
        return None
    return float(m.group(1))


def time_agrl(rl: RLRun, step0: int, iters: int) -> list[dict]:
    """Stage times of iterations step0+1 .. step0+iters (step0 compiles or re-warms)."""
    rows = []
    for step in range(step0, step0 + iters + 1):
        m, _ = rl.step(step)
        if step > step0:
            rows.append({k: m[k] for k in STAGES})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per agrl block")
    ap.add_argument("--method", default="grpo", choices=("grpo", "agrl"))
    ap.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    ap.add_argument("--trl-steps", type=int, default=7)
    ap.add_argument("--tunix-python", default="/work/tunix-venv/bin/python")
    ap.add_argument("--tunix-steps", type=int, default=6)
    args = ap.parse_args()
    B, G, P, T = 8, 8, 48, 64
    N = B * G

    rng = np.random.default_rng(0)
    cfg = bench_config(args.method, P, T, B, G)
    words = list(LABEL_WORDS) + [f"w{i}" for i in range(cfg.model.vocab_size - 8)]
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer(words, d)
    assert len(tok) == cfg.model.vocab_size, len(tok)
    params = init_params(cfg.model, jax.random.key(0))
    # policy = reference = the random init; no EOS id, so every row decodes all T tokens
    rl = prepare_rl(cfg, tokenizer=tok, pool=synthetic_pool(tok, 512, P, rng), params=params,
                    eos=())  # fmt: skip

    # agrl, the peer, agrl again: the machine's load drifts, so agrl brackets the peer.
    peaks = [matmul_peak()]
    rows = time_agrl(rl, 0, args.iters)
    trl = run_peer(
        args.trl_python, BENCH_DIR / "trl_grpo.py", args.trl_steps,
        r"median s/step \(after 1st\) = ([0-9.]+)",
    )  # fmt: skip
    # both peers print "median s/step (after 1st) = X"; tunix prints its per-phase medians
    # ("generate=...") first, so the pattern must name the step figure
    tunix = run_peer(
        args.tunix_python, BENCH_DIR / "tunix_grpo.py", args.tunix_steps,
        r"median s/step \(after 1st\) = ([0-9.]+)",
    )  # fmt: skip
    peaks.append(matmul_peak())
    rows += time_agrl(rl, args.iters + 1, args.iters)
    peak = statistics.median(peaks)

    med = {k: statistics.median(r[k] for r in rows) for k in STAGES}
    flop_tok = 2 * (sum(x.size for x in jax.tree.leaves(params["layers"])) + params["embed"].size)
    tokens = N * (P + T)
    gflop = {
        "time_sample": flop_tok * tokens / 1e9,
        "time_ref_logps": flop_tok * tokens / 1e9,
        "time_update": 3 * flop_tok * tokens / 1e9,
    }
    gflop["time_iteration"] = sum(gflop.values())

    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} cores")
    print(f"load average at the end: {os.getloadavg()}")
    print(f"matmul peak (jax f32 2048^3, median of runs {[round(p) for p in peaks]}): {peak:.0f}")
    print(
        f"config: method {args.method}, {B} prompts x G={G} = {N} completions, {P} prompt + "
        f"{T} new tokens, temperature 1, mu=1, beta=0.02 k3; {len(rows)} timed iterations"
    )
    print("| stage | median s | model GFLOP | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|")
    for k in STAGES:
        g = gflop.get(k)
        extra = f"{g:.0f} | {g / med[k]:.0f} | {100 * g / med[k] / peak:.0f}%" if g else "- | - | -"
        print(f"| {k.removeprefix('time_')} | {med[k]:.3f} | {extra} |")
    it = med["time_iteration"]
    for name, t in (("TRL GRPOTrainer", trl), ("tunix GRPOLearner", tunix)):
        if t is None:
            print(f"{name}: not measured (no venv at the given path or the run failed)")
        else:
            print(
                f"{name}: {t:.2f} s/step (same run); agrl {it:.3f} s/iteration = "
                f"{t / it:.2f}x faster; peer MFU {100 * gflop['time_iteration'] / t / peak:.0f}%"
            )


if __name__ == "__main__":
    main()
