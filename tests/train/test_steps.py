"""Jitted SFT / DPO / RL steps: they learn, they skip non-finite updates, they are pure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.config import GuidanceConfig, LossConfig, ModelConfig, OptimConfig
from agrl.model import init_params
from agrl.rl.types import RLBatch
from agrl.train.steps import (
    init_train_state,
    learning_rate_schedule,
    make_dpo_step,
    make_logps_fn,
    make_optimizer,
    make_rl_step,
    make_sft_step,
)
from tests.tolerance import assert_adam_runs_agree, f32_tol

CFG = ModelConfig(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
    num_kv_heads=1, head_dim=8, max_position_embeddings=64,
)  # fmt: skip


def _batch(key, B=4, P=5, T=6):
    k1, k2 = jax.random.split(key)
    prompt_ids = jax.random.randint(k1, (B, P), 3, CFG.vocab_size)
    prompt_mask = jnp.ones((B, P), bool).at[0, :2].set(False)  # one left-padded row
    completion_ids = jax.random.randint(k2, (B, T), 3, CFG.vocab_size)
    completion_mask = jnp.ones((B, T), bool).at[1, 4:].set(False)  # one short response
    return dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
    )


def _state(lr=1e-2, steps=50):
    opt = make_optimizer(OptimConfig(lr=lr, warmup_frac=0.0), steps)
    return init_train_state(init_params(CFG, jax.random.key(0)), opt), opt


def test_schedule_warms_up_then_decays():
    sched = learning_rate_schedule(OptimConfig(lr=1.0, warmup_frac=0.1), 100)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-6)
    assert float(sched(5)) == pytest.approx(0.5)


def test_sft_step_lowers_the_loss_on_a_fixed_batch():
    state, opt = _state()
    step = make_sft_step(CFG, opt)
    batch = _batch(jax.random.key(1))
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 30


def test_nonfinite_loss_skips_the_update():
    state, opt = _state()
    bad = jax.tree.map(lambda p: p.at[...].set(jnp.nan) if p.ndim == 2 else p, state.params)
    before = jax.tree.map(np.asarray, bad)
    step = make_sft_step(CFG, opt)
    state2, m = step(state._replace(params=bad), _batch(jax.random.key(2)))
    assert float(m["skipped"]) == 1.0
    after = jax.tree.map(np.asarray, state2.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), before, after)
    assert int(state2.step) == 1


def test_dpo_step_raises_the_chosen_margin():
    state, opt = _state(lr=5e-3)
    ref = jax.tree.map(jnp.copy, state.params)
    b = _batch(jax.random.key(3))
    rej = jax.random.randint(jax.random.key(4), b["completion_ids"].shape, 3, CFG.vocab_size)
    batch = dict(
        prompt_ids=b["prompt_ids"],
        prompt_mask=b["prompt_mask"],
        chosen_ids=b["completion_ids"],
        chosen_mask=b["completion_mask"],
        rejected_ids=rej,
        rejected_mask=jnp.ones_like(b["completion_mask"]),
    )
    step = make_dpo_step(CFG, LossConfig(), opt)
    state, m0 = step(state, ref, batch)
    assert float(m0["loss"]) == pytest.approx(np.log(2.0), rel=1e-5)  # policy == reference
    for _ in range(10):
        state, m = step(state, ref, batch)
    assert float(m["margin_sum"]) > 0.0
    assert float(m["loss"]) < np.log(2.0)


def _rl_batch(state, advantages):
    b = _batch(jax.random.key(5))
    logps = make_logps_fn(CFG)(
        state.params, b["prompt_ids"], b["prompt_mask"], b["completion_ids"],
        b["completion_mask"],
    )  # fmt: skip
    return RLBatch(
        **b,
        forced_mask=jnp.zeros_like(b["completion_mask"]),
        advantages=jnp.asarray(advantages, jnp.float32),
        ref_logps=logps,
        old_logps=logps,
    )


def test_rl_step_zero_advantage_and_reference_policy_give_zero_gradient():
    """A = 0 everywhere and policy == reference: the surrogate and the k3 KL both have zero
    gradient.  The reference logps come from a separately compiled forward (make_logps_fn),
    whose fusion differs from the one inside the differentiated step, so they agree to float
    rounding (~1e-7), not bit for bit: the gradient is zero to that precision (AdamW would
    normalise such noise into lr-sized steps, so params equality is not the check)."""
    state, opt = _state()
    batch = _rl_batch(state, [0.0, 0.0, 0.0, 0.0])
    step = make_rl_step(CFG, LossConfig(), GuidanceConfig(), opt)
    state, m = step(state, batch)
    assert float(m["grad_norm"]) < 1e-6
    assert abs(float(m["loss"])) < 1e-6


@pytest.mark.parametrize("mu", [1, 2])
def test_rl_step_raises_logp_of_positive_advantage_rows(mu):
    state, opt = _state(lr=1e-2)
    adv = [1.5, -1.5, 0.5, -0.5]
    batch = _rl_batch(state, adv)
    logps_fn = make_logps_fn(CFG)
    args = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    before = np.asarray(logps_fn(state.params, *(getattr(batch, k) for k in args))).sum(-1)
    step = make_rl_step(CFG, LossConfig(mu=mu, kl_beta=0.0), GuidanceConfig(), opt)
    for _ in range(mu):
        state, m = step(state, batch)
        assert np.isfinite(float(m["loss"]))
    after = np.asarray(logps_fn(state.params, *(getattr(batch, k) for k in args))).sum(-1)
    delta = after - before
    assert delta[0] > 0 and delta[1] < 0, delta


def test_sharded_rl_step_constrains_activations_and_returns_the_table_layout():
    """With a mesh, the RL step is jitted with the rules table's shardings at the boundary:
    its lowered program carries the residual-stream sharding constraints (the mesh reaches
    completion_logps) and the updated state comes back laid out by train_state_shardings,
    update after update, with no device_put; the numbers equal the single-device step."""
    from agrl.config import MeshConfig
    from agrl.model.params import place_params
    from agrl.parallel.distributed import put_rows
    from agrl.parallel.sharding import make_mesh
    from agrl.train.steps import init_sharded_train_state, train_state_shardings

    mesh = make_mesh(MeshConfig(2, 4, 1))  # batch rows over data * fsdp = 8, weights over fsdp
    state, opt = _state()
    host = jax.tree.map(lambda x: np.array(x, copy=True), state.params)  # state is donated
    single = _rl_batch(state, [1.0, -1.0, 0.5, -0.5])
    batch = RLBatch(*(None if x is None else jnp.concatenate([x, x]) for x in single))  # N = 8
    step = make_rl_step(CFG, LossConfig(mu=2), GuidanceConfig(), opt, mesh=mesh)
    sharded = init_sharded_train_state(place_params(host, CFG, mesh), CFG, opt, mesh)
    placed = RLBatch(*(put_rows(np.asarray(x), mesh) for x in batch))

    # Shardy lowers with_sharding_constraint to `sdy.sharding_constraint`, GSPMD to a
    # `@Sharding` custom call; either way on the residual stream [N, S, D], rows over
    # (data, fsdp): after the embedding and after each layer, forward and backward.
    is_constraint = lambda line: "sharding_constraint" in line or "@Sharding" in line
    hlo = step.lower(sharded, placed).as_text().splitlines()
    constraints = [line for line in hlo if is_constraint(line)]
    assert len(constraints) >= 2, "no sharding constraint in the lowered step"
    assert all('{"data", "fsdp"}' in c or "devices=[" in c for c in constraints), constraints
    plain = make_rl_step(CFG, LossConfig(mu=2), GuidanceConfig(), opt).lower(state, batch)
    assert not any(map(is_constraint, plain.as_text().splitlines()))  # no mesh: none

    table = jax.tree.leaves(train_state_shardings(CFG, opt, mesh))
    reference = make_rl_step(CFG, LossConfig(mu=2), GuidanceConfig(), opt)
    N, T = batch.completion_ids.shape  # the loss averages N*T token terms of size ~1
    for _ in range(2):
        sharded, m = step(sharded, placed)
        assert [x.sharding for x in jax.tree.leaves(sharded)] == table
        state, m0 = reference(state, batch)
        tol = f32_tol(max(1.0, abs(float(m0["loss"]))), N * T, CFG.num_layers + 1)
        assert abs(float(m["loss"]) - float(m0["loss"])) <= tol
    assert_adam_runs_agree(sharded.params, state.params, lr=1e-2, steps=2 * 2)  # 2 x mu=2
