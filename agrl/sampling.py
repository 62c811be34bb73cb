"""Jitted rollout sampler: prefill once per prompt, `lax.while_loop` decode over the model's KV
cache, forced prefixes per row (the guided-replay hook, SPEC 5), per-token logps (SPEC 1).

`make_sampler(model_cfg, sampling_cfg, eos_ids=..., mesh=None)` returns a `Sampler`; calling
it with
  params, prompt_ids [B, P] (left-padded), prompt_mask [B, P], key,
  forced_ids [N, Lf] int32 (optional), forced_len [N] int32 (optional)
returns SampleOutput with N = B * G rows ordered prompt-major (row = b * G + g):
  tokens [N, T] int32 (pad_id after the end), logps [N, T] f32, mask [N, T] (emitted tokens
  up to and including the first EOS), forced_mask [N, T] (tokens taken from forced_ids),
  lengths [N] = mask.sum(-1), steps [] (decode steps run; the loop exits once all rows end).

Prompts are left-padded on the host to the smallest bucket >= P of sampling_cfg.prompt_buckets,
so there is at most one compilation per bucket (`Sampler.traces` counts them).  Given a mesh,
the same core is jitted with shardings: params by the rules table, prompts and forced
prefixes split on the batch over (data, fsdp) (each process places its own rows), outputs
split on N; XLA's propagation then splits the KV cache by rows (data, fsdp) and kv heads
(tensor), the way the k/v projections are split.

logps are log softmax(z / tau)[y] of the full-vocabulary distribution at the sampling
temperature tau (tau = 1 for greedy), before top-k / top-p truncation: exactly
`completion_logps(..., temperature=tau)` of the same tokens (tested <= 1e-4).  Forced tokens
get the same quantity (SPEC 5 recomputes their old logps by a forward pass anyway).

The model is the decoder's own layer code (agrl.model.decoder.cached_hidden_states).  Speed
(docs/benchmarks.md): weights are fused (qkv -> one matmul, gate/up -> one matmul) once per
call outside the loop (`fuse_params`); prefill runs each prompt once and `fork_cache` keeps
its keys/values once per prompt ([B, K, P, Hd], attended by the G rows' queries together),
the generated tokens' keys/values are per-layer [N, K, T, Hd] buffers written in place, the
two blocks merged by max/sum rescaling (one softmax); sampling draws one uniform per row
(inverse CDF), not V Gumbels; the last token is emitted after the loop, so T tokens cost
T - 1 decode forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from agrl.config import ModelConfig, SamplingConfig
from agrl.model.decoder import (
    KVCache,
    cached_hidden_states,
    fork_cache,
    fuse_params,
    init_cache,
    positions_from_mask,
    project_vocab,
)
from agrl.model.params import Params, model_param_shardings
from agrl.parallel.distributed import put_global, put_rows
from agrl.parallel.sharding import replicated, rows_sharding


class SampleOutput(NamedTuple):
    tokens: jax.Array  # [N, T] int32
    logps: jax.Array  # [N, T] f32
    mask: jax.Array  # [N, T] bool
    forced_mask: jax.Array  # [N, T] bool
    lengths: jax.Array  # [N] int32
    steps: jax.Array  # [] int32, decode steps run (< T when every row finished early)


def sample_logits(
    logits: jax.Array, key: jax.Array, *, temperature: float, top_k: int, top_p: float
) -> jax.Array:
    """Draw one token per row.  logits: [N, V] f32 -> [N] int32.

    temperature 0: argmax.  Otherwise p ~ softmax(z / temperature) restricted to the top_k
    largest logits (0: all) and then to the smallest prefix of them, sorted by probability,
    whose mass reaches top_p (the first token always stays).  The draw is by inverse CDF:
    token = #{j : cdf_j < u * cdf_last} with one u ~ U[0, 1) per row.
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = logits / temperature
    idx = None
    if top_k > 0 or top_p < 1.0:
        k = top_k if 0 < top_k < z.shape[-1] else z.shape[-1]
        z, idx = jax.lax.top_k(z, k)  # sorted descending
    w = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    if top_p < 1.0:
        cum = jnp.cumsum(w, axis=-1)
        w = jnp.where(cum - w < top_p * cum[:, -1:], w, 0.0)
    cdf = jnp.cumsum(w, axis=-1)
    u = jax.random.uniform(key, (z.shape[0], 1), jnp.float32)
    choice = jnp.sum(cdf < u * cdf[:, -1:], axis=-1)
    choice = jnp.minimum(choice, z.shape[-1] - 1)
    if idx is not None:
        choice = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    return choice.astype(jnp.int32)


