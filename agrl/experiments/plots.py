"""The reproduction figures of SPEC 8 as PNG files (matplotlib, Agg backend, no display).

A *series* is `(steps, values)` for one run, or a list of such pairs for one method over
several seeds. A list is drawn as the mean over seeds (on the steps every seed has) with a
min-max band, so seed-to-seed spread is visible at a glance.

    Figure 1  plot_curves({"GRPO": [...], "GRPO-PR": [...], "AGRL": [...]}, "b_eval macro-F1")
    Figure 2  plot_zero_variance_and_trigger(zero_variance, trigger_rate)
    Figure 3  plot_per_type_accuracy(before, after)
    Figure 4  plot_teacher_split(teacher_wrong, teacher_right)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # file output only; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Pair = tuple[Sequence[float], Sequence[float]]
Series = Pair | list[Pair]


def series_from_records(records: Sequence[Mapping[str, Any]], key: str) -> Pair:
    """(steps, values) of one metric from metrics.jsonl records, skipping missing/null."""
    rows = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in rows], [v for _, v in rows]


def seed_band(runs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds, on the steps present in every run."""
    common = runs[0][0]
    for steps, _ in runs[1:]:
        common = np.intersect1d(common, steps)
    common = np.asarray(common)
    stacked = []
    for steps, values in runs:
        lookup = dict(zip(np.asarray(steps).tolist(), np.asarray(values, float), strict=True))
        stacked.append([lookup[s] for s in common.tolist()])
    arr = np.asarray(stacked, dtype=float).reshape(len(runs), len(common))
    return common, arr.mean(axis=0), arr.min(axis=0), arr.max(axis=0)


def _draw(ax, series: Mapping[str, Series]) -> None:
    for i, (label, s) in enumerate(series.items()):
        color = f"C{i}"
        if isinstance(s, list):
            steps, mean, lo, hi = seed_band(s)
            ax.plot(steps, mean, color=color, label=f"{label} ({len(s)} seeds)")
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
        else:
            ax.plot(np.asarray(s[0]), np.asarray(s[1], float), color=color, label=label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(
    series: Mapping[str, Series],
    ylabel: str,
    path: str | os.PathLike,
    *,
    xlabel: str = "RL step",
    title: str | None = None,
) -> Path:
    """Figure 1: one metric (e.g. b_eval macro-F1) vs step, one line (or band) per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw(ax, series)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_zero_variance_and_trigger(
    zero_variance: Mapping[str, Series],
    trigger_rate: Mapping[str, Series],
    path: str | os.PathLike,
    *,
    xlabel: str = "RL step",
) -> Path:
    """Figure 2: zero-variance group fraction (left) and AGR trigger rate (right) vs step."""
    panels = {"zero-variance group fraction": zero_variance, "AGR trigger rate": trigger_rate}
    return _fraction_panels(panels, xlabel, path)


def _fraction_panels(
    panels: Mapping[str, Mapping[str, Series]], xlabel: str, path: str | os.PathLike
) -> Path:
    """Side-by-side panels {y label: series} of quantities in [0, 1] vs step."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), sharex=True)
    for ax, (ylabel, series) in zip(axes, panels.items(), strict=True):
        _draw(ax, series)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def plot_per_type_accuracy(
    before: Mapping[str, float],
    after: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    *,
    before_label: str = "before RL",
) -> Path:
    """Figure 3: grouped bars of accuracy per query type, before RL and after each method.

    Types are those of `before` in its order, then any new ones from `after`; a type a
    method lacks is left empty.
    """
    types = list(before)
    for accs in after.values():
        types += [t for t in accs if t not in types]
    bars = {before_label: before, **after}
    width = 0.8 / len(bars)
    x = np.arange(len(types))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(types)), 4))
    for i, (label, accs) in enumerate(bars.items()):
        heights = [accs.get(t, np.nan) for t in types]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, types, rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_teacher_split(
    teacher_wrong: Mapping[str, Series],
    teacher_right: Mapping[str, Series],
    path: str | os.PathLike,
    *,
    xlabel: str = "RL step",
) -> Path:
    """Figure 4: b_eval accuracy on the records the teacher labels wrong (left) and right
    (right) vs step, one line (or seed band) per method: where guidance with gold answers
    gains and what it may cost."""
    panels = {
        "accuracy where the teacher is wrong": teacher_wrong,
        "accuracy where the teacher is right": teacher_right,
    }
    return _fraction_panels(panels, xlabel, path)
