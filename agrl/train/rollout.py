"""One RL iteration on the host, composing the jitted pieces (SPEC 1, 5, 6).

    sample G per prompt -> decode + parse -> score and guide (jit: rewards, group stats,
      advantages, AGR slots and forced prefixes) -> guided re-roll of those slots
      -> rescore the mixed group -> replay-table update -> reference (and, for mu > 1,
      old) log-probs -> mu jitted updates -> metrics

Everything numeric is a jitted pure function with static shapes: the guided re-rollout
always uses `guidance.slots_per_batch` rows (unused slots are forced to nothing and
discarded), so one iteration compiles once per prompt-length bucket. Host work is the
text decode and parse of N + S completions, timed separately in the metrics. The data
between the steps is typed (agrl.rl.types): Parsed, Gold, Scores, Rollout, RLBatch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from agrl.config import Config
from agrl.parallel.distributed import put_rows, to_host
from agrl.parallel.sharding import data_parallel_size
from agrl.rl.guidance import ReplayTable, sample_replay, update_replay
from agrl.rl.metrics import rl_metrics
from agrl.rl.rewards import absent_components, parsed_to_arrays
from agrl.rl.score import make_scorer
from agrl.rl.types import Parsed, RLBatch, Rollout, Scores
from agrl.sampling import make_sampler
from agrl.task.data import (
    decode_completions,
    pad_left,
)
from agrl.task.rules import RuleBook, load_rule_book
from agrl.train.pool import PromptPool
from agrl.train.steps import TrainState, make_logps_fn, make_rl_step


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
        if n > self.pool_size:
            raise ValueError(f"{n} distinct indices asked of a pool of {self.pool_size}")
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
    guided_sampler: Any  # None without AGR slots
    rl_step: Any  # jit(state, RLBatch) -> (state, metrics)
    logps_fn: Any  # jit(params, prompt_ids, prompt_mask, completion_ids, mask) -> logps
    score: Any  # jit(Parsed, Gold, levels, slots=) -> Scores (agrl.rl.score)
    mesh: Any = None  # jax Mesh: batches split over (data, fsdp); None: one device
    book: RuleBook | None = None  # the rule book in force (task.rule_book)


def guided_slots(cfg: Config) -> int:
    """The guided re-rollout's static row count (0: no AGR)."""
    return cfg.guidance.slots_per_batch if cfg.guidance.enabled else 0


def make_rl_context(
    cfg: Config, pool: PromptPool, tokenizer, optimizer, eos_ids, mesh=None
) -> RLContext:
    """Build the samplers and jitted functions once for a config (under `mesh` if given:
    the sharded sampler, steps jitted with the mesh's shardings, batches as global arrays
    split on rows, so B * G must be divisible by the data-parallel size)."""
    pad_id = int(tokenizer.pad_token_id)
    if mesh is not None:
        n, dp = cfg.train.prompts_per_step * cfg.sampling.group_size, data_parallel_size(mesh)
        if n % dp:
            raise ValueError(
                f"train.prompts_per_step * sampling.group_size = {n} rollouts are not "
                f"divisible by the mesh's data-parallel size {dp} (mesh.data * mesh.fsdp)"
            )

    def new_sampler(**kw):  # the one place samplers are made
        kw |= dict(eos_ids=tuple(eos_ids), pad_id=pad_id, mesh=mesh)
        return make_sampler(cfg.model, cfg.sampling, **kw)

    temperature = _logp_temperature(cfg)
    book = load_rule_book(cfg.task.rule_book)
    return RLContext(
        cfg=cfg,
        pool=pool,
        pad_id=pad_id,
        tokenizer=tokenizer,
        sampler=new_sampler(),
        guided_sampler=new_sampler(group_size=1) if guided_slots(cfg) > 0 else None,
        rl_step=make_rl_step(
            cfg.model, cfg.loss, cfg.guidance, optimizer, temperature, mesh=mesh, memory=cfg.memory
        ),
        logps_fn=make_logps_fn(cfg.model, temperature, mesh=mesh, memory=cfg.memory),
        score=make_scorer(cfg, pad_id, book),
        mesh=mesh,
        book=book,
    )


