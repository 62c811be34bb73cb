"""The per-step RL metrics (SPEC 5, 6): one host reduction of a Rollout and the loss aux.

Host numpy only, after jit: the loss returns sums, counts, minima and maxima
(agrl.rl.loss), one dict per update; here they become means over the mu updates of a
batch. Every aux value of `grpo_loss` is reported; an aux key this module does not know
(a registered loss's own) is reported as its mean per update under its own name.
Names are documented in docs/training.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from agrl.rl.rewards import COMPONENTS
from agrl.rl.types import Rollout

# aux sum -> metric = sum over updates / active tokens over updates
PER_TOKEN = {
    "kl_sum": "kl",
    "entropy_sum": "entropy",
    "ratio_sum": "ratio_mean",
    "pg_sum": "pg_loss",
    "dual_clip_sum": "dual_clip_frac",  # tokens where the dual clip (A < 0, rho > c) binds
    "clip_tokens": "clipped_surrogate_frac",  # under the clipped surrogate (not offpolicy)
}
# consumed by the formulas below (the rest of the aux is reported as a mean per update)
DERIVED = (
    {"loss", "grad_norm", "skipped", "clip_low_sum", "clip_high_sum", "adv_sum", "adv_sq_sum"}
    | {"ratio_max", "ratio_min", "guided_weight_sum", "guided_adv_sum", "guided_active_tokens"}
    | set(PER_TOKEN)
)


def rl_metrics(
    rollout: Rollout,
    updates: Sequence[Mapping[str, float]],
    *,
    guidance_enabled: bool,
    absent: Collection[str] = (),
) -> dict[str, float]:
    """Floats of one iteration: rewards and AGR of the rollout, then the mu updates' aux.

    updates: per update, {"loss", "grad_norm", "skipped"} and the loss aux (host scalars).
    absent: reward components left out (rewards.absent_components: r_step and r_cons of a
    label-only rule book).
    """
    reward, g = rollout.reward, rollout.guided  # [N], [N]
    group_guided = g.reshape(len(rollout.levels), -1).any(axis=1)  # [B]
    m = {
        f"reward/{k}": float(rollout.components[:, i].mean())
        for i, k in enumerate(COMPONENTS)
        if k not in absent
    }
    m.update(
        reward=float(reward.mean()),
        accuracy=float(rollout.acc_unguided.mean()),
        zero_variance_frac=float(rollout.zero_var_unguided.mean()),
        zero_variance_frac_mixed=float(rollout.zero_var.mean()),
        agr_trigger_rate=float(rollout.triggered.mean()) if guidance_enabled else 0.0,
        guided_frac=float(g.mean()),
        guidance_level_mean=float(rollout.levels[group_guided].mean()) if g.any() else 0.0,
        reward_guided=float(reward[g].mean()) if g.any() else float("nan"),
        reward_unguided=float(reward[~g].mean()),
        response_length=float(rollout.mask.sum(-1).mean()),
        forced_tokens=float(rollout.forced_mask.sum()),
    )
    mu = len(updates)
    total = {k: sum(float(u[k]) for u in updates) for k in updates[0]}
    n_tok, n_seq = max(total.get("n_tokens", 0.0), 1.0), max(total.get("n_seqs", 0.0), 1.0)
    low, high = total.get("clip_low_sum", 0.0), total.get("clip_high_sum", 0.0)
    adv_mean = total.get("adv_sum", 0.0) / n_seq
    m.update(
        loss=total["loss"] / mu,
        grad_norm=total["grad_norm"] / mu,
        skipped=total["skipped"],
        clip_frac=(low + high) / n_tok,  # tokens whose ratio left [1-eps_low, 1+eps_high]
        clip_low_frac=low / n_tok,
        clip_high_frac=high / n_tok,
        adv_mean=adv_mean,
        adv_std=max(total.get("adv_sq_sum", 0.0) / n_seq - adv_mean**2, 0.0) ** 0.5,
        guided_active_tokens=total.get("guided_active_tokens", 0.0) / mu,
    )
    m.update({name: total[key] / n_tok for key, name in PER_TOKEN.items() if key in total})
    if "ratio_max" in total:  # +-inf when no token was active: reported as absent (nan)
        hi = max(float(u["ratio_max"]) for u in updates)
        lo = min(float(u["ratio_min"]) for u in updates)
        m["ratio_max"] = hi if math.isfinite(hi) else float("nan")
        m["ratio_min"] = lo if math.isfinite(lo) else float("nan")
    if "guided_weight_sum" in total:  # mean forced-token weight where it counted
        n_forced = max(total.get("guided_active_tokens", 0.0), 1.0)
        m["guided_weight_mean"] = total["guided_weight_sum"] / n_forced
    if "guided_adv_sum" in total:  # mean advantage of the guided sequences
        m["guided_adv_mean"] = total["guided_adv_sum"] / max(total.get("guided_seqs", 0.0), 1.0)
    m.update({k: v / mu for k, v in total.items() if k not in DERIVED})
    return m


__all__ = ["rl_metrics"]
