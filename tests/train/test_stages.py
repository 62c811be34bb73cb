"""End-to-end training runs on a tiny world: SFT -> DPO -> RL, metrics, resume equality."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from agrl.cli import main
from agrl.config import load_config, method_preset
from agrl.model import load_pretrained
from agrl.rl.guidance import from_state_dict
from agrl.train.loop import RunError
from agrl.train.metrics_log import read_metrics
from agrl.train.stages import run_dpo, run_rl, run_sft
from agrl.world.config import WorldConfig
from agrl.world.splits import write_world

pytestmark = pytest.mark.slow

TINY = [
    "model.vocab_size=384", "model.hidden_size=32", "model.intermediate_size=64",
    "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
    "sampling.max_new_tokens=40", "sampling.prompt_buckets=16,32", "sampling.group_size=4",
    "train.eval_size=8", "train.eval_every=100", "train.ckpt_every=2",
    "mesh.data=1",  # one device here; tests/test_distributed.py covers the meshes
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_sft=96, n_rl=48, n_b_eval=16, n_w_eval=16), d)
    return d


@pytest.fixture(scope="module")
def sft_model(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    run = [f"paths.world={world}", f"paths.out={out}", "sft.steps=4", "sft.lr=1e-2"]
    curve = ["sft.eval_every=2", "train.eval_curve_size=4", "sft.ckpt_every=3"]
    cfg = load_config(None, TINY + run + curve)
    summary = run_sft(cfg)
    return summary


def test_sft_learning_curve(sft_model):
    """sft.eval_every=2 over 4 steps: points at steps 0 and 2 on the first
    train.eval_curve_size=4 records, and the end (step 4) on those same 4 records, while the
    final evaluation (eval.json) covers train.eval_size=8."""
    out = Path(sft_model["out"])
    rows = json.loads((out / "evals.json").read_text())
    assert [r["step"] for r in rows] == [0, 2, 4] == [r["step"] for r in sft_model["evals"]]
    assert json.loads((out / "eval.json").read_text())["n"] == 8
    logged = {r["step"]: r for r in read_metrics(out)}
    assert "eval/macro_f1" in logged[0] and "eval/macro_f1" in logged[2]
    assert "eval/macro_f1" not in logged[1]
    assert all(0 <= r["macro_f1"] <= 1 for r in rows)
    # sft.ckpt_every=3 overrides train.ckpt_every=2: checkpoints at step 3 and the end
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [3, 4]


def _rl_cfg(world, init, out, method="agrl", extra=()):
    preset = [f"{k}={v}" for k, v in method_preset(method).items()]
    return load_config(
        None,
        preset
        + TINY
        + [
            f"paths.world={world}", f"paths.init={init}", f"paths.out={out}",
            f"train.method={method}", "train.steps=4", "train.prompts_per_step=4",
            "optim.lr=1e-3", "guidance.slots_per_batch=4", "guidance.tau=1.0",
        ]
        + list(extra),
    )  # fmt: skip


def test_sft_label_noise_trains_and_resumes_bit_for_bit(world, tmp_path):
    """sft.label_noise draws its swaps from (seed, step): a run stopped after 2 of 4 steps
    and resumed ends with the same weights as an uninterrupted one, and the noise changes
    the weights (a 0.9 swap rate over 4 x 32 rows)."""

    def cfg(out, noise):
        run = [f"paths.world={world}", f"paths.out={out}", "sft.steps=4", "sft.lr=1e-2",
               f"sft.label_noise={noise}", "train.eval_size=0"]  # fmt: skip
        return load_config(None, TINY + run)

    run_sft(cfg(tmp_path / "full", 0.9))
    assert not run_sft(cfg(tmp_path / "part", 0.9), stop_after=2)["complete"]
    run_sft(cfg(tmp_path / "part", 0.9), resume=True)
    run_sft(cfg(tmp_path / "clean", 0.0))
    a, _ = load_pretrained(tmp_path / "full" / "model")
    b, _ = load_pretrained(tmp_path / "part" / "model")
    c, _ = load_pretrained(tmp_path / "clean" / "model")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    diff = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, c)
    assert max(jax.tree.leaves(diff)) > 0


def test_sft_verdict_loss_trains_on_the_target_verdicts(world, sft_model, tmp_path):
    """sft.verdict_weight=1: the auxiliary loss is logged (verdict_nll, down from about
    log C at the start), the model it writes has the plain parameter tree (the readout is
    fixed, nothing is added), and a run stopped after 2 of 4 steps and resumed ends with
    the same weights as an uninterrupted one."""
    from agrl.task.rules import WORLD

    def cfg(out):
        run = [f"paths.world={world}", f"paths.out={out}", "sft.steps=4", "sft.lr=1e-2",
               "sft.verdict_weight=1.0", "train.eval_size=0"]  # fmt: skip
        return load_config(None, TINY + run)

    run_sft(cfg(tmp_path / "full"))
    assert not run_sft(cfg(tmp_path / "part"), stop_after=2)["complete"]
    run_sft(cfg(tmp_path / "part"), resume=True)
    a, _ = load_pretrained(tmp_path / "full" / "model")
    b, _ = load_pretrained(tmp_path / "part" / "model")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    plain, _ = load_pretrained(sft_model["model"])  # trained without the auxiliary loss
    assert jax.tree.structure(a) == jax.tree.structure(plain)
    assert jax.tree.map(np.shape, a) == jax.tree.map(np.shape, plain)
    rows = read_metrics(tmp_path / "full")
    nll = [r["verdict_nll"] for r in rows]
    assert nll[0] == pytest.approx(math.log(len(WORLD.code_names)), rel=0.3)
    assert nll[-1] < nll[0]


def test_sft_verdict_targets_come_from_the_trained_text():
    """The targets are the verdicts the response being trained on states (a teacher's, not
    the world's gold), -1 where it states none; a label-only book is a config error."""
    from agrl.config import ConfigError
    from agrl.task.rules import WORLD, load_rule_book
    from agrl.train.stages import _verdict_targets

    gold = "2 </label> <think> q | i | category=match brand=mismatch negation=n/a need=n/a " \
        "audience=n/a attributes=n/a | rule=brand -> 2 </think>"  # fmt: skip
    teacher = gold.replace("brand=mismatch", "brand=match")
    cfg = load_config(None, ["sft.verdict_weight=1.0"])
    v = _verdict_targets(cfg, WORLD, [gold, teacher, "3 </label>"])
    b = WORLD.dim_index("brand")
    assert v[0, b] == WORLD.code_of("mismatch") and v[1, b] == WORLD.code_of("match")
    assert (v[2] == -1).all() and (v[:2] >= 0).all()
    with pytest.raises(RunError, match="no target response states any verdict"):
        _verdict_targets(cfg, WORLD, ["3 </label>"])
    with pytest.raises(ConfigError, match="needs verdict dimensions"):
        _verdict_targets(cfg, load_rule_book("label_only"), ["3 </label>"])


def test_sft_writes_a_loadable_model_and_real_metrics(sft_model):
    params, cfg = load_pretrained(sft_model["model"])
    assert cfg.hidden_size == 32 and cfg.vocab_size == 384
    ev = sft_model["eval"]
    assert 0.0 <= ev["accuracy"] <= 1.0 and ev["n"] == 8
    rows = read_metrics(sft_model["out"])
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_two_rl_steps_end_to_end(world, sft_model, tmp_path):
    cfg = _rl_cfg(world, sft_model["model"], tmp_path, extra=["train.steps=2"])
    summary = run_rl(cfg)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"])
        assert -1.0 <= r["reward"] <= 1.5
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["zero_variance_frac"] <= 1.0
        assert r["agr_trigger_rate"] == 1.0  # tau = 1: every group triggers
        assert 0.0 < r["guided_frac"] <= 0.25  # 4 slots of 16 rollouts
        assert r["forced_tokens"] >= 4  # at least the gold label of each guided slot
        assert r["time_sample"] > 0 and r["sample_tokens_per_s"] > 0
        assert r["response_length"] > 0
    assert summary["complete"] and (tmp_path / "model" / "config.json").exists()
    assert json.loads((tmp_path / "evals.json").read_text())[-1]["step"] == 2


def _final_state(out):
    from agrl.train.checkpoint import CheckpointManager

    with CheckpointManager(out / "checkpoints") as ckpt:
        arrays, host = ckpt.restore()
    return arrays, host


def test_resumed_rl_run_equals_uninterrupted_run(world, sft_model, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_rl(_rl_cfg(world, sft_model["model"], full))
    first = run_rl(_rl_cfg(world, sft_model["model"], part), stop_after=2)
    assert not first["complete"]
    run_rl(_rl_cfg(world, sft_model["model"], part), resume=True)

    a, _ = load_pretrained(full / "model")
    b, _ = load_pretrained(part / "model")
    jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit
    (fa, ha), (fb, hb) = _final_state(full), _final_state(part)
    ra, rb = from_state_dict(fa["replay"]), from_state_dict(fb["replay"])
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_array_equal(x, y)
    assert ha["batches"] == hb["batches"]
    timing = lambda k: k.startswith("time_") or k.endswith("tokens_per_s")
    drop = lambda r: {k: v for k, v in r.items() if not timing(k)}
    assert [drop(r) for r in read_metrics(full)] == [drop(r) for r in read_metrics(part)]


def test_dpo_mines_pairs_and_trains(world, sft_model, tmp_path):
    cfg = load_config(
        None,
        TINY + [f"paths.world={world}", f"paths.init={sft_model['model']}",
                f"paths.out={tmp_path}", "dpo.steps=2", "dpo.mine_prompts=16",
                "dpo.pass_n=4", "dpo.batch_size=4"],
    )  # fmt: skip
    summary = run_dpo(cfg)
    stats = summary["mining"]
    assert stats["mined_prompts"] == 16 and stats["pairs"] >= 1
    assert stats["pairs"] + stats["all_right_prompts"] == 16
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-4)


def test_cli_train_reports_user_mistakes_without_traceback(world, tmp_path, capsys):
    rc = main(["train", "rl", "--world", str(world), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "paths.init is not set" in err and "Traceback" not in err
    rc = main(["train", "sft", "--world", str(world), "--out", str(tmp_path), "loss.mu=0"])
    assert rc == 2 and "loss.mu=0" in capsys.readouterr().err
    rc = main(
        ["train", "sft", "--world", str(world), "--out", str(tmp_path), "model.vocab_size=64"]
    )
    assert rc == 2 and "model.vocab_size=64 is smaller than" in capsys.readouterr().err
    with pytest.raises(RunError, match="not writable"):
        run_sft(load_config(None, [f"paths.world={world}", "paths.out=/proc/agrl-nope"]))


def test_run_stops_with_a_checkpoint_after_consecutive_nonfinite_steps(tmp_path):
    from agrl.train.loop import Run
    from agrl.train.metrics_log import MetricsLogger

    cfg = load_config(None, ["train.max_nonfinite=3"])
    run = Run(cfg, tmp_path, total_steps=10, ckpt_every=100, desc="test")
    saved = []
    skipped = iter([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])  # a recovery, then 3 in a row
    body = lambda step: {"loss": float("nan"), "skipped": next(skipped)}
    with pytest.raises(RunError, match="3 consecutive non-finite"):
        run.loop(0, None, body, saved.append, MetricsLogger(tmp_path))
    assert saved == [6]  # the state after the failing step is checkpointed
    rows = read_metrics(tmp_path)
    assert [r["nonfinite_streak"] for r in rows] == [0, 1, 0, 1, 2, 3]
    assert all(r["loss"] is None and r["nonfinite"] == ["loss"] for r in rows)


def test_a_new_run_refuses_a_directory_with_checkpoints(world, sft_model):
    cfg = load_config(
        None, TINY + [f"paths.world={world}", f"paths.out={sft_model['out']}", "sft.steps=9"]
    )
    saved = (Path(sft_model["out"]) / "config.json").read_text()
    with pytest.raises(RunError, match="already holds a run .* --resume"):
        run_sft(cfg)
    # the refused run leaves the owner's config alone (it still matches the checkpoints)
    assert (Path(sft_model["out"]) / "config.json").read_text() == saved


class _Killed(Exception):
    """Stands for a kill in the middle of a run."""


@pytest.mark.parametrize("kill_at", [3, 1], ids=["after a checkpoint", "before any checkpoint"])
def test_interrupted_and_resumed_run_logs_every_step_once(world, tmp_path, monkeypatch, kill_at):
    import agrl.train.stages as stages

    cfg = load_config(None, TINY + [
        f"paths.tokenizer={world / 'tokenizer'}", f"paths.train_data={world / 'sft.jsonl'}",
        f"paths.out={tmp_path}", "sft.steps=5",  # no eval split: no eval; shapes as sft_model
    ])  # fmt: skip
    make = stages.make_sft_step

    def make_killed(*args, **kw):
        step, calls = make(*args, **kw), []

        def killed(state, batch):
            calls.append(1)
            if len(calls) > kill_at:
                raise _Killed
            return step(state, batch)

        return killed

    monkeypatch.setattr(stages, "make_sft_step", make_killed)
    with pytest.raises(_Killed):  # checkpoints every 2 steps: the kill loses steps >= 2 or all
        run_sft(cfg)
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(kill_at))
    monkeypatch.setattr(stages, "make_sft_step", make)
    assert run_sft(cfg, resume=True)["complete"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4]


def test_hinted_prompts_are_checked_before_compiling(world, sft_model, tmp_path):
    """guidance.form=hint: plain prompts fit a 24-token bucket, prompts with the top-level
    hint (11 more words) do not; the start-up check names them, with file and line."""
    cfg = _rl_cfg(world, sft_model["model"], tmp_path, "agrl_hint",
                  extra=["sampling.prompt_buckets=16,24"])  # fmt: skip
    with pytest.raises(RunError, match=r"rl\.jsonl:\d+: .*prompt with its top-level guidance hint"):
        run_rl(cfg)
