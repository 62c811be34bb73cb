"""Evaluation metrics, CumPT tiers, seed aggregation and markdown tables (SPEC 7, 8).

Pure numpy on the host: the inputs are the parsed outputs of greedy decoding (label,
verdict codes, format flag) or the first-token label posterior, never traced values.
Every definition below is spelled out, with the same words, in docs/evaluation.md.

Conventions
    labels 1..4 (1 Irrelevant, 2 Mismatch, 3 Related, 4 Excellent); a predicted label of 0
    means "unparseable" and is wrong for every class.
    probs [N, 4]: column j is P(label j+1), i.e. columns in the order 1, 2, 3, 4.
    tiers: BAD=0, MID=1, GOOD=2.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agrl.task.rules import LABELS, NA, WORLD, RuleBook, rule_label

TIER_BAD, TIER_MID, TIER_GOOD = 0, 1, 2
TIER_NAMES = ("Bad", "Mid", "Good")
UNPARSEABLE_DISTANCE = 3  # the largest |pred - gold| between labels 1..4
_NLL_FLOOR = 1e-12  # probability floor so that log(0) stays finite


# ---------------------------------------------------------------------------------------
# Checks.


def _labels(x, name: str, lo: int, n: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: expected a 1-D integer array, got {x.dtype} {x.shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries, got {x.shape[0]}")
    bad = (x < lo) | (x > 4)
    if bad.any():
        raise ValueError(f"{name}: values must be in {lo}..4, got {x[bad][:5].tolist()}")
    return x.astype(np.int64)


def _probs(probs, n: int) -> np.ndarray:
    """Validate [N, 4] label probabilities and renormalise each row to sum to one."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (n, 4):
        raise ValueError(f"probs: expected shape ({n}, 4), got {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs: entries must be finite and >= 0")
    total = p.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError("probs: every row needs a positive sum")
    return p / total


# ---------------------------------------------------------------------------------------
# Binary and per-class scores.


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with 0/0 := 0 (a class never predicted has precision 0)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def confusion_matrix(pred_label, gold_label) -> np.ndarray:
    """[4, 5] int counts: row g-1 = gold label g, column p-1 = predicted p, col 4 = unparseable."""
    pred = _labels(pred_label, "pred_label", 0)
    gold = _labels(gold_label, "gold_label", 1, len(pred))
    cm = np.zeros((4, 5), np.int64)
    col = np.where(pred == 0, 4, pred - 1)
    np.add.at(cm, (gold - 1, col), 1)
    return cm


def step_scores(pred_verdicts, gold_verdicts, *, applies_only: bool = False) -> np.ndarray:
    """Per-response step score [N]: mean over applicable dims of 1[pred == gold].

    applies_only=False (r_step of SPEC 4, as in agrl.rl.rewards): a dim is applicable when its
    gold verdict is known (code >= NA), so a correct "n/a" counts as a hit.
    applies_only=True: only dims whose rule applies (gold code > NA) count.
    A predicted MISSING (-1) never equals a gold code, so it is wrong. Rows with no
    applicable dim get NaN (the reward falls back to the label there; evaluation skips).
    """
    pv, gv = np.asarray(pred_verdicts), np.asarray(gold_verdicts)
    if pv.shape != gv.shape or pv.ndim != 2:
        raise ValueError(f"verdicts: expected two equal [N, R] arrays, got {pv.shape}, {gv.shape}")
    applicable = gv > NA if applies_only else gv >= NA
    hits = ((pv == gv) & applicable).sum(axis=1)
    count = applicable.sum(axis=1)
    return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def rule_adherent(pred_label, pred_verdicts, book: RuleBook | None = None) -> np.ndarray:
    """[N] bool: the label was parsed and equals the rule engine's label of its own verdicts
    (under `book`, default the world's).

    This is r_cons of SPEC 4. MISSING verdicts count as n/a, as in the rule engine.
    """
    pred = _labels(pred_label, "pred_label", 0)
    pv = np.asarray(pred_verdicts)
    if pv.ndim != 2 or pv.shape[0] != len(pred):
        raise ValueError(f"pred_verdicts: expected [{len(pred)}, R], got {pv.shape}")
    return (pred > 0) & (rule_label(pv, np, book) == pred)


