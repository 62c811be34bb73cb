"""`agrl reproduce`: config layering and errors (fast), and the --quick job end to end (slow)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from agrl.config import ConfigError, with_method
from agrl.experiments.reproduce import _stage_costs, run_reproduce
from agrl.experiments.schedule import (
    MIN_MEASURED_UNITS,
    PARALLEL_SPEEDUP,
    PRIOR_SECONDS_PER_UNIT,
    eta_seconds,
)
from agrl.experiments.setup import METHODS, ROWS, build_plan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plan_layers_defaults_quick_and_overrides(tmp_path):
    plan = build_plan(
        quick=True, out=tmp_path, overrides=["world.n_rl=50", "optim.lr=1e-4", "diag.prompts=8"]
    )
    assert plan.world.n_rl == 50 and plan.cfg.optim.lr == 1e-4 and plan.diag_prompts == 8
    assert plan.cfg.model.vocab_size == 384 and plan.cfg.sampling.prompt_buckets == (16, 32)
    assert build_plan(out=tmp_path).cfg.sft.steps > plan.cfg.sft.steps


def test_eta_uses_the_reference_rate_until_enough_work_is_timed():
    # a 4 s world stage of 10 units must not set the rate for 30 minutes of training
    assert eta_seconds(4.0, 10.0, 1000.0) == (PRIOR_SECONDS_PER_UNIT * 1000.0, False)
    done = MIN_MEASURED_UNITS
    assert eta_seconds(2 * done, done, 50.0) == (100.0, True)


def test_default_plan_fits_the_demo_budget_at_the_reference_rate(tmp_path):
    # the README's promise: one default seed within about 55 minutes on the reference machine
    # with two stages side by side, 62 one at a time (35 until the 12000-step SFT recipe of
    # 2026-12-03, 40 until its third layer, docs/results.md; the testbed's oracle needs both)
    costs = dict(_stage_costs(build_plan(out=tmp_path)))
    assert PRIOR_SECONDS_PER_UNIT * sum(costs.values()) < 62 * 60
    assert PRIOR_SECONDS_PER_UNIT / PARALLEL_SPEEDUP * sum(costs.values()) < 55 * 60
    three = dict(_stage_costs(build_plan(out=tmp_path, seeds=3)))
    assert sum(three.values()) > 2.9 * sum(costs.values())


def test_plan_reads_toml_world_table(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[world]\nn_sft = 123\n[world.teacher]\nlabel_noise = 0.0\n[sft]\nsteps = 7\n")
    plan = build_plan(config=cfg, out=tmp_path)
    assert plan.world.n_sft == 123 and plan.world.teacher.label_noise == 0.0
    assert plan.cfg.sft.steps == 7


@pytest.mark.parametrize(
    "override",
    ["world.n_sft=-1", "model.vocab_size=0", "paths.out=x", "train.method=grpo", "diag.foo=1"],
)
def test_plan_rejects_bad_values(tmp_path, override):
    with pytest.raises(ConfigError):
        build_plan(out=tmp_path, overrides=[override])


def test_method_presets_differ_only_where_they_should(tmp_path):
    cfg = build_plan(out=tmp_path).cfg
    assert not with_method(cfg, "grpo").guidance.enabled
    assert with_method(cfg, "grpo").reward.w_step == 0.0
    assert with_method(cfg, "agrl").guidance.enabled
    assert with_method(cfg, "agrl").optim == cfg.optim


def test_small_vocab_is_a_clear_error(tmp_path):
    plan = build_plan(quick=True, out=tmp_path, overrides=["model.vocab_size=100"])
    with pytest.raises(ConfigError, match="vocab_size"):
        run_reproduce(plan)


def _finite(x) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


@pytest.mark.slow
def test_quick_reproduce_end_to_end(quick_run, tmp_path_factory):
    tmp_path = quick_run  # `agrl reproduce --quick --out DIR`, run once per session (conftest)
    copy_dir = tmp_path_factory.mktemp("reproduce_rerun")
    for name in ("results.json", "results.md", "run.json"):
        assert (tmp_path / name).stat().st_size > 0
    for name in (
        "fig1_macro_f1",
        "fig1_accuracy",
        "fig2_zero_variance_trigger",
        "fig3_type_accuracy",
        "fig4_teacher_split",
    ):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    results = json.loads((tmp_path / "results.json").read_text())
    for row in ROWS:
        for split in ("b_eval", "w_eval"):
            agg = results["aggregate"][row][split]
            mean, std = agg["macro_f1"]
            assert 0.0 <= mean <= 1.0 and math.isfinite(std)
            assert _finite(agg)
    for m in METHODS:
        evals = results["per_seed"]["0"]["models"][m]["evals"]
        assert evals and all("teacher_wrong_accuracy" in e for e in evals), m
        assert all(0.0 <= e["teacher_right_accuracy"] <= 1.0 for e in evals), m
    diag = results["per_seed"]["0"]["diagnostics"]
    assert 0.0 <= diag["overall"]["pass_at_g"] <= 1.0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["machine"]["cpu_count"] >= 1 and "jax" in run["versions"]
    assert all(not v["reused"] for v in run["wall_seconds"].values())
    md = (tmp_path / "results.md").read_text()
    assert "Oracle SFT" in md and "pass@" in md and "fig4_teacher_split.png" in md
    assert "where the teacher is wrong" in md and "AGRL vs GRPO on b_eval, per seed" in md
    assert len(results["agrl_vs_grpo"]["macro_f1"]["delta"]) == 1
    # a rerun on the same directory reuses every stage and keeps the first run's wall times
    # (on a copy: the notebook tests may read the shared run meanwhile)
    again = copy_dir / "run"
    shutil.copytree(tmp_path, again, ignore=shutil.ignore_patterns("jax_cache"))
    models = sorted(again.glob("seed0/*/model/config.json"))
    stamps = [p.stat().st_mtime_ns for p in models]
    run_reproduce(build_plan(quick=True, out=again))
    assert len(models) == len(ROWS) and [p.stat().st_mtime_ns for p in models] == stamps
    rerun = json.loads((again / "run.json").read_text())
    assert rerun["wall_seconds"] == run["wall_seconds"]


@pytest.mark.slow
def test_rl_ablation_on_a_reproduce_run(quick_run, tmp_path):
    """scripts/ablate_rl.py trains one variant of a finished run's method from the same DPO
    model and reports paired differences on the same records; a variant equal to the base
    method (no overrides) reproduces its predictions, so both differences are exactly 0."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT, user_env

    run = tmp_path / "run"
    shutil.copytree(quick_run, run, ignore=shutil.ignore_patterns("jax_cache"))
    script = [sys.executable, str(ROOT / "scripts" / "ablate_rl.py"), "--run", str(run)]
    for name, extra in (("same", []), ("lr", ["optim.lr=1e-2"])):
        proc = subprocess.run(script + ["--base", "agrl", "--name", name, *extra], cwd=ROOT,
                              env=user_env(), capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(x) for x in (run / "ablations" / "ablations.jsonl").read_text().split("\n")
            if x]  # fmt: skip
    assert [r["name"] for r in rows] == ["same", "lr"]
    same, lr = rows
    assert same["vs_agrl"]["macro_f1"] == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "resolved": False}
    agrl = json.loads((run / "seed0" / "rl_agrl" / "eval.json").read_text())
    assert same["macro_f1"] == round(100 * agrl["macro_f1"], 2)
    assert lr["overrides"] == ["optim.lr=1e-2"] and "teacher_wrong" in lr
    bad = subprocess.run(script + ["--base", "nope", "--name", "x"], cwd=ROOT, env=user_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "rl_nope/config.json: missing" in bad.stderr


@pytest.mark.slow
def test_class1_errors_script_on_a_reproduce_run(quick_run):
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT, user_env

    cmd = [sys.executable, str(ROOT / "scripts" / "class1_errors.py"),
           str(quick_run / "seed0" / "oracle"), str(quick_run / "world")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=user_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_label1 = sum(
        json.loads(x)["label"] == 1
        for x in (quick_run / "world" / "b_eval.jsonl").read_text().splitlines()
        if x.strip()
    )
    counted = [int(m) for m in re.findall(r"label 1, \w+ department: (\d+) records", proc.stdout)]
    assert sum(counted) == n_label1 > 0 and "predicted 1 where the gold label is" in proc.stdout


@pytest.mark.slow
def test_type_errors_script_on_a_reproduce_run(quick_run):
    """scripts/type_errors.py: one gold x predicted table per query type, whose rows count
    every b_eval record once, and the wrong answers it is asked to show."""
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT, user_env

    cmd = [sys.executable, str(ROOT / "scripts" / "type_errors.py"),
           str(quick_run / "seed0" / "oracle"), str(quick_run / "world")]  # fmt: skip
    proc = subprocess.run(cmd + ["--show", "2"], cwd=ROOT, env=user_env(), capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (quick_run / "world" / "b_eval.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines if x.strip()]
    rows = re.findall(r"^\| [1-4] \|(?: \d+ \|){5} (\d+)/(\d+) \|$", proc.stdout, re.M)
    assert sum(int(n) for _, n in rows) == len(records)
    right = sum(int(k) for k, _ in rows)
    said = re.search(r"accuracy ([\d.]+) on (\d+) b_eval records", proc.stdout)
    assert int(said.group(2)) == len(records)
    assert abs(float(said.group(1)) - 100 * right / len(records)) < 0.051  # printed to 0.1
    n_wrong = len(records) - right
    assert proc.stdout.count("\n  model: ") == min(2, n_wrong)
    bad = subprocess.run(cmd + ["--type", "nope"], cwd=ROOT, env=user_env(), capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode != 0 and "--type nope: no such query type" in bad.stderr
