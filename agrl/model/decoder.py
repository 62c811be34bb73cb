"""One decoder for Llama, Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm), as pure functions (SPEC 9).

Every forward runs the same layer, `agrl.model.layers.block`, with an attention strategy:
  * `hidden_states(params, cfg, ids, positions, mask)` (training, scoring): full causal
    attention; per-layer weights are stacked on a leading [L] axis and the layers are one
    `lax.scan` (compile time independent of depth; fully unrolled up to UNROLL_MAX_LAYERS
    layers, which is faster on CPU), each layer's q|k|v and gate|up weights fused inside
    the scan so only one layer's fused copy is live;
  * `cached_hidden_states(fused, cfg, ids, positions, mask, cache)` (prefill, decode): the
    tokens' keys/values are written into the `KVCache` (agrl.model.attention) and attended
    with the cached ones; weights fused once by `fuse_params` (the sampler does that once
    per call, outside its decode loop) and the layers unrolled in Python, so each layer's
    cache buffer is updated in place.  `hidden_states(..., cache=...)` is the same on
    unfused params.
Every projection is one 2-D matmul over the flattened tokens (see `layers.matmul` for why).
`param_logical_axes(cfg)` (agrl.model.params) names the axes that agrl.parallel.sharding maps
to the (data, fsdp, tensor) mesh.

Shapes: B batch, S query length, C cache slots, D hidden, H query heads, K kv heads,
Q = H / K query heads per kv head, Hd head dim, F intermediate, V vocab, L layers.
Weight layout: agrl.model.params (stored) and agrl.model.layers (fused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agrl.config import ModelConfig
from agrl.model.attention import (
    MASK_VALUE,
    KVCache,
    attention,
    cache_masks,
    cached_attention,
    fork_cache,
    init_cache,
)
from agrl.model.layers import apply_rope, block, fuse_layer, rms_norm, rope, rope_tables
from agrl.model.params import Params
from agrl.parallel.sharding import constrain

__all__ = [
    "MASK_VALUE",
    "UNROLL_MAX_LAYERS",
    "KVCache",
    "apply_rope",
    "cached_hidden_states",
    "completion_logps",
    "fork_cache",
    "forward",
    "fuse_params",
    "hidden_states",
    "init_cache",
    "logits_from_hidden",
    "positions_from_mask",
    "project_vocab",
    "rms_norm",
    "rope",
    "rope_tables",
    "unembed_matrix",
]

UNROLL_MAX_LAYERS = 8  # deeper models scan rolled (compile time independent of depth)
ACT = ("batch", "length", "act_embed")  # logical axes of the residual stream
# memory.remat -> what a layer saves for the backward pass (None: only its input).
REMAT_POLICIES = {
    "layer": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _unroll(cfg: ModelConfig) -> int:
    """Layers unrolled per scan iteration: all of them for shallow models.  A rolled scan
    makes XLA stack every layer's residuals into zero-initialised [L, ...] buffers for the
    backward pass and slice weights per iteration (about 10% of a training step of the tiny
    model); unrolling removes that, and compile time stays small up to about 8 layers."""
    return cfg.num_layers if cfg.num_layers <= UNROLL_MAX_LAYERS else 1


def _cast(params: Params, cfg: ModelConfig) -> Params:
    dt = jnp.dtype(cfg.compute_dtype)
    return jax.tree.map(lambda p: p.astype(dt), params)


def fuse_params(params: Params, cfg: ModelConfig) -> Params:
    """Compute-dtype weights for `cached_hidden_states`: embed [V, D], final_norm [D],
    unembed [D, V] and layers, a tuple over layers of `layers.fuse_layer` weights.  Built
    once per sampler call (about one extra copy of the layer weights)."""
    p = _cast(params, cfg)
    stacked = fuse_layer(p["layers"], cfg)
    return {
        "embed": p["embed"],
        "final_norm": p["final_norm"],
        "unembed": unembed_matrix(params, cfg),
        "layers": tuple(jax.tree.map(lambda w, i=i: w[i], stacked) for i in range(cfg.num_layers)),
    }


def hidden_states(
    params: Params,
    cfg: ModelConfig,
    ids: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    cache: KVCache | None = None,
    mesh=None,
    remat: str = "none",
) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states [B, S, D] (and the updated cache).

    ids, positions: [B, S] int32; mask: [B, S] bool, which tokens are real (keys).  Query i
    attends key j iff key j is valid and j <= i.  With a cache: `cached_hidden_states` of
    `fuse_params(params)`.  With a mesh, the residual stream is constrained to
    ("batch", "length", "act_embed") after every layer.  `remat` (memory.remat: none,
    layer, dots) wraps each layer in jax.checkpoint with that policy (REMAT_POLICIES).
    """
    if cache is not None:
        return cached_hidden_states(
            fuse_params(params, cfg), cfg, ids, positions, mask, cache, mesh
        )
    p = _cast(params, cfg)
    x = constrain(p["embed"][ids], ACT, mesh)  # [B, S, D]
    rope_cs = rope_tables(positions, cfg.head_dim, cfg.rope_theta)  # shared by all layers
    idx = jnp.arange(ids.shape[1])
    allowed = mask[:, None, :] & (idx[None, :, None] >= idx[None, None, :])

    def attend(q, k, v):
        return attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), allowed), None

    def step(x, lp):
        x, _ = block(fuse_layer(lp, cfg), cfg, x, rope_cs, attend)
        return constrain(x, ACT, mesh), None

    if remat != "none":
        step = jax.checkpoint(step, policy=REMAT_POLICIES[remat])
    x, _ = jax.lax.scan(step, x, p["layers"], unroll=_unroll(cfg))
    return rms_norm(x, p["final_norm"], cfg.rms_norm_eps), None


