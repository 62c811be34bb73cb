"""One decoder for Llama, Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm), as pure functions (SPEC 9).

Params are a nested dict of arrays; per-layer weights are stacked on a leading [L] axis so the
training forward is one `lax.scan` over layers (compile time independent of depth; fully
unrolled up to UNROLL_MAX_LAYERS layers, which is faster on CPU). Every projection is one 2-D
matmul over the flattened tokens, q|k|v and gate|up fused (see `_matmul` for why).
`param_logical_axes(cfg)` is a parallel pytree of logical axis names that agrl.sharding maps
to the (data, fsdp, tensor) mesh.

Shapes: B batch, S query length, C cache slots, D hidden, H query heads, K kv heads,
Q = H / K query heads per kv head, Hd head dim, F intermediate, V vocab, L layers.

Weight layout (x @ W convention, i.e. transposed w.r.t. torch Linear):
  embed [V, D]            lm_head [D, V] (untied only)      final_norm [D]
  layers/attn_norm [L, D] layers/wq [L, D, H, Hd]  layers/wk, wv [L, D, K, Hd]
  layers/bq [L, H, Hd], bk, bv [L, K, Hd] (qkv_bias)      layers/q_norm, k_norm [L, Hd] (qk_norm)
  layers/wo [L, H, Hd, D] layers/mlp_norm [L, D]  layers/w_gate, w_up [L, D, F]  w_down [L, F, D]

The KV cache keeps keys and values as [B, K, C, Hd] per layer, the layout the attention
einsum consumes, so decoding never transposes the cache; a key-validity mask [B, C] and a
write index travel with it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from agrl.config import ModelConfig
from agrl.model.params import Params
from agrl.parallel.sharding import constrain

UNROLL_MAX_LAYERS = 8  # deeper models scan rolled (compile time independent of depth)
MASK_VALUE = -1e30  # finite: a query row with no valid key gives a uniform softmax, not NaN


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """y = w * x / sqrt(mean(x^2) + eps), computed in f32 (as HF does), cast back to x.dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (w.astype(jnp.float32) * y).astype(x.dtype)


def rope_tables(positions: jax.Array, hd: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, S, 1, Hd] f32 of the rotary angles, computed once per forward and shared by
    every layer (and by q and k).  inv_freq_j = theta^(-2j/Hd); angle = pos * inv_freq,
    duplicated over both halves (HF "rotate_half" convention)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, Hd/2]
    ang = jnp.concatenate([ang, ang], -1)[:, :, None, :]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """y = x * cos + rotate_half(x) * sin, rotate_half([a, b]) = [-b, a].  x: [B, S, n, Hd]."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rot * sin).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of x [B, S, n, Hd] at positions [B, S] (see `rope_tables`)."""
    return apply_rope(x, *rope_tables(positions, x.shape[-1], theta))


class KVCache(NamedTuple):
    """Preallocated cache.  k, v: [L, B, K, C, Hd]; mask: [B, C] bool key validity;
    index: [] int32, the slot the next token is written to (shared by all rows: prompts are
    left-padded, so every row writes the same slot)."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    index: jax.Array


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    """Empty cache of `slots` positions; bytes = 2 * L * B * K * C * Hd * itemsize."""
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, slots, cfg.head_dim)
    dt = jnp.dtype(cfg.compute_dtype)
    return KVCache(
        jnp.zeros(shape, dt),
        jnp.zeros(shape, dt),
        jnp.zeros((batch, slots), bool),
        jnp.zeros((), jnp.int32),
    )


def attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
    """Grouped-query attention with f32 scores.

    q: [B, S, H, Hd]; k, v: [B, K, C, Hd]; allowed: [B, S, C] bool.  Returns [B, S, H, Hd].
    softmax_c(q . k_c / sqrt(Hd), masked by allowed) weighted sum of v_c.
    """
    B, S, H, Hd = q.shape
    K = k.shape[1]
    qg = q.reshape(B, S, K, H // K, Hd)
    s = jnp.einsum("bskqd,bkcd->bkqsc", qg, k, preferred_element_type=jnp.float32)
    s = jnp.where(allowed[:, None, None], s * (Hd**-0.5), MASK_VALUE)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkqsc,bkcd->bskqd", p, v, preferred_element_type=jnp.float32)
    return o.reshape(B, S, H, Hd).astype(q.dtype)


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., Din] @ w [Din, Dout] as one 2-D matmul over the flattened leading dims.

    Why 2-D: XLA CPU differentiates a 3-D einsum ("bsd,df->bsf") into weight gradients that
    contract two dims at once and materialises strided transposes of the [B*S, F]
    activations for them (about 40% of a training step at the benchmark shape); the 2-D form
    gets plain transposed-operand matmuls.
    """
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[-1])


