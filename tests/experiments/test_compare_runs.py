"""scripts/compare_runs.py: paired A - B differences of finished runs, per pair and pooled."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT, user_env


def _run_dir(path, gold, pred):
    path.mkdir(parents=True)
    preds = {"gold_label": [int(g) for g in gold], "pred_label": [int(p) for p in pred]}
    (path / "eval.json").write_text(json.dumps({"predictions": preds}))
    return path


def _script(*args):
    cmd = [sys.executable, str(ROOT / "scripts" / "compare_runs.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=user_env(), capture_output=True, text=True)


def test_compare_runs_gives_the_exact_delta_and_pools_pairs(tmp_path):
    gold = np.tile([1, 2, 3, 4], 50)  # 200 records
    a1 = _run_dir(tmp_path / "a1", gold, gold)  # all right
    b1_pred = gold.copy()
    b1_pred[:20] = gold[:20] % 4 + 1  # 20 wrong (the next label)
    assert (b1_pred[:20] != gold[:20]).all()
    b1 = _run_dir(tmp_path / "b1", gold, b1_pred)
    a2 = _run_dir(tmp_path / "a2", gold, gold)
    b2 = _run_dir(tmp_path / "b2", gold, gold)
    proc = _script("--a", a1, a2, "--b", b1, b2)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = out["pairs"]
    assert first["accuracy"]["delta"] == 10.0 and first["accuracy"]["resolved"]
    assert second["accuracy"] == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "resolved": False}
    # pooled over the two pairs: 20 of 400 records
    assert out["pooled"]["accuracy"]["delta"] == 5.0
    assert out["pooled"]["accuracy"]["lo"] > 0


def test_compare_runs_refuses_different_records_and_missing_runs(tmp_path):
    gold = np.tile([1, 2, 3, 4], 5)
    a = _run_dir(tmp_path / "a", gold, gold)
    b = _run_dir(tmp_path / "b", gold[::-1], gold)
    proc = _script("--a", a, "--b", b)
    assert proc.returncode != 0 and "evaluated on different records" in proc.stderr
    proc = _script("--a", a, "--b", tmp_path / "nope")
    assert proc.returncode != 0 and "eval.json: missing" in proc.stderr
    assert "Traceback" not in proc.stderr