def classification_metrics(
    pred_label,
    gold_label,
    *,
    query_type: Sequence[str] | None = None,
    pred_verdicts=None,
    gold_verdicts=None,
    format_ok=None,
    book: RuleBook | None = None,
) -> dict[str, Any]:
    """All SPEC 7 metrics of one set of predictions.  pred_label [N] in 0..4, gold [N] in 1..4.

    Returns a flat dict (definitions in docs/evaluation.md):
      n, n_unparseable, parse_rate, accuracy, precision_c / recall_c / f1_c / support_c for
      c in 1..4, macro_f1, good_precision / good_recall / good_f1, ordinal_mae, confusion
      ([4][5] list), and when the inputs are given: rule_adherence (pred_verdicts),
      step_accuracy and step_accuracy_applies (both verdicts), format_ok_rate (format_ok),
      accuracy_by_type and count_by_type (query_type). Under a label-only rule book
      (`book` without dimensions) rule_adherence and step_accuracy* are absent (omitted).
    """
    if not (WORLD if book is None else book).has_rules:
        pred_verdicts = gold_verdicts = None
    pred = _labels(pred_label, "pred_label", 0)
    n = len(pred)
    if n == 0:
        raise ValueError("classification_metrics: no predictions")
    gold = _labels(gold_label, "gold_label", 1, n)
    correct = pred == gold
    out: dict[str, Any] = {
        "n": n,
        "n_unparseable": int((pred == 0).sum()),
        "parse_rate": float((pred > 0).mean()),
        "accuracy": float(correct.mean()),
    }
    f1s = []
    for c in LABELS:
        tp = int((correct & (gold == c)).sum())
        p, r, f1 = _prf(tp, int((pred == c).sum()), int((gold == c).sum()))
        out |= {f"precision_{c}": p, f"recall_{c}": r, f"f1_{c}": f1}
        out[f"support_{c}"] = int((gold == c).sum())
        f1s.append(f1)
    out["macro_f1"] = float(np.mean(f1s))
    good_pred, good_gold = pred >= 3, gold >= 3  # unparseable (0) is never "predicted Good"
    p, r, f1 = _prf(int((good_pred & good_gold).sum()), int(good_pred.sum()), int(good_gold.sum()))
    out |= {"good_precision": p, "good_recall": r, "good_f1": f1}
    dist = np.where(pred == 0, UNPARSEABLE_DISTANCE, np.abs(pred - gold))
    out["ordinal_mae"] = float(dist.mean())
    out["confusion"] = confusion_matrix(pred, gold).tolist()
    if pred_verdicts is not None:
        out["rule_adherence"] = float(rule_adherent(pred, pred_verdicts, book).mean())
    if pred_verdicts is not None and gold_verdicts is not None:
        scores = step_scores(pred_verdicts, gold_verdicts)
        if len(scores) != n:
            raise ValueError(f"verdicts: expected {n} rows, got {len(scores)}")
        out["step_accuracy"] = _nanmean(scores)
        out["step_accuracy_applies"] = _nanmean(
            step_scores(pred_verdicts, gold_verdicts, applies_only=True)
        )
    if format_ok is not None:
        ok = np.asarray(format_ok, dtype=bool)
        if ok.shape != (n,):
            raise ValueError(f"format_ok: expected shape ({n},), got {ok.shape}")
        out["format_ok_rate"] = float(ok.mean())
    if query_type is not None:
        types = np.asarray(list(query_type), dtype=object)
        if types.shape != (n,):
            raise ValueError(f"query_type: expected {n} entries, got {types.shape}")
        names = sorted(set(types.tolist()))
        out["accuracy_by_type"] = {t: float(correct[types == t].mean()) for t in names}
        out["count_by_type"] = {t: int((types == t).sum()) for t in names}
    return out


# ---------------------------------------------------------------------------------------
# First-token label posterior: CumPT tiers (TaoSR1) and argmax metrics.


