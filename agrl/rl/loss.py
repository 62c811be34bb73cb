"""Policy losses: GRPO (clipped surrogate + KL), SFT cross-entropy, sigmoid DPO (SPEC 6).

Every loss returns (loss, aux). aux holds sums, counts, minima and maxima only, so that
metrics can be summed over micro-batches and hosts and turned into floats outside jit.

GRPO, per response token t of sequence i (A_i its advantage, ratio rho = pi / pi_old):
    surrogate   s = min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)
    dual clip   s = max(s, c A) where A < 0                       (dual_clip = c > 1)
    KL          x = clamp(log pi_ref - log pi, +-kl_clamp)
                k1 = -x,  k2 = x^2 / 2,  k3 = exp(x) - 1 - x       (Schulman's estimators)
    token loss  l = -w s + beta k          (clipped tokens, w = forced-token weight)
                l = -w A + beta k          (offpolicy forced tokens: w = p / (p + gamma))
Active tokens: mask & (w > 0). Aggregation of l over active tokens:
    token-mean            sum_it l / sum_it 1
    seq-mean-token-mean   mean_i (sum_t l / n_i)             over sequences with n_i > 0
    seq-mean-token-sum    mean_i  sum_t l                    over sequences with n_i > 0
    constant-normalised   sum_it l / (n_seq * constant_norm)  (Dr.GRPO; T when None)
old_logps are the behaviour policy's logps stored at rollout time (mu >= 1 updates per
batch); with mu = 1 they equal the current logps numerically. They are always
stop-gradiented, so rho = 1 and grad rho = grad log pi on the first update.

Plugging in another policy loss: `register_loss_fn("mine", fn)` with the signature of
`grpo_loss`, and set `loss.fn=mine`; `policy_loss` dispatches on it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import ConfigError, LossConfig
from agrl.rl.guidance import forced_token_weights

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
_LOSS_FNS: dict[str, LossFn] = {}


def register_loss_fn(name: str, fn: LossFn) -> None:
    """Make `fn` (signature of `grpo_loss`) selectable as `loss.fn=name`."""
    _LOSS_FNS[name] = fn


def kl_estimate(
    logps: jax.Array, ref_logps: jax.Array, estimator: str, clamp: float | None
) -> jax.Array:
    """Per-token KL(pi || pi_ref) estimate [N, T] from sampled-token logps [N, T].

    x = log pi_ref - log pi, clamped to [-clamp, clamp] first (a token the reference
    finds impossible must not blow up k3 = exp(x) - 1 - x).
    """
    x = ref_logps - logps
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x**2
    if estimator == "k3":
        return jnp.exp(x) - 1.0 - x
    raise ConfigError(f"loss.kl_estimator={estimator!r}: must be k1, k2 or k3")


def clipped_surrogate(
    ratio: jax.Array, adv: jax.Array, eps_low: float, eps_high: float, dual_clip: float | None
) -> jax.Array:
    """s [N, T] = min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), then max(s, c A) for A < 0."""
    s = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    if dual_clip is not None:
        s = jnp.where(adv < 0, jnp.maximum(s, dual_clip * adv), s)
    return s


def aggregate(
    token_loss: jax.Array, active: jax.Array, mode: str, constant_norm: int | None
) -> tuple[jax.Array, jax.Array]:
    """(numerator, denominator) of the loss; loss = numerator / denominator.

    token_loss, active: [N, T]. Returning both lets a caller sum them over micro-batches.
    """
    active = active.astype(token_loss.dtype)
    per_seq_sum = (token_loss * active).sum(-1)  # [N]
    n_tok = active.sum(-1)  # [N]
    has_tok = (n_tok > 0).astype(token_loss.dtype)
    n_seq = has_tok.sum()
    if mode == "token-mean":
        return per_seq_sum.sum(), n_tok.sum()
    if mode == "seq-mean-token-mean":
        return (per_seq_sum / jnp.maximum(n_tok, 1.0)).sum(), n_seq
    if mode == "seq-mean-token-sum":
        return per_seq_sum.sum(), n_seq
    if mode == "constant-normalised":
        norm = token_loss.shape[-1] if constant_norm is None else constant_norm
        return per_seq_sum.sum(), n_seq * norm
    raise ConfigError(f"loss.aggregation={mode!r}: unknown")


def grpo_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    ref_logps: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    forced_mask: jax.Array,
    cfg: LossConfig,
    guidance_mode: str,
    gamma: float,
    *,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss of the module docstring and its aux sums.  Jittable; cfg, mode static.

    logps, old_logps, ref_logps: [N, T] f32 logps of the sampled tokens under the current,
    behaviour and reference policies; advantages [N]; mask [N, T] response tokens (pad = 0;
    zero the rows of difficulty-filtered groups here); forced_mask [N, T] tokens forced by
    guided replay; entropy [N, T] optional per-token policy entropy, for metrics only.
    """
    f32 = jnp.float32
    mask = mask.astype(bool)
    # Zero the padding first: pad logps may be -inf, and 0 * inf would poison the gradient.
    logps = jnp.where(mask, logps.astype(f32), 0.0)
    old_logps = jax.lax.stop_gradient(jnp.where(mask, old_logps.astype(f32), 0.0))
    ref_logps = jax.lax.stop_gradient(jnp.where(mask, ref_logps.astype(f32), 0.0))
    adv = advantages.astype(f32)[:, None]  # [N, 1]
    forced = forced_mask.astype(bool) & mask

    weight, use_clip = forced_token_weights(forced, advantages, logps, guidance_mode, gamma)
    active = mask & (jax.lax.stop_gradient(weight) > 0)  # [N, T]
    clipped = active & use_clip

    ratio = jnp.exp(logps - old_logps)
    surrogate = clipped_surrogate(ratio, adv, cfg.eps_low, cfg.eps_high, cfg.dual_clip)
    pg = -weight * jnp.where(use_clip, surrogate, adv)  # [N, T]
    kl = kl_estimate(logps, ref_logps, cfg.kl_estimator, cfg.kl_clamp)
    token_loss = pg + cfg.kl_beta * kl if cfg.kl_beta > 0 else pg

    num, den = aggregate(token_loss, active, cfg.aggregation, cfg.constant_norm)
    loss = num / jnp.maximum(den, 1e-8)

    # --- metrics: sums and counts only ---
    ratio_sg = jax.lax.stop_gradient(ratio)
    adv_b = jnp.broadcast_to(adv, ratio.shape)
    act_f = active.astype(f32)
    seq_active = active.any(-1)
    seq_f = seq_active.astype(f32)
    guided_seq = forced.any(-1).astype(f32)

    def tsum(x, where=active):
        return jnp.sum(jnp.where(where, x, 0.0))

    aux = {
        "loss_num": num,
        "loss_den": den,
        "n_tokens": act_f.sum(),
        "n_seqs": seq_f.sum(),
        "pg_sum": tsum(jax.lax.stop_gradient(pg)),
        "kl_sum": tsum(jax.lax.stop_gradient(kl)),
        "clip_tokens": clipped.astype(f32).sum(),
        "clip_low_sum": tsum(1.0, clipped & (adv_b < 0) & (ratio_sg < 1.0 - cfg.eps_low)),
        "clip_high_sum": tsum(1.0, clipped & (adv_b > 0) & (ratio_sg > 1.0 + cfg.eps_high)),
        "dual_clip_sum": (
            tsum(1.0, clipped & (adv_b < 0) & (ratio_sg > cfg.dual_clip))
            if cfg.dual_clip is not None
            else jnp.zeros((), f32)
        ),
        "ratio_sum": tsum(ratio_sg),
        "ratio_max": jnp.max(jnp.where(active, ratio_sg, -jnp.inf)),
        "ratio_min": jnp.min(jnp.where(active, ratio_sg, jnp.inf)),
        "adv_sum": jnp.sum(advantages * seq_f),
        "adv_sq_sum": jnp.sum(advantages**2 * seq_f),
        "guided_seqs": guided_seq.sum(),
        "guided_tokens": forced.astype(f32).sum(),
        "guided_active_tokens": tsum(1.0, forced & active),
        "guided_weight_sum": tsum(jax.lax.stop_gradient(weight), forced & active),
        "guided_adv_sum": jnp.sum(advantages * guided_seq),
    }
    if entropy is not None:
        aux["entropy_sum"] = tsum(jax.lax.stop_gradient(entropy.astype(f32)))
    return loss, aux


