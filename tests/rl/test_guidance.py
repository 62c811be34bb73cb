"""agrl.rl.guidance: slots, forced prefixes, forced-token weights, the replay table."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.config import ConfigError, GuidanceConfig
from agrl.rl import guidance as gd
from tests import reference as ref

# ---------------------------------------------------------------------------------------
# slot counts and selection


@pytest.mark.parametrize("g", [2, 3, 5, 8, 16])
def test_slot_counts_all_accuracies(g):
    acc = np.arange(g + 1, dtype=np.float32) / g
    got = np.asarray(gd.slot_counts(jnp.asarray(acc), g))
    np.testing.assert_array_equal(got, [ref.slot_count(a, g) for a in acc])


def test_slot_counts_hand():
    # G=8: acc 0 -> round(4) = 4; acc 1/8 -> 3; acc 2/8 -> 2; acc 3/8 -> 1; acc 1 -> clip 1
    acc = jnp.array([0.0, 0.125, 0.25, 0.375, 1.0])
    np.testing.assert_array_equal(gd.slot_counts(acc, 8), [4, 3, 2, 1, 1])
    # G=5, acc 0: 5 * 0.5 = 2.5 -> rounds half up to 3, clipped to G // 2 = 2
    # G=5, acc 1/5: 5 * 0.3 = 1.5 -> 2
    np.testing.assert_array_equal(gd.slot_counts(jnp.array([0.0, 0.2]), 5), [2, 2])


@pytest.mark.parametrize(
    "seed,g,budget,tau", list(itertools.product(range(3), (4, 5, 8), (0, 1, 3, 6, 64), (0.25, 0.5)))
)
def test_select_guided_slots_matches_reference(seed, g, budget, tau):
    rng = np.random.default_rng(seed)
    b = 6
    correct = rng.random((b, g)) < rng.random((b, 1)) * 0.6
    acc = correct.mean(1).astype(np.float32)
    rewards = rng.choice([-1.0, 0.0, 0.25, 1.0], size=(b, g)).astype(np.float32)
    got = jax.jit(gd.select_guided_slots, static_argnums=(2, 3, 4))(acc, rewards, tau, g, budget)
    want = ref.guided_slots(acc, rewards, tau, g, budget)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert int(got.sum()) <= budget
    assert not np.asarray(got)[acc > tau].any()


def test_select_guided_slots_hand():
    # G=4. Group 0: acc 0 -> k = 2, rewards [0, -1, 0, 0.5] -> lowest: index 1 (-1), then
    # index 0 (0, tie with 2 broken by index). Group 1: acc 0.5 > tau -> none.
    # Group 2: acc 0.25 -> k = round(4 * 0.25) = 1, lowest reward index 3.
    acc = jnp.array([0.0, 0.5, 0.25])
    rewards = jnp.array([[0.0, -1.0, 0.0, 0.5], [1, 1, 0, 0], [1.0, 0.5, 0.5, 0.0]])
    full = gd.select_guided_slots(acc, rewards, 0.25, 4, budget=8)
    want = [[True, True, False, False], [False] * 4, [False, False, False, True]]
    np.testing.assert_array_equal(full, want)
    # Budget 2, round robin: round 0 gives group 0 (acc 0 first) index 1, group 2 index 3;
    # group 0's second slot (round 1) does not fit.
    two = gd.select_guided_slots(acc, rewards, 0.25, 4, budget=2)
    want = [[False, True, False, False], [False] * 4, [False, False, False, True]]
    np.testing.assert_array_equal(two, want)


# ---------------------------------------------------------------------------------------
# forced prefixes


@pytest.mark.parametrize("max_level", [0, 1, 3])
def test_build_forced_prefixes_matches_reference(max_level):
    rng = np.random.default_rng(max_level)
    b, g, lg = 4, 3, 9
    gold_len = np.array([9, 5, 1, 2], np.int32)
    gold_ids = np.where(np.arange(lg) < gold_len[:, None], rng.integers(5, 50, (b, lg)), 0)
    gold_ids = gold_ids.astype(np.int32)
    levels = rng.integers(0, max_level + 1, b).astype(np.int32)
    guided = rng.random((b, g)) < 0.5
    guided[0, 0] = True
    fn = jax.jit(gd.build_forced_prefixes, static_argnums=(3, 4))
    ids, lens = fn(gold_ids, gold_len, levels, max_level, g, guided)
    want_ids, want_lens = ref.forced_prefixes(gold_ids, gold_len, levels, max_level, g, guided)
    np.testing.assert_array_equal(np.asarray(lens), want_lens)
    np.testing.assert_array_equal(np.asarray(ids), want_ids)


def test_guidance_length_hand():
    # gold = label + 9 rationale tokens (len 10), max_level 3:
    # level 0 -> 1 (label only); 1 -> 1 + 3; 2 -> 1 + 6; 3 -> 1 + 9 = everything
    got = gd.guidance_length(jnp.full(4, 10), jnp.arange(4), 3)
    np.testing.assert_array_equal(got, [1, 4, 7, 10])
    # 4 rationale tokens, level 1 of 3 -> 4/3 = 1.33 -> 1; level 2 -> 2.67 -> 3
    np.testing.assert_array_equal(gd.guidance_length(jnp.full(2, 5), jnp.array([1, 2]), 3), [2, 4])


# ---------------------------------------------------------------------------------------
# forced-token weights


@pytest.mark.parametrize("mode", gd.LOSS_MODES)
def test_forced_token_weights_matches_reference(mode):
    rng = np.random.default_rng(7)
    n, t = 5, 6
    forced = rng.random((n, t)) < 0.4
    adv = np.array([1.0, -1.0, 0.0, 0.5, -2.0], np.float32)
    logps = np.log(rng.uniform(0.01, 1.0, (n, t))).astype(np.float32)
    w, clip = jax.jit(gd.forced_token_weights, static_argnums=(3, 4))(forced, adv, logps, mode, 0.1)
    want_w, want_clip = ref.forced_weights(forced, adv, logps, mode, 0.1)
    np.testing.assert_allclose(np.asarray(w), want_w, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(clip), want_clip)
    # generated tokens always count, clipped
    np.testing.assert_array_equal(np.asarray(w)[~forced], 1.0)
    assert np.asarray(clip)[~forced].all()


def test_offpolicy_weight_gradient_is_luffy():
    # f(p) = p / (p + gamma), p = exp(logp): df/dlogp = gamma * p / (p + gamma)^2.
    # At p = 0.1, gamma = 0.1: 0.1 * 0.1 / 0.04 = 0.25 (no stop-gradient anywhere).
    def f(logp):
        w, _ = gd.forced_token_weights(
            jnp.ones((1, 1), bool), jnp.ones(1), logp[None, None], "offpolicy", 0.1
        )
        return w[0, 0]

    np.testing.assert_allclose(f(jnp.log(0.1)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(jnp.log(0.1)), 0.25, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# replay table


def test_update_replay_level_dynamics():
    cfg = GuidanceConfig(tau=0.25, level_up_streak=2, max_level=3, ema_decay=0.5)
    t = gd.init_replay(3)
    idx = np.array([0, 2])
    # step 0: prompt 0 fails (acc 0), prompt 2 succeeds (acc 1). First visit: ema = acc.
    t = gd.update_replay(t, idx, np.array([0.0, 1.0]), np.array([True, False]), 0, cfg)
    np.testing.assert_allclose(t.ema, [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(t.streak, [1, 0, 0])
    np.testing.assert_array_equal(t.level, [0, 0, 0])
    np.testing.assert_array_equal(t.last_step, [0, -1, 0])
    # step 1: prompt 0 fails again -> streak 2 >= 2: level 1, streak reset
    t = gd.update_replay(t, idx[:1], np.array([0.0]), np.array([True]), 1, cfg)
    assert (t.level[0], t.streak[0], t.times_guided[0]) == (1, 0, 2)
    # steps 2, 3: fails twice more -> level 2; two more -> 3; two more -> stays at 3
    for step in range(2, 8):
        t = gd.update_replay(t, idx[:1], np.array([0.0]), np.array([True]), step, cfg)
    assert t.level[0] == 3 and t.last_step[0] == 7
    # step 8: solved with acc 1: ema = 0.5 * 0 + 0.5 * 1 = 0.5 > tau -> level 2
    t = gd.update_replay(t, idx[:1], np.array([1.0]), np.array([False]), 8, cfg)
    assert (t.ema[0], t.level[0], t.streak[0]) == (0.5, 2, 0)
    # step 9: acc 0.25 (not > tau, but triggered): ema = 0.375 > tau -> still falls, to 1
    t = gd.update_replay(t, idx[:1], np.array([0.25]), np.array([True]), 9, cfg)
    assert t.ema[0] == pytest.approx(0.375) and t.level[0] == 1 and t.streak[0] == 1


def test_update_replay_is_pure_and_rejects_duplicates():
    cfg = GuidanceConfig()
    t0 = gd.init_replay(4)
    t1 = gd.update_replay(t0, np.array([1]), np.array([0.0]), np.array([True]), 0, cfg)
    assert t0.last_step[1] == -1 and t1.last_step[1] == 0
    with pytest.raises(ValueError, match="duplicates"):
        gd.update_replay(t0, np.array([1, 1]), np.zeros(2), np.ones(2, bool), 0, cfg)


def test_state_dict_round_trip():
    cfg = GuidanceConfig()
    t = gd.init_replay(5)
    t = gd.update_replay(t, np.array([0, 3]), np.array([0.0, 0.5]), np.array([True, False]), 4, cfg)
    state = gd.to_state_dict(t)
    assert all(type(v) is np.ndarray for v in state.values())
    back = gd.from_state_dict({k: v.tolist() for k, v in state.items()})
    for a, b in zip(t, back, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    with pytest.raises(ValueError, match="fields"):
        gd.from_state_dict({"ema": state["ema"]})
    with pytest.raises(ValueError, match="one size"):
        gd.from_state_dict({**state, "level": np.zeros(2, np.int32)})


def test_sample_replay():
    cfg = GuidanceConfig(tau=0.25)
    t = gd.init_replay(10)
    acc = np.array([0.0, 0.0, 1.0, 0.125, 0.5, 0.0], np.float32)
    t = gd.update_replay(t, np.arange(6), acc, acc <= 0.25, 0, cfg)
    hard = {0, 1, 3, 5}  # seen and ema <= tau; 6..9 never seen
    rng = np.random.default_rng(0)
    assert set(gd.sample_replay(t, rng, 10, 1.0, 0.25).tolist()) == hard
    assert gd.sample_replay(t, rng, 10, 0.0, 0.25).size == 0
    two = gd.sample_replay(t, rng, 2, 1.0, 0.25)
    assert two.size == 2 and set(two.tolist()) <= hard and len(set(two.tolist())) == 2
    assert set(gd.sample_replay(t, rng, 10, 1.0, 0.25, exclude=np.array([1, 5])).tolist()) == {
        0,
        3,
    }
    # deterministic given the generator's seed
    a = gd.sample_replay(t, np.random.default_rng(3), 10, 0.5, 0.25)
    b = gd.sample_replay(t, np.random.default_rng(3), 10, 0.5, 0.25)
    np.testing.assert_array_equal(a, b)


def test_config_guard_rails():
    with pytest.raises(ConfigError, match="guidance.tau"):
        GuidanceConfig(tau=1.5)
    with pytest.raises(ConfigError, match="guidance.tau"):
        GuidanceConfig(tau=-0.1)
    with pytest.raises(ConfigError, match="guidance.ema_decay"):
        GuidanceConfig(ema_decay=1.0)
    with pytest.warns(UserWarning, match="slots_per_batch=0"):
        GuidanceConfig(enabled=True, slots_per_batch=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuidanceConfig(enabled=False, slots_per_batch=0)
        GuidanceConfig()
