"""Jitted rollout sampler: prefill once per prompt, `lax.while_loop` decode over a preallocated
KV cache, forced prefixes per row (the guided-replay hook, SPEC 5), per-token logps (SPEC 1).

`make_sampler(model_cfg, sampling_cfg, eos_ids=...)` returns a `Sampler`; calling it with
  params, prompt_ids [B, P] (left-padded), prompt_mask [B, P], key,
  forced_ids [N, Lf] int32 (optional), forced_len [N] int32 (optional)
returns SampleOutput with N = B * G rows ordered prompt-major (row = b * G + g):
  tokens [N, T] int32 (pad_id after the end), logps [N, T] f32, mask [N, T] (emitted tokens
  up to and including the first EOS), forced_mask [N, T] (tokens taken from forced_ids),
  lengths [N] = mask.sum(-1), steps [] (decode steps run; the loop exits once all rows end).

Prompts are left-padded on the host to the smallest bucket >= P of sampling_cfg.prompt_buckets,
so there is at most one compilation per bucket (`Sampler.traces` counts them).

logps are log softmax(z / tau)[y] of the full-vocabulary distribution at the sampling
temperature tau (tau = 1 for greedy), before top-k / top-p truncation: exactly
`completion_logps(..., temperature=tau)` of the same tokens (tested <= 1e-4).  Forced tokens
get the same quantity (SPEC 5 recomputes their old logps by a forward pass anyway).

Speed (docs/benchmarks.md): the loop body works on per-layer weights sliced and fused
(qkv -> one matmul, gate/up -> one matmul) once per call outside the loop; the prompt's
keys/values stay once per prompt ([B, K, P, Hd], attended by the G rows' queries together)
and the generated tokens' are a tuple of per-layer [N, K, T, Hd] buffers written in place,
the two blocks merged by max/sum rescaling (one softmax); the generated-key mask [N, T] is
carried and updated one slot per step; sampling draws one uniform per row (inverse CDF), not
V Gumbels; the last token is emitted after the loop, so T tokens cost T - 1 decode forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from agrl.config import ModelConfig, SamplingConfig
from agrl.model.decoder import (
    MASK_VALUE,
    hidden_states,
    init_cache,
    logits_from_hidden,
    positions_from_mask,
    rms_norm,
    unembed_matrix,
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


def _decode_params(params: Params, cfg: ModelConfig) -> dict[str, Any]:
    """Per-layer, fused, compute-dtype weights for the decode loop (built once per call)."""
    dt = jnp.dtype(cfg.compute_dtype)
    lay = jax.tree.map(lambda p: p.astype(dt), params["layers"])
    D = cfg.hidden_size
    out = []
    for i in range(cfg.num_layers):
        g = {k: v[i] for k, v in lay.items()}
        d = {
            "attn_norm": g["attn_norm"],
            "mlp_norm": g["mlp_norm"],
            "wqkv": jnp.concatenate(
                [g["wq"].reshape(D, -1), g["wk"].reshape(D, -1), g["wv"].reshape(D, -1)], -1
            ),
            "wo": g["wo"].reshape(-1, D),
            "w_gu": jnp.concatenate([g["w_gate"], g["w_up"]], -1),
            "w_down": g["w_down"],
        }
        if cfg.qkv_bias:
            d["bqkv"] = jnp.concatenate([g[b].reshape(-1) for b in ("bq", "bk", "bv")])
        if cfg.qk_norm:
            d["q_norm"], d["k_norm"] = g["q_norm"], g["k_norm"]
        out.append(d)
    return {
        "layers": out,
        "embed": params["embed"].astype(dt),
        "final_norm": params["final_norm"].astype(dt),
        "unembed": unembed_matrix(params, cfg),
    }


def _rope_1(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """RoPE of one position per row.  x: [N, n, Hd]; cos, sin: [N, 1, Hd] (rotate_half form)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rot * sin).astype(x.dtype)


def _attend(q, kc, vc, bias):
    """Unnormalised attention of q [M, K, R, Hd] over kc, vc [M, K, S, Hd] with additive
    bias [M, 1, 1, S]: (max m [M, K, R, 1], sum_s e_s [M, K, R, 1], sum_s e_s v_s
    [M, K, R, Hd]) with e_s = exp(score_s - m), scores in f32."""
    s = jnp.einsum("mkrd,mksd->mkrs", q, kc, preferred_element_type=jnp.float32) + bias
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    o = jnp.einsum("mkrs,mksd->mkrd", e.astype(vc.dtype), vc, preferred_element_type=jnp.float32)
    return m, jnp.sum(e, axis=-1, keepdims=True), o


