"""Micro-batched (gradient-accumulated) and rematerialised steps equal the whole-batch step.

Every loss is sum(num) / sum(den) with row-additive numerator and denominator, so splitting
the rows changes only the order of f32 additions: the gradients agree within f32 rounding
of their magnitude (tests/tolerance.py), for every aggregation mode and forced-token mode.
The optimizer is plain SGD with lr 1 so that the parameter change is exactly -grad (Adam
would normalise rounding noise of near-zero gradients into lr-sized steps).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agrl.config import GuidanceConfig, LossConfig, MemoryConfig, ModelConfig
from agrl.model import init_params
from agrl.model.decoder import hidden_states, positions_from_mask
from agrl.rl.types import RLBatch
from agrl.train.accumulate import accumulate_gradients, micro_batch_count, split_rows
from agrl.train.steps import (
    init_train_state,
    make_dpo_step,
    make_logps_fn,
    make_rl_step,
    make_sft_step,
)
from tests.tolerance import f32_tol

CFG = ModelConfig(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
    num_kv_heads=1, head_dim=8, max_position_embeddings=64,
)  # fmt: skip
B, P, T = 8, 5, 6
SGD = optax.sgd(1.0)


def _params():
    return init_params(CFG, jax.random.key(0))


def _state():
    return init_train_state(_params(), SGD)


def _supervised(key):
    k1, k2 = jax.random.split(key)
    prompt_mask = jnp.ones((B, P), bool).at[0, :2].set(False).at[5, :3].set(False)
    completion_mask = jnp.ones((B, T), bool).at[1, 4:].set(False).at[6, 2:].set(False)
    return dict(
        prompt_ids=jax.random.randint(k1, (B, P), 3, CFG.vocab_size),
        prompt_mask=prompt_mask,
        completion_ids=jax.random.randint(k2, (B, T), 3, CFG.vocab_size),
        completion_mask=completion_mask,
    )


def _rl_batch(mu: int) -> RLBatch:
    b = _supervised(jax.random.key(1))
    logps = make_logps_fn(CFG)(_params(), *b.values())
    # Rows 2 and 3 carry a forced prefix; row 7 has no loss token at all (a filtered group).
    forced = jnp.zeros((B, T), bool).at[2, :2].set(True).at[3, :3].set(True)
    mask = b["completion_mask"].at[7].set(False)
    noise = 0.05 * jax.random.normal(jax.random.key(2), (B, T))
    return RLBatch(
        b["prompt_ids"],
        b["prompt_mask"],
        b["completion_ids"],
        mask,
        forced,
        jnp.asarray([1.5, -1.0, 0.7, -0.4, 0.2, -1.2, 0.9, 0.0]),
        logps + noise,  # reference policy differs a little: the KL term is live
        None if mu == 1 else logps - noise,
    )


def _grads(step, *args):
    """-(params after - before) of one SGD(1) step: the gradient, and the metrics."""
    state = _state()
    before = jax.tree.map(lambda x: np.array(x, copy=True), state.params)
    new, m = step(state, *args)
    return jax.tree.map(lambda a, b: a - np.asarray(b), before, new.params), m


def _assert_close(g_whole, g_micro, reduction: int):
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(g_whole))
    tol = f32_tol(scale, reduction, depth=CFG.num_layers + 1)
    for a, b in zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_micro), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=tol)


@pytest.mark.parametrize(
    "aggregation,forced_tokens,mu,remat",
    [
        ("token-mean", "mask_if_negative", 1, "none"),
        ("seq-mean-token-mean", "offpolicy", 2, "none"),  # weights depend on the params
        ("seq-mean-token-sum", "include", 1, "dots"),
        ("constant-normalised", "mask", 2, "layer"),
    ],
)
def test_micro_batched_rl_step_equals_whole_batch(aggregation, forced_tokens, mu, remat):
    loss = LossConfig(aggregation=aggregation, forced_tokens=forced_tokens, mu=mu, kl_beta=0.05)
    guidance = GuidanceConfig(enabled=True)
    batch = _rl_batch(mu)
    whole = make_rl_step(CFG, loss, guidance, SGD)
    mem = MemoryConfig(micro_batch_rows=2, remat=remat)
    micro = make_rl_step(CFG, loss, guidance, SGD, memory=mem)
    g0, m0 = _grads(whole, batch)
    g1, m1 = _grads(micro, batch)
    assert float(m0["grad_norm"]) > 1e-3  # a live gradient is compared, not zeros
    _assert_close(g0, g1, reduction=B * T)
    for k in ("loss_num", "loss_den", "n_tokens", "n_seqs", "guided_seqs", "clip_tokens"):
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-5, abs=1e-6), k
    for k in ("ratio_min", "ratio_max"):
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-5), k
    assert float(m1["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-4, abs=1e-6)


def test_micro_batched_sft_step_with_verdict_loss_equals_whole_batch():
    """sft.verdict_weight: the auxiliary sum joins the token numerator, so micro-batches
    still combine exactly; the auxiliary loss changes the gradient (weight 0 vs 2)."""
    from agrl.rl.loss import verdict_readout

    batch = _supervised(jax.random.key(5))
    verdicts = jax.random.randint(jax.random.key(6), (B, 3), -1, 4)
    batch = {**batch, "verdicts": verdicts}
    readout = verdict_readout(CFG.hidden_size, 3, 4, seed=0)
    mem = MemoryConfig(micro_batch_rows=2)
    step = lambda memory=None: make_sft_step(  # noqa: E731
        CFG, SGD, memory=memory or MemoryConfig(), verdict_weight=2.0, readout=readout
    )
    g0, m0 = _grads(step(), batch)
    g1, m1 = _grads(step(mem), batch)
    _assert_close(g0, g1, reduction=B * T)
    for k in ("loss", "verdict_nll_sum", "verdict_count", "n_tokens"):
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=1e-5), k
    assert float(m0["verdict_count"]) == int((verdicts >= 0).sum())
    plain, _ = _grads(make_sft_step(CFG, SGD), {k: v for k, v in batch.items() if k != "verdicts"})
    change = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(g0), jax.tree.leaves(plain), strict=True))  # fmt: skip
    assert change > 1e-3


def test_micro_batched_sft_and_dpo_steps_equal_whole_batch():
    batch = _supervised(jax.random.key(3))
    mem = MemoryConfig(micro_batch_rows=2, remat="layer")
    g0, m0 = _grads(make_sft_step(CFG, SGD), batch)
    g1, m1 = _grads(make_sft_step(CFG, SGD, memory=mem), batch)
    _assert_close(g0, g1, reduction=B * T)
    assert float(m1["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-5)

    rejected = _supervised(jax.random.key(4))
    pairs = dict(
        prompt_ids=batch["prompt_ids"],
        prompt_mask=batch["prompt_mask"],
        chosen_ids=batch["completion_ids"],
        chosen_mask=batch["completion_mask"],
        rejected_ids=rejected["completion_ids"],
        rejected_mask=rejected["completion_mask"],
    )
    ref = jax.tree.map(lambda x: x * 0.9, _params())  # a reference unlike the policy
    dpo = LossConfig()
    g0, m0 = _grads(make_dpo_step(CFG, dpo, SGD), ref, pairs)
    g1, m1 = _grads(make_dpo_step(CFG, dpo, SGD, memory=mem), ref, pairs)
    _assert_close(g0, g1, reduction=B * T)
    assert float(m1["accuracy_sum"]) == float(m0["accuracy_sum"])


def test_accumulate_gradients_matches_numpy_ratio():
    """Numpy reference: the loss sum_i w x_i^2 / sum_i c_i with its analytic gradient."""
    x = np.linspace(-1.0, 2.0, 8, dtype=np.float32)
    c = np.asarray([1, 2, 0, 1, 3, 1, 1, 2], np.float32)

    def parts(w, mb):
        num = jnp.sum(w * mb["x"] ** 2)
        den = jnp.sum(mb["c"])
        return num / den, {"num": num, "den": den, "x_max": jnp.max(mb["x"])}

    loss, grad, aux = accumulate_gradients(
        parts, jnp.float32(0.5), {"x": x, "c": c}, 4, "num", "den"
    )
    assert float(loss) == pytest.approx(0.5 * float((x**2).sum()) / float(c.sum()), rel=1e-6)
    assert float(grad) == pytest.approx(float((x**2).sum()) / float(c.sum()), rel=1e-6)
    assert float(aux["x_max"]) == pytest.approx(2.0)
    assert float(aux["den"]) == float(c.sum())


def test_split_rows_is_strided_and_counts_are_checked():
    x = np.arange(8)
    np.testing.assert_array_equal(split_rows(x, 4), [[0, 4], [1, 5], [2, 6], [3, 7]])
    assert micro_batch_count(8, MemoryConfig(), None) == 1
    assert micro_batch_count(8, MemoryConfig(micro_batch_rows=2), None) == 4
    assert micro_batch_count(8, MemoryConfig(micro_batch_rows=16), None) == 1
    with pytest.raises(ValueError, match="must divide the rows per device"):
        micro_batch_count(8, MemoryConfig(micro_batch_rows=3), None)


def test_remat_policies_keep_the_forward():
    ids = jax.random.randint(jax.random.key(5), (2, 7), 3, CFG.vocab_size)
    mask = jnp.ones((2, 7), bool).at[0, :2].set(False)
    pos = positions_from_mask(mask)
    h0, _ = hidden_states(_params(), CFG, ids, pos, mask)
    for remat in ("layer", "dots"):
        h1, _ = hidden_states(_params(), CFG, ids, pos, mask, remat=remat)
        np.testing.assert_array_equal(np.asarray(h1), np.asarray(h0))


def test_micro_batched_logps_equal_whole_batch():
    b = _supervised(jax.random.key(6))
    whole = make_logps_fn(CFG)(_params(), *b.values())
    micro = make_logps_fn(CFG, memory=MemoryConfig(micro_batch_rows=2))(_params(), *b.values())
    # The same per-row forward on fewer rows: only the row batching of XLA's kernels differs.
    tol = f32_tol(float(np.abs(np.asarray(whole)).max()), CFG.hidden_size, CFG.num_layers + 1)
    np.testing.assert_allclose(np.asarray(micro), np.asarray(whole), rtol=0, atol=tol)
