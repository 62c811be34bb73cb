"""Group advantages and group statistics (SPEC 6).

Rewards arrive as [B, G]: B prompts, G generations each (guided and unguided rollouts of
a prompt share one group, SPEC 5). Built-in estimators, per group:
    zscore   A_i = (r_i - mean r) / (std_ddof r + eps)
    no_std   A_i =  r_i - mean r                                   (Dr.GRPO)
    rloo     A_i =  r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean r)
then optionally clamped to [-clip, clip].

Plugging in another estimator: `register_advantage_fn("mine", fn)` with
fn(rewards_bg [B, G], cfg: AdvantageConfig) -> [B, G], and set `advantage.estimator=mine`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from agrl.config import AdvantageConfig, ConfigError

AdvantageFn = Callable[[jax.Array, AdvantageConfig], jax.Array]
_ADVANTAGE_FNS: dict[str, AdvantageFn] = {}


def register_advantage_fn(name: str, fn: AdvantageFn) -> None:
    """Make `fn(rewards_bg [B, G], cfg) -> advantages [B, G]` selectable as estimator=name."""
    _ADVANTAGE_FNS[name] = fn


def group_advantages(
    rewards_bg: jax.Array, *, estimator: str, ddof: int, eps: float, clip: float | None
) -> jax.Array:
    """Built-in group advantages (module docstring).  rewards_bg: [B, G] f32 -> [B, G] f32.

    ddof and eps are explicit because common implementations disagree on both (TRL: ddof 1,
    eps 1e-4; verl: ddof 1, eps 1e-6). A group of equal rewards gets advantage 0 under
    every estimator, so it contributes no policy gradient.
    """
    rewards_bg = rewards_bg.astype(jnp.float32)
    g = rewards_bg.shape[-1]
    centred = rewards_bg - rewards_bg.mean(axis=-1, keepdims=True)
    if estimator == "zscore":
        adv = centred / (rewards_bg.std(axis=-1, ddof=ddof, keepdims=True) + eps)
    elif estimator == "no_std":
        adv = centred
    elif estimator == "rloo":
        adv = centred * (g / (g - 1))
    else:
        raise ConfigError(f"advantage.estimator={estimator!r}: not a built-in estimator")
    return adv if clip is None else jnp.clip(adv, -clip, clip)


for _name in ("zscore", "no_std", "rloo"):
    register_advantage_fn(
        _name,
        lambda r, cfg, _e=_name: group_advantages(
            r, estimator=_e, ddof=cfg.ddof, eps=cfg.eps, clip=cfg.clip
        ),
    )


def compute_advantages(rewards_bg: jax.Array, cfg: AdvantageConfig) -> jax.Array:
    """Advantages [B, G] from the estimator named by cfg.estimator.  Jittable, cfg static."""
    if cfg.estimator not in _ADVANTAGE_FNS:
        raise ConfigError(
            f"advantage.estimator={cfg.estimator!r}: not registered "
            f"(known: {sorted(_ADVANTAGE_FNS)})"
        )
    return _ADVANTAGE_FNS[cfg.estimator](rewards_bg, cfg)


def group_stats(
    correct_bg: jax.Array, rewards_bg: jax.Array, difficulty_filter: float | None
) -> dict[str, jax.Array]:
    """Per-group statistics for logging, AGR and the difficulty filter.

    correct_bg: [B, G] label correctness (0/1), rewards_bg: [B, G].
    Returns acc [B] = mean_g correct, zero_var [B] bool (all G rewards equal: zero
    advantage, zero gradient), keep [B] bool (False where acc >= difficulty_filter: the
    group is too easy to teach anything, SPEC 6; the low end goes to AGR instead).
    """
    acc = correct_bg.astype(jnp.float32).mean(axis=-1)
    zero_var = rewards_bg.max(axis=-1) == rewards_bg.min(axis=-1)
    keep = jnp.ones_like(zero_var) if difficulty_filter is None else acc < difficulty_filter
    return {"acc": acc, "zero_var": zero_var, "keep": keep}