class SamplingState(NamedTuple):
    """The decode loop's carry.  B prompts, G rows per prompt, N = B * G, P bucket, T tokens."""

    t: jax.Array  # [] int32, the column emitted next (== cache.index)
    logits: jax.Array  # [N, V] f32, the model's logits for token t
    cache: KVCache  # prompt block L x [B, K, P, Hd], row block L x [N, K, T, Hd]
    tokens: jax.Array  # [N, T] int32, pad after the end
    logps: jax.Array  # [N, T] f32, 0 where not emitted
    mask: jax.Array  # [N, T] bool, emitted
    forced_mask: jax.Array  # [N, T] bool, emitted from forced_ids
    done: jax.Array  # [N] bool, the row has emitted an EOS


def _sample_core(
    params, prompt_ids, prompt_mask, key, forced_ids, forced_len, *, cfg, scfg, G, T, eos, pad
) -> SampleOutput:
    """Traced body of the sampler; shapes as in the module docstring, P = the bucket length."""
    B, P = prompt_ids.shape
    N = B * G
    tau = scfg.temperature if scfg.temperature > 0 else 1.0
    fused = fuse_params(params, cfg)  # once per call, outside the loop

    # Prefill: each prompt once; its keys/values become the cache's prompt block, shared by
    # its G rows, and its last logits are copied to them.
    mask = prompt_mask.astype(bool)
    h, cache = cached_hidden_states(
        fused, cfg, prompt_ids, positions_from_mask(mask), mask, init_cache(cfg, B, P)
    )
    cache = fork_cache(cfg, cache, G, T)
    logits = jnp.repeat(project_vocab(h[:, -1], fused["unembed"]), G, axis=0)  # [N, V]
    prompt_len = jnp.repeat(jnp.sum(mask, axis=-1).astype(jnp.int32), G)  # [N]
    eos_arr = jnp.asarray(eos, jnp.int32)

    def emit(s: SamplingState) -> tuple[jax.Array, jax.Array, SamplingState]:
        """Sample (or force) token s.t of every row from s.logits and record it."""
        sampled = sample_logits(
            s.logits,
            jax.random.fold_in(key, s.t),
            temperature=scfg.temperature,
            top_k=scfg.top_k,
            top_p=scfg.top_p,
        )
        is_forced = s.t < forced_len
        tok = jnp.where(is_forced, forced_ids[:, s.t], sampled)
        lp = jax.nn.log_softmax(s.logits / tau, axis=-1)
        tok_lp = jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
        live = ~s.done
        tok = jnp.where(live, tok, pad)
        col = lambda a, v: jax.lax.dynamic_update_slice(a, v[:, None], (0, s.t))  # noqa: E731
        s = s._replace(
            tokens=col(s.tokens, tok),
            logps=col(s.logps, jnp.where(live, tok_lp, 0.0)),
            mask=col(s.mask, live),
            forced_mask=col(s.forced_mask, live & is_forced),
            done=s.done | (live & jnp.any(tok[:, None] == eos_arr[None, :], axis=-1)),
        )
        return tok, live, s

    # The loop emits tokens 0..T-2 and feeds each through the model; token T-1 is emitted
    # after the loop from the last logits, so no forward pass is spent on a token whose
    # logits nobody reads (1/T of the decode work).
    def cond(s: SamplingState) -> jax.Array:
        return (s.t < T - 1) & ~jnp.all(s.done)

    def body(s: SamplingState) -> SamplingState:
        tok, live, s = emit(s)
        h, cache = cached_hidden_states(
            fused, cfg, tok[:, None], (prompt_len + s.t)[:, None], live[:, None], s.cache
        )
        return s._replace(t=s.t + 1, logits=project_vocab(h[:, 0], fused["unembed"]), cache=cache)

    s = SamplingState(
        t=jnp.int32(0),
        logits=logits,
        cache=cache,
        tokens=jnp.full((N, T), pad, jnp.int32),
        logps=jnp.zeros((N, T), jnp.float32),
        mask=jnp.zeros((N, T), bool),
        forced_mask=jnp.zeros((N, T), bool),
        done=jnp.zeros((N,), bool),
    )
    s = jax.lax.while_loop(cond, body, s)
    # Column t: the last token when the loop ran to T - 1, else (every row done) a no-op
    # write of padding; it counts as a step only if some row was still live.
    steps = s.t + jnp.any(~s.done).astype(jnp.int32)
    _, _, s = emit(s)
    lengths = jnp.sum(s.mask, axis=-1).astype(jnp.int32)
    return SampleOutput(s.tokens, s.logps, s.mask, s.forced_mask, lengths, steps)