register_loss_fn("grpo", grpo_loss)


def policy_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    ref_logps: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    forced_mask: jax.Array,
    cfg: LossConfig,
    guidance_mode: str,
    gamma: float,
    *,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The policy loss named by cfg.fn (default "grpo"); same arguments as `grpo_loss`."""
    if cfg.fn not in _LOSS_FNS:
        raise ConfigError(f"loss.fn={cfg.fn!r}: not registered (known: {sorted(_LOSS_FNS)})")
    return _LOSS_FNS[cfg.fn](
        logps,
        old_logps,
        ref_logps,
        advantages,
        mask,
        forced_mask,
        cfg,
        guidance_mode,
        gamma,
        entropy=entropy,
    )


def sft_loss(
    logps: jax.Array, mask: jax.Array, label_weight: float = 1.0, extra_nll: jax.Array = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted token cross-entropy on response tokens: (-sum(w * logp) + extra_nll) / sum(w),
    w = mask with the first response token (the label, in label-first order) weighted
    label_weight.

    logps [N, T]: log-probabilities of the target tokens; mask [N, T]: response tokens,
    right-padded (column 0 is each response's first token). label_weight = 1: the plain
    token mean. extra_nll: an auxiliary sum over these rows (`verdict_nll`, weighted), added
    to the numerator. n_tokens is the weighted count sum(w), so micro-batches combine exactly.
    """
    m = mask.astype(jnp.float32)
    if label_weight != 1.0:
        m = m.at[:, 0].multiply(label_weight)
    nll_sum = -(m * jnp.where(mask.astype(bool), logps.astype(jnp.float32), 0.0)).sum()
    nll_sum = nll_sum + extra_nll
    n_tokens = m.sum()
    return nll_sum / jnp.maximum(n_tokens, 1.0), {"nll_sum": nll_sum, "n_tokens": n_tokens}


