"""Golden values of the default AGRL configuration (SPEC 4-6), end to end on a fixed input.

    python -m tests.golden.regen     # rewrite tests/golden/agrl_default.npz

Only regenerate after an intended change of the math, and say so in the commit message:
tests/golden/test_golden.py fails on any silent change of rewards, advantages, guided
slots, forced prefixes, forced-token weights, the loss or its aux.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from agrl.config import Config
from agrl.rl.advantages import compute_advantages, group_stats
from agrl.rl.guidance import build_forced_prefixes, forced_token_weights, select_guided_slots
from agrl.rl.loss import policy_loss
from agrl.rl.rewards import compute_rewards
from agrl.task.rules import R, rule_label

PATH = Path(__file__).with_name("agrl_default.npz")
B, G, T, LG = 4, 4, 8, 6


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = B * G
    gold_verdicts = rng.integers(0, 5, size=(B, R)).astype(np.int32)
    gold_label = rule_label(gold_verdicts)
    # groups from hopeless to easy, so that AGR triggers on some and not on others
    copy_gold = rng.random((n, R)) < np.repeat([0.0, 0.3, 0.7, 0.95], G)[:, None]
    pred_verdicts = np.where(
        copy_gold, np.repeat(gold_verdicts, G, 0), rng.integers(-1, 5, (n, R))
    ).astype(np.int32)
    pred_label = np.where(rng.random(n) < 0.6, rule_label(pred_verdicts), rng.integers(0, 5, n))
    gold_len = rng.integers(1, LG + 1, B).astype(np.int32)
    gold_ids = np.where(np.arange(LG) < gold_len[:, None], rng.integers(3, 99, (B, LG)), 0)
    lengths = rng.integers(1, T + 1, n)
    logps = np.log(rng.uniform(0.05, 0.95, (n, T)))
    return {
        "pred_label": pred_label.astype(np.int32),
        "pred_verdicts": pred_verdicts,
        "format_ok": rng.random(n) < 0.9,
        "gold_label": np.repeat(gold_label, G).astype(np.int32),
        "gold_verdicts": np.repeat(gold_verdicts, G, 0),
        "gold_has_verdicts": np.repeat(rng.random(B) < 0.75, G),
        "gold_ids": gold_ids.astype(np.int32),
        "gold_len": gold_len,
        "levels": rng.integers(0, 4, B).astype(np.int32),
        "mask": np.arange(T)[None, :] < lengths[:, None],
        "logps": logps.astype(np.float32),
        "old_logps": (logps - np.log(rng.uniform(0.6, 1.6, (n, T)))).astype(np.float32),
        "ref_logps": (logps + rng.normal(0, 0.3, (n, T))).astype(np.float32),
    }


def compute_golden(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The default pipeline: rewards -> group stats -> guided slots -> forced prefixes ->
    mixed-group rewards -> advantages -> forced-token weights -> GRPO loss; default Config()."""
    cfg = Config()
    reward, comps = compute_rewards(
        x["pred_label"], x["pred_verdicts"], x["format_ok"], x["gold_label"],
        x["gold_verdicts"], x["gold_has_verdicts"], cfg.reward,
    )  # fmt: skip
    rewards_bg = reward.reshape(B, G)
    stats = group_stats(comps[:, 0].reshape(B, G), rewards_bg, cfg.advantage.difficulty_filter)
    g = cfg.guidance
    guided = select_guided_slots(stats["acc"], rewards_bg, g.tau, G, g.slots_per_batch)
    forced_ids, forced_len = build_forced_prefixes(
        x["gold_ids"], x["gold_len"], x["levels"], g.max_level, G, guided
    )
    # Guided re-rollouts follow the gold prefix; here they restate the gold answer exactly.
    # Advantages are computed over the mixed group (SPEC 5).
    is_guided = guided.reshape(-1)
    mixed_reward, _ = compute_rewards(
        jnp.where(is_guided, x["gold_label"], x["pred_label"]),
        jnp.where(is_guided[:, None], x["gold_verdicts"], x["pred_verdicts"]),
        is_guided | x["format_ok"], x["gold_label"], x["gold_verdicts"],
        x["gold_has_verdicts"], cfg.reward,
    )  # fmt: skip
    adv = compute_advantages(mixed_reward.reshape(B, G), cfg.advantage).reshape(-1)
    forced_mask = (jnp.arange(T)[None, :] < forced_len[:, None]) & x["mask"]
    weight, use_clip = forced_token_weights(
        forced_mask, adv, x["logps"], cfg.loss.forced_tokens, cfg.loss.offpolicy_gamma
    )
    loss, aux = policy_loss(
        x["logps"], x["old_logps"], x["ref_logps"], adv, x["mask"], forced_mask,
        cfg.loss, cfg.loss.forced_tokens, cfg.loss.offpolicy_gamma,
    )  # fmt: skip
    out = {
        "reward": reward,
        "components": comps,
        "acc": stats["acc"],
        "zero_var": stats["zero_var"],
        "guided": guided,
        "forced_ids": forced_ids,
        "forced_len": forced_len,
        "mixed_reward": mixed_reward,
        "advantages": adv,
        "forced_weight": weight,
        "use_clip": use_clip,
        "loss": loss,
    }
    out.update({f"aux/{k}": v for k, v in aux.items()})
    return {k: np.asarray(v) for k, v in out.items()}


def main() -> None:
    x = make_inputs()
    out = compute_golden(x)
    np.savez(
        PATH, **{f"in/{k}": v for k, v in x.items()}, **{f"out/{k}": v for k, v in out.items()}
    )
    print(f"wrote {PATH}: loss={float(out['loss']):.6f}, guided slots={int(out['guided'].sum())}")


if __name__ == "__main__":
    main()
