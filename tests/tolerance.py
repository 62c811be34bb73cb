"""Tolerances from f32 arithmetic, never from what one machine happened to give.

Two f32 evaluations of the same function that differ only in the order of their additions
(another sharding, another kernel, torch instead of XLA, another CPU's vector width) differ
by about eps * |value| per rounding; along a reduction of length K the roundings add up like
a random walk, sqrt(K) * eps * |value|, and a network chains `depth` such reductions (one
per layer plus the output projection). `f32_tol` is that bound times a slack factor of 8.
Real bugs (a wrong mask, a wrong shard, a wrong position) give errors of the order of the
values themselves, orders of magnitude above it.
"""

from __future__ import annotations

import math

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7
SLACK = 8.0


def f32_tol(magnitude: float, reduction: int, depth: int = 1) -> float:
    """SLACK * eps * |magnitude| * sqrt(reduction) * depth: the absolute difference allowed
    between two f32 evaluations of a value of size `magnitude` that sums `reduction` terms
    at each of `depth` chained stages."""
    return SLACK * F32_EPS * float(magnitude) * math.sqrt(reduction) * depth


def assert_adam_runs_agree(a, b, lr: float, steps: int, max_fraction: float = 0.01) -> None:
    """Parameters (pytrees of arrays) of two f32 runs of `steps` Adam(W) updates of learning
    rate `lr` whose gradients differ by rounding only (another sharding, another fusion).

    An Adam step moves an element by lr * m_hat / (sqrt(v_hat) + eps), about lr at most
    whatever the gradient's size, so an element whose gradient is within rounding of zero
    may step the other way: every element agrees to 2 * lr * steps (bound 1). Elsewhere the
    step's relative error is the gradient's, under 1e-3 wherever the gradient exceeds 1000
    times its rounding; there the parameters agree to f32_tol(|value|, 1, 2 * steps) +
    1e-3 * lr * steps (bound 2), which all but `max_fraction` of the elements must meet. A
    wrong gradient (a bad shard, mask or position) changes whole tensors: it breaks bound 2
    on far more elements than that."""
    import jax

    xs = [np.asarray(jax.device_get(x), np.float64).ravel() for x in jax.tree.leaves(a)]
    ys = [np.asarray(jax.device_get(y), np.float64).ravel() for y in jax.tree.leaves(b)]
    x, y = np.concatenate(xs), np.concatenate(ys)
    diff = np.abs(x - y)
    worst = 2.0 * lr * steps * (1 + SLACK * F32_EPS) + f32_tol(np.abs(y).max(), 1, 2 * steps)
    assert diff.max() <= worst, f"max difference {diff.max():.3g} > 2 * lr * steps = {worst:.3g}"
    near = SLACK * F32_EPS * np.abs(y) * 2 * steps + 1e-3 * lr * steps
    far = float(np.mean(diff > near))
    assert far <= max_fraction, f"{far:.2%} of the elements differ beyond f32 rounding"