def qkv(lp: Params, cfg: ModelConfig, h: jax.Array, rope_cs: tuple[jax.Array, jax.Array]):
    """Projections, bias, q/k norm, RoPE.  h: [B, S, D] -> q [B,S,H,Hd], k, v [B,S,K,Hd].

    q, k and v come out of one fused [D, (H + 2K) Hd] matmul (one pass over h, one weight
    gradient matmul); rope_cs are the `rope_tables` of the positions.
    """
    B, S, D = h.shape
    H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    w = jnp.concatenate(
        [lp["wq"].reshape(D, H * Hd), lp["wk"].reshape(D, K * Hd), lp["wv"].reshape(D, K * Hd)],
        axis=-1,
    )
    y = _matmul(h, w)  # [B, S, (H + 2K) Hd]
    q = y[..., : H * Hd].reshape(B, S, H, Hd)
    k = y[..., H * Hd : (H + K) * Hd].reshape(B, S, K, Hd)
    v = y[..., (H + K) * Hd :].reshape(B, S, K, Hd)
    if cfg.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
    return apply_rope(q, *rope_cs), apply_rope(k, *rope_cs), v


def mlp(lp: Params, h: jax.Array) -> jax.Array:
    """SwiGLU: (silu(h W_gate) * h W_up) W_down.  h: [B, S, D] -> [B, S, D].  Gate and up
    are one fused [D, 2F] matmul."""
    F = lp["w_gate"].shape[-1]
    gu = _matmul(h, jnp.concatenate([lp["w_gate"], lp["w_up"]], axis=-1))
    return _matmul(jax.nn.silu(gu[..., :F]) * gu[..., F:], lp["w_down"])