def cumpt_tiers(probs, beta: float) -> np.ndarray:
    """CumPT tier of each row.  probs [N, 4] over labels 1..4 -> [N] int in {BAD, MID, GOOD}.

    Good if P4 >= b or P4 + P3 >= b; Mid if P4 + P3 + P2 >= b; else Bad (PAPER.md, TaoSR1).
    (P4 >= b implies P4 + P3 >= b; both are written to mirror the paper.)
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta={beta!r}: must be in (0, 1]")
    p = np.asarray(probs, dtype=np.float64)
    p = _probs(p, p.shape[0] if p.ndim == 2 else -1)
    p4, p43, p432 = p[:, 3], p[:, 3] + p[:, 2], p[:, 3] + p[:, 2] + p[:, 1]
    good = (p4 >= beta) | (p43 >= beta)
    return np.where(good, TIER_GOOD, np.where(p432 >= beta, TIER_MID, TIER_BAD))


def gold_tiers(gold_label) -> np.ndarray:
    """Gold tier: labels 4, 3 -> Good; 2 -> Mid; 1 -> Bad.

    This is the CumPT tier of a one-hot posterior on the gold label, for every beta.
    """
    gold = _labels(gold_label, "gold_label", 1)
    return np.select([gold >= 3, gold == 2], [TIER_GOOD, TIER_MID], TIER_BAD)


def tier_metrics(probs, gold_label, beta: float) -> dict[str, Any]:
    """CumPT tier metrics at one beta: 3-way tier accuracy, Good-tier P/R/F1, confusion."""
    gold = _labels(gold_label, "gold_label", 1)
    pred_t, gold_t = cumpt_tiers(_probs(probs, len(gold)), beta), gold_tiers(gold)
    cm = np.zeros((3, 3), np.int64)
    np.add.at(cm, (gold_t, pred_t), 1)
    gp, gg = pred_t == TIER_GOOD, gold_t == TIER_GOOD
    p, r, f1 = _prf(int((gp & gg).sum()), int(gp.sum()), int(gg.sum()))
    out = {
        "cumpt_beta": float(beta),
        "cumpt_accuracy": float((pred_t == gold_t).mean()),
        "cumpt_good_precision": p,
        "cumpt_good_recall": r,
        "cumpt_good_f1": f1,
        "cumpt_confusion": cm.tolist(),
    }
    for t, name in enumerate(TIER_NAMES):
        out[f"cumpt_share_{name.lower()}"] = float((pred_t == t).mean())
    return out


def posterior_metrics(
    probs, gold_label, *, beta: float = 0.5, query_type: Sequence[str] | None = None
) -> dict[str, Any]:
    """Metrics of the first-token label posterior.  probs [N, 4] over labels 1..4.

    The argmax label (ties go to the lower label) is scored with `classification_metrics`
    (it is never unparseable); added: nll = mean of -log max(P(gold), 1e-12), and the
    CumPT tier metrics at `beta`.
    """
    gold = _labels(gold_label, "gold_label", 1)
    p = _probs(probs, len(gold))
    out = classification_metrics(p.argmax(axis=1) + 1, gold, query_type=query_type)
    p_gold = p[np.arange(len(gold)), gold - 1]
    out["nll"] = float(-np.log(np.maximum(p_gold, _NLL_FLOOR)).mean())
    return out | tier_metrics(p, gold, beta)


# ---------------------------------------------------------------------------------------
# Seeds, tables, JSON.


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def aggregate_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every numeric entry present in all runs.

    Scalars become (mean, std) with the sample std (ddof=1), or std 0.0 for a single run;
    nested dicts (accuracy_by_type) are aggregated key by key; lists (confusion matrices)
    and non-numbers are left out.
    """
    if not runs:
        raise ValueError("aggregate_seeds: no runs")
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if all(_is_number(v) for v in values):
            arr = np.asarray(values, dtype=np.float64)
            std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
            out[key] = (float(arr.mean()), std)
        elif all(isinstance(v, Mapping) for v in values):
            out[key] = aggregate_seeds(values)
    return out


# Columns of the reproduction table (SPEC 8) and their headers.
DEFAULT_COLUMNS: tuple[str, ...] = (
    "f1_1",
    "f1_2",
    "f1_3",
    "f1_4",
    "good_f1",
    "macro_f1",
    "accuracy",
    "rule_adherence",
    "step_accuracy",
    "ordinal_mae",
)
COLUMN_TITLES = {
    "f1_1": "C1 F1",
    "f1_2": "C2 F1",
    "f1_3": "C3 F1",
    "f1_4": "C4 F1",
    "good_f1": "Good F1",
    "macro_f1": "macro-F1",
    "accuracy": "acc",
    "rule_adherence": "rule adh.",
    "step_accuracy": "step acc",
    "ordinal_mae": "ord. MAE",
    "cumpt_accuracy": "CumPT acc",
    "cumpt_good_f1": "CumPT Good F1",
    "nll": "NLL",
}
# Shown as they are; every other column is a rate in [0, 1], shown as a percentage.
UNSCALED_KEYS = frozenset({"ordinal_mae", "nll", "n", "n_unparseable", "cumpt_beta"})


def _cell(key: str, value: Any, percent: bool) -> str:
    scale = 100.0 if percent and key not in UNSCALED_KEYS else 1.0
    digits = 2 if scale == 100.0 else 3
    if value is None:
        return "–"
    if isinstance(value, (tuple, list)) and len(value) == 2:
        mean, std = value
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return f"{float(value) * scale:.{digits}f}"


def metrics_table_markdown(
    results: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    *,
    percent: bool = True,
    name_header: str = "model",
) -> str:
    """A markdown table: one row per result name, one column per metric key.

    A value is a float or a (mean, std) pair from `aggregate_seeds`; rates are shown in
    percent (2 decimals) unless percent=False, keys in UNSCALED_KEYS raw (3 decimals);
    a missing key shows as "–".
    """
    header = [name_header] + [COLUMN_TITLES.get(c, c) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in results.items():
        cells = [_cell(c, metrics.get(c), percent) for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to python, tuples to lists, NaN/Inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `to_jsonable(obj)` as indented JSON (strict: no NaN tokens); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")
    return path
