"""agrl.experiments.report (tables of `agrl reproduce`) and the pass@G group statistics,
against numpy."""

from __future__ import annotations

import types

import numpy as np
import pytest

from agrl.config import Config
from agrl.eval.policy_eval import _group_stats, teacher_split_metrics
from agrl.experiments.report import aggregate, headline, paired_comparisons, results_markdown
from agrl.experiments.setup import METHODS, ROWS
from agrl.task.data import HARD_TYPES


def _eval(rng: np.random.Generator) -> dict:
    split = {
        k: {"n": 10, "accuracy": float(rng.uniform()), "by_type": {"negation": 0.5}}
        for k in ("teacher_wrong", "teacher_right")
    }
    return {
        "teacher_split": split,
        "macro_f1": float(rng.uniform(0.3, 0.9)),
        "accuracy": float(rng.uniform(0.3, 0.9)),
        "accuracy_by_type": {t: float(rng.uniform(0, 1)) for t in (*HARD_TYPES, "plain")},
        "confusion": [[1, 0], [0, 1]],
    }


def _per_seed(n_seeds: int) -> dict[int, dict]:
    rng = np.random.default_rng(0)
    diag = {
        "group_size": 4,
        "overall": _group_stats(np.array([0.0, 0.25, 1.0, 0.5])),
        "by_type": {"negation": _group_stats(np.array([0.0, 1.0]))},
    }
    return {
        s: {
            "models": {r: {"b_eval": _eval(rng), "w_eval": _eval(rng)} for r in ROWS},
            "diagnostics": diag,
        }
        for s in range(n_seeds)
    }


def test_group_stats_matches_hand_counts():
    acc = np.array([0.0, 0.0, 0.125, 1.0, 0.5])
    got = _group_stats(acc)
    assert got == {
        "n": 5,
        "pass_at_g": pytest.approx(3 / 5),
        "mean_accuracy": pytest.approx(1.625 / 5),
        "zero_correct": pytest.approx(2 / 5),
        "all_correct": pytest.approx(1 / 5),
    }


def test_headline_is_agrl_minus_grpo_per_seed():
    per_seed = _per_seed(3)
    h = headline(per_seed)
    for i, s in enumerate(range(3)):
        a = per_seed[s]["models"]["agrl"]["b_eval"]
        b = per_seed[s]["models"]["grpo"]["b_eval"]
        assert h["macro_f1"]["delta"][i] == pytest.approx(100 * (a["macro_f1"] - b["macro_f1"]))
        for t in HARD_TYPES:
            want = 100 * (a["accuracy_by_type"][t] - b["accuracy_by_type"][t])
            assert h["by_type"][t][i] == pytest.approx(want)
    assert "plain" not in h["by_type"]


def test_aggregate_is_mean_and_sample_std():
    per_seed = _per_seed(3)
    agg = aggregate(per_seed)
    vals = [per_seed[s]["models"]["dpo"]["w_eval"]["macro_f1"] for s in range(3)]
    mean, std = agg["dpo"]["w_eval"]["macro_f1"]
    assert mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    assert "confusion" not in agg["dpo"]["w_eval"]


def test_results_markdown_has_every_row_and_the_headline():
    per_seed = _per_seed(2)
    plan = types.SimpleNamespace(seeds=(0, 1), quick=False, cfg=Config())
    md = results_markdown(plan, aggregate(per_seed), per_seed, {"world": {"seconds": 61.0}})
    for name in ("Oracle SFT (gold)", "SFT", "DPO", "GRPO", "GRPO-PR", "AGRL", "AGR only"):
        assert f"| {name} |" in md
    assert "## AGRL vs GRPO on b_eval, per seed" in md and "| mean |" in md
    assert "| negation | 2 | 50.0 |" in md  # diagnostics: pass@4 of [0, 1] is 50%
    assert "1m01s" in md


