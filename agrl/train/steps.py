"""Factories that return jitted, pure training steps (SFT, DPO, RL) and log-prob functions.

Each `make_*` does the Python-level decisions once (configs are static) and returns a
function of (train state, [reference params], batch) -> (new state, metrics). The train
state is donated; policy and reference params are arguments, never closed over.

With a `mesh`, the factories jit with explicit shardings at the boundary: the train state
in and out by the rules table (`train_state_shardings`), reference params by
`model_param_shardings`, every batch field split on its rows over the data-parallel axes,
metrics replicated. So an update returns its state already laid out for the next one (the
loop never re-places it), and the mesh reaches `completion_logps`, whose residual-stream
constraints then partition the activations. Without a mesh: plain jit on one device.

With memory.micro_batch_rows > 0 an update scans over micro-batches of the batch's rows
(agrl.train.accumulate): every loss here is a ratio sum(num) / sum(den) whose numerator
and denominator are sums over rows (loss aux `*_num`/`*_den` keys), so the gradient of the
whole batch is the sum of the micro-batches' numerator gradients divided by the total
denominator, equal to the unsplit step within f32 rounding. memory.remat is passed to the
forward (agrl.model.decoder.hidden_states).

A non-finite loss or gradient skips the update (params and optimizer state are kept) and
is reported in the metrics as `skipped` = 1; the outer loop counts consecutive skips.
Metrics are returned as jax scalars (sums and counts from the loss aux); reduction to
Python floats happens on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from agrl.config import GuidanceConfig, LossConfig, MemoryConfig, ModelConfig, OptimConfig
from agrl.model import completion_hidden, completion_logps, token_logps
from agrl.model.params import abstract_params, model_param_shardings
from agrl.parallel.sharding import batch_sharding, replicated, rows_sharding
from agrl.rl.loss import dpo_loss, policy_loss, sft_loss, swap_label_inputs, verdict_nll
from agrl.rl.types import RLBatch
from agrl.train.accumulate import (
    WHOLE_BATCH,
    accumulate_gradients,
    micro_batch_count,
    split_rows,
)

Batch = dict[str, jax.Array]


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer updates attempted


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up over warmup_frac of total_steps, then cosine decay to min_lr_ratio*lr."""
    total = max(int(total_steps), 1)
    warmup = int(round(cfg.warmup_frac * total))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup > 0 else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=cfg.lr * cfg.min_lr_ratio,
    )


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warm-up + cosine and global-norm clipping (PAPER: SFT/RL settings)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            learning_rate_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            weight_decay=cfg.weight_decay,
        ),
    )


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def apply_gradients(
    state: TrainState, loss: jax.Array, grads: Any, optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update, skipped (state unchanged but step+1) when loss or grads are not
    finite.  Returns the new state and {grad_norm, skipped}."""
    finite = jnp.isfinite(loss) & _all_finite(grads)
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
    updates, new_opt = optimizer.update(safe_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(
        keep(new_params, state.params), keep(new_opt, state.opt_state), state.step + 1
    )
    grad_norm = optax.tree.norm(grads)
    return new_state, {"grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32)}


def _loss_and_grads(
    loss_fn: Callable, params: Any, batch: Any, n_micro: int, num_key: str, den_key: str
) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """(loss, grads, aux) of loss_fn(params, batch) -> (loss, aux): whole batch at n_micro
    = 1 (the original computation, bit for bit), else `accumulate_gradients`."""
    if n_micro == 1:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        return loss, grads, aux
    return accumulate_gradients(loss_fn, params, batch, n_micro, num_key, den_key)


def _jit_step(
    step: Callable,
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None,
    with_params: bool = False,
    batch_rows: int | None = None,
) -> Callable:
    """jit(step) donating the state; with a mesh, shardings at the boundary (module doc):
    step(state, [params], batch) -> (state, metrics).  batch_rows: the rows of every batch,
    when known, so that a batch the data-parallel size does not divide comes in replicated
    (`rows_sharding`); None: rows always split over (data, fsdp)."""
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    state_sh = train_state_shardings(model_cfg, optimizer, mesh)
    params_sh = (model_param_shardings(model_cfg, mesh),) if with_params else ()
    rows = batch_sharding(mesh, 1) if batch_rows is None else rows_sharding(mesh, (batch_rows,))
    return jax.jit(
        step,
        in_shardings=(state_sh, *params_sh, rows),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=0,
    )


def make_logps_fn(
    model_cfg: ModelConfig,
    temperature: float = 1.0,
    mesh: Mesh | None = None,
    memory: MemoryConfig = WHOLE_BATCH,
) -> Callable:
    """jit(params, prompt_ids [N,P], prompt_mask, completion_ids [N,T], completion_mask)
    -> logps [N,T] (no gradient: for old and reference log-probs).  With a mesh: params by
    the rules table, the four inputs and logps split on rows N. With
    memory.micro_batch_rows, the rows are run micro-batch by micro-batch (`lax.map`), so
    only one micro-batch's [rows, T, V] logits are live."""

    def one(params, prompt_ids, prompt_mask, completion_ids, completion_mask):
        return completion_logps(
            params,
            model_cfg,
            prompt_ids,
            prompt_mask,
            completion_ids,
            completion_mask,
            temperature=temperature,
            mesh=mesh,
        )

    def logps_fn(params, *rows):
        n = micro_batch_count(rows[0].shape[0], memory, mesh)
        if n == 1:
            return one(params, *rows)
        out = jax.lax.map(lambda mb: one(params, *mb), tuple(split_rows(x, n) for x in rows))
        return out.swapaxes(0, 1).reshape(rows[0].shape[0], -1)  # undo the strided split

    if mesh is None:
        return jax.jit(logps_fn)
    rows = batch_sharding(mesh, 1)
    return jax.jit(
        logps_fn,
        in_shardings=(model_param_shardings(model_cfg, mesh), rows, rows, rows, rows),
        out_shardings=rows,
    )


def make_sft_step(
    model_cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None = None,
    memory: MemoryConfig = WHOLE_BATCH,
    batch_rows: int | None = None,
    label_weight: float = 1.0,
    label_noise: float = 0.0,
    label_ids: Any = None,
    seed: int = 0,
    verdict_weight: float = 0.0,
    readout: Any = None,
) -> Callable:
    """jit(state, batch) -> (state, metrics).  batch: prompt_ids/prompt_mask [B,P] left-padded,
    completion_ids/completion_mask [B,T] right-padded (the target response).  batch_rows:
    see `_jit_step`; label_weight: of the first response token (`sft_loss`); label_noise,
    label_ids [K]: `swap_label_inputs` on the first input token, keyed by (seed, step).
    verdict_weight > 0: batch also holds verdicts [B,R] (codes stated by the target, -1
    none), and `verdict_nll` through readout [D,R,C] at the prompt's last position is added
    to the loss numerator with that weight (each stated verdict counts like verdict_weight
    response tokens)."""
    if label_noise > 0 and label_ids is None:
        raise ValueError("label_noise > 0 needs the label token ids")
    if verdict_weight > 0 and readout is None:
        raise ValueError("verdict_weight > 0 needs the verdict readout")

    def loss_fn(params, batch: Batch):
        rows = (
            batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
            batch["completion_mask"],
        )  # fmt: skip
        kw = {"mesh": mesh, "remat": memory.remat, "input_ids": batch.get("input_ids")}
        h = completion_hidden(params, model_cfg, *rows, **kw)  # [B, T, D]
        logps = token_logps(params, model_cfg, h, rows[2], rows[3])  # = completion_logps
        if verdict_weight == 0:
            return sft_loss(logps, rows[3], label_weight)
        v_sum, v_count = verdict_nll(h[:, 0], jnp.asarray(readout), batch["verdicts"])
        loss, aux = sft_loss(logps, rows[3], label_weight, verdict_weight * v_sum)
        return loss, {**aux, "verdict_nll_sum": v_sum, "verdict_count": v_count}

    def step(state: TrainState, batch: Batch):
        if label_noise > 0:
            key = jax.random.fold_in(jax.random.key(seed), state.step)
            ids = batch["completion_ids"]
            first = swap_label_inputs(ids[:, 0], jnp.asarray(label_ids), key, label_noise)
            batch = {**batch, "input_ids": ids.at[:, 0].set(first)}
        n_micro = micro_batch_count(batch["prompt_ids"].shape[0], memory, mesh)
        loss, grads, aux = _loss_and_grads(
            loss_fn, state.params, batch, n_micro, "nll_sum", "n_tokens"
        )
        state, upd = apply_gradients(state, loss, grads, optimizer)
        return state, {"loss": loss, **aux, **upd}

    return _jit_step(step, model_cfg, optimizer, mesh, batch_rows=batch_rows)


def make_dpo_step(
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None = None,
    memory: MemoryConfig = WHOLE_BATCH,
    batch_rows: int | None = None,
) -> Callable:
    """jit(state, ref_params, batch) -> (state, metrics).

    batch: prompt_ids/prompt_mask [B,P]; chosen_ids/chosen_mask and rejected_ids/rejected_mask
    [B,T].  Chosen and rejected run as one [2B] forward; sequence logps are sums over tokens.
    ref_params: sharded like the policy (`place_params`).  batch_rows: see `_jit_step`.
    """

    def seq_logps(params, batch):
        prompt_ids = jnp.concatenate([batch["prompt_ids"]] * 2, axis=0)
        prompt_mask = jnp.concatenate([batch["prompt_mask"]] * 2, axis=0)
        ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]], axis=0)
        mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
        lp = completion_logps(
            params, model_cfg, prompt_ids, prompt_mask, ids, mask, mesh=mesh, remat=memory.remat
        )
        lp = lp.sum(-1)
        B = batch["prompt_ids"].shape[0]
        return lp[:B], lp[B:]

    def step(state: TrainState, ref_params: Any, batch: Batch):
        # The reference pass runs inside the loss, per micro-batch (no gradient flows to it).
        def loss_fn(params, mb):
            ref_c, ref_r = jax.lax.stop_gradient(seq_logps(ref_params, mb))
            c, r = seq_logps(params, mb)
            return dpo_loss(c, r, ref_c, ref_r, loss_cfg.dpo_beta)

        n_micro = micro_batch_count(batch["prompt_ids"].shape[0], memory, mesh)
        loss, grads, aux = _loss_and_grads(
            loss_fn, state.params, batch, n_micro, "loss_sum", "n_pairs"
        )
        state, upd = apply_gradients(state, loss, grads, optimizer)
        return state, {"loss": loss, **aux, **upd}

    return _jit_step(step, model_cfg, optimizer, mesh, with_params=True, batch_rows=batch_rows)


