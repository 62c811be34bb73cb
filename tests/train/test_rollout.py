"""The RL iteration: which prompts form a batch (BatchSampler), scoring and guidance
(score_and_guide against the numpy reference), and one rl_iteration of a tiny model."""

import dataclasses
import json
import logging

import jax
import numpy as np
import pytest

from agrl.config import Config, GuidanceConfig
from agrl.rl.guidance import init_replay, is_solved, is_triggered, update_replay
from agrl.rl.score import make_scorer
from agrl.rl.types import Gold, Parsed
from agrl.task.rules import R, rule_label
from agrl.train.rollout import BatchSampler
from tests import reference as ref


def _config(group_size: int) -> Config:
    cfg = Config()
    return dataclasses.replace(
        cfg, sampling=dataclasses.replace(cfg.sampling, group_size=group_size)
    )


def test_batches_are_distinct_and_cover_the_pool_every_epoch():
    bs = BatchSampler(10, seed=3)
    seen = []
    for _ in range(5):  # 5 x 4 = 20 draws = two passes over 10 prompts
        idx, n_rep = bs.next(4, None, 0.0, 0.0)
        assert n_rep == 0 and len(set(idx.tolist())) == 4
        seen += idx.tolist()
    assert sorted(seen[:10]) == list(range(10))  # the first pass is a permutation
    assert (bs.epoch, bs.cursor) == (1, 10)  # the second pass was reshuffled and consumed


def test_state_dict_round_trip_continues_identically():
    a = BatchSampler(50, seed=0)
    for _ in range(3):
        a.next(8, None, 0.0, 0.0)
    state = json.loads(json.dumps(a.state_dict()))  # what the checkpoint stores
    b = BatchSampler(50, seed=123)
    b.load_state_dict(state)
    for _ in range(10):
        np.testing.assert_array_equal(a.next(8, None, 0.0, 0.0)[0], b.next(8, None, 0.0, 0.0)[0])


def test_unsolved_hard_prompts_are_replayed_first():
    cfg = GuidanceConfig(tau=0.25)
    table = init_replay(20)
    # prompts 3 and 7 failed (acc 0), prompt 5 was solved (acc 1)
    table = update_replay(table, np.array([3, 5, 7]), np.array([0.0, 1.0, 0.0]),
                          np.array([True, False, True]), step=0, cfg=cfg)  # fmt: skip
    bs = BatchSampler(20, seed=1)
    idx, n_rep = bs.next(6, table, p_replay=1.0, tau=cfg.tau)
    assert n_rep == 2 and sorted(idx[:2].tolist()) == [3, 7]
    assert len(set(idx.tolist())) == 6 and 5 not in idx[:2]
    idx, n_rep = bs.next(6, table, p_replay=0.0, tau=cfg.tau)
    assert n_rep == 0


# ---------------------------------------------------------------------------------------
# score_and_guide: rewards -> group stats -> advantages -> AGR slots -> forced prefixes.


def _scoring_case(seed: int, B: int = 4, G: int = 4, Lg: int = 6):
    """Random parsed completions and gold over B groups from hopeless to easy."""
    rng = np.random.default_rng(seed)
    gold_verdicts = rng.integers(0, 5, (B, R)).astype(np.int32)
    gold_label = rule_label(gold_verdicts).astype(np.int32)
    copy = rng.random((B * G, R)) < np.repeat(np.linspace(0.0, 1.0, B), G)[:, None]
    pred_verdicts = np.where(copy, np.repeat(gold_verdicts, G, 0), rng.integers(-1, 5, (B * G, R)))
    pred_label = np.where(
        rng.random(B * G) < 0.7, rule_label(pred_verdicts), rng.integers(0, 5, B * G)
    )
    parsed = Parsed(
        pred_label.astype(np.int32), pred_verdicts.astype(np.int32), rng.random(B * G) < 0.9
    )
    gold_len = rng.integers(1, Lg + 1, B).astype(np.int32)
    gold_ids = np.where(np.arange(Lg) < gold_len[:, None], rng.integers(3, 99, (B, Lg)), 0)
    gold = Gold(
        gold_label, gold_verdicts, rng.random(B) < 0.75, gold_ids.astype(np.int32), gold_len
    )
    return parsed, gold, rng.integers(0, 4, B).astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("slots", [0, 3, 16])
