"""Test set-up: eight fake CPU devices, set before jax is imported anywhere.

A persistent compilation cache in a per-run temporary directory (shared by the pytest-xdist
workers of `make test`) lets the many short training runs of the suite (each builds fresh
jitted closures of the same programs) reuse compiled executables instead of recompiling them.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `make test` runs the suite in pytest-xdist worker processes: they share one cache, named
# by the run's id (PYTEST_XDIST_TESTRUNUID is set in each worker before this file is read)
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN_ID:
    _CACHE = os.path.join(tempfile.gettempdir(), f"agrl-jax-cache-{_RUN_ID}")
else:
    _CACHE = tempfile.mkdtemp(prefix="agrl-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import fcntl  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def user_env() -> dict[str, str]:
    """The environment of a user's shell: one CPU device (no fake devices), Agg plots."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """One `agrl reproduce --quick`, run as a user types it, shared by the reproduce smoke
    test and the notebook tests (it is the slowest thing the suite does)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the pytest-xdist workers of this run (`make test`)
    out = root / "reproduce_quick"
    with open(root / "reproduce_quick.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker runs it, the others wait for it
        if not (out / "results.json").exists():
            shutil.rmtree(out, ignore_errors=True)  # a failed run of another worker
            _run_quick(out)
    return out


def _run_quick(out: Path) -> None:
    cmd = [sys.executable, "-m", "agrl.cli", "reproduce", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=user_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "results.json").exists()
