"""Test set-up: eight fake CPU devices, set before jax is imported anywhere.

A persistent compilation cache in a per-session temporary directory lets the many short
training runs of the suite (each builds fresh jitted closures of the same programs) reuse
compiled executables instead of recompiling them.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="agrl-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


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
    out = tmp_path_factory.mktemp("reproduce_quick")
    cmd = [sys.executable, "-m", "agrl.cli", "reproduce", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=user_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "results.json").exists()
    return out
