"""The decoder layer, shared by the training forward, prefill and decode (SPEC 9).

`block(fl, cfg, x, rope_cs, attend)` is one pre-norm layer: RMSNorm, the fused q|k|v
projection (+ bias, + q/k RMSNorm, + RoPE), attention through the `attend` strategy, the
output projection, RMSNorm, SwiGLU and both residuals.  The caller chooses the strategy (full
causal attention for training; cache write + attention for prefill and decode, see
agrl.model.attention) and when the weights are fused (`fuse_layer`: per layer inside the
training scan, so only one layer's fused copy is live; once per call for the whole stack in
the sampler, outside its decode loop).

Shapes: B rows, S query length, D hidden, H query heads, K kv heads, Hd head dim,
F intermediate.  Fused layer weights (x @ W convention, any leading [L] axis kept):
  attn_norm [D]  wqkv [D, (H + 2K) Hd]  bqkv [(H + 2K) Hd] (qkv_bias)  q_norm, k_norm [Hd]
  (qk_norm)  wo [H Hd, D]  mlp_norm [D]  w_gu [D, 2F]  w_down [F, D]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from agrl.config import ModelConfig
from agrl.model.params import Params

# attend(q [B,S,H,Hd], k [B,S,K,Hd], v [B,S,K,Hd]) -> (o [B,S,H,Hd], whatever the caller keeps)
Attend = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


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


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., Din] @ w [Din, Dout] as one 2-D matmul over the flattened leading dims.

    Why 2-D: XLA CPU differentiates a 3-D einsum ("bsd,df->bsf") into weight gradients that
    contract two dims at once and materialises strided transposes of the [B*S, F]
    activations for them (about 40% of a training step at the benchmark shape); the 2-D form
    gets plain transposed-operand matmuls.
    """
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[-1])


def fuse_layer(lp: Params, cfg: ModelConfig) -> Params:
    """Layer weights (agrl.model.params layout, with or without the leading [L] axis) ->
    fused weights (module docstring): q|k|v and gate|up concatenated so that each is one
    matmul (one pass over the activations, one weight-gradient matmul); wo flattened."""
    D, H, K, Hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    lead = lp["attn_norm"].shape[:-1]  # () or (L,)
    flat = lambda w, n: w.reshape(*lead, D, n * Hd)  # noqa: E731
    out = {
        "attn_norm": lp["attn_norm"],
        "wqkv": jnp.concatenate([flat(lp["wq"], H), flat(lp["wk"], K), flat(lp["wv"], K)], -1),
        "wo": lp["wo"].reshape(*lead, H * Hd, D),
        "mlp_norm": lp["mlp_norm"],
        "w_gu": jnp.concatenate([lp["w_gate"], lp["w_up"]], axis=-1),
        "w_down": lp["w_down"],
    }
    if cfg.qkv_bias:
        out["bqkv"] = jnp.concatenate(
            [lp[b].reshape(*lead, -1) for b in ("bq", "bk", "bv")], axis=-1
        )
    if cfg.qk_norm:
        out["q_norm"], out["k_norm"] = lp["q_norm"], lp["k_norm"]
    return out


def qkv(fl: Params, cfg: ModelConfig, h: jax.Array, rope_cs: tuple[jax.Array, jax.Array]):
    """Projections, bias, q/k norm, RoPE.  h: [B, S, D] -> q [B,S,H,Hd], k, v [B,S,K,Hd].

    fl: fused layer weights; rope_cs: the `rope_tables` of the positions."""
    B, S, _ = h.shape
    H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    y = matmul(h, fl["wqkv"])  # [B, S, (H + 2K) Hd]
    if cfg.qkv_bias:
        y = y + fl["bqkv"]
    q = y[..., : H * Hd].reshape(B, S, H, Hd)
    k = y[..., H * Hd : (H + K) * Hd].reshape(B, S, K, Hd)
    v = y[..., (H + K) * Hd :].reshape(B, S, K, Hd)
    if cfg.qk_norm:
        q = rms_norm(q, fl["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, fl["k_norm"], cfg.rms_norm_eps)
    return apply_rope(q, *rope_cs), apply_rope(k, *rope_cs), v


def mlp(fl: Params, h: jax.Array) -> jax.Array:
    """SwiGLU: (silu(h W_gate) * h W_up) W_down.  h: [B, S, D] -> [B, S, D] (fused gate|up)."""
    F = fl["w_down"].shape[0]
    gu = matmul(h, fl["w_gu"])
    return matmul(jax.nn.silu(gu[..., :F]) * gu[..., F:], fl["w_down"])


def block(fl: Params, cfg: ModelConfig, x: jax.Array, rope_cs, attend: Attend):
    """One pre-norm layer.  x: [B, S, D]; fl: `fuse_layer` weights of this layer; rope_cs:
    `rope_tables`; attend: the attention strategy (module docstring).
    x' = x + Attn(RMSNorm(x)) Wo;  x'' = x' + SwiGLU(RMSNorm(x')).  Returns (x'', aux of attend).
    """
    B, S, _ = x.shape
    q, k, v = qkv(fl, cfg, rms_norm(x, fl["attn_norm"], cfg.rms_norm_eps), rope_cs)
    o, aux = attend(q, k, v)  # [B, S, H, Hd]
    x = x + matmul(o.reshape(B, S, -1), fl["wo"])
    x = x + mlp(fl, rms_norm(x, fl["mlp_norm"], cfg.rms_norm_eps))
    return x, aux
