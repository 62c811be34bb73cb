"""Plain numpy re-implementations of every formula in agrl.rl.rewards / advantages / guidance /
loss, written independently of the jax code (per-sequence and per-token loops where that is
clearer), so that the jax functions can be checked against them option by option.
"""

from __future__ import annotations

import numpy as np

from agrl.task.rules import R, rule_label

# ---------------------------------------------------------------------------------------
# Rewards (SPEC 4)


def rewards(pred_label, pred_verdicts, format_ok, gold_label, gold_verdicts, has, cfg):
    n = len(pred_label)
    reward = np.zeros(n, np.float32)
    comps = np.zeros((n, 6), np.float32)
    for i in range(n):
        p, g = int(pred_label[i]), int(gold_label[i])
        correct = float(p == g)
        if cfg.ordinal:
            r_label = 1.0 - abs(p - g) / 3.0 if p > 0 else 0.0
        else:
            r_label = correct
        dims = [d for d in range(R) if has[i] and gold_verdicts[i, d] >= 0]
        if dims:
            r_step = sum(pred_verdicts[i, d] == gold_verdicts[i, d] for d in dims) / len(dims)
        else:
            r_step = float(rule_label(pred_verdicts[i]) == g)
        r_cons = float(rule_label(pred_verdicts[i]) == p)
        ok = bool(format_ok[i]) and 1 <= p <= 4
        if cfg.gate == "consistency":
            value, gate = r_cons * (cfg.w_label * r_label + cfg.w_step * r_step), r_cons
        elif cfg.gate == "label":
            value, gate = cfg.w_label * r_label + cfg.w_step * correct * r_step, correct
        else:
            value, gate = cfg.w_label * r_label + cfg.w_step * r_step, 1.0
        reward[i] = value if ok else cfg.format_fail
        comps[i] = (correct, r_label, r_step, r_cons, float(ok), gate)
    return reward, comps


# ---------------------------------------------------------------------------------------
# Advantages (SPEC 6)


def advantages(rewards_bg, estimator, ddof, eps, clip):
    r = np.asarray(rewards_bg, np.float64)
    out = np.zeros_like(r)
    b, g = r.shape
    for i in range(b):
        for j in range(g):
            if estimator == "zscore":
                out[i, j] = (r[i, j] - r[i].mean()) / (r[i].std(ddof=ddof) + eps)
            elif estimator == "no_std":
                out[i, j] = r[i, j] - r[i].mean()
            elif estimator == "rloo":
                out[i, j] = r[i, j] - np.delete(r[i], j).mean()
    if clip is not None:
        out = np.clip(out, -clip, clip)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Guidance (SPEC 5)