def test_score_and_guide_matches_the_numpy_reference(seed, slots):
    B, cfg = 4, _config(group_size=4)
    parsed, gold, levels = _scoring_case(seed, B, 4)
    out = jax.device_get(make_scorer(cfg, pad_id=0)(parsed, gold, levels, slots=slots))
    # the reference, step by step (tests/reference.py, written without jax)
    rep = lambda x: np.repeat(x, 4, axis=0)
    reward, comps = ref.rewards(*parsed, rep(gold.label), rep(gold.verdicts),
                                rep(gold.has_verdicts), cfg.reward)  # fmt: skip
    acc = comps[:, 0].reshape(B, 4).mean(-1)
    a = cfg.advantage
    adv = ref.advantages(reward.reshape(B, 4), a.estimator, a.ddof, a.eps, a.clip)
    guided = ref.guided_slots(acc, reward.reshape(B, 4), cfg.guidance.tau, 4, slots)
    forced_ids, forced_len = ref.forced_prefixes(
        gold.ids, gold.length, levels, cfg.guidance.max_level, 4, guided
    )
    np.testing.assert_allclose(out.reward, reward, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.components, comps, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.advantages, adv.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.acc, acc, rtol=1e-6)
    np.testing.assert_array_equal(out.zero_var, np.ptp(reward.reshape(B, 4), -1) == 0)
    np.testing.assert_array_equal(out.keep, np.ones(B, bool))  # no difficulty filter
    np.testing.assert_array_equal(out.triggered, acc <= cfg.guidance.tau)
    np.testing.assert_array_equal(out.guided, guided)
    np.testing.assert_array_equal(out.forced_ids, forced_ids)
    np.testing.assert_array_equal(out.forced_len, forced_len)
    assert out.reward.dtype == np.float32 and out.forced_len.dtype == np.int32
    assert out.guided.shape == (B, 4) and out.forced_ids.shape == (B * 4, gold.ids.shape[1])
    if slots == 0:
        assert not out.guided.any() and not out.forced_len.any()


