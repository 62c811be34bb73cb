"""Scale-out on 8 fake CPU devices: sharded init/import, sampler and one RL iteration equal the
single-device run; two processes on 127.0.0.1 (gloo) equal one process (SPEC 9, issue 7)."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import multihost_worker as mw
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from agrl.config import MeshConfig
from agrl.model import init_params, load_pretrained
from agrl.model.params import init_sharded_params, model_param_shardings, place_params
from agrl.parallel.distributed import (
    DistributedSpec,
    host_local_rows,
    put_rows,
    resolve_spec,
    to_host,
)
from agrl.parallel.sharding import make_mesh, rows_sharding
from agrl.rl.guidance import init_replay
from agrl.sampling import make_sampler
from agrl.task.data import load_records
from agrl.task.tokenizer import eos_ids, load_tokenizer
from agrl.train.metrics_log import read_metrics
from agrl.train.pool import build_pool
from agrl.train.rollout import make_rl_context, rl_iteration
from agrl.train.steps import (
    init_sharded_train_state,
    init_train_state,
    make_optimizer,
    train_state_shardings,
)
from tests.tolerance import assert_adam_runs_agree, f32_tol

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
ROOT = Path(__file__).resolve().parents[2]


def _mesh(shape):
    return make_mesh(MeshConfig(*shape))


def _step_tols(cfg, m0: dict) -> tuple[float, float]:
    """f32 bounds on an RL step's loss and gradient norm computed in another order: the
    loss averages N*T token terms (advantage-weighted ratios of size ~1, whatever their
    mean), each from a forward of num_layers + 1 chained reductions; the gradient goes
    back through as many again."""
    tokens = cfg.train.prompts_per_step * cfg.sampling.group_size * cfg.sampling.max_new_tokens
    depth = cfg.model.num_layers + 1
    loss_tol = f32_tol(max(1.0, abs(m0["loss"])), tokens, depth)
    return loss_tol, f32_tol(max(1.0, m0["grad_norm"]), tokens, 2 * depth)


def _max_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(to_host(x) - to_host(y)))), a, b)
    return max(jax.tree.leaves(diffs))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """World, random tiny init model (HF directory), config, pool, tokenizer."""
    mw.register_lenient_reward()
    world, init = tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("init")
    mw.make_world(world)
    mw.make_init_model(init, world)
    params, model_cfg = load_pretrained(init)
    cfg = mw.rl_config(world, init, tmp_path_factory.mktemp("out"), (8, 1, 1))
    assert cfg.model == model_cfg
    tok = load_tokenizer(world / "tokenizer")
    pool = build_pool(load_records(world / "rl.jsonl"), tok, cfg.train.response_order)
    host = jax.tree.map(np.asarray, params)
    return {"world": world, "init": init, "cfg": cfg, "tok": tok, "pool": pool, "params": host}


# ---------------------------------------------------------------------------------------
# Start-up from flags or environment.


def test_resolve_spec_flags_then_environment():
    env = {"AGRL_COORDINATOR": "10.0.0.1:1234", "AGRL_NUM_PROCESSES": "4", "AGRL_PROCESS_ID": "3"}
    assert resolve_spec(env=env) == DistributedSpec("10.0.0.1:1234", 4, 3)
    assert resolve_spec("127.0.0.1:99", 2, 0, env=env) == DistributedSpec("127.0.0.1:99", 2, 0)
    assert resolve_spec(process_id=1, env=env) == DistributedSpec("10.0.0.1:1234", 4, 1)
    assert resolve_spec(env={}) is None
    assert resolve_spec(env={"TPU_WORKER_HOSTNAMES": "h0"}) is None  # one host: no init
    assert resolve_spec(env={"TPU_WORKER_HOSTNAMES": "h0,h1"}) == DistributedSpec(auto=True)
    assert resolve_spec(env={"AGRL_DISTRIBUTED": "auto"}) == DistributedSpec(auto=True)
    with pytest.raises(ValueError, match=r"missing \['process_id'\]"):
        resolve_spec("127.0.0.1:1", 2, env={})
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        resolve_spec("127.0.0.1:1", 2, 2, env={})
    with pytest.raises(ValueError, match="AGRL_NUM_PROCESSES='two'"):
        resolve_spec(env={"AGRL_COORDINATOR": "h:1", "AGRL_NUM_PROCESSES": "two"})


def test_cli_train_has_distributed_flags():
    from agrl.cli import build_parser

    args = build_parser().parse_args(
        ["train", "rl", "--coordinator", "127.0.0.1:5", "--num-processes", "2",
         "--process-id", "1"]
    )  # fmt: skip
    assert (args.coordinator, args.num_processes, args.process_id) == ("127.0.0.1:5", 2, 1)


# ---------------------------------------------------------------------------------------
# Parameters, state and batches on the mesh.


@pytest.mark.parametrize("shape", [(2, 2, 2)])  # fsdp and tensor both split (RL test: all)
def test_sharded_init_and_import_follow_the_table(setup, shape):
    cfg, mesh = setup["cfg"].model, _mesh(shape)
    table = model_param_shardings(cfg, mesh)
    key = jax.random.key(3)
    sharded = init_sharded_params(cfg, key, mesh)
    assert _max_diff(sharded, jax.jit(lambda k: init_params(cfg, k))(key)) <= 1e-7
    placed = place_params(setup["params"], cfg, mesh)
    assert _max_diff(placed, setup["params"]) == 0.0
    for tree in (sharded, placed):
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(table), strict=True):
            assert x.sharding == s
    # ZeRO: Adam's moments are split like their weights; per-device bytes shrink accordingly.
    opt = make_optimizer(setup["cfg"].optim, 2)
    state = init_sharded_train_state(placed, cfg, opt, mesh)
    want = train_state_shardings(cfg, opt, mesh)
    got = jax.tree.map(lambda x: x.sharding, state)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
    split = shape[1] * shape[2]
    total = sum(x.nbytes for x in jax.tree.leaves(state.params))
    per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state.params))
    assert per_device <= total / split * 1.02  # only the norms are replicated


def test_rows_follow_the_data_parallel_axes():
    mesh = _mesh((2, 2, 2))
    x = np.arange(8 * 3).reshape(8, 3)
    g = put_rows(x, mesh)
    assert g.sharding.spec == rows_sharding(mesh, x.shape).spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in g.addressable_shards} == {(2, 3)}  # 8 rows over data*fsdp=4
    np.testing.assert_array_equal(to_host(g), x)
    assert host_local_rows(g.sharding, 8) == slice(0, 8)  # one process holds every row
    odd = put_rows(np.arange(6), mesh)  # 4 does not divide 6: replicated, not an error
    assert odd.sharding.is_fully_replicated


# ---------------------------------------------------------------------------------------
# The sampler under the mesh.


@pytest.mark.parametrize("shape", [(2, 2, 2)])
def test_sharded_sampler_same_tokens_and_kv_cache_split(setup, shape):
    cfg, scfg = setup["cfg"].model, setup["cfg"].sampling
    mesh = _mesh(shape)
    params = setup["params"]
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 380, (4, 16)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[1, :5] = False
    key = jax.random.key(11)
    ref = make_sampler(cfg, scfg, eos_ids=(1,))(params, ids, mask, key)
    sampler = make_sampler(cfg, scfg, eos_ids=(1,), mesh=mesh)
    out = sampler(place_params(params, cfg, mesh), ids, mask, key)
    np.testing.assert_array_equal(to_host(out.tokens), np.asarray(ref.tokens))
    # per-token logps: reductions over the MLP width at each layer and the head
    tol = f32_tol(np.abs(np.asarray(ref.logps)).max(), cfg.intermediate_size, cfg.num_layers + 1)
    assert np.abs(to_host(out.logps) - np.asarray(ref.logps)).max() <= tol
    assert out.tokens.sharding.spec[0] == ("data", "fsdp")
    # The decode loop carries per-device caches of the generated tokens
    # [N/(data*fsdp), K/tensor, T, Hd] (the prompt's keys/values are kept once per prompt).
    N, K, T, Hd = 4 * scfg.group_size, cfg.num_kv_heads, scfg.max_new_tokens, cfg.head_dim
    dp, tp = shape[0] * shape[1], shape[2]
    hlo = sampler.lower(params, ids, mask, key).compile().as_text()
    assert re.search(rf"f32\[{N // dp},{K // tp},{T},{Hd}\]", hlo)
    assert not re.search(rf"f32\[{N},{K},{T},{Hd}\]", hlo)


# ---------------------------------------------------------------------------------------
# One RL iteration: sharded == single device.


def _iteration(setup, mesh):
    cfg, pool, tok = setup["cfg"], setup["pool"], setup["tok"]
    opt = make_optimizer(cfg.optim, cfg.train.steps)
    ctx = make_rl_context(cfg, pool, tok, opt, eos_ids(tok), mesh=mesh)
    host = setup["params"]
    if mesh is None:
        state, ref = init_train_state(jax.tree.map(jax.numpy.asarray, host), opt), host
    else:
        ref = place_params(host, cfg.model, mesh)
        state = init_sharded_train_state(place_params(host, cfg.model, mesh), cfg.model, opt, mesh)
    idx = np.arange(cfg.train.prompts_per_step) * 3
    key = jax.random.key(5)
    state, _, metrics, rollout = rl_iteration(ctx, state, ref, init_replay(len(pool)), idx, key, 0)
    return state, metrics, rollout


@pytest.fixture(scope="module")
def single_device(setup):
    return _iteration(setup, None)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES)
def test_rl_iteration_sharded_equals_single_device(setup, single_device, shape):
    state0, m0, r0 = single_device
    assert r0.guided.any() and abs(m0["loss"]) > 1e-5 and m0["kl"] > 0  # not a no-op
    assert _max_diff(state0.params, setup["params"]) > 1e-4  # two Adam steps of lr 1e-4
    mesh = _mesh(shape)
    state, m, r = _iteration(setup, mesh)
    np.testing.assert_array_equal(r.tokens, r0.tokens)  # same samples for the same key
    np.testing.assert_array_equal(r.guided, r0.guided)
    cfg = setup["cfg"]
    loss_tol, norm_tol = _step_tols(cfg, m0)
    assert abs(m["loss"] - m0["loss"]) <= loss_tol
    assert abs(m["grad_norm"] - m0["grad_norm"]) <= norm_tol
    assert_adam_runs_agree(state.params, state0.params, cfg.optim.lr, cfg.loss.mu)
    # The donated state keeps the table's shardings through the update.
    table = model_param_shardings(setup["cfg"].model, mesh)
    for x, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(table), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)


SUPERVISED_STAGES = ("sft", "dpo")


def _run_stage(stage: str):
    from agrl.train.stages import run_dpo, run_sft

    return {"sft": run_sft, "dpo": run_dpo}[stage]


@pytest.fixture(scope="module")
def supervised_one(setup, tmp_path_factory):
    """Two SFT steps and two DPO steps on one device: the run directories by stage."""
    dirs = {}
    for stage in SUPERVISED_STAGES:
        dirs[stage] = tmp_path_factory.mktemp(f"{stage}_one")
        cfg = mw.supervised_config(setup["world"], setup["init"], dirs[stage], (1, 1, 1))
        assert _run_stage(stage)(cfg)["complete"]
    return dirs


def _assert_supervised_runs_agree(stage: str, got: Path, want: Path, setup) -> None:
    """Same pairs (DPO), per-step loss and gradient norm within f32 rounding, parameters
    within the rounding of two Adam steps."""
    if stage == "dpo":  # the same pairs, whoever mined them
        with np.load(got / "pairs.npz") as a, np.load(want / "pairs.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    rows_g, rows_w = read_metrics(got), read_metrics(want)
    assert [r["step"] for r in rows_g] == [r["step"] for r in rows_w] == [0, 1]
    cfg = mw.supervised_config(setup["world"], setup["init"], want, (1, 1, 1))
    rows = cfg.sft.batch_size if stage == "sft" else 4 * cfg.dpo.batch_size  # policy + ref, x2
    tokens, depth = rows * cfg.sampling.max_new_tokens, cfg.model.num_layers + 1
    for a, b in zip(rows_g, rows_w, strict=True):
        assert abs(a["loss"] - b["loss"]) <= f32_tol(max(1.0, abs(b["loss"])), tokens, depth)
        norm_tol = f32_tol(max(1.0, b["grad_norm"]), tokens, 2 * depth)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= norm_tol
    pg, pw = load_pretrained(got / "model")[0], load_pretrained(want / "model")[0]
    assert _max_diff(pw, setup["params"]) > 1e-5  # the two steps moved the weights
    assert_adam_runs_agree(pg, pw, 1e-4, 2)


@pytest.mark.slow
@pytest.mark.parametrize("stage", SUPERVISED_STAGES)
def test_supervised_stage_sharded_equals_single_device(setup, supervised_one, tmp_path, stage):
    """Two SFT / DPO steps on a (2, 2, 2) mesh, interrupted after the first and resumed from
    its sharded checkpoint, equal an uninterrupted run on one device."""
    cfg = mw.supervised_config(setup["world"], setup["init"], tmp_path, (2, 2, 2))
    assert not _run_stage(stage)(cfg, stop_after=1)["complete"]
    assert _run_stage(stage)(cfg, resume=True)["complete"]
    _assert_supervised_runs_agree(stage, tmp_path, supervised_one[stage], setup)


# ---------------------------------------------------------------------------------------
# Two processes on loopback == one process.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(setup, supervised_one, tmp_path):
    shape = (2, 4, 1)
    multi, single = tmp_path / "multi", tmp_path / "single"
    port = _free_port()
    env = dict(os.environ, AGRL_COORDINATOR=f"127.0.0.1:{port}", AGRL_NUM_PROCESSES="2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    args = [str(setup["world"]), str(setup["init"]), str(multi), *map(str, shape)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "multihost_worker.py"), *args],
            env=dict(env, AGRL_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=420)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            got = outs + [q.communicate()[0] for q in procs[len(outs) :]]
            tails = [f"process {i}:\n{out[-4000:]}" for i, out in enumerate(got)]
            pytest.fail("the two processes did not finish in 420 s\n" + "\n".join(tails))
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out[-8000:]}"
        assert f"process {i} done" in out

    # The same run in this one process (8 devices, same mesh), uninterrupted.
    from agrl.train.stages import run_rl

    run_rl(mw.rl_config(setup["world"], setup["init"], single, shape))
    rows_m, rows_s = read_metrics(multi), read_metrics(single)
    assert [r["step"] for r in rows_m] == [r["step"] for r in rows_s] == [0, 1]
    for a, b in zip(rows_m, rows_s, strict=True):
        cfg = mw.rl_config(setup["world"], setup["init"], single, shape)
        loss_tol, _ = _step_tols(cfg, b)
        n_rollouts = cfg.train.prompts_per_step * cfg.sampling.group_size
        assert abs(a["loss"] - b["loss"]) <= loss_tol
        assert abs(a["reward"] - b["reward"]) <= f32_tol(max(1.0, abs(b["reward"])), n_rollouts)
    assert any(abs(r["loss"]) > 1e-4 for r in rows_s)
    pm, _ = load_pretrained(multi / "model")  # written by process 0 from all shards
    ps, _ = load_pretrained(single / "model")
    assert_adam_runs_agree(pm, ps, cfg.optim.lr, 2 * cfg.loss.mu)  # two steps of mu updates
    # Both steps were checkpointed by both processes' shards and committed once.
    marker = json.loads((multi / "checkpoints" / "2" / "agrl_commit.json").read_text())
    assert marker["step"] == 2
    # SFT and DPO on the same two-process mesh equal their one-device runs.
    for stage in SUPERVISED_STAGES:
        _assert_supervised_runs_agree(stage, Path(f"{multi}_{stage}"), supervised_one[stage], setup)
