"""Gradient accumulation over micro-batches (memory.micro_batch_rows), for agrl.train.steps.

Every loss of agrl.rl.loss is a ratio sum(num) / sum(den) whose numerator and denominator
are sums over rows (loss aux `*_num`/`*_den` keys), so the gradient of the whole batch is
the sum of the micro-batches' numerator gradients divided by the total denominator: equal
to the unsplit gradient within f32 rounding, with one micro-batch's activations live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from agrl.config import MemoryConfig
from agrl.parallel.sharding import data_parallel_size

WHOLE_BATCH = MemoryConfig()  # no micro-batches, no remat


def micro_batch_count(rows: int, memory: MemoryConfig, mesh: Mesh | None) -> int:
    """Micro-batches per update of a batch of `rows` rows: rows per device / micro_batch_rows
    (1 when micro_batch_rows is 0 or not smaller than the rows per device).  A batch the
    data-parallel size does not divide is replicated (`rows_sharding`): all its rows are on
    every device."""
    dp = 1 if mesh is None else data_parallel_size(mesh)
    dp = dp if rows % dp == 0 else 1
    per_device = rows // dp
    mb = memory.micro_batch_rows
    if mb == 0 or mb >= per_device:
        return 1
    if per_device % mb:
        raise ValueError(
            f"memory.micro_batch_rows={mb} must divide the rows per device ({rows} rows / "
            f"{dp} data-parallel shards = {per_device})"
        )
    return per_device // mb


def split_rows(x: jax.Array, n: int) -> jax.Array:
    """[B, ...] -> [n, B / n, ...]: micro-batch j holds rows j, j + n, j + 2n, ... (strided,
    so that rows split contiguously over the data-parallel devices stay on their device)."""
    return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)


def _identity(key: str) -> float:
    """The starting value of an aux metric's accumulation (see `_combine`)."""
    return jnp.inf if key.endswith("_min") else -jnp.inf if key.endswith("_max") else 0.0


def _combine(key: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """Merge one aux metric of two micro-batches: minima / maxima by name, the rest summed."""
    if key.endswith("_min"):
        return jnp.minimum(a, b)
    if key.endswith("_max"):
        return jnp.maximum(a, b)
    return a + b


def accumulate_gradients(
    parts_fn: Callable, params: Any, batch: Any, n_micro: int, num_key: str, den_key: str
) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """loss, grads, aux of the ratio loss sum(num) / sum(den) over n_micro micro-batches.

    parts_fn(params, micro_batch) -> (loss, aux) where aux[num_key] and aux[den_key] are the
    micro-batch's numerator and denominator (the denominator has no gradient: it counts
    tokens, sequences or pairs). Every leaf of `batch` has the rows on axis 0. The
    numerator gradients are accumulated in f32 by a scan, then divided by the total
    denominator; aux metrics are summed (minima / maxima combined by `_combine`).
    """

    def num_fn(p, mb):
        _, aux = parts_fn(p, mb)
        return aux[num_key], aux

    grad_fn = jax.value_and_grad(num_fn, has_aux=True)
    micro = jax.tree.map(lambda x: split_rows(x, n_micro), batch)
    _, aux_shape = jax.eval_shape(num_fn, params, jax.tree.map(lambda x: x[0], micro))
    aux0 = {k: jnp.full(v.shape, _identity(k), v.dtype) for k, v in aux_shape.items()}
    g0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

    def body(carry, mb):
        g_acc, aux_acc = carry
        (_, aux), g = grad_fn(params, mb)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        aux_acc = {k: _combine(k, aux_acc[k], aux[k]) for k in aux_acc}
        return (g_acc, aux_acc), None

    (g_sum, aux), _ = jax.lax.scan(body, (g0, aux0), micro)
    den = jnp.maximum(aux[den_key], 1e-8)
    grads = jax.tree.map(lambda g, p: (g / den).astype(p.dtype), g_sum, params)
    return aux[num_key] / den, grads, aux