def test_score_and_guide_hand_case():
    """G = 4, tau = 0.25, default RRS (gate consistency, w_step 0.5). Every stated verdict
    is "match" (rule label 4) and equals the gold verdicts (r_step = 1).
    Group 0, gold label 2, every answer wrong: row 0 no label (format failure: -1); rows 1-2
    say 3 against their verdicts' 4 (r_cons = 0: reward 0); row 3 says 4, consistent but
    wrong: 0 + 0.5 * 1 = 0.5. acc 0 <= tau: triggered, k = clip(round(4 * 0.5), 1, 2) = 2
    slots, its two lowest rewards (ties: lower index): rows 0 and 1. Level 3 = max_level
    forces the whole gold response (4 tokens).
    Group 1, gold label 4, all right: 1 + 0.5 = 1.5 each, acc 1, zero variance, advantage 0.
    """
    cfg = _config(group_size=4)
    v = np.full(R, 1, np.int32)
    pred_label = np.array([0, 3, 3, 4, 4, 4, 4, 4], np.int32)
    pred_verdicts = np.tile(v, (8, 1))
    format_ok = np.array([False, True, True, True, True, True, True, True])
    parsed = Parsed(pred_label, pred_verdicts, format_ok)
    gold = Gold(
        label=np.array([2, 4], np.int32),
        verdicts=np.tile(v, (2, 1)),
        has_verdicts=np.array([True, True]),
        ids=np.array([[5, 6, 7, 8], [9, 10, 11, 0]], np.int32),
        length=np.array([4, 3], np.int32),
    )
    out = jax.device_get(make_scorer(cfg, pad_id=0)(parsed, gold, np.array([3, 0]), slots=8))
    np.testing.assert_allclose(out.reward, [-1, 0, 0, 0.5, 1.5, 1.5, 1.5, 1.5])
    np.testing.assert_array_equal(out.acc, [0.0, 1.0])
    np.testing.assert_array_equal(out.triggered, [True, False])
    np.testing.assert_array_equal(out.zero_var, [False, True])
    np.testing.assert_array_equal(out.guided, [[True, True, False, False], [False] * 4])
    # level 3 = max_level: the whole gold response (4 tokens) is forced
    np.testing.assert_array_equal(out.forced_len, [4, 4, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.forced_ids[:2], [[5, 6, 7, 8]] * 2)
    assert not out.forced_ids[2:].any()
    np.testing.assert_array_equal(out.advantages[4:], 0.0)  # zero-variance group


def test_trigger_and_solved_are_complements_at_tau():
    acc = np.array([0.0, 0.25, 0.26, 1.0], np.float32)
    np.testing.assert_array_equal(is_triggered(acc, 0.25), [True, True, False, False])
    np.testing.assert_array_equal(is_solved(acc, 0.25), ~is_triggered(acc, 0.25))


# ---------------------------------------------------------------------------------------
# One rl_iteration of a random tiny model (the set-up of tests/parallel/test_distributed.py:
# a lenient label reward and tau = 1, so every group triggers and the update is not a no-op).

METRIC_KEYS = {
    "reward", "accuracy", "zero_variance_frac", "zero_variance_frac_mixed", "agr_trigger_rate",
    "guided_frac", "guidance_level_mean", "reward_guided", "reward_unguided", "forced_tokens",
    "response_length", "loss", "grad_norm", "skipped", "kl", "pg_loss", "ratio_mean",
    "ratio_max", "ratio_min", "clip_frac", "clip_low_frac", "clip_high_frac", "dual_clip_frac",
    "clipped_surrogate_frac", "adv_mean", "adv_std", "n_tokens", "n_seqs", "loss_num",
    "loss_den", "guided_seqs", "guided_tokens", "guided_active_tokens", "guided_weight_mean",
    "guided_adv_mean", "replayed", "time_sample", "time_parse_reward", "time_ref_logps",
    "time_update", "time_iteration", "sample_tokens_per_s", "train_tokens_per_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import multihost_worker as mw

    from agrl.train.loop import resolve_paths
    from agrl.train.rl_run import prepare_rl

    mw.register_lenient_reward()
    world, init = tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("init")
    mw.make_world(world)
    mw.make_init_model(init, world)
    cfg = mw.rl_config(world, init, tmp_path_factory.mktemp("out"), (1, 1, 1))
    return prepare_rl(resolve_paths(cfg, "rl"))  # tokenizer and data from paths.world


@pytest.mark.slow
def test_rl_iteration_on_a_tiny_model(tiny_run):
    from agrl.rl.types import Rollout
    from agrl.train.steps import make_optimizer, train_state_shardings

    rl = tiny_run
    cfg, pool = rl.cfg, rl.ctx.pool
    B, G, T = cfg.train.prompts_per_step, cfg.sampling.group_size, cfg.sampling.max_new_tokens
    N = B * G
    before = jax.tree.map(lambda x: np.array(x, copy=True), rl.state.params)
    metrics, ro = rl.step(0)

    assert isinstance(ro, Rollout)
    want = {
        "prompt_idx": ((B,), np.int64), "tokens": ((N, T), np.int32), "mask": ((N, T), bool),
        "forced_mask": ((N, T), bool), "reward": ((N,), np.float32),
        "components": ((N, 6), np.float32), "advantages": ((N,), np.float32),
        "guided": ((N,), bool), "levels": ((B,), np.int32), "acc_unguided": ((B,), np.float32),
        "triggered": ((B,), bool), "zero_var_unguided": ((B,), bool), "zero_var": ((B,), bool),
        "keep": ((B,), bool),
    }  # fmt: skip
    for name, (shape, dtype) in want.items():
        x = getattr(ro, name)
        assert isinstance(x, np.ndarray) and x.shape == shape and x.dtype == dtype, name

    # Guided rows (tau = 1: all groups trigger; 4 slots) start with the forced gold prefix:
    # at level 0 the gold label token only. Other rows have no forced token.
    rows = np.flatnonzero(ro.guided)
    assert rows.size == cfg.guidance.slots_per_batch and ro.triggered.all()
    for r in rows:
        p = ro.prompt_idx[r // G]
        assert ro.forced_mask[r, 0] and ro.forced_mask[r].sum() == 1
        assert ro.tokens[r, 0] == pool.gold_ids[p, 0] and ro.mask[r, 0]
    assert not ro.forced_mask[~ro.guided].any()

    assert METRIC_KEYS <= set(metrics), METRIC_KEYS - set(metrics)
    assert np.isfinite(metrics["loss"]) and abs(metrics["loss"]) > 0 and metrics["kl"] >= 0
    assert metrics["skipped"] == 0 and metrics["guided_frac"] == rows.size / N
    assert metrics["forced_tokens"] == rows.size
    # mu = 2 updates; the state keeps the rules table's layout without any device_put
    assert int(rl.state.step) == cfg.loss.mu
    changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, rl.state.params)
    assert any(jax.tree.leaves(changed))
    opt = make_optimizer(cfg.optim, cfg.train.steps)  # same structure as the run's
    table = train_state_shardings(cfg.model, opt, rl.ctx.mesh)
    assert jax.tree.leaves(jax.tree.map(lambda x: x.sharding, rl.state)) == jax.tree.leaves(table)
    np.testing.assert_array_equal(rl.replay.last_step[ro.prompt_idx], 0)


@pytest.mark.slow
def test_rl_steps_compile_each_program_once_per_shape(tiny_run, caplog):
    """Compile once per shape bucket: over six RL iterations (AGR guidance on, mu = 2) no
    program is compiled in two steps for the same argument shapes (no jitted function is
    rebuilt per step; score_and_guide's two static slot counts compile within one step),
    and once every prompt bucket has been seen a step compiles nothing."""
    rl = tiny_run
    steps_of: dict[str, set[int]] = {}
    per_step = []
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            for i in range(1, 7):
                caplog.clear()
                rl.step(i)
                msgs = [r.getMessage() for r in caplog.records]
                msgs = [m for m in msgs if m.startswith("Compiling ")]
                per_step.append(len(msgs))
                for m in msgs:
                    steps_of.setdefault(m, set()).add(i)
    finally:
        jax.config.update("jax_log_compiles", False)
    again = [m[:160] for m, steps in steps_of.items() if len(steps) > 1]
    assert not again, again
    assert per_step[-1] == 0 and per_step[-2] == 0, per_step


@pytest.mark.slow
def test_hint_guidance_samples_from_hinted_prompts(tmp_path_factory):
    """guidance.form=hint: guided rows are sampled from the prompt plus the gold hint at
    the prompt's level (no forced prefix), every token they generate is a guided token, and
    the update scores them under the plain prompt (the batch's prompts are the pool's)."""
    import multihost_worker as mw

    from agrl.task.tokenizer import load_tokenizer
    from agrl.train.loop import resolve_paths
    from agrl.train.rl_run import prepare_rl

    mw.register_lenient_reward()
    world, init = tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("init")
    mw.make_world(world)
    mw.make_init_model(init, world)
    cfg = mw.rl_config(world, init, tmp_path_factory.mktemp("out"), (1, 1, 1))
    cfg = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, form="hint"))
    rl = prepare_rl(resolve_paths(cfg, "rl"))
    tok = load_tokenizer(world / "tokenizer")
    seen = []
    inner = rl.ctx.guided_sampler

    def spy(params, prompt_ids, prompt_mask, key, *forced):
        seen.append((np.asarray(prompt_ids), np.asarray(prompt_mask), forced))
        return inner(params, prompt_ids, prompt_mask, key, *forced)

    spy.bucket = inner.bucket
    rl.ctx.guided_sampler = spy
    _, ro = rl.step(0)

    G, pool = cfg.sampling.group_size, rl.ctx.pool
    rows = np.flatnonzero(ro.guided)
    assert rows.size == cfg.guidance.slots_per_batch and len(seen) == 1
    ids, pmask, forced = seen[0]
    assert forced == ()  # no forced prefix
    for j, r in enumerate(rows):
        p, level = ro.prompt_idx[r // G], ro.levels[r // G]
        text = tok.decode(ids[j][pmask[j].astype(bool)].tolist())
        assert " <think> " in text and text.endswith(" <label>")
        np.testing.assert_array_equal(ids[j][pmask[j].astype(bool)], pool.hint_ids[level][p])
        assert f"-> {pool.gold_label[p]} </think>" in text
        np.testing.assert_array_equal(ro.forced_mask[r], ro.mask[r])  # all its tokens
    assert not ro.forced_mask[~ro.guided].any()
