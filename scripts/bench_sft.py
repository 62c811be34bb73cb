"""The SFT step at `agrl reproduce`'s configuration: seconds per step, tokens/s and MFU against
the machine's matmul peak measured in the same run.

What is timed: the jitted `agrl.train.steps.make_sft_step` on batches of the reproduce world's
gold responses, built by the same code as `agrl train sft` (`_supervised_arrays`: prompts
left-padded to the longest prompt, responses right-padded to the longest response), after
one warm-up step (the compile), median over --steps steps. For comparison the same step on
responses padded to sampling.max_new_tokens (what SFT did before 2026-12-02).

MFU = model FLOPs / time / peak: 6 x (matmul params of the layers) per computed position
(prompt + response), plus 6 x hidden x vocab per response position (the vocabulary
projection runs only there); attention's score FLOPs are not counted. Peak: a jitted
2048^3 f32 matmul in the same run (scripts/bench_rl.py).

  python scripts/bench_sft.py [--steps 30] [key=value overrides as `agrl reproduce`]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from bench_rl import matmul_peak

from agrl.experiments.reproduce import _prepare_world
from agrl.experiments.setup import build_plan, with_run
from agrl.model.params import init_params
from agrl.task.data import load_records
from agrl.task.tokenizer import load_tokenizer
from agrl.train.stages import _supervised_arrays
from agrl.train.steps import init_train_state, make_optimizer, make_sft_step


def layer_matmul_params(m) -> int:
    """Matmul parameters of the decoder layers (attention projections and MLP)."""
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    return m.num_layers * (
        m.hidden_size * (2 * q + 2 * kv) + 3 * m.hidden_size * m.intermediate_size
    )


def time_step(cfg, arrays, steps: int) -> float:
    names = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    optimizer = make_optimizer(cfg.optim, 1000)
    step = make_sft_step(cfg.model, optimizer)
    state = init_train_state(init_params(cfg.model, jax.random.key(0)), optimizer)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 1):
        idx = rng.choice(len(arrays[0]), cfg.sft.batch_size, replace=False)
        batch = {k: a[idx] for k, a in zip(names, arrays, strict=True)}
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        if i:  # step 0 compiles
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="agrl-bench-sft-")
    plan = build_plan(out=out, overrides=args.overrides)
    world = _prepare_world(plan)
    cfg = with_run(plan.cfg, seed=0, world=str(world), train_data=str(world / "sft_gold.jsonl"))
    tok = load_tokenizer(world / "tokenizer")
    records = load_records(world / "sft_gold.jsonl")
    texts = [r["response"] for r in records]
    peak = matmul_peak()
    m, B = cfg.model, cfg.sft.batch_size
    print(f"load average {os.getloadavg()[0]:.2f}; matmul peak {peak:.1f} GFLOP/s")
    print(f"model: {m.num_layers} layers x hidden {m.hidden_size}, vocab {m.vocab_size}; "
          f"batch {B}")  # fmt: skip
    print("| responses padded to | P + T | s/step | positions/s | useful tokens/s | MFU |")
    print("|---|---|---|---|---|---|")
    trimmed = _supervised_arrays(cfg, tok, records, texts)
    P, T_trim = trimmed[0].shape[1], trimmed[2].shape[1]
    T_max = cfg.sampling.max_new_tokens
    full = (*trimmed[:2], *(np.pad(a, ((0, 0), (0, T_max - T_trim))) for a in trimmed[2:]))
    useful = float(trimmed[1].sum(1).mean() + trimmed[3].sum(1).mean())
    for name, arrays in (("longest response", trimmed), ("max_new_tokens", full)):
        T = arrays[2].shape[1]
        s = time_step(cfg, arrays, args.steps)
        flops = B * (6 * layer_matmul_params(m) * (P + T) + 6 * m.hidden_size * m.vocab_size * T)
        print(f"| {name} (T={T}) | {P + T} | {s:.4f} | {B * (P + T) / s:,.0f} | "
              f"{B * useful / s:,.0f} | {100 * flops / s / 1e9 / peak:.0f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
