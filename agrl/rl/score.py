"""Scoring and guidance of one group of rollouts as ONE pure function (SPEC 4-6).

    parsed completions + gold -> rewards (RRS) -> group stats -> advantages
                              -> AGR trigger -> guided slots -> forced prefixes

An RL iteration calls it twice (agrl.train.rollout): on the G unguided rollouts per prompt
with `slots = guidance.slots_per_batch` (which rows to re-roll, with which prefix), then on
the mixed group with `slots = 0` (scoring only: rewards and advantages of what is trained).
Jit it with cfg and pad_id bound and `slots` static (`make_scorer`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from agrl.config import Config
from agrl.rl.advantages import compute_advantages, group_stats
from agrl.rl.guidance import build_forced_prefixes, is_triggered, select_guided_slots
from agrl.rl.rewards import component, compute_rewards
from agrl.rl.types import Gold, Parsed, Scores
from agrl.task.rules import RuleBook


def score_and_guide(
    parsed: Parsed,
    gold: Gold,
    levels: jax.Array,
    *,
    cfg: Config,
    pad_id: int,
    slots: int,
    book: RuleBook | None = None,
) -> Scores:
    """Scores of N = B * G rollouts, in row order b * G + g.  Pure; cfg, pad_id, slots and
    book (the rule book in force, default the world's) static.

    parsed: [N] / [N, R] arrays; gold: [B] / [B, R] / [B, Lg] per prompt; levels [B] int32,
    the prompts' guidance levels. reward, components = RRS (rewards.compute_rewards);
    advantages over each group of G (advantages.compute_advantages); acc, zero_var, keep
    from group_stats; triggered = acc <= tau; at most `slots` guided rows
    (guidance.select_guided_slots, none when slots = 0) with their forced gold prefixes
    (guidance.build_forced_prefixes).
    """
    G = cfg.sampling.group_size
    rep = functools.partial(jnp.repeat, repeats=G, axis=0)
    reward, comps = compute_rewards(
        *parsed, rep(gold.label), rep(gold.verdicts), rep(gold.has_verdicts), cfg.reward, book
    )
    rewards_bg = reward.reshape(-1, G)
    stats = group_stats(
        component(comps, "correct").reshape(-1, G), rewards_bg, cfg.advantage.difficulty_filter
    )
    advantages = compute_advantages(rewards_bg, cfg.advantage)
    guided = select_guided_slots(stats["acc"], rewards_bg, cfg.guidance.tau, G, slots)
    forced_ids, forced_len = build_forced_prefixes(
        gold.ids, gold.length, levels, cfg.guidance.max_level, G, guided, pad_id
    )
    return Scores(
        reward=reward,
        components=comps,
        advantages=advantages.reshape(-1),
        acc=stats["acc"],
        zero_var=stats["zero_var"],
        keep=stats["keep"],
        triggered=is_triggered(stats["acc"], cfg.guidance.tau),
        guided=guided,
        forced_ids=forced_ids,
        forced_len=forced_len,
    )


def make_scorer(cfg: Config, pad_id: int, book: RuleBook | None = None) -> Callable[..., Scores]:
    """jit(parsed, gold, levels, slots=...) -> Scores, `slots` static (two compilations:
    the unguided group with the slot budget, the mixed group with 0)."""
    fn = functools.partial(score_and_guide, cfg=cfg, pad_id=pad_id, book=book)
    return jax.jit(fn, static_argnames=("slots",))


__all__ = ["make_scorer", "score_and_guide"]