def slot_count(acc, g):
    c = int(round(acc * g))
    x = g * 0.5 - c  # exact in float64: an integer or a half-integer
    k = int(np.floor(x + 0.5))  # round half up
    return min(max(k, 1), g // 2)


def guided_slots(acc, rewards, tau, g, budget):
    """Round-robin allocation written as explicit rounds."""
    b = len(acc)
    wanted = {}
    for i in range(b):
        if acc[i] <= tau:
            order = sorted(range(g), key=lambda j, i=i: (rewards[i, j], j))
            wanted[i] = order[: slot_count(acc[i], g)]
    out = np.zeros((b, g), bool)
    left = budget
    for rnd in range(g):
        groups = sorted(
            (i for i in wanted if len(wanted[i]) > rnd), key=lambda i: (round(acc[i] * g), i)
        )
        for i in groups:
            if left == 0:
                return out
            out[i, wanted[i][rnd]] = True
            left -= 1
    return out


def forced_prefixes(gold_ids, gold_len, levels, max_level, g, guided, pad_id=0):
    b, lg = gold_ids.shape
    ids = np.full((b * g, lg), pad_id, gold_ids.dtype)
    lens = np.zeros(b * g, np.int32)
    for i in range(b):
        rationale = max(int(gold_len[i]) - 1, 0)
        frac = 0 if max_level == 0 else levels[i] / max_level
        length = min(1 + int(np.floor(frac * rationale + 0.5)), int(gold_len[i]))
        for j in range(g):
            if guided[i, j]:
                lens[i * g + j] = length
                ids[i * g + j, :length] = gold_ids[i, :length]
    return ids, lens


def forced_weights(forced_mask, adv, logps, mode, gamma):
    n, t = forced_mask.shape
    w = np.ones((n, t), np.float64)
    clip = np.ones((n, t), bool)
    for i in range(n):
        for s in range(t):
            if not forced_mask[i, s]:
                continue
            if mode == "mask":
                w[i, s] = 0.0
            elif mode == "mask_if_negative":
                w[i, s] = float(adv[i] > 0)
            elif mode == "offpolicy":
                p = np.exp(logps[i, s])
                w[i, s] = p / (p + gamma)
                clip[i, s] = False
    return w, clip


# ---------------------------------------------------------------------------------------
# Losses (SPEC 6)


def kl(logps, ref_logps, estimator, clamp):
    x = ref_logps - logps
    if clamp is not None:
        x = np.clip(x, -clamp, clamp)
    return {"k1": -x, "k2": 0.5 * x * x, "k3": np.exp(x) - 1 - x}[estimator]


def grpo_loss(logps, old, ref, adv, mask, forced_mask, cfg, mode, gamma):
    """Returns (loss, per-token loss [N, T], active [N, T])."""
    logps, old, ref = (np.where(mask, a, 0.0).astype(np.float64) for a in (logps, old, ref))
    forced = forced_mask & mask
    w, use_clip = forced_weights(forced, adv, logps, mode, gamma)
    active = mask & (w > 0)
    n, t = logps.shape
    tok = np.zeros((n, t))
    k = kl(logps, ref, cfg.kl_estimator, cfg.kl_clamp)
    for i in range(n):
        a = adv[i]
        for s in range(t):
            rho = np.exp(logps[i, s] - old[i, s])
            if use_clip[i, s]:
                lo, hi = 1 - cfg.eps_low, 1 + cfg.eps_high
                sur = min(rho * a, min(max(rho, lo), hi) * a)
                if cfg.dual_clip is not None and a < 0:
                    sur = max(sur, cfg.dual_clip * a)
            else:
                sur = a
            tok[i, s] = -w[i, s] * sur + cfg.kl_beta * k[i, s]
    n_tok = active.sum(1)
    seqs = [i for i in range(n) if n_tok[i] > 0]
    if cfg.aggregation == "token-mean":
        loss = tok[active].sum() / max(active.sum(), 1)
    elif cfg.aggregation == "seq-mean-token-mean":
        loss = sum(tok[i][active[i]].mean() for i in seqs) / max(len(seqs), 1)
    elif cfg.aggregation == "seq-mean-token-sum":
        loss = sum(tok[i][active[i]].sum() for i in seqs) / max(len(seqs), 1)
    else:
        norm = t if cfg.constant_norm is None else cfg.constant_norm
        loss = tok[active].sum() / max(len(seqs) * norm, 1)
    return loss, tok, active


def sft_loss(logps, mask, label_weight=1.0):
    """Weighted mean of -logp over response tokens; column 0 (the label) weighs label_weight."""
    w = mask.astype(np.float64)
    w[:, 0] *= label_weight
    nll = -np.where(mask.astype(bool), logps.astype(np.float64), 0.0)
    return (w * nll).sum() / w.sum()


def verdict_nll(h, readout, verdicts):
    """Sum over rows n and stated dims r (code >= 0) of -log softmax(h[n] @ readout[:, r])
    at the stated code, and the number of stated pairs (float64)."""
    total, count = 0.0, 0
    for n in range(h.shape[0]):
        for r in range(readout.shape[1]):
            if verdicts[n, r] < 0:
                continue
            z = h[n].astype(np.float64) @ readout[:, r].astype(np.float64)
            log_z = z.max() + np.log(np.exp(z - z.max()).sum())
            total += log_z - z[verdicts[n, r]]
            count += 1
    return total, count


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return np.mean(np.log1p(np.exp(-margin)))
