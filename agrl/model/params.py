"""Parameters of the decoder: shapes, logical axis names, random init, and their placement
on a device mesh by agrl.parallel.sharding's rules table (SPEC 9).

Weight layout (x @ W convention, i.e. transposed w.r.t. torch Linear):
  embed [V, D]            lm_head [D, V] (untied only)      final_norm [D]
  layers/attn_norm [L, D] layers/wq [L, D, H, Hd]  layers/wk, wv [L, D, K, Hd]
  layers/bq [L, H, Hd], bk, bv [L, K, Hd] (qkv_bias)      layers/q_norm, k_norm [L, Hd] (qk_norm)
  layers/wo [L, H, Hd, D] layers/mlp_norm [L, D]  layers/w_gate, w_up [L, D, F]  w_down [L, F, D]
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from agrl.config import ModelConfig
from agrl.parallel.sharding import param_shardings

Params = dict[str, Any]


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def param_shapes(cfg: ModelConfig) -> Params:
    """Shape of every parameter, same tree as `init_params`."""
    L, D, H, K, Hd, F, V = (
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
    )
    layers = {
        "attn_norm": (L, D),
        "wq": (L, D, H, Hd),
        "wk": (L, D, K, Hd),
        "wv": (L, D, K, Hd),
        "wo": (L, H, Hd, D),
        "mlp_norm": (L, D),
        "w_gate": (L, D, F),
        "w_up": (L, D, F),
        "w_down": (L, F, D),
    }
    if cfg.qkv_bias:
        layers |= {"bq": (L, H, Hd), "bk": (L, K, Hd), "bv": (L, K, Hd)}
    if cfg.qk_norm:
        layers |= {"q_norm": (L, Hd), "k_norm": (L, Hd)}
    shapes = {"embed": (V, D), "layers": layers, "final_norm": (D,)}
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (D, V)
    return shapes


def param_logical_axes(cfg: ModelConfig) -> Params:
    """Logical axis names per parameter dimension (same tree as params); see agrl.sharding."""
    layers = {
        "attn_norm": ("layers", "norm"),
        "wq": ("layers", "embed", "heads", "head_dim"),
        "wk": ("layers", "embed", "kv_heads", "head_dim"),
        "wv": ("layers", "embed", "kv_heads", "head_dim"),
        "wo": ("layers", "heads", "head_dim", "embed"),
        "mlp_norm": ("layers", "norm"),
        "w_gate": ("layers", "embed", "mlp"),
        "w_up": ("layers", "embed", "mlp"),
        "w_down": ("layers", "mlp", "embed"),
    }
    if cfg.qkv_bias:
        layers |= {
            "bq": ("layers", "heads", "head_dim"),
            "bk": ("layers", "kv_heads", "head_dim"),
            "bv": ("layers", "kv_heads", "head_dim"),
        }
    if cfg.qk_norm:
        layers |= {"q_norm": ("layers", "norm"), "k_norm": ("layers", "norm")}
    axes = {"embed": ("vocab", "embed"), "layers": layers, "final_norm": ("norm",)}
    if not cfg.tie_embeddings:
        axes["lm_head"] = ("embed", "vocab")
    return axes


def init_params(cfg: ModelConfig, key: jax.Array, init_std: float = 0.02) -> Params:
    """Random params: N(0, init_std^2) matrices, unit norm weights, zero biases."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(
            shapes, is_leaf=lambda x: isinstance(x, tuple)
        )[0]
    ]
    keys = jax.random.split(key, len(leaves))
    dtype = _dtype(cfg.param_dtype)
    out = []
    for path, shape, k in zip(paths, leaves, keys, strict=True):
        if "norm" in path:
            out.append(jnp.ones(shape, dtype))
        elif "'b" in path:
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((init_std * jax.random.normal(k, shape, jnp.float32)).astype(dtype))
    return jax.tree.unflatten(treedef, out)


def abstract_params(cfg: ModelConfig) -> Any:
    """jax.ShapeDtypeStruct of every parameter (the params tree, no memory)."""

    dtype = jnp.dtype(cfg.param_dtype)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, dtype),
        param_shapes(cfg),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def model_param_shardings(cfg: ModelConfig, mesh: Mesh) -> Any:
    """NamedSharding of every parameter of a model config, without creating any array."""

    return param_shardings(abstract_params(cfg), param_logical_axes(cfg), mesh)


def init_sharded_params(cfg: ModelConfig, key: jax.Array, mesh: Mesh) -> Any:
    """Random params created shard by shard on their devices (jit with out_shardings): the
    full model never exists on one device.  Equal to `init_params(cfg, key)` (threefry is
    partitionable, so the draws do not depend on the mesh)."""

    init = jax.jit(partial(init_params, cfg), out_shardings=model_param_shardings(cfg, mesh))
    return init(key)


def place_params(params: Any, cfg: ModelConfig, mesh: Mesh) -> Any:
    """Host (or single-device) params -> fresh arrays sharded by the rules table.

    Leaf by leaf, each device receives only its slice (`make_array_from_callback`), in every
    process of a multi-host run; the results never alias the inputs, so one host copy can
    become both a donated policy and a frozen reference.  Used for Hugging Face imports
    (load on the host CPU, then place).
    """
    shardings = model_param_shardings(cfg, mesh)

    def put(leaf, sharding):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, params, shardings)