def cached_hidden_states(
    fused: Params,
    cfg: ModelConfig,
    ids: jax.Array,
    positions: jax.Array,
    mask: jax.Array,
    cache: KVCache,
    mesh=None,
) -> tuple[jax.Array, KVCache]:
    """Hidden states [N, S, D] of S new tokens per row, attending to the cache, and the cache
    with their keys/values written at row slots cache.index .. cache.index + S - 1.

    fused: `fuse_params`; ids, positions: [N, S] int32; mask: [N, S] bool (valid new keys).
    Query i attends every valid prompt-block key and the valid row keys of slots
    <= cache.index + i.  Prefill is this call on `init_cache(cfg, B, P)`.
    """
    kv_mask, masks = cache_masks(cfg, cache, mask)
    x = constrain(fused["embed"][ids], ACT, mesh)  # [N, S, D]
    rope_cs = rope_tables(positions, cfg.head_dim, cfg.rope_theta)  # shared by all layers
    ks, vs = [], []
    for i, fl in enumerate(fused["layers"]):

        def attend(q, k, v, i=i):
            return cached_attention(cache, i, masks, q, k, v)

        x, (kc, vc) = block(fl, cfg, x, rope_cs, attend)
        x = constrain(x, ACT, mesh)
        ks.append(kc)
        vs.append(vc)
    S = ids.shape[1]
    new_cache = cache._replace(k=tuple(ks), v=tuple(vs), mask=kv_mask, index=cache.index + S)
    return rms_norm(x, fused["final_norm"], cfg.rms_norm_eps), new_cache


def unembed_matrix(params: Params, cfg: ModelConfig) -> jax.Array:
    """[D, V]: lm_head, or embed^T when embeddings are tied."""
    w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return w.astype(jnp.dtype(cfg.compute_dtype))


def project_vocab(h: jax.Array, unembed: jax.Array) -> jax.Array:
    """h [..., D] @ unembed [D, V] -> logits [..., V] in f32."""
    return jnp.einsum("...d,dv->...v", h, unembed, preferred_element_type=jnp.float32)


def logits_from_hidden(params: Params, cfg: ModelConfig, h: jax.Array) -> jax.Array:
    """h [..., D] -> logits [..., V] in f32."""
    return project_vocab(h, unembed_matrix(params, cfg))


def forward(params, cfg, ids, positions, mask, cache=None, mesh=None):
    """Logits [B, S, V] f32; with a cache, (logits, updated cache).  See `hidden_states`."""
    h, new_cache = hidden_states(params, cfg, ids, positions, mask, cache, mesh)
    logits = logits_from_hidden(params, cfg, h)
    return logits if cache is None else (logits, new_cache)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Positions of a left-padded [B, S] mask: cumsum(mask) - 1, clipped at 0 on the padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def completion_hidden(
    params: Params,
    cfg: ModelConfig,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
    *,
    mesh=None,
    remat: str = "none",
    input_ids: jax.Array | None = None,
) -> jax.Array:
    """Final-normed hidden states [N, T, D] at the T positions P-1 .. P+T-2 that predict the
    completion tokens (column 0: the prompt's last position, which predicts the first
    response token).  One forward over the [N, P+T] concatenation; arguments as in
    `completion_logps`."""
    fed = completion_ids if input_ids is None else input_ids
    ids = jnp.concatenate([prompt_ids, fed], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1).astype(bool)
    positions = positions_from_mask(mask)
    h, _ = hidden_states(params, cfg, ids, positions, mask, mesh=mesh, remat=remat)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    return h[:, P - 1 : P + T - 1]


def token_logps(
    params: Params,
    cfg: ModelConfig,
    h: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """logps [N, T] (and entropy [N, T]) of the completion tokens from `completion_hidden`'s
    h [N, T, D]; see `completion_logps`."""
    z = logits_from_hidden(params, cfg, h) / temperature  # [N, T, V]
    logp_all = jax.nn.log_softmax(z, axis=-1)
    logps = jnp.take_along_axis(logp_all, completion_ids[..., None], axis=-1)[..., 0]
    logps = jnp.where(completion_mask, logps, 0.0)
    if not return_entropy:
        return logps
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logps, jnp.where(completion_mask, ent, 0.0)


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
    remat: str = "none",
    input_ids: jax.Array | None = None,
):
    """log pi(y_t | x, y_<t) of the completion tokens.  Differentiable.

    prompt_ids, prompt_mask: [N, P] left-padded; completion_ids, completion_mask: [N, T]
    right-padded.  One forward over the [N, P+T] concatenation; the vocab projection and
    log-softmax run only on the T positions P-1 .. P+T-2 that predict completion tokens
    (not on the prompt: most of the vocab FLOPs of a long prompt are skipped).
    logp_t = log_softmax(z_t / temperature)[y_t]; entropy_t = -sum_v p_v log p_v.
    Returns logps [N, T] f32 (0 where completion_mask is False) and, if asked, entropy [N, T].
    remat: the layers' rematerialisation policy (`hidden_states`).  input_ids [N, T]: the
    completion tokens fed to the model when they differ from the scored completion_ids
    (SFT's `sft.label_noise`); None: completion_ids (plain teacher forcing).
    """
    h = completion_hidden(
        params, cfg, prompt_ids, prompt_mask, completion_ids, completion_mask,
        mesh=mesh, remat=remat, input_ids=input_ids,
    )  # fmt: skip
    return token_logps(
        params, cfg, h, completion_ids, completion_mask,
        temperature=temperature, return_entropy=return_entropy,
    )  # fmt: skip