def decode_step(dp, cfg: ModelConfig, tok, pos, prompt_kv, prompt_bias, cache, gen_bias, slot):
    """One token per row through the model.  tok, pos: [N] int32.

    The keys are split in two blocks, merged by the usual max/sum rescaling (one softmax over
    both): the prompt's, prompt_kv = tuple over layers of (k, v) [B, K, P, Hd] stored once
    per prompt (not per row; rows b*G .. b*G+G-1 share prompt b) with prompt_bias
    [B, 1, 1, P] (0 / MASK_VALUE), attended by the G x Q queries of a prompt as one matmul;
    and the generated tokens', cache = tuple over layers of (k, v) [N, K, T, Hd] with
    gen_bias [N, 1, 1, T] (slot `slot` already marked valid).
    Returns (logits [N, V] f32, cache with slot `slot` written)."""
    H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    Q = H // K
    N = tok.shape[0]
    B = prompt_bias.shape[0]
    G = N // B
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, Hd, 2, dtype=jnp.float32) / Hd))
    ang = pos.astype(jnp.float32)[:, None] * inv_freq
    ang = jnp.concatenate([ang, ang], -1)[:, None, :]  # [N, 1, Hd], shared by all layers
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    x = dp["embed"][tok]  # [N, D]
    new_cache = []

    def per_row(a):  # [B, K, G*Q, X] -> [N, K, Q, X]
        return a.reshape(B, K, G, Q, -1).transpose(0, 2, 1, 3, 4).reshape(N, K, Q, -1)

    for lp, (pk, pv), (kc, vc) in zip(dp["layers"], prompt_kv, cache, strict=True):
        h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
        qkv = h @ lp["wqkv"]
        if cfg.qkv_bias:
            qkv = qkv + lp["bqkv"]
        q = qkv[:, : H * Hd].reshape(N, H, Hd)
        k = qkv[:, H * Hd : (H + K) * Hd].reshape(N, K, Hd)
        v = qkv[:, (H + K) * Hd :].reshape(N, K, Hd)
        if cfg.qk_norm:
            q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
            k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
        q, k = _rope_1(q, cos, sin), _rope_1(k, cos, sin)
        kc = jax.lax.dynamic_update_slice(kc, k[:, :, None, :].astype(kc.dtype), (0, 0, slot, 0))
        vc = jax.lax.dynamic_update_slice(vc, v[:, :, None, :].astype(vc.dtype), (0, 0, slot, 0))
        new_cache.append((kc, vc))
        qg = (q * (Hd**-0.5)).reshape(N, K, Q, Hd)
        qb = qg.reshape(B, G, K, Q, Hd).transpose(0, 2, 1, 3, 4).reshape(B, K, G * Q, Hd)
        m_p, l_p, o_p = (per_row(a) for a in _attend(qb, pk, pv, prompt_bias))
        m_g, l_g, o_g = _attend(qg, kc, vc, gen_bias)
        m = jnp.maximum(m_p, m_g)
        a_p, a_g = jnp.exp(m_p - m), jnp.exp(m_g - m)
        o = (a_p * o_p + a_g * o_g) / (a_p * l_p + a_g * l_g)
        x = x + o.reshape(N, H * Hd).astype(x.dtype) @ lp["wo"]
        gu = rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps) @ lp["w_gu"]
        F = gu.shape[-1] // 2
        x = x + (jax.nn.silu(gu[:, :F]) * gu[:, F:]) @ lp["w_down"]
    h = rms_norm(x, dp["final_norm"], cfg.rms_norm_eps)
    logits = jnp.dot(h, dp["unembed"], preferred_element_type=jnp.float32)
    return logits, tuple(new_cache)


