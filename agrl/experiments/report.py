"""The tables and figures of `agrl reproduce` (SPEC 8): aggregate per-seed evaluations into
mean +- std rows, write results.md (b_eval / w_eval tables, accuracy per hard query type,
the pass@G diagnostics at the RL start) and Figures 1-3 as PNG files.

Inputs are plain dicts: per_seed[seed] = {"models": {row: {"b_eval", "w_eval", "evals"?}},
"diagnostics": agrl.eval.policy_eval.pass_at_g output}; `plan` is an
agrl.experiments.setup.ReproducePlan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agrl.eval.bootstrap import paired_bootstrap
from agrl.eval.metrics import aggregate_seeds, metrics_table_markdown
from agrl.experiments.plots import (
    plot_curves,
    plot_per_type_accuracy,
    plot_teacher_split,
    plot_zero_variance_and_trigger,
    series_from_records,
)
from agrl.experiments.setup import (
    METHOD_NAMES,
    METHODS,
    ROW_NAMES,
    ROWS,
    ReproducePlan,
    fmt_seconds,
)
from agrl.task.data import HARD_TYPES
from agrl.train.metrics_log import read_metrics

# ---------------------------------------------------------------------------------------
# Results: table, diagnostics, figures.

TABLE_COLUMNS: tuple[str, ...] = (
    "macro_f1",
    "accuracy",
    "f1_1",
    "f1_2",
    "f1_3",
    "f1_4",
    "good_f1",
    "rule_adherence",
    "step_accuracy",
)


def aggregate(per_seed: dict[int, dict]) -> dict[str, dict[str, Any]]:
    """{row: {split: aggregate_seeds over seeds}} for every model row and split."""

    out: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        out[row] = {}
        for split in ("b_eval", "w_eval"):
            runs = [per_seed[s]["models"][row][split] for s in sorted(per_seed)]
            out[row][split] = aggregate_seeds(runs)
    return out


def _type_table(agg: dict, split: str) -> str:
    types = [t for t in HARD_TYPES if t in agg["dpo"][split].get("accuracy_by_type", {})]
    rows = {ROW_NAMES[r]: agg[r][split].get("accuracy_by_type", {}) for r in ROWS}

    return metrics_table_markdown(rows, types)


def _teacher_table(agg: dict, split: str = "b_eval") -> str | None:
    """Accuracy on the records the teacher labels wrong / right (per hard type for the
    wrong ones), or None when the evaluations carry no teacher_split (agrl.eval.policy_eval)."""

    if not all("teacher_split" in agg[r][split] for r in ROWS):
        return None
    rows = {}
    for r in ROWS:
        ts = agg[r][split]["teacher_split"]
        cells = {"teacher wrong": ts["teacher_wrong"]["accuracy"]}
        cells |= {"teacher right": ts["teacher_right"]["accuracy"]}
        by_type = ts["teacher_wrong"].get("by_type", {})
        cells |= {f"wrong: {t}": by_type[t] for t in HARD_TYPES if t in by_type}
        rows[ROW_NAMES[r]] = cells
    return metrics_table_markdown(rows, list(next(iter(rows.values()))))


def _diag_table(per_seed: dict[int, dict]) -> str:
    """Mean over seeds of the pass@G diagnostics per query type (in percent)."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]["diagnostics"]
    G = first["group_size"]
    lines = [
        f"| query type | prompts | pass@{G} | mean acc | zero correct of {G} | all correct |",
        "|---|---|---|---|---|---|",
    ]
    names = [*first["by_type"], "overall"]
    for t in names:
        stats = [
            per_seed[s]["diagnostics"]["by_type"].get(t)
            if t != "overall"
            else per_seed[s]["diagnostics"]["overall"]
            for s in seeds
        ]
        stats = [x for x in stats if x]
        mean = {k: float(np.mean([x[k] for x in stats])) for k in stats[0]}
        lines.append(
            f"| {t} | {mean['n']:.0f} | {100 * mean['pass_at_g']:.1f} | "
            f"{100 * mean['mean_accuracy']:.1f} | {100 * mean['zero_correct']:.1f} | "
            f"{100 * mean['all_correct']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def headline(per_seed: dict[int, dict], a: str = "agrl", b: str = "grpo") -> dict[str, Any]:
    """The issue-6 target in numbers: method a minus method b on b_eval, per seed.

    Returns {"seeds", "macro_f1": {a, b, delta: per-seed lists}, "by_type": {type: delta
    list}} with macro-F1 and accuracies in percent; deltas are a - b on the same seed.
    """
    seeds = sorted(per_seed)

    def get(row: str, s: int) -> dict:
        return per_seed[s]["models"][row]["b_eval"]

    fa = [100 * get(a, s)["macro_f1"] for s in seeds]
    fb = [100 * get(b, s)["macro_f1"] for s in seeds]
    by_type = {}
    for t in HARD_TYPES:
        if all(t in get(r, s).get("accuracy_by_type", {}) for r in (a, b) for s in seeds):
            by_type[t] = [
                100 * (get(a, s)["accuracy_by_type"][t] - get(b, s)["accuracy_by_type"][t])
                for s in seeds
            ]
    return {
        "seeds": seeds,
        "macro_f1": {a: fa, b: fb, "delta": [x - y for x, y in zip(fa, fb, strict=True)]},
        "by_type": by_type,
    }


def paired_comparisons(
    per_seed: dict[int, dict], base: str = "grpo", split: str = "b_eval", n_boot: int = 2000
) -> dict[str, Any]:
    """Every RL method minus `base` on `split` with 95% paired bootstrap intervals (records
    resampled, the same draw for both models; agrl.eval.bootstrap), per seed and pooled.

    Returns {method: {"pooled": {metric: {delta, lo, hi, resolved}}, "per_seed": {seed:
    ...}}} in percentage points; {} when the evaluations carry no per-record predictions.
    """
    seeds = sorted(per_seed)

    def preds(row: str, s: int) -> dict | None:
        return per_seed[s]["models"][row][split].get("predictions")

    out: dict[str, Any] = {}
    for m in METHODS:
        if m == base or any(preds(r, s) is None for r in (m, base) for s in seeds):
            continue
        runs = {}
        for s in seeds:
            a, b = preds(m, s), preds(base, s)
            if a["gold_label"] != b["gold_label"]:
                raise ValueError(f"seed {s}: {m} and {base} were evaluated on other records")
            runs[s] = (np.asarray(a["gold_label"]), np.asarray(a["pred_label"]),
                       np.asarray(b["pred_label"]))  # fmt: skip
        pct = lambda r: {k: {**v, **{f: 100 * v[f] for f in ("delta", "lo", "hi")}}  # noqa: E731
                         for k, v in r.items()}  # fmt: skip
        out[m] = {
            "pooled": pct(paired_bootstrap(list(runs.values()), n_boot=n_boot)),
            "per_seed": {
                str(s): pct(paired_bootstrap([r], n_boot=n_boot, seed=s)) for s, r in runs.items()
            },  # fmt: skip
        }
    return out


def _comparisons_md(comp: dict[str, Any], base: str = "grpo") -> str:
    """One row per method: pooled delta and 95% interval of macro-F1 and accuracy, in words."""
    nb = METHOD_NAMES[base]
    head = ["method", f"Δ macro-F1 vs {nb} [95% CI]", f"Δ accuracy vs {nb} [95% CI]", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, c in comp.items():
        p = c["pooled"]
        cells = [f"{p[k]['delta']:+.2f} [{p[k]['lo']:+.2f}, {p[k]['hi']:+.2f}]"
                 for k in ("macro_f1", "accuracy")]  # fmt: skip
        f = p["macro_f1"]
        if not f["resolved"]:
            words = "not resolved (the interval contains 0)"
        else:
            words = f"resolved: {METHOD_NAMES[m]} {'above' if f['delta'] > 0 else 'below'} {nb}"
        lines.append("| " + " | ".join([METHOD_NAMES[m], *cells, words]) + " |")
    return "\n".join(lines) + "\n"


def _std(xs: list[float]) -> float:
    """Sample std over seeds (ddof=1, as agrl.eval.metrics.aggregate_seeds), 0 for one seed."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _mean_std(xs: list[float]) -> str:
    return f"{float(np.mean(xs)):+.2f} ± {_std(xs):.2f}"


def _headline_md(h: dict[str, Any], a: str = "agrl", b: str = "grpo") -> str:
    """A per-seed table of method a vs method b (b_eval macro-F1 and hard-type accuracy)."""
    na, nb = METHOD_NAMES[a], METHOD_NAMES[b]
    types = list(h["by_type"])
    head = ["seed", f"{na} macro-F1", f"{nb} macro-F1", "Δ macro-F1", *[f"Δ {t}" for t in types]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mf = h["macro_f1"]
    for i, s in enumerate(h["seeds"]):
        cells = [f"{mf[a][i]:.2f}", f"{mf[b][i]:.2f}", f"{mf['delta'][i]:+.2f}"]
        cells += [f"{h['by_type'][t][i]:+.2f}" for t in types]
        lines.append("| " + " | ".join([str(s), *cells]) + " |")
    cells = [f"{np.mean(mf[m]):.2f} (std {_std(mf[m]):.2f})" for m in (a, b)]
    cells += [_mean_std(mf["delta"]), *[_mean_std(h["by_type"][t]) for t in types]]
    lines.append("| mean | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(plan: ReproducePlan, agg: dict, per_seed: dict[int, dict], wall: dict) -> str:
    """results.md: the SPEC 8 table for b_eval and w_eval, per-type accuracy, diagnostics."""

    n = len(plan.seeds)
    total = sum(v["seconds"] for v in wall.values() if isinstance(v, dict))
    parts = [
        "# agrl reproduce: results\n",
        f"Seeds: {list(plan.seeds)} (mean ± std over {n} seed{'s' * (n > 1)}; std is 0 with "
        f"one seed). {'QUICK smoke run: tiny sizes, not a result. ' if plan.quick else ''}"
        f"Greedy decoding on the first {plan.cfg.train.eval_size} records of each split. "
        f"Stage time (summed, this directory): {fmt_seconds(total)}.\n",
    ]
    for split in ("b_eval", "w_eval"):
        rows = {ROW_NAMES[r]: agg[r][split] for r in ROWS}
        parts += [f"## {split}\n", metrics_table_markdown(rows, TABLE_COLUMNS)]
    parts += ["## b_eval accuracy per hard query type (%)\n", _type_table(agg, "b_eval")]
    teacher = _teacher_table(agg)
    if teacher:
        n_wrong = agg["dpo"]["b_eval"]["teacher_split"]["teacher_wrong"]["n"][0]
        parts += [
            "## b_eval accuracy where the teacher is wrong (%)\n",
            f"The {n_wrong:.0f} b_eval records whose teacher label (meta.teacher_label) differs "
            "from the gold one: SFT learns the teacher's mistakes there, and only guidance "
            "with gold answers (AGR) or luck in sampling can undo them.\n",
            teacher,
        ]
    parts += [
        "## AGRL vs GRPO on b_eval, per seed\n",
        "Δ = AGRL - GRPO on the same seed (macro-F1, and accuracy per hard query type, in "
        "points); the issue-6 target is Δ macro-F1 >= 3 on average, positive Δ on negation, "
        "alternative and knowledge, and a smaller std for AGRL than for GRPO.\n",
        _headline_md(headline(per_seed)),
    ]
    comp = paired_comparisons(per_seed)
    if comp:
        n_rec = len(
            per_seed[plan.seeds[0]]["models"]["grpo"]["b_eval"]["predictions"]["gold_label"]
        )
        parts += [
            "## Every RL method vs GRPO on b_eval, with 95% paired bootstrap intervals\n",
            f"Δ in points, pooled over {n} seed{'s' * (n > 1)} ({n_rec} b_eval records each; "
            "records resampled 2000 times, the same draw for both models, seeds kept fixed). "
            "A difference is resolved when its interval excludes 0: it is then not explained "
            "by which records happen to be in the evaluation set. Per-seed intervals are in "
            "results.json (`vs_grpo`).\n",
            _comparisons_md(comp),
        ]
    parts += [
        "## Diagnostics at the RL start (DPO policy, rl pool)\n",
        f"G = {plan.cfg.sampling.group_size} samples per prompt at the training temperature "
        f"{plan.cfg.sampling.temperature}; 'zero correct' groups give plain GRPO no outcome "
        "signal (what AGR is for). Percent, mean over seeds.\n",
        _diag_table(per_seed),
        "The oracle row (SFT on gold responses, same budget) is the ceiling of what this "
        "model size and SFT budget can learn.\n",
        "Figures: fig1_macro_f1.png, fig1_accuracy.png, fig2_zero_variance_trigger.png, "
        "fig3_type_accuracy.png"
        + (", fig4_teacher_split.png.\n" if _evals_split_by_teacher(per_seed) else ".\n"),
    ]
    return "\n".join(parts)


def _metric_series(per_seed: dict[int, dict], method: str, key: str) -> list:
    return [
        ([e["step"] for e in per_seed[s]["models"][method]["evals"]],
         [e[key] for e in per_seed[s]["models"][method]["evals"]])
        for s in sorted(per_seed)
    ]  # fmt: skip


def _evals_split_by_teacher(per_seed: dict[int, dict]) -> bool:
    """Whether every RL evaluation row has the teacher-wrong / teacher-right accuracies."""
    rows = [e for s in per_seed.values() for m in METHODS for e in s["models"][m].get("evals", [])]
    return bool(rows) and all("teacher_wrong_accuracy" in e for e in rows)


def _log_series(plan: ReproducePlan, method: str, key: str) -> list:

    return [
        series_from_records(read_metrics(plan.out / f"seed{s}" / f"rl_{method}"), key)
        for s in plan.seeds
    ]


def write_figures(
    plan: ReproducePlan, per_seed: dict[int, dict], agg: dict, agr_methods: list[str]
) -> list[Path]:
    """Figures 1-3 of SPEC 8 as PNG files in --out, and Figure 4 (accuracy where the
    teacher is wrong / right vs step) when the evaluations carry the teacher's labels;
    agr_methods: the methods that run AGR (their trigger rate is drawn in Figure 2)."""

    out = plan.out
    paths = []
    for key, label in (("macro_f1", "b_eval macro-F1"), ("accuracy", "b_eval accuracy")):
        series = {METHOD_NAMES[m]: _metric_series(per_seed, m, key) for m in METHODS}
        paths.append(plot_curves(series, label, out / f"fig1_{key}.png", title=label))
    zero = {METHOD_NAMES[m]: _log_series(plan, m, "zero_variance_frac") for m in METHODS}
    trig = {METHOD_NAMES[m]: _log_series(plan, m, "agr_trigger_rate") for m in agr_methods}
    paths.append(plot_zero_variance_and_trigger(zero, trig, out / "fig2_zero_variance_trigger.png"))

    def by_type(row: str) -> dict[str, float]:
        accs = agg[row]["b_eval"].get("accuracy_by_type", {})
        return {t: accs[t][0] for t in HARD_TYPES if t in accs}

    after = {METHOD_NAMES[m]: by_type(m) for m in METHODS}
    paths.append(
        plot_per_type_accuracy(
            by_type("dpo"), after, out / "fig3_type_accuracy.png", before_label="DPO (before RL)"
        )
    )
    if _evals_split_by_teacher(per_seed):
        wrong, right = (
            {METHOD_NAMES[m]: _metric_series(per_seed, m, f"{k}_accuracy") for m in METHODS}
            for k in ("teacher_wrong", "teacher_right")
        )
        paths.append(plot_teacher_split(wrong, right, out / "fig4_teacher_split.png"))
    return paths
