"""Building an RL run: `prepare_rl(cfg) -> RLRun`, the one public way to set up RL.

`agrl.train.stages.run_rl` wraps it with checkpoints, metrics and evaluation; notebooks and
scripts/bench_rl.py call it directly and then `RLRun.step(i)` per iteration, so they run
exactly what training runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from agrl.config import Config
from agrl.model.params import place_params
from agrl.parallel.distributed import load_on_host
from agrl.parallel.sharding import make_mesh
from agrl.rl.guidance import ReplayTable, from_state_dict, init_replay, to_state_dict
from agrl.rl.rewards import describe_reward, fallback_message
from agrl.rl.types import Rollout
from agrl.task.format import has_gold_rationale
from agrl.task.rules import RuleBook
from agrl.task.tokenizer import eos_ids, load_tokenizer
from agrl.train.loop import (
    RunError,
    key_data,
    load_policy,
    load_reference,
    load_task_data,
    resolve_model,
    resolve_task,
    say,
)
from agrl.train.pool import PromptPool, build_pool
from agrl.train.preflight import check_lengths, check_vocab
from agrl.train.rollout import BatchSampler, RLContext, make_rl_context, rl_iteration
from agrl.train.steps import TrainState, init_sharded_train_state, make_optimizer


@dataclasses.dataclass
class RLRun:
    """An RL run's state between steps (what run_rl checkpoints) and its jitted context."""

    cfg: Config  # resolved: cfg.model is the policy's
    ctx: RLContext
    state: TrainState  # sharded by the rules table over ctx.mesh
    ref_params: Any  # the frozen reference, placed like the policy
    replay: ReplayTable
    batches: BatchSampler
    key: jax.Array  # base key: step i runs on fold_in(key, i)

    def step(self, step: int) -> tuple[dict[str, float], Rollout]:
        """Draw the next prompts (shuffled pass + AGR replay) and run one `rl_iteration`."""
        g = self.cfg.guidance
        idx, n_replayed = self.batches.next(
            self.cfg.train.prompts_per_step, self.replay if g.enabled else None, g.p_replay, g.tau
        )
        self.state, self.replay, m, rollout = rl_iteration(
            self.ctx, self.state, self.ref_params, self.replay, idx,
            jax.random.fold_in(self.key, step), step,
        )  # fmt: skip
        m["replayed"] = float(n_replayed)
        return m, rollout

    def arrays(self) -> dict:
        """The checkpointed arrays (the host part is `batches.state_dict()`)."""
        return {
            "train": self.state,
            "key": key_data(self.key),
            "replay": to_state_dict(self.replay),
        }

    def load(self, arrays: dict, host: dict) -> None:
        """Continue from a checkpoint's arrays and host state."""
        self.state, self.key = arrays["train"], jax.random.wrap_key_data(arrays["key"])
        self.replay = from_state_dict(arrays["replay"])
        self.batches.load_state_dict(host["batches"])


def prepare_rl(
    cfg: Config,
    records: list[dict] | None = None,
    *,
    tokenizer=None,
    pool: PromptPool | None = None,
    params=None,
    eos: tuple[int, ...] | None = None,
) -> RLRun:
    """Everything an RL run needs, built once; run_rl adds checkpoints, metrics and evals.

    tokenizer: default paths.tokenizer. Prompts: `pool`, else built from `records`, else
    from paths.train_data; the rule book is cfg.task.rule_book, switched to label_only when
    the records carry nothing but labels (agrl.train.loop.resolve_task; RLRun.cfg says
    which). Policy: `params` (also the reference), else paths.init (cfg.model
    then comes from that directory) with the reference paths.ref (default: the policy).
    eos: the sampler's stop ids (default: the tokenizer's). The mesh is cfg.mesh; policy,
    optimizer state and reference are placed on it by the rules table.
    """
    if params is None:
        cfg = resolve_model(cfg)  # the model of paths.init, before the pre-flight checks
    tok = load_tokenizer(cfg.paths.tokenizer) if tokenizer is None else tokenizer
    if pool is None:
        if records is None:
            cfg, book, records = load_task_data(cfg)
        else:
            cfg, book = resolve_task(cfg, records)
        pool = _rl_pool(cfg, records, tok, book)
    key = jax.random.key(cfg.train.seed)
    ref_params = params
    if params is None:
        with load_on_host():  # read on the host CPU; each device then receives only its shards
            params, cfg = load_policy(cfg, key)
            ref_params = load_reference(cfg, params)
    check_vocab(cfg, tok)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    mesh = make_mesh(cfg.mesh)  # policy, reference, optimizer state and batches follow it
    ref_params = place_params(ref_params, cfg.model, mesh)  # fresh buffers: never donated
    ctx = make_rl_context(cfg, pool, tok, optimizer, eos_ids(tok) if eos is None else eos, mesh)
    params = place_params(params, cfg.model, mesh)
    state = init_sharded_train_state(params, cfg.model, optimizer, mesh)
    batches = BatchSampler(len(pool), cfg.train.seed)
    return RLRun(cfg, ctx, state, ref_params, init_replay(len(pool)), batches, key)


def _rl_pool(cfg: Config, records: list[dict], tok, book: RuleBook) -> PromptPool:
    """The prompt pool, after the checks that need the records (the largest prompt
    bucket); says at start-up which reward and guidance are active, and when the step
    reward falls back to labels."""
    hint = cfg.guidance.enabled and cfg.guidance.form == "hint"
    pool = build_pool(records, tok, cfg.train.response_order, book,
                      hint_max_level=cfg.guidance.max_level if hint else None)  # fmt: skip
    check_lengths(cfg, cfg.paths.train_data, records, pool.prompt_ids)
    if hint:  # the longest hint (the top level) must fit the buckets too
        what = "prompt with its top-level guidance hint (guidance.form=hint)"
        check_lengths(cfg, cfg.paths.train_data, records, pool.hint_ids[-1], what=what)
    if cfg.train.prompts_per_step > len(records):
        raise RunError(
            f"{cfg.paths.train_data}: train.prompts_per_step={cfg.train.prompts_per_step} "
            f"distinct prompts per step, but the file has {len(records)} records"
        )
    say(describe_reward(cfg.reward, book))
    g = cfg.guidance
    if not g.enabled:
        say("guidance: off")
    else:
        n_label = sum(not has_gold_rationale(r) for r in records)
        form = (
            "hint: guided rollouts see the gold rule, verdicts and label in the prompt"
            if g.form == "hint" else "prefix: level 0 forces the gold label"
        )  # fmt: skip
        say(
            f"guidance: AGR, levels 0..{g.max_level} ({form})"
            + (f"; label only for {n_label} records without a gold rationale" if n_label else "")
        )
    message = fallback_message(pool.has_verdicts, book)
    if message:
        say(message)
    return pool


__all__ = ["RLRun", "prepare_rl"]
