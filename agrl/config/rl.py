"""Config sections of the RL core: rewards (RRS), advantages, guided replay (AGR), losses."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

from agrl.config.base import check


@dataclass(frozen=True)
class RewardConfig:
    """Rule-aware reward shaping, RRS (SPEC 4); implemented by agrl/rl/rewards.py.

    R = gate * (w_label * r_label + w_step * r_step), and format_fail where the response
    does not parse. `fn` names a reward function registered with
    agrl.rl.rewards.register_reward_fn; "rrs" is the built-in one.
    """

    fn: str = "rrs"
    w_label: float = 1.0
    w_step: float = 0.5
    gate: Literal["consistency", "label", "none"] = "consistency"
    format_fail: float = -1.0
    ordinal: bool = False  # replace r_label by 1 - |pred - gold| / 3

    def __post_init__(self):
        check(self.w_label >= 0, "reward.w_label", self.w_label, "must be >= 0")
        check(self.w_step >= 0, "reward.w_step", self.w_step, "must be >= 0")
        check(
            self.w_label + self.w_step > 0,
            "reward.w_step",
            self.w_step,
            f"w_label + w_step must be > 0 (w_label={self.w_label}): every reward would be 0",
        )
        check(
            self.format_fail <= 0,
            "reward.format_fail",
            self.format_fail,
            "must be <= 0 (an unparseable response must not out-earn a wrong one)",
        )
        if self.gate == "label" and self.w_step == 0:
            warnings.warn(
                "reward.gate='label' with w_step=0: the label gate only gates step credit "
                "and silently does nothing",
                stacklevel=2,
            )
        if self.ordinal and self.w_label == 0:
            warnings.warn(
                "reward.ordinal=True with w_label=0: ordinal credit silently does nothing",
                stacklevel=2,
            )


@dataclass(frozen=True)
class AdvantageConfig:
    """Group advantages (SPEC 6); implemented by agrl/rl/advantages.py.

    `estimator` is "zscore", "no_std" (Dr.GRPO), "rloo", or a name registered with
    agrl.rl.advantages.register_advantage_fn. ddof and eps are used by "zscore" only.
    """

    estimator: str = "zscore"
    ddof: int = 1
    eps: float = 1e-6
    clip: float | None = 2.0
    difficulty_filter: float | None = None  # drop groups with accuracy >= this (e.g. 0.9)

    def __post_init__(self):
        check(bool(self.estimator), "advantage.estimator", self.estimator, "must be non-empty")
        check(self.ddof in (0, 1), "advantage.ddof", self.ddof, "must be 0 or 1")
        check(self.eps >= 0, "advantage.eps", self.eps, "must be >= 0")
        check(self.clip is None or self.clip > 0, "advantage.clip", self.clip, "must be > 0")
        check(
            self.difficulty_filter is None or 0 < self.difficulty_filter <= 1,
            "advantage.difficulty_filter",
            self.difficulty_filter,
            "must be in (0, 1] or None",
        )


@dataclass(frozen=True)
class GuidanceConfig:
    """Adaptive guided replay, AGR (SPEC 5); implemented by agrl/rl/guidance.py."""

    enabled: bool = True
    # How a guided rollout sees the gold record: "prefix" forces the first tokens of the
    # gold response; "hint" samples it from the prompt plus a gold hint (deciding rule,
    # gold verdicts, label) and trains its tokens under the unmodified prompt
    # (docs/algorithm.md). Either way loss.forced_tokens decides how the tokens count.
    form: Literal["prefix", "hint"] = "prefix"
    tau: float = 0.25  # trigger: group label accuracy <= tau
    slots_per_batch: int = 8  # fixed number of guided rollout slots per batch
    max_level: int = 3  # 0: label only; 1..max_level: level/max_level of the rationale
    level_up_streak: int = 2  # failures in a row before the level rises
    ema_decay: float = 0.7  # EMA of unguided accuracy per prompt
    p_replay: float = 0.25  # chance an unsolved hard prompt re-enters a batch

    def __post_init__(self):
        check(self.form in ("prefix", "hint"), "guidance.form", self.form, "must be prefix or hint")
        check(0.0 <= self.tau <= 1.0, "guidance.tau", self.tau, "must be in [0, 1]")
        check(
            self.slots_per_batch >= 0,
            "guidance.slots_per_batch",
            self.slots_per_batch,
            "must be >= 0",
        )
        check(self.max_level >= 0, "guidance.max_level", self.max_level, "must be >= 0")
        check(
            self.level_up_streak >= 1,
            "guidance.level_up_streak",
            self.level_up_streak,
            "must be >= 1",
        )
        check(
            0.0 <= self.ema_decay < 1.0, "guidance.ema_decay", self.ema_decay, "must be in [0, 1)"
        )
        check(0.0 <= self.p_replay <= 1.0, "guidance.p_replay", self.p_replay, "must be in [0, 1]")
        if self.enabled and self.slots_per_batch == 0:
            warnings.warn(
                "guidance.enabled=True with slots_per_batch=0: AGR does nothing", stacklevel=2
            )


@dataclass(frozen=True)
class LossConfig:
    """GRPO objective, SFT and DPO (SPEC 6); implemented by agrl/rl/loss.py.

    `fn` names a policy loss registered with agrl.rl.loss.register_loss_fn; "grpo" is the
    built-in clipped surrogate.
    """

    fn: str = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None  # c > 1: bound the loss of negative advantages by c * A
    kl_beta: float = 0.02
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_clamp: float | None = 10.0  # clamp of log(pi/pi_ref) before the estimator
    aggregation: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "constant-normalised"
    ] = "seq-mean-token-mean"
    constant_norm: int | None = None  # divisor for constant-normalised; None: padded length T
    mu: int = 1  # updates per batch
    # How the forced tokens of guided rollouts count (SPEC 5; agrl.rl.guidance).
    forced_tokens: Literal["include", "mask", "mask_if_negative", "offpolicy"] = "mask_if_negative"
    offpolicy_gamma: float = 0.1  # LUFFY weight p / (p + gamma) of forced_tokens=offpolicy
    entropy: bool = False  # compute the policy entropy for metrics
    dpo_beta: float = 0.1

    def __post_init__(self):
        check(bool(self.fn), "loss.fn", self.fn, "must be non-empty")
        check(self.eps_low >= 0, "loss.eps_low", self.eps_low, "must be >= 0")
        check(self.eps_low < 1, "loss.eps_low", self.eps_low, "must be < 1 (ratio floor > 0)")
        check(
            self.eps_high >= self.eps_low,
            "loss.eps_high",
            self.eps_high,
            f"must be >= eps_low={self.eps_low}",
        )
        check(
            self.dual_clip is None or self.dual_clip > 1,
            "loss.dual_clip",
            self.dual_clip,
            "must be > 1 or None",
        )
        check(self.kl_beta >= 0, "loss.kl_beta", self.kl_beta, "must be >= 0")
        check(
            self.kl_clamp is None or self.kl_clamp > 0,
            "loss.kl_clamp",
            self.kl_clamp,
            "must be > 0 or None",
        )
        check(
            self.constant_norm is None or self.constant_norm >= 1,
            "loss.constant_norm",
            self.constant_norm,
            "must be >= 1 or None",
        )
        check(self.mu >= 1, "loss.mu", self.mu, "must be >= 1")
        check(self.offpolicy_gamma > 0, "loss.offpolicy_gamma", self.offpolicy_gamma, "must be > 0")
        check(self.dpo_beta > 0, "loss.dpo_beta", self.dpo_beta, "must be > 0")
        if self.kl_estimator == "k1" and self.kl_beta > 0 and self.mu == 1:
            warnings.warn(
                "loss.kl_estimator='k1' with mu=1: the k1 KL term has zero expected "
                "gradient on on-policy samples and silently does nothing",
                stacklevel=2,
            )
        if self.constant_norm is not None and self.aggregation != "constant-normalised":
            warnings.warn(
                f"loss.constant_norm={self.constant_norm} with aggregation="
                f"{self.aggregation!r}: constant_norm silently does nothing",
                stacklevel=2,
            )
