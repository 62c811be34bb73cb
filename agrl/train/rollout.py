"""One RL iteration on the host, composing the jitted pieces (SPEC 1, 5, 6).

    sample G per prompt -> decode + parse -> RRS rewards -> group accuracy
      -> AGR: pick guided slots, force gold label + rationale prefix, re-roll those slots
      -> rewards of the mixed group -> advantages -> replay-table update
      -> reference (and, for mu > 1, old) log-probs -> mu jitted updates -> metrics

Everything numeric is a jitted pure function with static shapes: the guided re-rollout
always uses `guidance.slots_per_batch` rows (unused slots are forced to nothing and
discarded), so one iteration compiles once per prompt-length bucket. Host work is the
text decode and parse of N + S completions, timed separately in the metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import Config
from agrl.parallel.distributed import put_rows, to_host
from agrl.rl.advantages import compute_advantages, group_stats
from agrl.rl.guidance import (
    ReplayTable,
    build_forced_prefixes,
    sample_replay,
    select_guided_slots,
    update_replay,
)
from agrl.rl.rewards import COMPONENTS, compute_rewards
from agrl.sampling import make_sampler
from agrl.task.data import (
    decode_completions,
    encode_prompts,
    encode_responses,
    has_verdicts,
    pad_left,
    pad_right,
    verdict_array,
)
from agrl.task.format import parse_batch
from agrl.task.rules import R
from agrl.train.steps import TrainState, make_logps_fn, make_rl_step, train_state_shardings


@dataclass(frozen=True)
class PromptPool:
    """The RL prompt pool as host arrays.  M prompts, Lg = longest gold response."""

    prompt_ids: tuple[np.ndarray, ...]  # M token-id vectors (variable length)
    gold_label: np.ndarray  # [M] int32 1..4
    gold_verdicts: np.ndarray  # [M, R] int32 (-1 unknown)
    has_verdicts: np.ndarray  # [M] bool
    gold_ids: np.ndarray  # [M, Lg] int32 gold response tokens (label first), pad after
    gold_len: np.ndarray  # [M] int32
    query_type: tuple[str, ...]  # M names ("" when unknown)

    def __len__(self) -> int:
        return len(self.prompt_ids)


class BatchSampler:
    """Which prompts form each RL batch: a shuffled pass over the pool (reshuffled every
    epoch) plus AGR replay of unsolved hard prompts.  Its whole state is `state_dict()`."""

    def __init__(self, pool_size: int, seed: int):
        self.pool_size = pool_size
        self.rng = np.random.default_rng(seed)
        self.epoch, self.cursor = 0, 0
        self.order = self.rng.permutation(pool_size)

    def next(self, n: int, replay: ReplayTable | None, p_replay: float, tau: float):
        """n distinct prompt indices; replayed ones first.  Returns (indices [n], n_replayed)."""
        chosen = np.zeros(0, np.int64)
        if replay is not None and p_replay > 0:
            chosen = sample_replay(replay, self.rng, n // 2, p_replay, tau)
        out = list(chosen)
        while len(out) < n:
            if self.cursor >= self.pool_size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self.rng.permutation(self.pool_size)
            i = int(self.order[self.cursor])
            self.cursor += 1
            if i not in out:
                out.append(i)
        return np.asarray(out, np.int64), len(chosen)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "order": self.order.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.order = np.asarray(state["order"], np.int64)
        self.rng.bit_generator.state = state["rng"]


@dataclass
class RLContext:
    """Everything an RL iteration needs that does not change between iterations."""

    cfg: Config
    pool: PromptPool
    pad_id: int
    tokenizer: Any
    sampler: Any
    guided_sampler: Any
    rl_step: Any
    logps_fn: Any
    score: Any  # jitted: parsed arrays + gold -> (reward, components, advantages, stats)
    mesh: Any = None  # jax Mesh: batches split over (data, fsdp); None: one device
    state_shardings: Any = None  # TrainState of NamedShardings (the rules table), with mesh


def make_rl_context(
    cfg: Config, pool: PromptPool, tokenizer, optimizer, eos_ids, mesh=None
) -> RLContext:
    """Build the samplers and jitted functions once for a config (under `mesh` if given:
    the samplers jitted with shardings, and batches placed as global arrays split on rows)."""
    scfg, G = cfg.sampling, cfg.sampling.group_size
    pad_id = int(tokenizer.pad_token_id)

    def new_sampler(**kw):
        return make_sampler(cfg.model, scfg, eos_ids=tuple(eos_ids), pad_id=pad_id, mesh=mesh, **kw)

    sampler = new_sampler()
    slots = cfg.guidance.slots_per_batch if cfg.guidance.enabled else 0
    guided_sampler = new_sampler(group_size=1) if slots > 0 else None

    def score(pred_label, pred_verdicts, format_ok, gold_label, gold_verdicts, has_verdicts):
        reward, comps = compute_rewards(
            pred_label, pred_verdicts, format_ok, gold_label, gold_verdicts, has_verdicts,
            cfg.reward,
        )  # fmt: skip
        correct = comps[:, COMPONENTS.index("correct")].reshape(-1, G)
        stats = group_stats(correct, reward.reshape(-1, G), cfg.loss.difficulty_filter)
        adv = compute_advantages(reward.reshape(-1, G), cfg.advantage)
        return reward, comps, adv, stats

    return RLContext(
        cfg=cfg,
        pool=pool,
        pad_id=pad_id,
        tokenizer=tokenizer,
        sampler=sampler,
        guided_sampler=guided_sampler,
        rl_step=make_rl_step(
            cfg.model, cfg.loss, cfg.guidance, optimizer, temperature=_logp_temperature(cfg)
        ),
        logps_fn=make_logps_fn(cfg.model, temperature=_logp_temperature(cfg)),
        score=jax.jit(score),
        mesh=mesh,
        state_shardings=None if mesh is None else train_state_shardings(cfg.model, optimizer, mesh),
    )


def _logp_temperature(cfg: Config) -> float:
    """Log-probs are those of the sampling distribution (logits / temperature), as the
    sampler returns them; greedy (temperature 0) scores at temperature 1."""
    return cfg.sampling.temperature if cfg.sampling.temperature > 0 else 1.0


def _parse(ctx: RLContext, tokens, mask):
    labels, verdicts, ok = parse_batch(
        decode_completions(ctx.tokenizer, tokens, mask), ctx.cfg.train.response_order
    )
    return labels.astype(np.int32), verdicts.astype(np.int32), ok.astype(bool)


def rl_iteration(
    ctx: RLContext,
    state: TrainState,
    ref_params: Any,
    replay: ReplayTable,
    batch_idx: np.ndarray,
    key: jax.Array,
    step: int,
) -> tuple[TrainState, ReplayTable, dict[str, float], dict[str, np.ndarray]]:
    """One RL iteration on prompts batch_idx [B].  Returns (state, replay, metrics, rollout)
    where rollout holds the host arrays of the batch (tokens, rewards, guided, ...) for
    inspection.  key is this step's key (the caller folds in the step)."""
    cfg, pool, G = ctx.cfg, ctx.pool, ctx.cfg.sampling.group_size
    B, N = len(batch_idx), len(batch_idx) * G
    t0 = time.perf_counter()
    seqs = [pool.prompt_ids[i] for i in batch_idx]
    # Pad to the sampler's length bucket, so that sampling, log-probs and the update all
    # see one shape per bucket and compile once (not once per longest prompt).
    bucket = ctx.sampler.bucket(max(len(x) for x in seqs))
    prompt_ids, prompt_mask = pad_left(seqs, bucket, ctx.pad_id)
    k_sample, k_guided = jax.random.split(key)

    # 1. G unguided samples per prompt.
    out = ctx.sampler(state.params, prompt_ids, prompt_mask, k_sample)
    tokens, gen_mask = np.array(to_host(out.tokens)), np.array(to_host(out.mask))  # writable
    forced_mask = np.zeros_like(gen_mask)
    t1 = time.perf_counter()

    # 2. Parse and score; group accuracy of the unguided rollouts.
    gold = (
        np.repeat(pool.gold_label[batch_idx], G),
        np.repeat(pool.gold_verdicts[batch_idx], G, axis=0),
        np.repeat(pool.has_verdicts[batch_idx], G),
    )
    parsed = _parse(ctx, tokens, gen_mask)
    reward, comps, adv, stats = ctx.score(*parsed, *gold)
    acc_unguided = np.asarray(stats["acc"])
    zero_var_unguided = np.asarray(stats["zero_var"])
    t2 = time.perf_counter()

    # 3. AGR: replace the lowest-reward rollouts of failing groups by guided ones.
    guided = np.zeros((B, G), bool)
    levels = replay.level[batch_idx]
    t_guided = 0.0
    if ctx.guided_sampler is not None:
        S = cfg.guidance.slots_per_batch
        guided = np.asarray(
            select_guided_slots(
                jnp.asarray(acc_unguided), reward.reshape(B, G), cfg.guidance.tau, G, S
            )
        )
        if guided.any():
            tg = time.perf_counter()
            forced_ids, forced_len = build_forced_prefixes(
                jnp.asarray(pool.gold_ids[batch_idx]),
                jnp.asarray(pool.gold_len[batch_idx]),
                jnp.asarray(levels),
                cfg.guidance.max_level,
                G,
                jnp.asarray(guided),
                ctx.pad_id,
            )
            rows = np.flatnonzero(guided.reshape(-1))  # <= S rows, in row order
            take = np.concatenate([rows, np.full(S - rows.size, rows[0])])  # static S rows
            g_out = ctx.guided_sampler(
                state.params,
                prompt_ids[take // G],
                prompt_mask[take // G],
                k_guided,
                np.asarray(forced_ids)[take],
                np.where(np.arange(S) < rows.size, np.asarray(forced_len)[take], 0),
            )
            n = rows.size
            tokens[rows] = to_host(g_out.tokens)[:n]
            gen_mask[rows] = to_host(g_out.mask)[:n]
            forced_mask[rows] = to_host(g_out.forced_mask)[:n]
            t_guided = time.perf_counter() - tg
            parsed = _parse(ctx, tokens, gen_mask)
            reward, comps, adv, stats = ctx.score(*parsed, *gold)
    t3 = time.perf_counter()

    triggered = acc_unguided <= cfg.guidance.tau
    if cfg.guidance.enabled:
        replay = update_replay(
            replay, batch_idx, acc_unguided, triggered, step, cfg.guidance,
            guided=guided.any(axis=1),
        )  # fmt: skip

    # 4. Advantages of the mixed group; difficulty-filtered groups get no tokens.
    keep = np.repeat(np.asarray(stats["keep"]), G)
    loss_mask = gen_mask & keep[:, None]
    batch = {
        "prompt_ids": np.repeat(prompt_ids, G, axis=0),
        "prompt_mask": np.repeat(prompt_mask, G, axis=0),
        "completion_ids": tokens,
        "completion_mask": loss_mask,
        "forced_mask": forced_mask & loss_mask,
        "advantages": np.asarray(adv).reshape(N),
    }
    # Under a mesh each process places only its own rows of the global batch.
    place = jnp.asarray if ctx.mesh is None else (lambda v: put_rows(v, ctx.mesh))
    batch = {k: place(v) for k, v in batch.items()}
    lp_args = tuple(batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids"))
    batch["ref_logps"] = ctx.logps_fn(ref_params, *lp_args, batch["completion_mask"])
    if cfg.loss.mu > 1:
        batch["old_logps"] = ctx.logps_fn(state.params, *lp_args, batch["completion_mask"])
    jax.block_until_ready(batch["ref_logps"])
    t4 = time.perf_counter()

    # 5. mu updates on the same batch.
    sums: dict[str, float] = {}
    for _ in range(cfg.loss.mu):
        state, m = ctx.rl_step(state, batch)
        if ctx.state_shardings is not None:
            # The step has no out_shardings: XLA may lay small leaves (norms) out otherwise;
            # put them back on the table so the next call neither recompiles nor drifts.
            state = jax.device_put(state, ctx.state_shardings)
        m = jax.device_get(m)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    t5 = time.perf_counter()

    metrics = _metrics(
        cfg, sums, np.asarray(reward), np.asarray(comps), acc_unguided, zero_var_unguided,
        np.asarray(stats["zero_var"]), guided, levels, gen_mask, forced_mask, triggered,
    )  # fmt: skip
    n_tok = float(gen_mask.sum())
    metrics.update(
        time_sample=t1 - t0 + t_guided,
        time_parse_reward=(t2 - t1) + (t3 - t2 - t_guided),
        time_ref_logps=t4 - t3,
        time_update=t5 - t4,
        time_iteration=t5 - t0,
        sample_tokens_per_s=n_tok / max(t1 - t0 + t_guided, 1e-9),
        train_tokens_per_s=n_tok * cfg.loss.mu / max(t5 - t4, 1e-9),
    )
    rollout = {
        "prompt_idx": batch_idx,
        "tokens": tokens,
        "mask": gen_mask,
        "forced_mask": forced_mask,
        "reward": np.asarray(reward),
        "components": np.asarray(comps),
        "advantages": np.asarray(adv).reshape(N),
        "guided": guided.reshape(N),
        "levels": levels,
        "acc_unguided": acc_unguided,
    }
    return state, replay, metrics, rollout


def _metrics(
    cfg, sums, reward, comps, acc_unguided, zero_var_unguided, zero_var_mixed, guided, levels,
    gen_mask, forced_mask, triggered,
) -> dict[str, float]:  # fmt: skip
    mu = cfg.loss.mu
    col = {name: comps[:, i] for i, name in enumerate(COMPONENTS)}
    g = guided.reshape(-1)
    m = {f"reward/{k}": float(v.mean()) for k, v in col.items()}
    m.update(
        reward=float(reward.mean()),
        accuracy=float(acc_unguided.mean()),
        zero_variance_frac=float(zero_var_unguided.mean()),
        zero_variance_frac_mixed=float(zero_var_mixed.mean()),
        agr_trigger_rate=float(triggered.mean()) if cfg.guidance.enabled else 0.0,
        guided_frac=float(g.mean()),
        guidance_level_mean=float(levels[guided.any(axis=1)].mean()) if g.any() else 0.0,
        reward_guided=float(reward[g].mean()) if g.any() else float("nan"),
        reward_unguided=float(reward[~g].mean()),
        response_length=float(gen_mask.sum(-1).mean()),
        forced_tokens=float(forced_mask.sum()),
        loss=sums.pop("loss") / mu,
        grad_norm=sums.pop("grad_norm") / mu,
        skipped=sums.pop("skipped"),
    )
    # The loss aux holds sums and counts (summed over the mu updates): turn them into means.
    n_tok, n_seq = max(sums.get("n_tokens", 0.0), 1.0), max(sums.get("n_seqs", 0.0), 1.0)
    for name, key in (("kl", "kl_sum"), ("entropy", "entropy_sum"), ("ratio_mean", "ratio_sum")):
        if key in sums:
            m[name] = sums[key] / n_tok
    clipped = sums.get("clip_low_sum", 0.0) + sums.get("clip_high_sum", 0.0)
    m["clip_frac"] = clipped / n_tok  # tokens whose ratio left [1-eps_low, 1+eps_high]
    m["clip_low_frac"] = sums.get("clip_low_sum", 0.0) / n_tok
    m["clip_high_frac"] = sums.get("clip_high_sum", 0.0) / n_tok
    adv_mean = sums.get("adv_sum", 0.0) / n_seq
    m["adv_mean"] = adv_mean
    m["adv_std"] = max(sums.get("adv_sq_sum", 0.0) / n_seq - adv_mean**2, 0.0) ** 0.5
    m["guided_active_tokens"] = sums.get("guided_active_tokens", 0.0) / mu
    return m


__all__ = [
    "BatchSampler",
    "PromptPool",
    "RLContext",
    "make_rl_context",
    "rl_iteration",
]


def build_pool(records: list[dict], tok, order: str) -> PromptPool:
    """Tokenised prompts and gold fields of a split (gold response = what AGR forces)."""
    prompts = [np.asarray(x, np.int32) for x in encode_prompts(tok, records, order)]
    gold_text = [r.get("gold_response", "") for r in records]
    gold = encode_responses(tok, gold_text)
    # The forced prefix never includes eos: guidance stops where the rationale ends.
    gold = [g[:-1] for g in gold]
    Lg = max(1, max(len(g) for g in gold))
    gold_ids, gold_mask = pad_right(gold, Lg, int(tok.pad_token_id))
    with_v = has_verdicts(records)
    verdicts = verdict_array(records) if with_v else np.full((len(records), R), -1, np.int32)
    return PromptPool(
        prompt_ids=tuple(prompts),
        gold_label=np.asarray([r["label"] for r in records], np.int32),
        gold_verdicts=verdicts,
        has_verdicts=np.full(len(records), with_v),
        gold_ids=gold_ids,
        gold_len=gold_mask.sum(-1).astype(np.int32),
        query_type=tuple(r.get("query_type", "") for r in records),
    )
