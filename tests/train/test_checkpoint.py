"""agrl.train.checkpoint: bit-exact round trips, retention, kill safety, clear errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agrl.train.checkpoint import (
    COMMIT_FILE,
    CheckpointError,
    CheckpointManager,
    manifest_differences,
    tree_manifest,
)


def _run_state(seed: int = 0, width: int = 8):
    """A miniature run state: params, adamw state after one update, key data, replay table."""
    k = jax.random.key(seed)
    params = {
        "embed": jax.random.normal(k, (16, width), jnp.float32),
        "layer": {"w": jnp.arange(width * 3, dtype=jnp.float32).reshape(width, 3) / 7.0},
    }
    opt = optax.adamw(1e-3, weight_decay=0.1)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.sin(p) * 1e-2, params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {
        "params": params,
        "opt": opt_state,
        "keys": {"sample": jax.random.key_data(jax.random.fold_in(k, 3))},
        "replay": {"ema": np.linspace(0, 1, 5, dtype=np.float32), "level": np.arange(5)},
    }


def _assert_bit_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_is_bit_exact(tmp_path):
    state = _run_state()
    rng = np.random.default_rng(1234)
    rng.normal(size=7)  # advance, so the saved state is not the seed's initial one
    host = {"step": 5, "cursor": 40, "rng": rng.bit_generator.state, "history": [{"r": 0.5}]}
    mgr = CheckpointManager(tmp_path / "ck", keep=2)
    mgr.save(5, state, host)
    expected_draws = rng.normal(size=11)

    arrays, host2 = CheckpointManager(tmp_path / "ck").restore(target=_run_state(seed=9))
    _assert_bit_equal(arrays, state)
    assert isinstance(arrays["opt"][0], optax.ScaleByAdamState)  # target structure kept
    assert isinstance(arrays["replay"]["level"], np.ndarray)
    assert host2["step"] == 5 and host2["cursor"] == 40 and host2["history"] == [{"r": 0.5}]
    restored = np.random.default_rng()
    restored.bit_generator.state = host2["rng"]
    np.testing.assert_array_equal(restored.normal(size=11), expected_draws)
    # the restored key data drives the same random stream
    key = jax.random.wrap_key_data(arrays["keys"]["sample"])
    ref = jax.random.wrap_key_data(state["keys"]["sample"])
    np.testing.assert_array_equal(jax.random.uniform(key, (4,)), jax.random.uniform(ref, (4,)))


def test_retention_keeps_newest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    assert mgr.latest_step() is None
    state = {"x": np.zeros(3, np.float32)}
    for step in (1, 2, 3, 4):
        mgr.save(step, {"x": state["x"] + step}, {"step": step})
    assert mgr.all_steps() == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]
    arrays, host = mgr.restore(3, target=state)
    assert host == {"step": 3} and arrays["x"].tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(CheckpointError, match="step 1"):
        mgr.restore(1, target=state)
    with pytest.raises(CheckpointError, match="already has a complete checkpoint"):
        mgr.save(4, state, {})


def test_sharded_save_and_restore(tmp_path):
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    spec = jax.sharding.PartitionSpec("data", "model")
    sharding = jax.sharding.NamedSharding(mesh, spec)
    x = jax.device_put(jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6), sharding)
    assert len(x.addressable_shards) == 8
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"w": x}, {})
    target = {"w": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)}
    arrays, _ = mgr.restore(target=target)
    assert arrays["w"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(arrays["w"]), np.asarray(x))


def test_uncommitted_dirs_are_ignored_and_replaced(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=3)
    state = {"x": np.ones(4, np.float32)}
    mgr.save(1, state, {"step": 1})
    # what a killed save can leave: an orbax tmp dir and a step dir without our marker
    (tmp_path / "2.orbax-checkpoint-tmp-123").mkdir()
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "junk").write_text("partial")
    assert mgr.latest_step() == 1
    assert mgr.restore(target=state)[1] == {"step": 1}
    mgr.save(2, {"x": state["x"] * 2}, {"step": 2})
    assert mgr.all_steps() == [1, 2]
    assert not (tmp_path / "2" / "junk").exists()
    assert mgr.restore(target=state)[0]["x"].tolist() == [2.0] * 4


def test_mismatched_target_names_path_and_shapes(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, _run_state(width=8), {})
    with pytest.raises(CheckpointError) as info:
        mgr.restore(target=_run_state(width=16))  # "another model size"
    msg = str(info.value)
    assert "['params']['embed']: shape expected (16, 16), found (16, 8)" in msg
    assert "[0].mu['layer']['w']" in msg  # optimizer moments are named too
    other = {"params": _run_state()["params"]}
    with pytest.raises(CheckpointError, match=r"\['replay'\]\['ema'\]: in the checkpoint"):
        mgr.restore(target=other)
    wrong_dtype = _run_state()
    wrong_dtype["replay"]["ema"] = wrong_dtype["replay"]["ema"].astype(np.float64)
    with pytest.raises(CheckpointError, match="dtype expected float64, found float32"):
        mgr.restore(target=wrong_dtype)


def test_corrupt_checkpoint_is_reported(tmp_path):
    mgr = CheckpointManager(tmp_path)
    state = _run_state()
    mgr.save(1, state, {})
    mgr.save(2, state, {})
    data_files = sorted((tmp_path / "1").rglob("ocdbt.process_0/d/*"))
    assert data_files
    victim = data_files[0]
    victim.write_bytes(victim.read_bytes()[:10])  # truncate
    with pytest.raises(CheckpointError, match=r"step 1 .* is corrupt: .*bytes, expected"):
        mgr.restore(1, target=state)
    (tmp_path / "2" / "host" / "metadata").unlink()  # delete
    with pytest.raises(CheckpointError, match=r"host/metadata: missing"):
        mgr.restore(2, target=state)
    (tmp_path / "2" / COMMIT_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        mgr.restore(2, target=state)


def test_bad_inputs_are_refused(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointError, match="typed PRNG key"):
        mgr.save(1, {"k": jax.random.key(0)}, {})
    with pytest.raises(CheckpointError, match=r"leaf \['lr'\] is a float"):
        mgr.save(1, {"lr": 0.1}, {})
    with pytest.raises(CheckpointError, match="not JSON"):
        mgr.save(1, {"x": np.zeros(2)}, {"obj": object()})
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        mgr.restore()
    with pytest.raises(ValueError, match="keep=0"):
        CheckpointManager(tmp_path, keep=0)


def test_manifest_helpers():
    a = tree_manifest({"a": np.zeros((2, 3), np.float32), "b": [np.zeros(1, np.int32)]})
    assert a == {
        "['a']": {"shape": [2, 3], "dtype": "float32"},
        "['b'][0]": {"shape": [1], "dtype": "int32"},
    }
    assert manifest_differences(a, a) == []
    b = dict(a, **{"['a']": {"shape": [2, 4], "dtype": "float32"}})
    assert manifest_differences(a, b) == ["['a']: shape expected (2, 4), found (2, 3)"]


_WRITER = textwrap.dedent(
    """
    import os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    from agrl.train.checkpoint import CheckpointManager
    mgr = CheckpointManager(sys.argv[1], keep=2)
    step = (mgr.latest_step() or 0) + 1
    while True:  # every leaf of step s holds the value s, so a torn state is detectable
        arrays = {"a": np.full((1 << 20,), step, np.float32),
                  "b": {"c": np.full((512, 1024), step, np.int32)}}
        mgr.save(step, arrays, {"step": step, "pad": "x" * 1000})
        step += 1
    """
)


@pytest.mark.slow
def test_sigkill_during_save_leaves_last_complete_step(tmp_path):
    """Kill the writer at staggered moments; each time the latest step restores whole."""
    target = {"a": np.zeros((1 << 20,), np.float32), "b": {"c": np.zeros((512, 1024), np.int32)}}
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    ck = tmp_path / "ck"
    last = 0
    for round_, delay in enumerate((0.0, 0.013, 0.037, 0.059, 0.081)):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(ck)], env=env)
        deadline = time.time() + 120
        mgr = CheckpointManager(ck, keep=2)
        while (mgr.latest_step() or 0) < last + 2:  # at least two new commits this round
            assert proc.poll() is None and time.time() < deadline, "writer died or stalled"
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mgr = CheckpointManager(ck, keep=2)
        step = mgr.latest_step()
        assert step is not None and step >= last + 2, (round_, step)
        arrays, host = mgr.restore(target=target)
        assert host["step"] == step
        assert np.all(arrays["a"] == step) and np.all(arrays["b"]["c"] == step)
        assert len(mgr.all_steps()) <= 3  # keep=2, plus at most one not yet pruned
        last = step
    marker = json.loads((ck / str(last) / COMMIT_FILE).read_text())
    assert marker["step"] == last


def test_write_probe_is_safe_when_processes_probe_one_directory_at_once(tmp_path):
    """The processes of a multi-process run check the same run directory at the same time
    (a shared probe name once let one unlink the other's probe: `No such file or
    directory`); 8 threads x 200 probes of one directory must all pass and leave nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from agrl.train.loop import check_writable

    out = tmp_path / "run"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: check_writable(out), range(1600)))
    assert list(out.iterdir()) == []
