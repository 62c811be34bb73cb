"""agrl.eval.bootstrap: weighted metrics equal the plain ones, a numpy loop reference of the
paired bootstrap, and the intervals behave (identical models: 0; a real gap: resolved)."""

from __future__ import annotations

import numpy as np
import pytest

from agrl.eval.bootstrap import paired_bootstrap, weighted_metrics
from agrl.eval.metrics import classification_metrics


def _preds(rng, gold, p_right):
    wrong = rng.integers(0, 5, len(gold))  # 0 = unparseable
    return np.where(rng.random(len(gold)) < p_right, gold, wrong)


def test_unit_weights_give_the_classification_metrics():
    rng = np.random.default_rng(0)
    gold = rng.integers(1, 5, 300)
    pred = _preds(rng, gold, 0.6)
    got = weighted_metrics(pred, gold, np.ones((1, 300)))
    ref = classification_metrics(pred, gold)
    assert got["macro_f1"][0] == pytest.approx(ref["macro_f1"], abs=1e-12)
    assert got["accuracy"][0] == pytest.approx(ref["accuracy"], abs=1e-12)


def test_integer_weights_equal_repeating_the_records():
    rng = np.random.default_rng(1)
    gold = rng.integers(1, 5, 50)
    pred = _preds(rng, gold, 0.5)
    w = rng.integers(0, 4, 50)
    rep = np.repeat(np.arange(50), w)
    ref = classification_metrics(pred[rep], gold[rep])
    got = weighted_metrics(pred, gold, w[None].astype(float))
    assert got["macro_f1"][0] == pytest.approx(ref["macro_f1"], abs=1e-12)
    assert got["accuracy"][0] == pytest.approx(ref["accuracy"], abs=1e-12)


def test_matches_a_numpy_loop_reference():
    """Same rng stream, resampled indices instead of counts, metrics from classification_metrics."""
    rng = np.random.default_rng(2)
    runs = []
    for n in (40, 55):
        gold = rng.integers(1, 5, n)
        runs.append((gold, _preds(rng, gold, 0.7), _preds(rng, gold, 0.5)))
    got = paired_bootstrap(runs, n_boot=200, seed=7)
    ref_rng = np.random.default_rng(7)
    deltas = {"macro_f1": np.zeros(200), "accuracy": np.zeros(200)}
    point = {"macro_f1": 0.0, "accuracy": 0.0}
    for gold, a, b in runs:
        n = len(gold)
        w = ref_rng.multinomial(n, np.full(n, 1 / n), size=200)
        for m in point:
            point[m] += (
                classification_metrics(a, gold)[m] - classification_metrics(b, gold)[m]
            ) / 2
        for k in range(200):
            idx = np.repeat(np.arange(n), w[k])
            for m in deltas:
                ma = classification_metrics(a[idx], gold[idx])[m]
                mb = classification_metrics(b[idx], gold[idx])[m]
                deltas[m][k] += (ma - mb) / 2
    for m in deltas:
        lo, hi = np.percentile(deltas[m], [2.5, 97.5])
        assert got[m]["delta"] == pytest.approx(point[m], abs=1e-12)
        assert got[m]["lo"] == pytest.approx(lo, abs=1e-12)
        assert got[m]["hi"] == pytest.approx(hi, abs=1e-12)


def test_identical_models_have_a_zero_interval_and_a_real_gap_is_resolved():
    rng = np.random.default_rng(3)
    gold = rng.integers(1, 5, 1000)
    a = _preds(rng, gold, 0.8)
    same = paired_bootstrap([(gold, a, a)], n_boot=300)
    assert all(v == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "resolved": False} for v in same.values())
    b = _preds(rng, gold, 0.6)  # about 15 points of accuracy less
    gap = paired_bootstrap([(gold, a, b)], n_boot=300)
    assert gap["accuracy"]["resolved"] and gap["accuracy"]["lo"] > 0.08
    assert gap["accuracy"]["lo"] <= gap["accuracy"]["delta"] <= gap["accuracy"]["hi"]
    with pytest.raises(ValueError, match="lengths"):
        paired_bootstrap([(gold, a, b[:-1])])
