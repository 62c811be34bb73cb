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
