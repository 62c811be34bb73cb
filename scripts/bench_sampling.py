"""Sampling throughput: agrl's jitted sampler vs transformers.generate, same weights, same run.

The shared configuration (../shared/bench/README.md): a tiny random Qwen3 (vocab 2048, hidden
256, intermediate 768, 4 layers, 4 heads, 2 kv heads, head_dim 64, tied, f32), 64 completions
x 48 prompt tokens x 64 new tokens, temperature 1, no top-k/top-p.  Reports new tokens/s of
both, agrl's ratio, the fraction of this machine's jax f32 matmul peak (2048^3) that decoding
reaches (new-token FLOPs = 2 * matmul params per token, as the shared README counts), and the
KV-cache bytes of the compiled sampler vs the analytic 2 * L * N * K * (P + T) * Hd * 4.

  python scripts/bench_sampling.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from agrl.config import SamplingConfig
from agrl.model import load_pretrained, preset, save_pretrained
from agrl.model.params import init_params
from agrl.sampling import make_sampler


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(repeats: int) -> float:
    """GFLOP/s of a jitted 2048 x 2048 f32 matmul."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    dt = median_time(lambda: f(a).block_until_ready(), repeats * 4)
    return 2 * 2048**3 / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N, P, T = args.prompts, args.prompt_len, args.new

    cfg = preset("tiny")
    with tempfile.TemporaryDirectory() as d:  # one set of weights for both implementations
        save_pretrained(init_params(cfg, jax.random.key(0)), cfg, d)
        params, cfg = load_pretrained(d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = np.random.default_rng(1).integers(5, cfg.vocab_size, (N, P)).astype(np.int32)
    mask = np.ones((N, P), bool)

    peak = matmul_peak(args.repeats)

    def hf_run():
        with torch.no_grad():
            hf.generate(
                torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.ones(N, P, dtype=torch.long),
                max_new_tokens=T,
                min_new_tokens=T,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
            )

    t_hf = median_time(hf_run, args.repeats)

    sc = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T, prompt_buckets=(P,))
    rows = [("transformers.generate", N, 1, t_hf)]
    compiled = None
    for groups in (1, 8):
        sampler = make_sampler(cfg, sc, group_size=groups)  # no eos: all T tokens decoded
        b = N // groups
        keys = iter(range(10**6))  # a fresh key per call, as in training

        def run(sampler=sampler, b=b, keys=keys):
            key = jax.random.key(next(keys))
            sampler(params, ids[:b], mask[:b], key).tokens.block_until_ready()

        rows.append((f"agrl sampler (G={groups})", b, groups, median_time(run, args.repeats)))
        if groups == 1:
            lowered = sampler.lower(params, ids, mask, jax.random.key(0))
            compiled = lowered.compile().memory_analysis()

    flop_tok = 2 * (sum(x.size for x in jax.tree.leaves(params["layers"])) + params["embed"].size)
    print(f"jax: {jax.__version__}, devices: {jax.devices()}, torch threads: {args.threads}")
    print(f"matmul peak (jax f32 2048^3): {peak:.0f} GFLOP/s")
    print(f"config: {N} completions x {P} prompt tokens x {T} new tokens, temperature 1")
    print("| sampler | prompts | G | seconds | new tokens/s | vs transformers | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for name, b, g, t in rows:
        tps = N * T / t
        print(
            f"| {name} | {b} | {g} | {t:.3f} | {tps:,.0f} | {t_hf / t:.2f}x "
            f"| {100 * tps * flop_tok / 1e9 / peak:.0f}% |"
        )
    analytic = 2 * cfg.num_layers * N * cfg.num_kv_heads * (P + T) * cfg.head_dim * 4
    if compiled is not None:
        print(
            f"KV cache analytic {analytic / 2**20:.2f} MiB; compiled sampler temp buffers "
            f"{compiled.temp_size_in_bytes / 2**20:.2f} MiB "
            f"(argument {compiled.argument_size_in_bytes / 2**20:.2f} MiB, "
            f"output {compiled.output_size_in_bytes / 2**20:.2f} MiB)"
        )


if __name__ == "__main__":
    main()