def test_agr_methods_follow_the_presets():
    from agrl.config import with_method

    agr = [m for m in METHODS if with_method(Config(), m).guidance.enabled]
    assert agr == ["agrl", "agr_only", "agrl_hint"]


def test_teacher_split_counts_by_hand():
    recs = [
        {"label": 4, "query_type": "negation", "meta": {"teacher_label": 2}},
        {"label": 3, "query_type": "negation", "meta": {"teacher_label": 1}},
        {"label": 1, "query_type": "plain", "meta": {"teacher_label": 1}},
        {"label": 2, "query_type": "knowledge", "meta": {"teacher_label": 2}},
    ]
    got = teacher_split_metrics(recs, np.array([4, 1, 1, 0]))
    assert got["teacher_wrong"] == {"n": 2, "accuracy": 0.5, "by_type": {"negation": 0.5}}
    assert got["teacher_right"]["n"] == 2 and got["teacher_right"]["accuracy"] == 0.5
    assert got["teacher_right"]["by_type"] == {"knowledge": 0.0, "plain": 1.0}


def test_results_markdown_has_the_teacher_section():
    per_seed = _per_seed(2)
    plan = types.SimpleNamespace(seeds=(0, 1), quick=False, cfg=Config())
    md = results_markdown(plan, aggregate(per_seed), per_seed, {})
    assert "## b_eval accuracy where the teacher is wrong (%)" in md
    assert "| wrong: negation |" in md and "The 10 b_eval records" in md


def _with_predictions(per_seed: dict[int, dict], n: int = 120) -> dict[int, dict]:
    """Per-record labels: every method is right on a method-specific share of the records."""
    rng = np.random.default_rng(5)
    share = {"grpo": 0.5, "grpo_pr": 0.5, "agrl": 0.9, "rrs_only": 0.5, "agr_only": 0.5}
    for seed in per_seed.values():
        gold = rng.integers(1, 5, n)
        for r, models in seed["models"].items():
            right = rng.random(n) < share.get(r, 0.5)
            pred = np.where(right, gold, 1 + gold % 4)
            models["b_eval"]["predictions"] = {
                "pred_label": pred.tolist(),
                "gold_label": gold.tolist(),
            }
    return per_seed


def test_paired_comparisons_pool_the_per_seed_deltas():
    per_seed = _with_predictions(_per_seed(2))
    comp = paired_comparisons(per_seed, n_boot=300)
    assert set(comp) == set(METHODS) - {"grpo"}
    for m, c in comp.items():
        deltas = []
        for s in per_seed:
            p = {r: per_seed[s]["models"][r]["b_eval"]["predictions"] for r in (m, "grpo")}
            acc = {r: np.mean(np.equal(p[r]["pred_label"], p[r]["gold_label"])) for r in p}
            deltas.append(100 * (acc[m] - acc["grpo"]))
            assert c["per_seed"][str(s)]["accuracy"]["delta"] == pytest.approx(deltas[-1])
        pooled = c["pooled"]["accuracy"]
        assert pooled["delta"] == pytest.approx(np.mean(deltas))
        assert pooled["lo"] <= pooled["delta"] <= pooled["hi"]
    assert comp["agrl"]["pooled"]["accuracy"]["resolved"]  # 90% vs 50% right on 240 records
    assert comp["agrl"]["pooled"]["accuracy"]["lo"] > 20


def test_results_markdown_reports_the_intervals():
    per_seed = _with_predictions(_per_seed(2))
    plan = types.SimpleNamespace(seeds=(0, 1), quick=False, cfg=Config())
    md = results_markdown(plan, aggregate(per_seed), per_seed, {})
    assert "95% paired bootstrap intervals" in md and "resolved: AGRL above GRPO" in md
    plain = _per_seed(1)  # no per-record predictions: no section, no error
    md = results_markdown(types.SimpleNamespace(seeds=(0,), quick=False, cfg=Config()),
                          aggregate(plain), plain, {})  # fmt: skip
    assert "paired bootstrap" not in md
