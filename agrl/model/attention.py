"""Attention: full masked attention (training) and the KV cache with its attention (prefill,
decode), the two strategies `agrl.model.layers.block` runs with.

The cache (`KVCache`) has two blocks per layer:
  * a prompt block [B, K, P, Hd], stored once per prompt and shared by the G rows that
    continue it (rows b*G .. b*G+G-1 belong to prompt b), attended by those rows' queries
    together as one matmul;
  * a row block [N, K, C, Hd], N = B * G, written in place one slot range per call.
Both keep the layout the attention einsums consume (no transposes of the cache) as a tuple
over layers, so a decode loop writes each layer's buffer in place.  `init_cache` gives an
empty prompt block (G = 1: a plain cache of C slots per row); `fork_cache` turns the filled
rows into the prompt block and gives each prompt G fresh rows, which is how the sampler
prefills every prompt once.  With a non-empty prompt block the two blocks are merged by the
usual max / sum rescaling (one softmax over all keys).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from agrl.config import ModelConfig

MASK_VALUE = -1e30  # finite: a query row with no valid key gives a uniform softmax, not NaN


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


class KVCache(NamedTuple):
    """Keys and values of earlier tokens (module docstring).  B prompts, P prompt slots,
    N = B * G rows, C row slots, L layers."""

    prompt_k: tuple[jax.Array, ...]  # L x [B, K, P, Hd]
    prompt_v: tuple[jax.Array, ...]  # L x [B, K, P, Hd]
    prompt_mask: jax.Array  # [B, P] bool, valid prompt keys
    k: tuple[jax.Array, ...]  # L x [N, K, C, Hd]
    v: tuple[jax.Array, ...]  # L x [N, K, C, Hd]
    mask: jax.Array  # [N, C] bool, valid row keys
    index: jax.Array  # [] int32, the row slot the next token is written to (shared by all
    # rows: prompts are left-padded, so every row writes the same slot)


def _zeros_kv(cfg: ModelConfig, rows: int, slots: int) -> tuple[jax.Array, ...]:
    shape = (rows, cfg.num_kv_heads, slots, cfg.head_dim)
    return tuple(jnp.zeros(shape, jnp.dtype(cfg.compute_dtype)) for _ in range(cfg.num_layers))


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    """Empty cache of `slots` positions per row and no prompt block (G = 1).
    bytes = 2 * L * batch * K * slots * Hd * itemsize."""
    empty = _zeros_kv(cfg, batch, 0)
    return KVCache(
        empty,
        empty,
        jnp.zeros((batch, 0), bool),
        _zeros_kv(cfg, batch, slots),
        _zeros_kv(cfg, batch, slots),
        jnp.zeros((batch, slots), bool),
        jnp.zeros((), jnp.int32),
    )


def fork_cache(cfg: ModelConfig, cache: KVCache, group: int, slots: int) -> KVCache:
    """The B filled rows of a cache without a prompt block become the prompt block; each
    prompt gets `group` fresh rows of `slots` slots (rows b*G .. b*G+G-1 continue prompt b)."""
    if cache.prompt_mask.shape[1]:
        raise ValueError("fork_cache: the cache already has a prompt block")
    N = cache.mask.shape[0] * group
    return KVCache(
        cache.k,
        cache.v,
        cache.mask,
        _zeros_kv(cfg, N, slots),
        _zeros_kv(cfg, N, slots),
        jnp.zeros((N, slots), bool),
        jnp.zeros((), jnp.int32),
    )


class CacheMasks(NamedTuple):
    """Masks of one cached forward, built once and shared by every layer."""

    allowed: jax.Array  # [N, S, C] bool: row keys query i attends (valid, slot <= its slot)
    row_bias: jax.Array | None  # [N, 1, 1 or S*Q, C] f32 0 / MASK_VALUE (with a prompt block)
    prompt_bias: jax.Array | None  # [B, 1, 1, P] f32 0 / MASK_VALUE (with a prompt block)


def cache_masks(cfg: ModelConfig, cache: KVCache, mask: jax.Array) -> tuple[jax.Array, CacheMasks]:
    """The row mask [N, C] with the S new tokens' validity `mask` [N, S] written at
    cache.index, and the attention masks of those S queries."""
    S, C = mask.shape[1], cache.mask.shape[1]
    kv_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
    slot = jnp.arange(C)
    q_slot = cache.index + jnp.arange(S)
    allowed = kv_mask[:, None, :] & (slot[None, None, :] <= q_slot[None, :, None])
    if not cache.prompt_mask.shape[1]:
        return kv_mask, CacheMasks(allowed, None, None)
    row_bias = jnp.where(allowed, 0.0, MASK_VALUE)[:, None]  # [N, 1, S, C]
    if S > 1:  # score rows are (s, q) pairs, s-major
        row_bias = jnp.repeat(row_bias, cfg.num_heads // cfg.num_kv_heads, axis=2)
    prompt_bias = jnp.where(cache.prompt_mask, 0.0, MASK_VALUE)[:, None, None, :]
    return kv_mask, CacheMasks(allowed, row_bias, prompt_bias)


def _partial_attend(q, kc, vc, bias):
    """Unnormalised attention of q [M, K, R, Hd] over kc, vc [M, K, C, Hd] with additive
    bias (broadcast to [M, K, R, C]): (max m [M, K, R, 1], sum_c e_c [M, K, R, 1],
    sum_c e_c v_c [M, K, R, Hd]) with e_c = exp(score_c - m), scores in f32."""
    s = jnp.einsum("mkrd,mksd->mkrs", q, kc, preferred_element_type=jnp.float32) + bias
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    o = jnp.einsum("mkrs,mksd->mkrd", e.astype(vc.dtype), vc, preferred_element_type=jnp.float32)
    return m, jnp.sum(e, axis=-1, keepdims=True), o


def two_block_attention(q, pk, pv, kc, vc, masks: CacheMasks) -> jax.Array:
    """Attention of q [N, S, H, Hd] over a prompt block pk, pv [B, K, P, Hd] (shared by the G
    rows of a prompt, attended by their G x S x Q queries as one matmul) and the rows' own
    kc, vc [N, K, C, Hd]: one softmax over both, by max / sum rescaling.  Returns [N, S, H, Hd].
    """
    N, S, H, Hd = q.shape
    B, K = pk.shape[0], pk.shape[1]
    G, Q, R = N // B, H // K, S * H // K
    qg = (q * (Hd**-0.5)).reshape(N, S, K, Q, Hd).transpose(0, 2, 1, 3, 4).reshape(N, K, R, Hd)
    qb = qg.reshape(B, G, K, R, Hd).transpose(0, 2, 1, 3, 4).reshape(B, K, G * R, Hd)

    def per_row(a):  # [B, K, G*R, X] -> [N, K, R, X]
        return a.reshape(B, K, G, R, -1).transpose(0, 2, 1, 3, 4).reshape(N, K, R, -1)

    m_p, l_p, o_p = (per_row(a) for a in _partial_attend(qb, pk, pv, masks.prompt_bias))
    m_g, l_g, o_g = _partial_attend(qg, kc, vc, masks.row_bias)
    m = jnp.maximum(m_p, m_g)
    a_p, a_g = jnp.exp(m_p - m), jnp.exp(m_g - m)
    o = (a_p * o_p + a_g * o_g) / (a_p * l_p + a_g * l_g)  # [N, K, R, Hd]
    return o.reshape(N, K, S, Q, Hd).transpose(0, 2, 1, 3, 4).reshape(N, S, H, Hd).astype(q.dtype)


def cached_attention(cache: KVCache, layer: int, masks: CacheMasks, q, k, v):
    """The cache strategy of `block`: write k, v [N, S, K, Hd] at slots index .. index+S-1 of
    this layer's row block, then attend q [N, S, H, Hd] to the prompt block and the row block.
    Returns (o [N, S, H, Hd], (k_rows, v_rows) [N, K, C, Hd] updated)."""
    at = (0, 0, cache.index, 0)
    kc, vc = cache.k[layer], cache.v[layer]
    kc = jax.lax.dynamic_update_slice(kc, k.transpose(0, 2, 1, 3).astype(kc.dtype), at)
    vc = jax.lax.dynamic_update_slice(vc, v.transpose(0, 2, 1, 3).astype(vc.dtype), at)
    if masks.prompt_bias is None:
        o = attention(q, kc, vc, masks.allowed)
    else:
        o = two_block_attention(q, cache.prompt_k[layer], cache.prompt_v[layer], kc, vc, masks)
    return o, (kc, vc)
