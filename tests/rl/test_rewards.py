"""agrl.rl.rewards against tests/reference.py, hand-computed cases, presets, the registry."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agrl.config import ConfigError, RewardConfig, method_preset
from agrl.rl import rewards
from agrl.task.format import render_response
from agrl.task.rules import MATCH, MISMATCH, MISSING, NA, R, rule_label
from tests import reference as ref


def random_batch(seed: int, n: int = 24):
    """Parsed predictions and gold with every edge case: no label, missing verdicts,
    consistent and inconsistent responses, gold without verdicts or with unknown dims."""
    rng = np.random.default_rng(seed)
    gold_verdicts = rng.integers(0, 5, size=(n, R)).astype(np.int32)
    gold_verdicts[rng.random((n, R)) < 0.1] = MISSING
    gold_label = rule_label(gold_verdicts).astype(np.int32)
    pred_verdicts = np.where(
        rng.random((n, R)) < 0.6, gold_verdicts, rng.integers(-1, 5, size=(n, R))
    ).astype(np.int32)
    # half the predictions state the label their verdicts imply (consistent), half any label
    implied = rule_label(pred_verdicts)
    pred_label = np.where(rng.random(n) < 0.5, implied, rng.integers(0, 5, size=n))
    format_ok = rng.random(n) < 0.85
    has = rng.random(n) < 0.7
    gold_verdicts[-1] = MISSING  # a record whose gold verdicts are all unknown
    return (
        pred_label.astype(np.int32),
        pred_verdicts,
        format_ok,
        gold_label,
        gold_verdicts,
        has,
    )


CONFIGS = [
    RewardConfig(gate=gate, ordinal=ordinal, w_label=wl, w_step=ws, format_fail=ff)
    for gate, ordinal, (wl, ws), ff in itertools.product(
        ("consistency", "label", "none"), (False, True), ((1.0, 0.5), (0.3, 1.0)), (-1.0, 0.0)
    )
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_matches_reference_all_options(cfg):
    batch = random_batch(seed=CONFIGS.index(cfg))
    got_r, got_c = jax.jit(rewards.compute_rewards, static_argnames="cfg")(*batch, cfg=cfg)
    want_r, want_c = ref.rewards(*batch, cfg)
    np.testing.assert_allclose(np.asarray(got_r), want_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_c), want_c, rtol=1e-5, atol=1e-6)
    assert got_c.shape == (len(batch[0]), rewards.C)


def test_jit_equals_eager():
    batch = random_batch(seed=3)
    cfg = RewardConfig()
    eager = rewards.compute_rewards(*map(jnp.asarray, batch), cfg)
    jitted = jax.jit(rewards.compute_rewards, static_argnames="cfg")(*batch, cfg=cfg)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _one(pred_label, pred_v, ok, gold_label, gold_v, has, cfg):
    r, c = rewards.compute_rewards(
        jnp.array([pred_label]),
        jnp.array([pred_v]),
        jnp.array([ok]),
        jnp.array([gold_label]),
        jnp.array([gold_v]),
        jnp.array([has]),
        cfg,
    )
    return float(r[0]), dict(zip(rewards.COMPONENTS, np.asarray(c[0]).tolist(), strict=True))


# verdict order: category, brand, negation, need, audience, attributes
GOLD_NEG = [MATCH, NA, MISMATCH, NA, NA, MATCH]  # negation violated -> label 2


def test_hand_computed_default():
    cfg = RewardConfig()  # consistency gate, w_label 1, w_step 0.5
    # Perfect answer: r_label 1, r_step 6/6, consistent -> 1 * (1 + 0.5 * 1) = 1.5
    assert _one(2, GOLD_NEG, True, 2, GOLD_NEG, True, cfg)[0] == pytest.approx(1.5)
    # Says 4 and ignores the negation, consistently (all match -> 4): r_label 0,
    # r_step 5/6 (negation wrong), r_cons 1 -> 0 + 0.5 * 5/6 = 0.41667
    wrong_v = [MATCH, NA, MATCH, NA, NA, MATCH]
    r, c = _one(4, wrong_v, True, 2, GOLD_NEG, True, cfg)
    assert r == pytest.approx(0.5 * 5 / 6)
    assert (c["correct"], c["r_cons"], c["gate"]) == (0.0, 1.0, 1.0)
    # Right label but verdicts that imply 4: inconsistent -> the hard gate gives 0
    assert _one(2, wrong_v, True, 2, GOLD_NEG, True, cfg)[0] == 0.0
    # Unparseable: format_fail, whatever else
    assert _one(2, GOLD_NEG, False, 2, GOLD_NEG, True, cfg)[0] == -1.0
    # A label of 0 (none found) is a format failure even if the parser said ok
    assert _one(0, GOLD_NEG, True, 2, GOLD_NEG, True, cfg)[0] == -1.0


def test_hand_computed_gates_and_ordinal():
    wrong_v = [MATCH, NA, MATCH, NA, NA, MATCH]  # implies 4
    # gate=label: step credit only when the label is right. Pred 4 vs gold 2: 0 + 0 = 0
    assert _one(4, wrong_v, True, 2, GOLD_NEG, True, RewardConfig(gate="label"))[0] == 0.0
    # gate=none, inconsistent right label: 1 + 0.5 * 5/6
    r = _one(2, wrong_v, True, 2, GOLD_NEG, True, RewardConfig(gate="none"))[0]
    assert r == pytest.approx(1 + 0.5 * 5 / 6)
    # ordinal: pred 4, gold 2 -> 1 - 2/3 = 1/3; consistent; + 0.5 * 5/6
    r = _one(4, wrong_v, True, 2, GOLD_NEG, True, RewardConfig(ordinal=True))[0]
    assert r == pytest.approx(1 / 3 + 0.5 * 5 / 6)


def test_fallback_without_gold_verdicts():
    cfg = RewardConfig(gate="none")
    # No gold verdicts: r_step = 1[rule_label(pred verdicts) == gold label].
    # wrong_v implies 4, gold label 2 -> r_step 0; GOLD_NEG implies 2 -> r_step 1.
    wrong_v = [MATCH, NA, MATCH, NA, NA, MATCH]
    unknown = [MISSING] * R
    assert _one(2, wrong_v, True, 2, unknown, False, cfg)[1]["r_step"] == 0.0
    assert _one(2, GOLD_NEG, True, 2, unknown, False, cfg)[1]["r_step"] == 1.0
    # has_verdicts=False wins over whatever codes the gold array holds
    assert _one(2, wrong_v, True, 2, wrong_v, False, cfg)[1]["r_step"] == 0.0
    # ... and a record with verdict codes but all unknown falls back too
    assert _one(2, GOLD_NEG, True, 2, unknown, True, cfg)[1]["r_step"] == 1.0
    msg = rewards.fallback_message(np.array([True, False, False]))
    assert "2 of 3" in msg and "r_step" in msg
    assert rewards.fallback_message(np.array([True, True])) is None


def _cfg_for(method):
    kw = {k.split(".")[1]: v for k, v in method_preset(method).items() if k.startswith("reward.")}
    return RewardConfig(**kw)


def test_method_presets():
    wrong_v = [MATCH, NA, MATCH, NA, NA, MATCH]  # implies 4; r_step vs GOLD_NEG = 5/6
    # GRPO: outcome only. Wrong label with good steps earns 0; right label earns 1.
    grpo = _cfg_for("grpo")
    assert _one(4, wrong_v, True, 2, GOLD_NEG, True, grpo)[0] == 0.0
    assert _one(2, wrong_v, True, 2, GOLD_NEG, True, grpo)[0] == 1.0
    assert _one(2, wrong_v, False, 2, GOLD_NEG, True, grpo)[0] == -1.0  # format-gated
    # GRPO-PR: r_label + 0.5 r_step, no consistency gate: inconsistent answer still earns
    pr = _cfg_for("grpo_pr")
    assert _one(2, wrong_v, True, 2, GOLD_NEG, True, pr)[0] == pytest.approx(1 + 0.5 * 5 / 6)
    # AGRL / RRS: the same inconsistent answer is gated to 0
    assert _one(2, wrong_v, True, 2, GOLD_NEG, True, _cfg_for("agrl"))[0] == 0.0
    assert method_preset("rrs_only") == {"guidance.enabled": False}
    with pytest.raises(ConfigError, match="train.method"):
        method_preset("ppo")


def test_registered_reward_fn_is_used():
    def length_free_reward(pl, pv, ok, gl, gv, has, cfg):
        r, comps = rewards.rrs_reward(pl, pv, ok, gl, gv, has, cfg)
        return 10.0 * r, comps

    rewards.register_reward_fn("x10", length_free_reward)
    batch = random_batch(seed=5)
    base, _ = rewards.compute_rewards(*batch, RewardConfig())
    mine, _ = rewards.compute_rewards(*batch, RewardConfig(fn="x10"))
    np.testing.assert_allclose(np.asarray(mine), 10 * np.asarray(base), rtol=1e-6)
    with pytest.raises(ConfigError, match="reward.fn"):
        rewards.compute_rewards(*batch, RewardConfig(fn="nope"))
    rewards.register_reward_fn("bad", lambda *a: (jnp.zeros(3), jnp.zeros((3, 2))))
    with pytest.raises(ValueError, match="expected"):
        rewards.compute_rewards(*batch, RewardConfig(fn="bad"))


def test_config_guard_rails():
    with pytest.raises(ConfigError, match="reward.w_step"):
        RewardConfig(w_label=0.0, w_step=0.0)
    with pytest.raises(ConfigError, match="reward.format_fail"):
        RewardConfig(format_fail=0.5)
    with pytest.raises(ConfigError, match="reward.w_label"):
        RewardConfig(w_label=-1.0)
    with pytest.warns(UserWarning, match="gate='label'"):
        RewardConfig(gate="label", w_step=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RewardConfig()  # the default warns about nothing


def test_mismatch_code_counts_against_step():
    # A stated MISMATCH where gold says MATCH costs one dim of six.
    pred = list(GOLD_NEG)
    pred[5] = MISMATCH
    c = _one(3, pred, True, 2, GOLD_NEG, True, RewardConfig())[1]
    assert c["r_step"] == pytest.approx(5 / 6)


# ---------------------------------------------------------------------------------------
# text -> parse -> reward (needs agrl.task.format)

_SCORE = jax.jit(rewards.compute_rewards, static_argnames="cfg")
_GOLD_V = np.array([GOLD_NEG] * 4, np.int32)


def _score_texts(texts, order):
    n = len(texts)
    texts = list(texts) + [""] * (4 - n)  # one static shape [4] for all examples
    labels, verdicts, ok = rewards.parsed_to_arrays(texts, order)
    r, c = _SCORE(
        labels, verdicts, ok, np.full(4, 2), _GOLD_V, np.ones(4, bool), cfg=RewardConfig()
    )
    return np.asarray(r)[:n], np.asarray(c)[:n]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(max_size=120), min_size=1, max_size=4),
    order=st.sampled_from(["label_first", "think_first"]),
)
def test_any_string_gives_a_finite_reward(texts, order):
    r, c = _score_texts(texts, order)
    assert np.isfinite(r).all() and np.isfinite(c).all()
    assert ((r >= -1.0) & (r <= 1.5)).all()  # format_fail .. w_label + w_step


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.text(max_size=20),
    cut=st.integers(min_value=0, max_value=200),
    order=st.sampled_from(["label_first", "think_first"]),
)
def test_mangled_gold_response_gives_a_finite_reward(prefix, cut, order):
    gold = render_response(2, GOLD_NEG, "shoes not leather", "leather boots", order)
    r, _ = _score_texts([prefix + gold[:cut], gold[cut:]], order)
    assert np.isfinite(r).all()


@pytest.mark.parametrize("order", ["label_first", "think_first"])
def test_rendered_responses_score_as_expected(order):
    gold = render_response(2, GOLD_NEG, "shoes not leather", "leather boots", order)
    lazy = render_response(4, [MATCH, NA, MATCH, NA, NA, MATCH], "shoes", "boots", order)
    liar = render_response(2, [MATCH, NA, MATCH, NA, NA, MATCH], "shoes", "boots", order)
    r, c = _score_texts([gold, lazy, liar, "no idea"], order)
    # gold: 1 + 0.5; lazy (consistent, wrong): 0.5 * 5/6; liar (inconsistent): gated to 0;
    # garbage: format_fail
    np.testing.assert_allclose(r, [1.5, 0.5 * 5 / 6, 0.0, -1.0], rtol=1e-6)
    np.testing.assert_array_equal(c[:, rewards.COMPONENTS.index("format_ok")], [1, 1, 1, 0])