def verdict_readout(hidden: int, n_dims: int, n_codes: int, seed: int) -> np.ndarray:
    """The fixed random linear readout W [D, R, C] of SFT's auxiliary verdict loss: entries
    N(0, 1 / D), drawn from `seed` (numpy), never trained.  A fixed readout adds no
    parameter to the model, its checkpoints or its export; the model learns to make each
    verdict linearly readable from its hidden state through it."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((hidden, n_dims, n_codes)) / np.sqrt(hidden)
    return w.astype(np.float32)


def verdict_nll(
    h: jax.Array, readout: jax.Array, verdicts: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Auxiliary verdict loss at the label position (SFT's `sft.verdict_weight`).

    h [N, D]: hidden state at the prompt's last position (the one that predicts the label);
    readout [D, R, C] (`verdict_readout`); verdicts [N, R] int32: each dimension's code in
    the target response, -1 where it states none.  z = h @ readout [N, R, C];
    returns (sum over rows and stated dims of -log_softmax(z[n, r])[verdicts[n, r]],
    the number of stated (n, r) pairs).
    """
    z = jnp.einsum("nd,drc->nrc", h.astype(jnp.float32), readout.astype(jnp.float32))
    logp = jax.nn.log_softmax(z, axis=-1)
    known = verdicts >= 0
    picked = jnp.take_along_axis(logp, jnp.maximum(verdicts, 0)[..., None], axis=-1)[..., 0]
    return -jnp.where(known, picked, 0.0).sum(), known.astype(jnp.float32).sum()


def swap_label_inputs(
    first: jax.Array, label_ids: jax.Array, key: jax.Array, p: float
) -> jax.Array:
    """SFT's label noise: each response's first input token, when it is a label token, is
    replaced with probability p by another label's token (drawn uniformly from the other
    K - 1); any other first token is kept.

    first [N] int32: the first response token of each row; label_ids [K] int32 distinct.
    Returns [N] int32, the tokens to feed (the targets stay `first`).
    """
    k_swap, k_pick = jax.random.split(key)
    n_labels = label_ids.shape[0]
    hit = first[:, None] == label_ids[None, :]  # [N, K]
    current = jnp.argmax(hit, axis=1)  # [N]
    shift = jax.random.randint(k_pick, first.shape, 1, n_labels)  # [N] in 1..K-1
    other = label_ids[(current + shift) % n_labels]
    swap = (jax.random.uniform(k_swap, first.shape) < p) & hit.any(axis=1)
    return jnp.where(swap, other, first).astype(first.dtype)


def dpo_loss(
    chosen_logps: jax.Array,
    rejected_logps: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    beta: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sigmoid DPO (Rafailov et al. 2023).  All inputs [B]: response logps summed over tokens.

    margin = beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))
    loss   = mean_b -log sigmoid(margin)
    """
    f32 = jnp.float32
    chosen_reward = beta * (chosen_logps.astype(f32) - jax.lax.stop_gradient(ref_chosen))
    rejected_reward = beta * (rejected_logps.astype(f32) - jax.lax.stop_gradient(ref_rejected))
    margin = chosen_reward - rejected_reward
    losses = -jax.nn.log_sigmoid(margin)
    aux = {
        "loss_sum": losses.sum(),
        "n_pairs": jnp.asarray(margin.shape[0], f32),
        "accuracy_sum": (margin > 0).astype(f32).sum(),
        "margin_sum": jax.lax.stop_gradient(margin).sum(),
        "chosen_reward_sum": jax.lax.stop_gradient(chosen_reward).sum(),
        "rejected_reward_sum": jax.lax.stop_gradient(rejected_reward).sum(),
    }
    return losses.mean(), aux