def _logp_temperature(cfg: Config) -> float:
    """Log-probs are those of the sampling distribution (logits / temperature), as the
    sampler returns them; greedy (temperature 0) scores at temperature 1."""
    return cfg.sampling.temperature if cfg.sampling.temperature > 0 else 1.0


def rl_iteration(
    ctx: RLContext,
    state: TrainState,
    ref_params: Any,
    replay: ReplayTable,
    batch_idx: np.ndarray,
    key: jax.Array,
    step: int,
) -> tuple[TrainState, ReplayTable, dict[str, float], Rollout]:
    """One RL iteration on prompts batch_idx [B] (module docstring).  Returns (state, replay,
    metrics, rollout), rollout the host arrays of the mixed group for inspection.  key is
    this step's key (the caller folds in the step)."""
    cfg, clock, S = ctx.cfg, StageClock(), guided_slots(ctx.cfg)
    k_sample, k_guided = jax.random.split(key)
    gold, levels = ctx.pool.gold(batch_idx), replay.level[batch_idx]
    with clock("sample"):
        prompt_ids, prompt_mask = _prompts(ctx, batch_idx)
        tokens, mask, forced_mask = _sample(
            ctx.sampler, state.params, prompt_ids, prompt_mask, k_sample
        )
    with clock("parse_reward"):
        parsed = _parse(ctx, tokens, mask)
        scores = unguided = jax.device_get(ctx.score(parsed, gold, levels, slots=S))
    if unguided.guided.any():  # AGR: the chosen rows are re-rolled with gold guidance
        with clock("sample"):
            _guided_reroll(ctx, state.params, prompt_ids, prompt_mask, unguided, k_guided,
                           out=(tokens, mask, forced_mask), hints=(batch_idx, levels))  # fmt: skip
        with clock("parse_reward"):
            parsed = _parse(ctx, tokens, mask)
            scores = jax.device_get(ctx.score(parsed, gold, levels, slots=0))
    rollout = _rollout(batch_idx, tokens, mask, forced_mask, levels, unguided, scores)
    if cfg.guidance.enabled:
        replay = update_replay(
            replay, batch_idx, unguided.acc, unguided.triggered, step, cfg.guidance,
            guided=unguided.guided.any(axis=1),
        )  # fmt: skip
    with clock("ref_logps"):
        batch = jax.block_until_ready(
            _rl_batch(ctx, state.params, ref_params, prompt_ids, prompt_mask, rollout)
        )
    with clock("update"):
        updates = []
        for _ in range(cfg.loss.mu):  # mu updates on the same batch
            state, m = ctx.rl_step(state, batch)
            updates.append(m)
        updates = jax.device_get(updates)
    metrics = rl_metrics(
        rollout, updates, guidance_enabled=cfg.guidance.enabled, absent=absent_components(ctx.book)
    )
    metrics.update(clock.metrics(float(mask.sum()), cfg.loss.mu))
    return state, replay, metrics, rollout


class StageClock:
    """Wall seconds per stage of one iteration (a stage may be entered several times)."""

    def __init__(self):
        self.start, self.seconds = time.perf_counter(), defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - t

    def metrics(self, sampled_tokens: float, mu: int) -> dict[str, float]:
        s = self.seconds
        return {
            **{f"time_{k}": s[k] for k in ("sample", "parse_reward", "ref_logps", "update")},
            "time_iteration": time.perf_counter() - self.start,
            "sample_tokens_per_s": sampled_tokens / max(s["sample"], 1e-9),
            "train_tokens_per_s": sampled_tokens * mu / max(s["update"], 1e-9),
        }