def block(lp, cfg, x, rope_cs, allowed, kv_write):
    """One pre-norm layer.  x: [B, S, D]; allowed: [B, S, C] bool; rope_cs: `rope_tables`.

    kv_write(k [B,K,S,Hd], v) -> (k_all [B,K,C,Hd], v_all): how new keys join the keys
    attended to (identity without a cache; an in-place slot write with one).
    Returns (x', k_all, v_all).
    """
    B, S, D = x.shape
    h = rms_norm(x, lp["attn_norm"], cfg.rms_norm_eps)
    q, k, v = qkv(lp, cfg, h, rope_cs)
    k_all, v_all = kv_write(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
    o = attention(q, k_all, v_all, allowed)  # [B, S, H, Hd]
    x = x + _matmul(o.reshape(B, S, -1), lp["wo"].reshape(-1, D))
    x = x + mlp(lp, rms_norm(x, lp["mlp_norm"], cfg.rms_norm_eps))
    return x, k_all, v_all


def _unroll(cfg: ModelConfig) -> int:
    """Layers unrolled per scan iteration: all of them for shallow models.  A rolled scan
    makes XLA stack every layer's residuals into zero-initialised [L, ...] buffers for the
    backward pass and slice weights per iteration (about 10% of a training step of the tiny
    model); unrolling removes that, and compile time stays small up to about 8 layers."""
    return cfg.num_layers if cfg.num_layers <= UNROLL_MAX_LAYERS else 1


def _cast(params: Params, cfg: ModelConfig) -> Params:
    dt = jnp.dtype(cfg.compute_dtype)
    return jax.tree.map(lambda p: p.astype(dt), params)


def hidden_states(
    params: Params,
    cfg: ModelConfig,
    ids: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    cache: KVCache | None = None,
    mesh=None,
) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B, S, D] (and the updated cache).

    ids, positions: [B, S] int32; mask: [B, S] bool, which tokens are real (keys).  Query i
    attends key j iff key j is valid and j <= i (slot order; with a cache, slots
    cache.index + i).  Without a cache, scan over stacked layers.  With a mesh, the residual
    stream is constrained to ("batch", "length", "act_embed") after every layer.
    """
    p = _cast(params, cfg)
    act = ("batch", "length", "act_embed")
    x = constrain(p["embed"][ids], act, mesh)  # [B, S, D]
    S = ids.shape[1]
    rope_cs = rope_tables(positions, cfg.head_dim, cfg.rope_theta)  # shared by all layers
    if cache is None:
        idx = jnp.arange(S)
        allowed = mask[:, None, :] & (idx[None, :, None] >= idx[None, None, :])

        def step(x, lp):
            x, _, _ = block(lp, cfg, x, rope_cs, allowed, lambda k, v: (k, v))
            return constrain(x, act, mesh), None

        x, _ = jax.lax.scan(step, x, p["layers"], unroll=_unroll(cfg))
        return rms_norm(x, p["final_norm"], cfg.rms_norm_eps), None

    C = cache.mask.shape[1]
    kv_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
    slot = jnp.arange(C)
    q_slot = cache.index + jnp.arange(S)
    allowed = kv_mask[:, None, :] & (slot[None, None, :] <= q_slot[None, :, None])

    def step(x, layer):
        lp, kc, vc = layer

        def write(k, v):
            at = (0, 0, cache.index, 0)
            return (
                jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), at),
                jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), at),
            )

        x, kc, vc = block(lp, cfg, x, rope_cs, allowed, write)
        return constrain(x, act, mesh), (kc, vc)

    x, (k_new, v_new) = jax.lax.scan(step, x, (p["layers"], cache.k, cache.v), unroll=_unroll(cfg))
    new_cache = KVCache(k_new, v_new, kv_mask, cache.index + S)
    return rms_norm(x, p["final_norm"], cfg.rms_norm_eps), new_cache


def unembed_matrix(params: Params, cfg: ModelConfig) -> jax.Array:
    """[D, V]: lm_head, or embed^T when embeddings are tied."""
    w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return w.astype(jnp.dtype(cfg.compute_dtype))


def logits_from_hidden(params: Params, cfg: ModelConfig, h: jax.Array) -> jax.Array:
    """h [..., D] -> logits [..., V] in f32."""
    return jnp.einsum(
        "...d,dv->...v", h, unembed_matrix(params, cfg), preferred_element_type=jnp.float32
    )


def forward(params, cfg, ids, positions, mask, cache=None, mesh=None):
    """Logits [B, S, V] f32; with a cache, (logits, updated cache).  See `hidden_states`."""
    h, new_cache = hidden_states(params, cfg, ids, positions, mask, cache, mesh)
    logits = logits_from_hidden(params, cfg, h)
    return logits if cache is None else (logits, new_cache)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions of a left-padded [B, S] mask: cumsum(mask) - 1, clipped at 0 on the padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def completion_logps(
    params: Params,
    cfg: ModelConfig,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    mesh=None,
):
    """log pi(y_t | x, y_<t) of the completion tokens.  Differentiable.

    prompt_ids, prompt_mask: [N, P] left-padded; completion_ids, completion_mask: [N, T]
    right-padded.  One forward over the [N, P+T] concatenation; the vocab projection and
    log-softmax run only on the T positions P-1 .. P+T-2 that predict completion tokens
    (not on the prompt: most of the vocab FLOPs of a long prompt are skipped).
    logp_t = log_softmax(z_t / temperature)[y_t]; entropy_t = -sum_v p_v log p_v.
    Returns logps [N, T] f32 (0 where completion_mask is False) and, if asked, entropy [N, T].
    """
    ids = jnp.concatenate([prompt_ids, completion_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
    positions = positions_from_mask(mask)
    h, _ = hidden_states(params, cfg, ids, positions, mask, mesh=mesh)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    h = h[:, P - 1 : P + T - 1]  # [N, T, D]
    z = logits_from_hidden(params, cfg, h) / temperature  # [N, T, V]
    logp_all = jax.nn.log_softmax(z, axis=-1)
    logps = jnp.take_along_axis(logp_all, completion_ids[..., None], axis=-1)[..., 0]
    logps = jnp.where(completion_mask, logps, 0.0)
    if not return_entropy:
        return logps
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logps, jnp.where(completion_mask, ent, 0.0)
