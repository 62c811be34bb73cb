"""Rewards under the rule book in force: a user's book (r_step, r_cons by its rules) and the
label-only book (reward = r_label, r_step / r_cons absent and never gating)."""

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import RewardConfig
from agrl.eval.metrics import classification_metrics
from agrl.rl import rewards
from agrl.rl.metrics import rl_metrics
from agrl.rl.types import Rollout
from agrl.task.rules import LABEL_ONLY, rule_book_from_dict

APPAREL = rule_book_from_dict({
    "name": "apparel",
    "dimension": [
        {"name": "fit", "values": ["match", "tight", "loose"]},
        {"name": "color", "values": ["n/a", "match", "mismatch", "accessory"]},
    ],
    "rule": [
        {"name": "too-tight", "label": 1, "when": ["fit=tight"]},
        {"name": "accessory", "label": 3, "when": ["color=accessory"]},
        {"name": "off", "label": 2, "when": ["fit=loose", "color=mismatch"]},
    ],
})  # fmt: skip
NA, MATCH, TIGHT, LOOSE, MISMATCH, ACC = range(6)


def test_step_and_consistency_rewards_follow_a_user_book():
    pred_label = jnp.asarray([3, 3, 1, 4], jnp.int32)
    pred_v = jnp.asarray([[MATCH, ACC], [MATCH, MATCH], [TIGHT, NA], [LOOSE, NA]], jnp.int32)
    gold_label = jnp.asarray([3, 3, 1, 2], jnp.int32)
    gold_v = jnp.asarray([[MATCH, ACC], [MATCH, ACC], [TIGHT, NA], [LOOSE, NA]], jnp.int32)
    has = jnp.ones(4, bool)
    ok = jnp.ones(4, bool)
    cfg = RewardConfig(gate="none")
    fn = jax.jit(lambda *a: rewards.compute_rewards(*a, cfg, APPAREL))
    reward, comps = fn(pred_label, pred_v, ok, gold_label, gold_v, has)
    r_step = np.asarray(rewards.component(comps, "r_step"))
    r_cons = np.asarray(rewards.component(comps, "r_cons"))
    np.testing.assert_allclose(r_step, [1.0, 0.5, 1.0, 1.0])
    # rule_label under APPAREL: [3, 4, 1, 2] vs stated [3, 3, 1, 4]
    np.testing.assert_array_equal(r_cons, [1.0, 0.0, 1.0, 0.0])
    # without gold verdicts the step reward asks that the verdicts imply the gold label
    _, comps = fn(pred_label, pred_v, ok, gold_label, gold_v, jnp.zeros(4, bool))
    np.testing.assert_array_equal(np.asarray(rewards.component(comps, "r_step")), [1, 0, 1, 1])
    m = classification_metrics(np.asarray(pred_label), np.asarray(gold_label),
                               pred_verdicts=np.asarray(pred_v), gold_verdicts=np.asarray(gold_v),
                               book=APPAREL)  # fmt: skip
    assert m["rule_adherence"] == 0.5 and m["step_accuracy"] == np.mean([1, 0.5, 1, 1])


def test_label_only_reward_is_the_label_and_nothing_gates_it():
    pred_label = jnp.asarray([1, 2, 3, 0], jnp.int32)
    empty = jnp.zeros((4, 0), jnp.int32)
    gold = jnp.asarray([1, 1, 3, 3], jnp.int32)
    ok = jnp.asarray([True, True, True, False])
    for gate in ("consistency", "label", "none"):
        cfg = RewardConfig(gate=gate)
        reward, comps = rewards.compute_rewards(
            pred_label, empty, ok, gold, empty, jnp.zeros(4, bool), cfg, LABEL_ONLY
        )
        want = [cfg.w_label, 0.0, cfg.w_label, cfg.format_fail]
        np.testing.assert_allclose(np.asarray(reward), want, err_msg=gate)
        assert np.asarray(rewards.component(comps, "r_cons")).all()
    assert np.std(np.asarray(reward)) > 0  # label correctness alone varies inside a group
    assert rewards.absent_components(LABEL_ONLY) == ("r_step", "r_cons")
    assert rewards.absent_components(APPAREL) == ()
    assert rewards.fallback_message(np.zeros(4, bool), LABEL_ONLY) is None
    assert "r_label only" in rewards.describe_reward(RewardConfig(), LABEL_ONLY)


def test_label_only_metrics_leave_rule_metrics_out():
    empty = np.zeros((2, 0), np.int32)
    m = classification_metrics(
        np.asarray([1, 2]), np.asarray([1, 3]), pred_verdicts=empty, gold_verdicts=empty,
        book=LABEL_ONLY,
    )  # fmt: skip
    assert "rule_adherence" not in m and "step_accuracy" not in m and m["accuracy"] == 0.5

    n, b = 4, 2
    ro = Rollout(
        prompt_idx=np.arange(b), tokens=np.zeros((n, 3), np.int32), mask=np.ones((n, 3), bool),
        forced_mask=np.zeros((n, 3), bool), reward=np.ones(n, np.float32),
        components=np.ones((n, len(rewards.COMPONENTS)), np.float32),
        advantages=np.zeros(n, np.float32), guided=np.zeros(n, bool),
        levels=np.zeros(b, np.int32), acc_unguided=np.ones(b, np.float32),
        triggered=np.zeros(b, bool), zero_var_unguided=np.ones(b, bool),
        zero_var=np.ones(b, bool), keep=np.ones(b, bool),
    )  # fmt: skip
    update = {"loss": 0.0, "grad_norm": 0.0, "skipped": 0.0}
    m = rl_metrics(ro, [update], guidance_enabled=False, absent=("r_step", "r_cons"))
    assert "reward/r_label" in m and "reward/r_step" not in m and "reward/r_cons" not in m