def make_rl_step(
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    guidance_cfg: GuidanceConfig,
    optimizer: optax.GradientTransformation,
    temperature: float = 1.0,
    mesh: Mesh | None = None,
    memory: MemoryConfig = WHOLE_BATCH,
) -> Callable:
    """jit(state, batch: RLBatch) -> (state, metrics): one GRPO update (SPEC 6).

    batch.old_logps is required when loss.mu > 1. With mu = 1 the behaviour policy is the
    current one, so old_logps = stop_gradient(logps) and no extra forward pass is spent.
    metrics: loss, grad_norm, skipped and the loss aux (sums and counts).
    """
    mode = loss_cfg.forced_tokens if guidance_cfg.enabled else "include"

    def loss_fn(params, batch: RLBatch):
        out = completion_logps(
            params,
            model_cfg,
            batch.prompt_ids,
            batch.prompt_mask,
            batch.completion_ids,
            batch.completion_mask,
            temperature=temperature,
            return_entropy=loss_cfg.entropy,
            mesh=mesh,
            remat=memory.remat,
        )
        logps, entropy = out if loss_cfg.entropy else (out, None)
        old = jax.lax.stop_gradient(logps) if loss_cfg.mu == 1 else batch.old_logps
        return policy_loss(
            logps,
            old,
            batch.ref_logps,
            batch.advantages,
            batch.completion_mask,
            batch.forced_mask,
            loss_cfg,
            mode,
            loss_cfg.offpolicy_gamma,
            entropy=None if entropy is None else jax.lax.stop_gradient(entropy),
        )

    def step(state: TrainState, batch: RLBatch):
        n_micro = micro_batch_count(batch.prompt_ids.shape[0], memory, mesh)
        loss, grads, aux = _loss_and_grads(
            loss_fn, state.params, batch, n_micro, "loss_num", "loss_den"
        )
        state, upd = apply_gradients(state, loss, grads, optimizer)
        return state, {"loss": loss, **aux, **upd}

    return _jit_step(step, model_cfg, optimizer, mesh)


