"""Paired bootstrap confidence intervals for the difference of two models (SPEC 7).

Two models evaluated on the same records differ by delta = metric(pred_a) - metric(pred_b).
The paired bootstrap resamples the records (n draws with replacement, the same draw for
both models, so record difficulty cancels) n_boot times and reports the percentile interval
of the resampled deltas. A resample is a vector of counts w [n] ~ Multinomial(n, 1/n), so
every count-based metric is a weighted sum and all resamples are one matrix product:
    tp_c = w . 1[pred = c & gold = c],  n_pred_c = w . 1[pred = c],  n_true_c = w . 1[gold = c]
    F1_c = 2 tp_c / (n_pred_c + n_true_c)   (0 when both are 0; equals 2PR / (P + R))
    macro-F1 = mean_c F1_c,   accuracy = w . 1[pred = gold] / n
Several seeds are pooled by resampling each seed's records on its own and averaging the
per-seed deltas (the seeds stay fixed: the interval is over records, not over seeds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LABELS = (1, 2, 3, 4)
METRICS = ("macro_f1", "accuracy")


def weighted_metrics(pred: np.ndarray, gold: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """macro-F1 and accuracy [K] of predictions pred [n] (0: unparsed) against gold [n] under
    K weightings w [K, n] of the records (w = 1 gives the plain metrics)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    w = np.asarray(w, np.float64)
    f1 = []
    for c in LABELS:
        tp = w @ ((pred == c) & (gold == c))
        denom = w @ (pred == c) + w @ (gold == c)
        f1.append(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0))
    return {
        "macro_f1": np.mean(f1, axis=0),
        "accuracy": (w @ (pred == gold)) / w.sum(axis=1),
    }


def _resample_weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """[n_boot, n] counts of each record in n_boot resamples of n records."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def paired_bootstrap(
    runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """{metric: {delta, lo, hi, resolved}} for metric(a) - metric(b), pooled over runs.

    runs: one (gold [n], pred_a [n], pred_b [n]) per seed (n may differ between seeds).
    delta is the mean over runs of the plain per-run deltas; [lo, hi] is the central `level`
    percentile interval of the resampled pooled deltas; resolved means the interval excludes
    0 (the difference is not explained by which records happened to be in the eval set).
    """
    if not runs:
        raise ValueError("paired_bootstrap: no runs")
    rng = np.random.default_rng(seed)
    point = {m: 0.0 for m in METRICS}
    boot = {m: np.zeros(n_boot) for m in METRICS}
    for gold, pred_a, pred_b in runs:
        gold, pred_a, pred_b = (np.asarray(x) for x in (gold, pred_a, pred_b))
        if not (len(gold) == len(pred_a) == len(pred_b) > 0):
            raise ValueError(f"paired_bootstrap: lengths {len(gold)}, {len(pred_a)}, {len(pred_b)}")
        ones = np.ones((1, len(gold)))
        a, b = weighted_metrics(pred_a, gold, ones), weighted_metrics(pred_b, gold, ones)
        w = _resample_weights(rng, len(gold), n_boot)
        ra, rb = weighted_metrics(pred_a, gold, w), weighted_metrics(pred_b, gold, w)
        for m in METRICS:
            point[m] += float(a[m][0] - b[m][0]) / len(runs)
            boot[m] += (ra[m] - rb[m]) / len(runs)
    tail = 100 * (1 - level) / 2
    out = {}
    for m in METRICS:
        lo, hi = np.percentile(boot[m], [tail, 100 - tail])
        out[m] = {
            "delta": point[m],
            "lo": float(lo),
            "hi": float(hi),
            "resolved": bool(lo > 0 or hi < 0),
        }
    return out