def _sample_core(
    params, prompt_ids, prompt_mask, key, forced_ids, forced_len, *, cfg, scfg, G, T, eos, pad
):
    """Traced body of the sampler; shapes as in the module docstring, P = the bucket length."""
    B, P = prompt_ids.shape
    N = B * G
    tau = scfg.temperature if scfg.temperature > 0 else 1.0

    # Prefill: each prompt once, then its cache and last logits are copied to its G rows.
    mask = prompt_mask.astype(bool)
    h, cache = hidden_states(
        params, cfg, prompt_ids, positions_from_mask(mask), mask, init_cache(cfg, B, P)
    )
    logits = logits_from_hidden(params, cfg, h[:, -1])  # [B, V]
    rep = lambda a, axis=0: jnp.repeat(a, G, axis=axis)  # noqa: E731
    logits = rep(logits)
    # The prompt's keys/values stay once per prompt (decode_step attends to them with the G
    # rows' queries together); generated tokens get their own [N, K, T, Hd] cache.
    prompt_kv = tuple((cache.k[i], cache.v[i]) for i in range(cfg.num_layers))
    prompt_bias = jnp.where(mask, 0.0, MASK_VALUE)[:, None, None, :]  # [B, 1, 1, P]
    dt = jnp.dtype(cfg.compute_dtype)
    gshape = (N, cfg.num_kv_heads, T, cfg.head_dim)
    kv = tuple((jnp.zeros(gshape, dt), jnp.zeros(gshape, dt)) for _ in range(cfg.num_layers))
    kv_mask = jnp.zeros((N, T), bool)
    prompt_len = rep(jnp.sum(mask, axis=-1).astype(jnp.int32))
    dp = _decode_params(params, cfg)
    eos_arr = jnp.asarray(eos, jnp.int32)

    def emit(t, logits, out, done):
        """Sample (or force) token t of every row from logits [N, V] and record it."""
        tokens, logps, gen, forced = out
        step_key = jax.random.fold_in(key, t)
        sampled = sample_logits(
            logits, step_key, temperature=scfg.temperature, top_k=scfg.top_k, top_p=scfg.top_p
        )
        is_forced = t < forced_len
        tok = jnp.where(is_forced, forced_ids[:, t], sampled)
        lp = jax.nn.log_softmax(logits / tau, axis=-1)
        tok_lp = jnp.take_along_axis(lp, tok[:, None], axis=-1)[:, 0]
        live = ~done
        tok = jnp.where(live, tok, pad)
        col = lambda a, v: jax.lax.dynamic_update_slice(a, v[:, None], (0, t))  # noqa: E731
        out = (
            col(tokens, tok),
            col(logps, jnp.where(live, tok_lp, 0.0)),
            col(gen, live),
            col(forced, live & is_forced),
        )
        done = done | (live & jnp.any(tok[:, None] == eos_arr[None, :], axis=-1))
        return tok, live, out, done

    # The loop emits tokens 0..T-2 and feeds each through the model; token T-1 is emitted
    # after the loop from the last logits, so no forward pass is spent on a token whose
    # logits nobody reads (1/T of the decode work).
    def cond(state):
        t, done = state[0], state[5]
        return (t < T - 1) & ~jnp.all(done)

    def body(state):
        t, logits, kv, kv_mask, out, done = state
        tok, live, out, done = emit(t, logits, out, done)
        kv_mask = jax.lax.dynamic_update_slice(kv_mask, live[:, None], (0, t))
        gen_bias = jnp.where(kv_mask, 0.0, MASK_VALUE)[:, None, None, :]
        logits, kv = decode_step(
            dp, cfg, tok, prompt_len + t, prompt_kv, prompt_bias, kv, gen_bias, t
        )
        return t + 1, logits, kv, kv_mask, out, done

    out0 = (
        jnp.full((N, T), pad, jnp.int32),
        jnp.zeros((N, T), jnp.float32),
        jnp.zeros((N, T), bool),
        jnp.zeros((N, T), bool),
    )
    state = (jnp.int32(0), logits, kv, kv_mask, out0, jnp.zeros((N,), bool))
    t, logits, _, _, out, done = jax.lax.while_loop(cond, body, state)
    # Column t: the last token when the loop ran to T - 1, else (every row done) a no-op
    # write of padding; it counts as a step only if some row was still live.
    steps = t + jnp.any(~done).astype(jnp.int32)
    _, _, out, _ = emit(t, logits, out, done)
    tokens, logps, gen, forced = out
    lengths = jnp.sum(gen, axis=-1).astype(jnp.int32)
    return SampleOutput(tokens, logps, gen, forced, lengths, steps)


@dataclass
class Sampler:
    """Host wrapper: pads prompts to a bucket and forced prefixes to T, calls the jitted core.

    traces: number of compilations so far (one per prompt bucket and batch size).
    """

    model_cfg: ModelConfig
    sampling_cfg: SamplingConfig
    group_size: int
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    traces: int = 0

    def __post_init__(self):
        def core(params, prompt_ids, prompt_mask, key, forced_ids, forced_len):
            self.traces += 1  # runs at trace time only
            return _sample_core(
                params,
                prompt_ids,
                prompt_mask,
                key,
                forced_ids,
                forced_len,
                cfg=self.model_cfg,
                scfg=self.sampling_cfg,
                G=self.group_size,
                T=self.max_new_tokens,
                eos=self.eos_ids or (-1,),
                pad=self.pad_id,
            )

        self._core = jax.jit(core)

    def bucket(self, prompt_len: int) -> int:
        """Smallest configured bucket >= prompt_len."""
        for b in self.sampling_cfg.prompt_buckets:
            if b >= prompt_len:
                return b
        raise ValueError(
            f"prompt length {prompt_len} exceeds the largest bucket "
            f"{self.sampling_cfg.prompt_buckets[-1]} (sampling.prompt_buckets)"
        )

    def __call__(self, params, prompt_ids, prompt_mask, key, forced_ids=None, forced_len=None):
        B, P = prompt_ids.shape
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
        return self._core(params, prompt_ids, prompt_mask, key, forced_ids, forced_len)