def _prompts(ctx: RLContext, batch_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [B, P] at the sampler's length bucket, so that sampling, log-probs
    and the update all see one shape per bucket and compile once (not once per longest
    prompt)."""
    seqs = [ctx.pool.prompt_ids[i] for i in batch_idx]
    return pad_left(seqs, ctx.sampler.bucket(max(len(x) for x in seqs)), ctx.pad_id)


def _sample(sampler, params, prompt_ids, prompt_mask, key, *forced):
    """Host (writable) tokens, generated mask and forced mask [rows, T] of one sampler call."""
    out = sampler(params, prompt_ids, prompt_mask, key, *forced)
    forced_mask = out.forced_mask if forced else np.zeros(out.mask.shape, bool)
    return tuple(np.array(to_host(x)) for x in (out.tokens, out.mask, forced_mask))


def _parse(ctx: RLContext, tokens: np.ndarray, mask: np.ndarray) -> Parsed:
    return parsed_to_arrays(
        decode_completions(ctx.tokenizer, tokens, mask), ctx.cfg.train.response_order, ctx.book
    )


def _guided_reroll(ctx, params, prompt_ids, prompt_mask, scores: Scores, key, out, hints) -> None:
    """Re-roll the guided rows of scores.guided [B, G] and write them into out = (tokens,
    mask, forced_mask) [N, T].  The sampler always gets S = slots_per_batch rows (static
    shape): the guided rows in row order, then copies of the first, discarded.

    guidance.form=prefix: each row continues its forced gold prefix (copies: an empty one).
    guidance.form=hint: each row is sampled from its prompt with the gold hint at the
    prompt's level (hints = (batch_idx [B], levels [B])); every token it generates counts
    as a guided token (forced_mask), since the update scores it under the plain prompt."""
    G, S = ctx.cfg.sampling.group_size, guided_slots(ctx.cfg)
    rows = np.flatnonzero(scores.guided.reshape(-1))  # <= S rows, in row order
    take = np.concatenate([rows, np.full(S - rows.size, rows[0])])
    if ctx.cfg.guidance.form == "hint":
        batch_idx, levels = hints
        seqs = [ctx.pool.hint_ids[levels[b]][batch_idx[b]] for b in take // G]
        ids, pmask = pad_left(seqs, ctx.sampler.bucket(max(len(x) for x in seqs)), ctx.pad_id)
        new = _sample(ctx.guided_sampler, params, ids, pmask, key)
        new[2][:] = new[1]  # all generated tokens are off-policy under the plain prompt
    else:
        forced_len = np.where(np.arange(S) < rows.size, scores.forced_len[take], 0)
        new = _sample(ctx.guided_sampler, params, prompt_ids[take // G], prompt_mask[take // G],
                      key, scores.forced_ids[take], forced_len)  # fmt: skip
    for dst, src in zip(out, new, strict=True):
        dst[rows] = src[: rows.size]


def _rollout(batch_idx, tokens, mask, forced_mask, levels, unguided: Scores, mixed: Scores):
    return Rollout(
        prompt_idx=batch_idx,
        tokens=tokens,
        mask=mask,
        forced_mask=forced_mask,
        reward=mixed.reward,
        components=mixed.components,
        advantages=mixed.advantages,
        guided=unguided.guided.reshape(-1),
        levels=levels,
        acc_unguided=unguided.acc,
        triggered=unguided.triggered,
        zero_var_unguided=unguided.zero_var,
        zero_var=mixed.zero_var,
        keep=mixed.keep,
    )


def _rl_batch(ctx, params, ref_params, prompt_ids, prompt_mask, ro: Rollout) -> RLBatch:
    """The update's input on the devices, with reference (and for mu > 1 old) log-probs.
    Difficulty-filtered groups keep their rows with no loss tokens."""
    G = ctx.cfg.sampling.group_size
    loss_mask = ro.mask & np.repeat(ro.keep, G)[:, None]
    host = dict(
        prompt_ids=np.repeat(prompt_ids, G, axis=0),
        prompt_mask=np.repeat(prompt_mask, G, axis=0),
        completion_ids=ro.tokens,
        completion_mask=loss_mask,
        forced_mask=ro.forced_mask & loss_mask,
        advantages=ro.advantages,
    )
    # Under a mesh each process places only its own rows of the global batch.
    x = {k: jnp.asarray(v) if ctx.mesh is None else put_rows(v, ctx.mesh) for k, v in host.items()}
    lp_args = (x["prompt_ids"], x["prompt_mask"], x["completion_ids"], x["completion_mask"])
    ref = ctx.logps_fn(ref_params, *lp_args)
    old = ctx.logps_fn(params, *lp_args) if ctx.cfg.loss.mu > 1 else None
    return RLBatch(**x, ref_logps=ref, old_logps=old)


__all__ = [
    "BatchSampler",
    "RLContext",
    "guided_slots",
    "make_rl_context",
    "rl_iteration",
]