def train_state_shardings(
    model_cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """Shardings of TrainState(params, opt_state, step): optimizer moments follow their
    parameter (ZeRO: Adam's mu and nu are split exactly like the weights); counters and
    other scalars are replicated."""
    param_sh = model_param_shardings(model_cfg, mesh)
    opt_abstract = jax.eval_shape(optimizer.init, abstract_params(model_cfg))
    rep = replicated(mesh)
    opt_sh = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        opt_abstract,
        param_sh,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    return TrainState(param_sh, opt_sh, rep)


def init_sharded_train_state(
    params: Any, model_cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """TrainState whose params and optimizer moments are created on their shards
    (jit with out_shardings).  params: sharded params (e.g. `place_params`), donated later
    with the state, so the caller must not reuse them as a reference."""
    shardings = train_state_shardings(model_cfg, optimizer, mesh)
    return jax.jit(lambda p: init_train_state(p, optimizer), out_shardings=shardings)(params)


def abstract_train_state(
    model_cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """jax.ShapeDtypeStruct of every TrainState leaf, with its `train_state_shardings`
    sharding: what `jit(...).lower` needs to compile a step without any array (e.g. the
    compiled-memory check of a production model on a simulated pod)."""
    shapes = jax.eval_shape(lambda p: init_train_state(p, optimizer), abstract_params(model_cfg))
    shardings = train_state_shardings(model_cfg, optimizer, mesh)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