def make_sampler(
    model_cfg: ModelConfig,
    sampling_cfg: SamplingConfig,
    *,
    eos_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    group_size: int | None = None,
    max_new_tokens: int | None = None,
) -> Sampler:
    """Sampler for the config; group_size / max_new_tokens override sampling_cfg's (e.g. G=1
    for greedy evaluation).  Rows stop after emitting any of eos_ids."""
    return Sampler(
        model_cfg,
        sampling_cfg,
        group_size or sampling_cfg.group_size,
        max_new_tokens or sampling_cfg.max_new_tokens,
        tuple(int(e) for e in eos_ids),
        int(pad_id),
    )


@dataclass
class ShardedSampler:
    """`agrl.sampling.Sampler` whose jitted core runs under a mesh: params sharded by the
    rules table, prompts and forced prefixes split on the batch over (data, fsdp), outputs
    [N, T] split on N.  XLA's propagation then splits the KV cache [N, K, C, Hd] by batch
    (data, fsdp) and kv heads (tensor), the way the k/v projections are split.

    Host padding is the plain sampler's (`Sampler.__call__`); each batch size gets its own
    jitted core (shardings depend on whether the mesh divides the batch)."""

    base: Any  # agrl.sampling.Sampler
    mesh: Mesh
    _cores: dict = field(default_factory=dict)

    def __post_init__(self):
        self._param_sh = model_param_shardings(self.base.model_cfg, self.mesh)
        self.base._core = self._dispatch

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    @property
    def traces(self) -> int:
        return self.base.traces

    def __call__(self, params, prompt_ids, prompt_mask, key, forced_ids=None, forced_len=None):
        return self.base(params, prompt_ids, prompt_mask, key, forced_ids, forced_len)

    def _core_for(self, B: int, P: int):
        from agrl.sampling import SampleOutput, _sample_core

        if (B, P) in self._cores:
            return self._cores[(B, P)]
        s, mesh = self.base, self.mesh
        N, T = B * s.group_size, s.max_new_tokens
        prompts = rows_sharding(mesh, (B, P))
        rows2, rows1 = rows_sharding(mesh, (N, T)), rows_sharding(mesh, (N,))

        def core(params, prompt_ids, prompt_mask, key, forced_ids, forced_len):
            s.traces += 1  # runs at trace time only
            return _sample_core(
                params, prompt_ids, prompt_mask, key, forced_ids, forced_len,
                cfg=s.model_cfg, scfg=s.sampling_cfg, G=s.group_size, T=T,
                eos=s.eos_ids or (-1,), pad=s.pad_id,
            )  # fmt: skip

        fn = jax.jit(
            core,
            in_shardings=(self._param_sh, prompts, prompts, replicated(mesh), rows2, rows1),
            out_shardings=SampleOutput(rows2, rows2, rows2, rows2, rows1, replicated(mesh)),
        )
        self._cores[(B, P)] = fn
        return fn

    def _dispatch(self, params, prompt_ids, prompt_mask, key, forced_ids, forced_len):
        """Place the padded host inputs as global arrays (each process its own rows)."""
        B, P = prompt_ids.shape
        mesh = self.mesh
        key_data = put_global(np.asarray(jax.random.key_data(key)), replicated(mesh))
        return self._core_for(B, P)(
            params,
            put_rows(prompt_ids, mesh),
            put_rows(prompt_mask, mesh),
            jax.random.wrap_key_data(key_data),
            put_rows(forced_ids, mesh),
            put_rows(forced_len, mesh),
        )

    def lower(self, params, prompt_ids, prompt_mask, key):
        """The lowered core for these inputs (to inspect shardings and memory in tests)."""
        B, P = prompt_ids.shape
        N, T = B * self.base.group_size, self.base.max_new_tokens
        return self._core_for(B, P).lower(
            params, prompt_ids, prompt_mask, key,
            np.zeros((N, T), np.int32), np.zeros((N,), np.int32),
        )  # fmt: skip


def make_sharded_sampler(
    model_cfg: ModelConfig, sampling_cfg: SamplingConfig, mesh: Mesh, **kwargs
) -> ShardedSampler:
    """`agrl.sampling.make_sampler(model_cfg, sampling_cfg, **kwargs)` under `mesh`."""
    from agrl.sampling import make_sampler

    return ShardedSampler(make_sampler(model_cfg, sampling_cfg, **kwargs), mesh)
