"""agrl.eval.metrics and agrl.experiments.plots: hand-computed cases, properties, tables,
PNG output."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agrl.eval.metrics import (
    TIER_BAD,
    TIER_GOOD,
    TIER_MID,
    aggregate_seeds,
    classification_metrics,
    cumpt_tiers,
    gold_tiers,
    metrics_table_markdown,
    posterior_metrics,
    tier_metrics,
    write_json,
)
from agrl.experiments.plots import (
    plot_curves,
    plot_per_type_accuracy,
    plot_teacher_split,
    plot_zero_variance_and_trigger,
    seed_band,
    series_from_records,
)
from agrl.task.rules import MATCH, MISMATCH, MISSING, NA, PARTIAL, R, rule_label


def test_classification_hand_case():
    gold = [1, 1, 2, 2, 3, 3, 4, 4]
    pred = [1, 3, 2, 0, 3, 4, 4, 4]  # index 3 is unparseable
    types = ["neg", "plain"] * 4
    m = classification_metrics(np.array(pred), np.array(gold), query_type=types)
    # correct at 0, 2, 4, 6, 7 -> 5/8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert (m["n"], m["n_unparseable"], m["parse_rate"]) == (8, 1, pytest.approx(7 / 8))
    # class 1: predicted {0}, tp 1, support 2 -> P 1, R 1/2, F1 2/3
    # class 2: predicted {2}, tp 1, support 2 (the unparseable one is a miss) -> 1, 1/2, 2/3
    # class 3: predicted {1, 4}, tp 1, support 2 -> 1/2, 1/2, 1/2
    # class 4: predicted {5, 6, 7}, tp 2, support 2 -> 2/3, 1, 4/5
    expected = {1: (1, 0.5, 2 / 3), 2: (1, 0.5, 2 / 3), 3: (0.5, 0.5, 0.5), 4: (2 / 3, 1, 0.8)}
    for c, (p, r, f1) in expected.items():
        assert (m[f"precision_{c}"], m[f"recall_{c}"], m[f"f1_{c}"]) == pytest.approx((p, r, f1))
        assert m[f"support_{c}"] == 2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 4 / 5) / 4)  # 79/120
    # Good = {3, 4}: predicted Good {1, 4, 5, 6, 7}, gold Good {4, 5, 6, 7} -> P 4/5, R 1
    assert (m["good_precision"], m["good_recall"]) == pytest.approx((0.8, 1.0))
    assert m["good_f1"] == pytest.approx(8 / 9)
    # |pred - gold| = 0, 2, 0, 3 (unparseable), 0, 1, 0, 0 -> 6/8
    assert m["ordinal_mae"] == pytest.approx(0.75)
    assert m["confusion"] == [
        [1, 0, 1, 0, 0],
        [0, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 2, 0],
    ]
    # neg = indices 0, 2, 4, 6 (all right); plain = 1, 3, 5, 7 (only 7 right)
    assert m["accuracy_by_type"] == {"neg": 1.0, "plain": 0.25}
    assert m["count_by_type"] == {"neg": 4, "plain": 4}
    assert "rule_adherence" not in m and "step_accuracy" not in m


def test_rule_adherence_and_step_accuracy_hand_case():
    v = lambda *codes: list(codes)  # category, brand, negation, need, audience, attributes
    pred_v = np.array(
        [
            v(MATCH, NA, MISMATCH, NA, NA, NA),  # rules -> 2; label 2: adherent
            v(MISMATCH, NA, NA, NA, NA, NA),  # rules -> 1; label 3: not adherent
            v(*[MISSING] * R),  # rules -> 4, but the label is unparseable: not adherent
            v(MATCH, PARTIAL, NA, NA, NA, NA),  # rules -> 3; label 3: adherent
        ]
    )
    gold_v = np.array(
        [
            v(MATCH, NA, MISMATCH, NA, NA, MATCH),
            v(MATCH, MATCH, NA, NA, NA, NA),
            v(MATCH, NA, NA, NA, NA, NA),
            v(MATCH, PARTIAL, NA, NA, NA, NA),
        ]
    )
    m = classification_metrics(
        np.array([2, 3, 0, 3]),
        np.array([2, 1, 4, 3]),
        pred_verdicts=pred_v,
        gold_verdicts=gold_v,
        format_ok=[True, True, False, True],
    )
    assert m["rule_adherence"] == pytest.approx(2 / 4)
    # step_accuracy: all 6 gold verdicts are known, so all dims count (r_step of SPEC 4)
    #   row 0: only attributes differs -> 5/6; row 1: category and brand differ -> 4/6
    #   row 2: every verdict missing -> 0; row 3: all equal -> 1      mean = 15/24
    assert m["step_accuracy"] == pytest.approx((5 / 6 + 4 / 6 + 0 + 1) / 4)
    # step_accuracy_applies: only dims whose gold is not n/a
    #   row 0: cat, neg, attr -> 2/3; row 1: cat, brand -> 0; row 2: cat -> 0;
    #   row 3: cat, brand -> 1                                         mean = 5/12
    assert m["step_accuracy_applies"] == pytest.approx((2 / 3 + 0 + 0 + 1) / 4)
    assert m["format_ok_rate"] == pytest.approx(3 / 4)


def test_class_never_predicted_or_absent_scores_zero():
    m = classification_metrics(np.array([4, 4, 4]), np.array([4, 4, 1]))
    # class 1: support 1, never predicted -> P 0 (0/0 := 0), R 0, F1 0
    # class 2, 3: absent from gold and predictions -> all 0 by the same rule
    assert (m["f1_1"], m["f1_2"], m["f1_3"]) == (0.0, 0.0, 0.0)
    assert m["f1_4"] == pytest.approx(0.8)  # P 2/3, R 1
    assert m["macro_f1"] == pytest.approx(0.2)


def test_input_validation():
    with pytest.raises(ValueError, match="pred_label: values must be in 0..4"):
        classification_metrics(np.array([5]), np.array([1]))
    with pytest.raises(ValueError, match="gold_label: values must be in 1..4"):
        classification_metrics(np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="expected 2 entries"):
        classification_metrics(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="query_type"):
        classification_metrics(np.array([1, 2]), np.array([1, 2]), query_type=["a"])
    with pytest.raises(ValueError, match="beta"):
        cumpt_tiers(np.full((1, 4), 0.25), 0.0)
    with pytest.raises(ValueError, match="probs"):
        posterior_metrics(np.full((2, 3), 1 / 3), np.array([1, 2]))


def test_cumpt_hand_case():
    probs = np.array(
        [
            [0.1, 0.1, 0.2, 0.6],  # P4 .6                  -> Good at .5; P43 .8 -> Good at .75
            [0.1, 0.2, 0.3, 0.4],  # P43 .7                 -> Good at .5; P432 .9 -> Mid at .75
            [0.3, 0.3, 0.2, 0.2],  # P43 .4, P432 .7        -> Mid at .5; Bad at .75
            [0.6, 0.2, 0.1, 0.1],  # P432 .4                -> Bad
        ]
    )
    gold = np.array([4, 2, 2, 1])  # gold tiers Good, Mid, Mid, Bad
    assert gold_tiers(gold).tolist() == [TIER_GOOD, TIER_MID, TIER_MID, TIER_BAD]
    assert cumpt_tiers(probs, 0.5).tolist() == [TIER_GOOD, TIER_GOOD, TIER_MID, TIER_BAD]
    assert cumpt_tiers(probs, 0.75).tolist() == [TIER_GOOD, TIER_MID, TIER_BAD, TIER_BAD]
    t = tier_metrics(probs, gold, 0.5)
    assert t["cumpt_accuracy"] == pytest.approx(3 / 4)
    # Good tier: predicted {0, 1}, gold {0} -> P 1/2, R 1, F1 2/3
    assert (t["cumpt_good_precision"], t["cumpt_good_recall"]) == (0.5, 1.0)
    assert t["cumpt_good_f1"] == pytest.approx(2 / 3)
    assert t["cumpt_confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert t["cumpt_share_good"] == 0.5
    p = posterior_metrics(probs, gold, beta=0.5)
    # argmax labels 4, 4, 1 (tie .3/.3 goes to the lower label), 1 -> right at 0 and 3
    assert p["accuracy"] == 0.5 and p["confusion"][1] == [1, 0, 0, 1, 0]
    assert p["nll"] == pytest.approx(-(np.log(0.6) + np.log(0.2) + np.log(0.3) + np.log(0.6)) / 4)
    assert p["cumpt_accuracy"] == t["cumpt_accuracy"]


gold_lists = st.lists(st.integers(1, 4), min_size=0, max_size=40).map(lambda x: [1, 2, 3, 4] + x)


@settings(max_examples=40, deadline=None)
@given(gold=gold_lists, seed=st.integers(0, 2**31 - 1))
def test_perfect_predictions_score_one(gold, seed):
    rng = np.random.default_rng(seed)
    verdicts = rng.integers(0, 5, size=(len(gold), R))
    verdicts[:, 0] = MATCH  # category always applies
    gold_lbl = rule_label(verdicts, np).astype(np.int64)
    m = classification_metrics(
        gold_lbl, gold_lbl, pred_verdicts=verdicts, gold_verdicts=verdicts.copy()
    )
    present = [c for c in (1, 2, 3, 4) if (gold_lbl == c).any()]
    for c in present:
        assert m[f"f1_{c}"] == 1.0
    for key in ("accuracy", "rule_adherence", "step_accuracy", "step_accuracy_applies"):
        assert m[key] == 1.0
    assert m["ordinal_mae"] == 0.0
    g = np.array(gold)
    m2 = classification_metrics(g, g)
    assert m2["macro_f1"] == m2["good_f1"] == m2["accuracy"] == 1.0
    onehot = np.eye(4)[g - 1]
    for beta in (0.3, 0.5, 1.0):
        assert cumpt_tiers(onehot, beta).tolist() == gold_tiers(g).tolist()
    assert posterior_metrics(onehot, g)["cumpt_accuracy"] == 1.0


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4)), min_size=1, max_size=50),
    seed=st.integers(0, 2**31 - 1),
)
def test_permutation_invariance_and_confusion_reference(data, seed):
    pred, gold = (np.array(x) for x in zip(*data, strict=True))
    rng = np.random.default_rng(seed)
    types = rng.choice(["a", "b", "c"], size=len(pred)).tolist()
    verdicts = rng.integers(-1, 5, size=(len(pred), R))
    gold_v = rng.integers(0, 5, size=(len(pred), R))
    kw = dict(pred_verdicts=verdicts, gold_verdicts=gold_v)
    m = classification_metrics(pred, gold, query_type=types, **kw)
    perm = rng.permutation(len(pred))
    mp = classification_metrics(
        pred[perm],
        gold[perm],
        query_type=[types[i] for i in perm],
        pred_verdicts=verdicts[perm],
        gold_verdicts=gold_v[perm],
    )
    assert m.keys() == mp.keys()
    for k in m:
        if isinstance(m[k], float) and math.isnan(m[k]):
            assert math.isnan(mp[k])
        elif isinstance(m[k], float):
            assert m[k] == pytest.approx(mp[k], rel=1e-12)
        else:  # counts, confusion, per-type dicts: exact
            assert m[k] == mp[k]
    # numpy reference from the confusion matrix (rows gold, columns pred, last unparseable)
    cm = np.array(m["confusion"])
    assert cm.sum() == len(pred) and cm[:, 4].sum() == m["n_unparseable"]
    assert m["accuracy"] == pytest.approx(np.trace(cm[:, :4]) / len(pred))
    for c in range(4):
        col, row = cm[:, c].sum(), cm[c, :].sum()
        assert m[f"precision_{c + 1}"] == pytest.approx(cm[c, c] / col if col else 0.0)
        assert m[f"recall_{c + 1}"] == pytest.approx(cm[c, c] / row if row else 0.0)
    ref_mae = np.mean([3 if p == 0 else abs(p - g) for p, g in zip(pred, gold, strict=True)])
    assert m["ordinal_mae"] == pytest.approx(ref_mae)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b1=st.floats(0.01, 1.0), b2=st.floats(0.01, 1.0))
def test_cumpt_tiers_fall_as_beta_rises(seed, b1, b2):
    probs = np.random.default_rng(seed).dirichlet(np.ones(4), size=30)
    lo, hi = min(b1, b2), max(b1, b2)
    assert (cumpt_tiers(probs, lo) >= cumpt_tiers(probs, hi)).all()


def test_aggregate_seeds_and_table():
    runs = [
        {"accuracy": 0.5, "ordinal_mae": 1.0, "accuracy_by_type": {"neg": 0.0}, "confusion": [1]},
        {"accuracy": 0.7, "ordinal_mae": 0.5, "accuracy_by_type": {"neg": 1.0}, "confusion": [2]},
    ]
    agg = aggregate_seeds(runs)
    # mean .6, sample std sqrt(((.5-.6)^2 + (.7-.6)^2) / 1) = sqrt(.02)
    assert agg["accuracy"] == pytest.approx((0.6, math.sqrt(0.02)))
    assert agg["ordinal_mae"] == pytest.approx((0.75, math.sqrt(0.125)))
    assert agg["accuracy_by_type"]["neg"] == pytest.approx((0.5, math.sqrt(0.5)))
    assert "confusion" not in agg
    assert aggregate_seeds(runs[:1])["accuracy"] == (0.5, 0.0)
    table = metrics_table_markdown(
        {"SFT": {"accuracy": 0.5}, "AGRL": agg}, columns=("accuracy", "ordinal_mae")
    )
    assert table.splitlines() == [
        "| model | acc | ord. MAE |",
        "|---|---|---|",
        "| SFT | 50.00 | – |",
        "| AGRL | 60.00 ± 14.14 | 0.750 ± 0.354 |",
    ]


def test_write_json_is_strict(tmp_path):
    path = write_json(tmp_path / "r" / "eval.json", {"a": np.float32(0.5), "b": math.nan})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None}


def _is_png(path, min_bytes=5000):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


def test_seed_band_on_common_steps():
    steps, mean, lo, hi = seed_band([([0, 10, 20], [0.1, 0.2, 0.3]), ([0, 20], [0.3, 0.5])])
    assert steps.tolist() == [0, 20]
    assert mean.tolist() == pytest.approx([0.2, 0.4])
    assert lo.tolist() == [0.1, 0.3] and hi.tolist() == [0.3, 0.5]
    recs = [{"step": 1, "x": 0.5}, {"step": 2, "x": None}, {"step": 3}, {"step": 4, "x": 1.0}]
    assert series_from_records(recs, "x") == ([1, 4], [0.5, 1.0])


def test_plots_write_pngs(tmp_path):
    steps = list(range(0, 50, 5))
    rng = np.random.default_rng(0)
    curve = lambda k: (steps, (np.linspace(0.3, 0.6, len(steps)) + 0.02 * k).tolist())
    series = {"GRPO": [curve(0), curve(1), curve(2)], "AGRL": curve(3)}
    p1 = plot_curves(series, "b_eval macro-F1", tmp_path / "fig1.png", title="Figure 1")
    zero_var = {"GRPO": (steps, rng.uniform(0, 1, len(steps)).tolist())}
    trigger = {"AGRL": [(steps, rng.uniform(0, 0.5, len(steps)).tolist()) for _ in range(2)]}
    p2 = plot_zero_variance_and_trigger(zero_var, trigger, tmp_path / "sub" / "fig2.png")
    p3 = plot_per_type_accuracy(
        {"negation": 0.2, "alternative": 0.3, "qa": 0.5},
        {"GRPO": {"negation": 0.3, "qa": 0.6}, "AGRL": {"negation": 0.7, "knowledge": 0.4}},
        tmp_path / "fig3.png",
    )
    p4 = plot_teacher_split(series, {"GRPO": curve(4)}, tmp_path / "fig4.png")
    for p in (p1, p2, p3, p4):
        assert _is_png(p), p


def test_step_accuracy_and_adherence_equal_the_reward_components():
    """Evaluation and training measure the same thing: mean r_step and mean r_cons."""
    import jax.numpy as jnp

    from agrl.rl.rewards import consistency_reward, step_reward

    rng = np.random.default_rng(7)
    n = 64
    pred_v = rng.integers(-1, 5, size=(n, R))
    gold_v = rng.integers(0, 5, size=(n, R))
    pred = rng.integers(0, 5, size=n)
    gold = rng.integers(1, 5, size=n)
    m = classification_metrics(pred, gold, pred_verdicts=pred_v, gold_verdicts=gold_v)
    r_step = step_reward(
        jnp.asarray(pred_v), jnp.asarray(gold_v), jnp.asarray(gold), jnp.ones(n, bool)
    )
    r_cons = consistency_reward(jnp.asarray(pred), jnp.asarray(pred_v))
    assert m["step_accuracy"] == pytest.approx(float(np.mean(r_step)), rel=1e-6)
    assert m["rule_adherence"] == pytest.approx(float(np.mean(r_cons)), rel=1e-6)