@dataclass
class Sampler:
    """Host wrapper: pads prompts to a bucket and forced prefixes to T, calls the jitted core
    (under `mesh` if given: inputs placed as global arrays, each process its own rows).

    traces: number of compilations so far (one per prompt bucket and batch size).
    """

    model_cfg: ModelConfig
    sampling_cfg: SamplingConfig
    group_size: int
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    mesh: Mesh | None = None
    traces: int = 0
    _cores: dict = field(default_factory=dict, repr=False)

    def _core(self, B: int, P: int):
        """The jitted core for a padded [B, P] batch: one jit for all shapes without a mesh;
        with one, a jit per shape (the shardings depend on whether the mesh divides B)."""
        shape_key = None if self.mesh is None else (B, P)
        if shape_key in self._cores:
            return self._cores[shape_key]

        def core(params, prompt_ids, prompt_mask, key, forced_ids, forced_len):
            self.traces += 1  # runs at trace time only
            return _sample_core(
                params, prompt_ids, prompt_mask, key, forced_ids, forced_len,
                cfg=self.model_cfg, scfg=self.sampling_cfg, G=self.group_size,
                T=self.max_new_tokens, eos=self.eos_ids or (-1,), pad=self.pad_id,
            )  # fmt: skip

        if self.mesh is None:
            fn = jax.jit(core)
        else:
            mesh, N, T = self.mesh, B * self.group_size, self.max_new_tokens
            prompts = rows_sharding(mesh, (B, P))
            rows2, rows1 = rows_sharding(mesh, (N, T)), rows_sharding(mesh, (N,))
            params_sh = model_param_shardings(self.model_cfg, mesh)
            fn = jax.jit(
                core,
                in_shardings=(params_sh, prompts, prompts, replicated(mesh), rows2, rows1),
                out_shardings=SampleOutput(rows2, rows2, rows2, rows2, rows1, replicated(mesh)),
            )
        self._cores[shape_key] = fn
        return fn

    def bucket(self, prompt_len: int) -> int:
        """Smallest configured bucket >= prompt_len."""
        for b in self.sampling_cfg.prompt_buckets:
            if b >= prompt_len:
                return b
        raise ValueError(
            f"prompt length {prompt_len} exceeds the largest bucket "
            f"{self.sampling_cfg.prompt_buckets[-1]} (sampling.prompt_buckets)"
        )

    def _inputs(self, prompt_ids, prompt_mask, key, forced_ids, forced_len) -> tuple:
        """Core arguments after params: prompts left-padded to the bucket, forced prefixes
        padded / cut to T (none: zeros), placed on the mesh if there is one."""
        B, P = np.shape(prompt_ids)
        N, T = B * self.group_size, self.max_new_tokens
        pad = self.bucket(P) - P
        prompt_ids = jnp.pad(jnp.asarray(prompt_ids, jnp.int32), ((0, 0), (pad, 0)))
        prompt_mask = jnp.pad(jnp.asarray(prompt_mask, bool), ((0, 0), (pad, 0)))
        if forced_ids is None:
            forced_ids = np.zeros((N, T), np.int32)
            forced_len = np.zeros((N,), np.int32)
        forced_ids = jnp.asarray(forced_ids, jnp.int32)[:, :T]
        if forced_ids.shape[0] != N:
            raise ValueError(f"forced_ids has {forced_ids.shape[0]} rows, expected B*G={N}")
        forced_ids = jnp.pad(forced_ids, ((0, 0), (0, T - forced_ids.shape[1])))
        forced_len = jnp.minimum(jnp.asarray(forced_len, jnp.int32), T)
        args = (prompt_ids, prompt_mask, key, forced_ids, forced_len)
        if self.mesh is None:
            return args
        key_data = put_global(np.asarray(jax.random.key_data(key)), replicated(self.mesh))
        ids, mask, _, f_ids, f_len = (a if a is key else put_rows(a, self.mesh) for a in args)
        return ids, mask, jax.random.wrap_key_data(key_data), f_ids, f_len

    def __call__(
        self, params: Params, prompt_ids, prompt_mask, key, forced_ids=None, forced_len=None
    ) -> SampleOutput:
        args = self._inputs(prompt_ids, prompt_mask, key, forced_ids, forced_len)
        return self._core(*args[0].shape)(params, *args)

    def lower(self, params: Params, prompt_ids, prompt_mask, key):
        """The lowered core for these inputs (to inspect HLO, shardings and memory)."""
        args = self._inputs(prompt_ids, prompt_mask, key, None, None)
        return self._core(*args[0].shape).lower(params, *args)


def make_sampler(
    model_cfg: ModelConfig,
    sampling_cfg: SamplingConfig,
    *,
    eos_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    group_size: int | None = None,
    max_new_tokens: int | None = None,
    mesh: Mesh | None = None,
) -> Sampler:
    """Sampler for the config; group_size / max_new_tokens override sampling_cfg's (e.g. G=1
    for greedy evaluation).  Rows stop after emitting any of eos_ids.  With a mesh, the core
    runs sharded (module docstring)."""
    return Sampler(
        model_cfg,
        sampling_cfg,
        group_size or sampling_cfg.group_size,
        max_new_tokens or sampling_cfg.max_new_tokens,
        tuple(int(e) for e in eos_ids),
        int(pad_id),
        mesh,
    )
