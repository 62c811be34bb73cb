"""agrl.experiments.schedule: core sets, the default worker count, and run_jobs with real
spawned worker processes (dependencies, pinning, XLA flags, failures)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agrl.experiments.schedule import (
    SINGLE_CORE_XLA_FLAGS,
    Job,
    auto_workers,
    core_sets,
    run_jobs,
    usable_cores,
)
from agrl.train.loop import RunError


def test_core_sets_split_the_cores_into_disjoint_near_equal_sets():
    assert core_sets([0, 1, 2, 3, 4], 2) == [(0, 1, 2), (3, 4)]
    assert core_sets([4, 6], 2) == [(4,), (6,)]
    assert core_sets([0, 1, 2], 1) == [(0, 1, 2)]
    for bad in (0, 4):
        with pytest.raises(ValueError, match="workers"):
            core_sets([0, 1, 2], bad)


def test_auto_workers_is_two_only_on_a_multicore_cpu_in_one_process():
    assert auto_workers("cpu", 1, 2) == 2 and auto_workers("cpu", 1, 16) == 2
    assert auto_workers("cpu", 1, 1) == 1
    assert auto_workers("gpu", 1, 16) == 1 and auto_workers("cpu", 2, 16) == 1
    assert auto_workers("cpu", 1, 16, quick=True) == 1


# Module-level job functions: the spawned children import them by name.


def record(path: str, name: str, seconds: float = 0.0) -> None:
    """Write what the process running a job looks like, then sleep `seconds`."""
    start = time.time()
    time.sleep(seconds)
    info = {
        "name": name,
        "pid": os.getpid(),
        "cores": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "start": start,
        "end": time.time(),
    }
    Path(path, f"{name}.json").write_text(json.dumps(info))


def fail(message: str) -> None:
    raise RunError(message)


def crash() -> None:
    return {}["missing"]


def _read(d: Path, name: str) -> dict:
    return json.loads((d / f"{name}.json").read_text())


two_cores = pytest.mark.skipif(len(usable_cores()) < 2, reason="needs 2 usable CPU cores")


def test_one_worker_runs_the_jobs_in_order_in_this_process(tmp_path):
    events = []
    jobs = [Job("a", record, (str(tmp_path), "a")), Job("b", record, (str(tmp_path), "b"), ("a",))]
    run_jobs(jobs, 1, lambda j: events.append(("start", j.name)),
             lambda j, s: events.append(("end", j.name)))  # fmt: skip
    assert events == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    assert _read(tmp_path, "a")["pid"] == os.getpid() == _read(tmp_path, "b")["pid"]


@two_cores
@pytest.mark.slow
def test_reproduce_stages_run_in_workers_and_read_back_here(tmp_path):
    """The teacher SFT and the oracle SFT of a --quick plan in two workers: the configs and
    the plan cross into the spawned processes (with reproduce's compilation-cache init), and
    the parent reads each finished stage back without training it again."""
    import functools

    from agrl.experiments.reproduce import _prepare_world, _seed_jobs, use_compile_cache
    from agrl.experiments.setup import build_plan

    plan = build_plan(quick=True, out=tmp_path, workers=2)
    jobs = _seed_jobs(plan, 0, _prepare_world(plan))[:2]
    assert [j.name for j in jobs] == ["seed0/sft", "seed0/oracle"]
    cache = functools.partial(use_compile_cache, tmp_path / "jax_cache")
    run_jobs(jobs, 2, lambda j: None, lambda j, s: None, init=cache)
    for job in jobs:
        model = tmp_path / job.name / "model" / "config.json"
        stamp = model.stat().st_mtime_ns
        out = job.fn(*job.args)
        assert out["b_eval"]["n"] == out["w_eval"]["n"] == plan.cfg.train.eval_size
        assert model.stat().st_mtime_ns == stamp


def test_a_job_listed_before_its_dependency_is_refused(tmp_path):
    jobs = [Job("b", record, (str(tmp_path), "b"), ("a",)), Job("a", record, (str(tmp_path), "a"))]
    with pytest.raises(ValueError, match="job b: runs after"):
        run_jobs(jobs, 2, lambda j: None, lambda j, s: None)


@two_cores
def test_two_workers_run_independent_jobs_side_by_side_on_their_own_cores(tmp_path):
    d = str(tmp_path)
    finished = []
    jobs = [
        Job("a", record, (d, "a", 2.0)),
        Job("b", record, (d, "b", 2.0)),
        Job("c", record, (d, "c"), ("a",)),
        Job("d", record, (d, "d"), ("c",), inline=True),
    ]
    run_jobs(jobs, 2, lambda j: None, lambda j, s: finished.append(j.name))
    a, b, c, inline = (_read(tmp_path, n) for n in "abcd")
    assert sorted(finished) == ["a", "b", "c", "d"] and finished[-1] == "d"
    # a and b overlap in time, in two processes pinned to disjoint single cores
    assert a["start"] < b["end"] and b["start"] < a["end"]
    assert len({a["pid"], b["pid"], c["pid"], os.getpid()}) == 4
    cores = core_sets(usable_cores(), 2)
    assert {tuple(a["cores"]), tuple(b["cores"])} == set(cores)
    for info in (a, b, c):
        single = len(info["cores"]) == 1
        assert (SINGLE_CORE_XLA_FLAGS in info["xla_flags"]) == single
    # c waits for a; the inline job runs here after c
    assert c["start"] >= a["end"] and inline["pid"] == os.getpid() and inline["start"] >= c["end"]


@two_cores
def test_a_failing_job_stops_the_others_and_reports_its_message(tmp_path):
    d = str(tmp_path)
    jobs = [
        Job("slow", record, (d, "slow", 60.0)),
        Job("bad", fail, ("sft.lr=-1: must be > 0",)),
        Job("never", record, (d, "never"), ("bad",)),
    ]
    t = time.perf_counter()
    with pytest.raises(RunError, match=r"stage bad failed:\nRunError: sft.lr=-1: must be > 0"):
        run_jobs(jobs, 2, lambda j: None, lambda j, s: None)
    assert time.perf_counter() - t < 50  # the slow job was terminated, not waited for
    assert not (tmp_path / "slow.json").exists() and not (tmp_path / "never.json").exists()


@two_cores
def test_an_unexpected_error_in_a_job_comes_back_with_its_traceback(tmp_path):
    with pytest.raises(RunError, match=r"(?s)stage boom failed:\nTraceback.*KeyError: 'missing'"):
        run_jobs([Job("boom", crash)], 2, lambda j: None, lambda j, s: None)


def pid_then_sleep(path: str, seconds: float) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


@two_cores
@pytest.mark.skipif(not Path("/proc").exists(), reason="Linux only")
def test_a_killed_parent_takes_its_running_stages_with_it(tmp_path):
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    marker = tmp_path / "pid"
    code = (
        "from agrl.experiments.schedule import Job, run_jobs\n"
        "from tests.experiments.test_schedule import pid_then_sleep\n"
        f"run_jobs([Job('slow', pid_then_sleep, ({str(marker)!r}, 120.0))], 2,\n"
        "         lambda j: None, lambda j, s: None)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.time() + 60
    while not (marker.exists() and marker.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    child = int(marker.read_text())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child)
