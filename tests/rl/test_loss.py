"""agrl.rl.loss: GRPO over all options vs tests/reference.py, hand cases, gradients,
invariances, aux counts, SFT, DPO, the loss registry and the config guard rails."""

import importlib
import itertools
import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.config import AdvantageConfig, ConfigError, LossConfig, RewardConfig
from agrl.rl import loss as L
from agrl.rl.advantages import group_advantages
from tests import reference as ref

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "constant-normalised")
MODES = ("include", "mask", "mask_if_negative", "offpolicy")


def make_batch(seed, n=6, t=7):
    """Sequences of different lengths (one empty), forced prefixes on two rows, ratios in
    [0.5, 1.8] so that both clip sides and the dual clip are hit."""
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 5, 3, 0, 6, 2])[:n]
    mask = np.arange(t)[None, :] < lengths[:, None]
    logps = np.log(rng.uniform(0.05, 0.95, (n, t))).astype(np.float32)
    old = (logps - np.log(rng.uniform(0.5, 1.8, (n, t)))).astype(np.float32)
    refl = (logps + rng.normal(0, 0.5, (n, t))).astype(np.float32)
    adv = np.array([1.5, -1.0, 0.5, 0.7, -0.3, -2.0], np.float32)[:n]
    forced = np.zeros((n, t), bool)
    forced[0, :3] = True  # guided, positive advantage
    forced[1, :2] = True  # guided, negative advantage
    return logps, old, refl, adv, mask, forced


def option_cases():
    """Every aggregation x guidance mode x KL estimator; the remaining options (clip range,
    dual clip, KL clamp, beta, constant_norm) cycle so that each value is covered."""
    cases = []
    for i, (agg, mode, est) in enumerate(
        itertools.product(AGGREGATIONS, MODES, ("k1", "k2", "k3"))
    ):
        eps_low, eps_high = ((0.2, 0.2), (0.1, 0.3))[i % 2]
        cfg = LossConfig(
            eps_low=eps_low,
            eps_high=eps_high,
            dual_clip=(None, 1.5, 3.0)[i % 3],
            kl_beta=(0.02, 0.0, 0.5)[(i // 2) % 3],
            kl_estimator=est,
            kl_clamp=(10.0, None, 0.3)[(i // 3) % 3],
            aggregation=agg,
            constant_norm=(None, 16)[i % 2] if agg == "constant-normalised" else None,
            mu=2,  # k1 with mu=1 would (rightly) warn
        )
        cases.append((cfg, mode))
    return cases


CASES = option_cases()


@pytest.mark.parametrize(
    "cfg,mode", CASES, ids=[f"{c.aggregation}-{m}-{c.kl_estimator}" for c, m in CASES]
)
def test_grpo_matches_reference_all_options(cfg, mode):
    logps, old, refl, adv, mask, forced = make_batch(seed=CASES.index((cfg, mode)))
    fn = jax.jit(L.grpo_loss, static_argnums=(6, 7, 8))
    loss, aux = fn(logps, old, refl, adv, mask, forced, cfg, mode, 0.1)
    want, _, active = ref.grpo_loss(logps, old, refl, adv, mask, forced, cfg, mode, 0.1)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-7)
    assert float(aux["n_tokens"]) == active.sum()
    np.testing.assert_allclose(float(aux["loss_num"] / aux["loss_den"]), want, rtol=1e-5)


def test_hand_computed_clipping_and_kl():
    one = lambda x: jnp.array([[x]], jnp.float32)  # one sequence, one token
    no_kl = LossConfig(kl_beta=0.0)

    def loss(ratio, a, cfg, ref_logp=0.0):
        lp = jnp.log(0.5)
        out, aux = L.grpo_loss(
            one(lp), one(lp - jnp.log(ratio)), one(lp + ref_logp), jnp.array([a]),
            jnp.ones((1, 1), bool), jnp.zeros((1, 1), bool), cfg, "include", 0.1,
        )  # fmt: skip
        return float(out), aux

    # A = 1, ratio 1.5 > 1.2: min(1.5, 1.2) * 1 = 1.2 -> loss -1.2, clipped high
    out, aux = loss(1.5, 1.0, no_kl)
    assert out == pytest.approx(-1.2) and float(aux["clip_high_sum"]) == 1
    # A = -1, ratio 0.5 < 0.8: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped low
    out, aux = loss(0.5, -1.0, no_kl)
    assert out == pytest.approx(0.8) and float(aux["clip_low_sum"]) == 1
    # A = -1, ratio 5: min(-5, -1.2) = -5; dual clip c = 3: max(-5, -3) = -3 -> loss 3
    assert loss(5.0, -1.0, no_kl)[0] == pytest.approx(5.0)
    out, aux = loss(5.0, -1.0, LossConfig(kl_beta=0.0, dual_clip=3.0))
    assert out == pytest.approx(3.0) and float(aux["dual_clip_sum"]) == 1
    # A = 1, ratio 1: -1. k3 with pi_ref / pi = 1/2: x = log 0.5, k3 = 0.5 - 1 + log 2
    # = 0.193147; beta 0.1 -> -1 + 0.0193147
    kl_cfg = LossConfig(kl_beta=0.1, kl_estimator="k3")
    assert loss(1.0, 1.0, kl_cfg, ref_logp=np.log(0.5))[0] == pytest.approx(-1 + 0.0193147)
    # k2: x^2 / 2 = 0.240227; clamp 0.5 -> x = -0.5, k2 = 0.125
    k2 = LossConfig(kl_beta=1.0, kl_estimator="k2")
    assert loss(1.0, 0.0, k2, ref_logp=np.log(0.5))[0] == pytest.approx(0.240227, rel=1e-5)
    k2c = LossConfig(kl_beta=1.0, kl_estimator="k2", kl_clamp=0.5)
    assert loss(1.0, 0.0, k2c, ref_logp=np.log(0.5))[0] == pytest.approx(0.125)


def test_hand_computed_aggregation():
    # Per-token losses (ratio 1, beta 0, token loss = -A): seq 0 has 2 tokens with A=1,
    # seq 1 has 1 token with A=-4. token-mean: (-1 - 1 + 4) / 3 = 2/3.
    # seq-mean-token-mean: (-1 + 4) / 2 = 1.5. seq-mean-token-sum: (-2 + 4) / 2 = 1.
    # constant-normalised (norm 4): (-2 + 4) / (2 * 4) = 0.25.
    logps = jnp.full((2, 3), -1.0)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    adv = jnp.array([1.0, -4.0])
    want = {
        "token-mean": 2 / 3,
        "seq-mean-token-mean": 1.5,
        "seq-mean-token-sum": 1.0,
        "constant-normalised": 0.25,
    }
    for agg, value in want.items():
        cfg = LossConfig(
            kl_beta=0.0, aggregation=agg, constant_norm=4 if "constant" in agg else None
        )
        out, _ = L.grpo_loss(
            logps, logps, logps, adv, mask, jnp.zeros_like(mask), cfg, "include", 0.1
        )
        assert float(out) == pytest.approx(value), agg


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_padding_does_not_change_loss_or_grad(agg, mode):
    logps, old, refl, adv, mask, forced = make_batch(seed=1)
    cfg = LossConfig(aggregation=agg, constant_norm=16 if "constant" in agg else None)

    def f(lp, old, refl, adv, mask, forced):
        return L.grpo_loss(lp, old, refl, adv, mask, forced, cfg, mode, 0.1)[0]

    base, g_base = jax.value_and_grad(f)(logps, old, refl, adv, mask, forced)

    # 5 more padded columns with -inf logps, and one more all-padding row
    def pad(x, value):
        x = np.concatenate([x, np.full((x.shape[0], 5), value, x.dtype)], 1)
        return np.concatenate([x, np.full((1, x.shape[1]), value, x.dtype)], 0)

    padded = [pad(logps, -np.inf), pad(old, -np.inf), pad(refl, -np.inf)]
    padded += [np.append(adv, 3.0).astype(np.float32), pad(mask, False), pad(forced, False)]
    out, g_pad = jax.value_and_grad(f)(*padded)
    np.testing.assert_allclose(float(out), float(base), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_pad)[:-1, :-5], np.asarray(g_base), rtol=1e-6)
    assert np.all(np.asarray(g_pad)[-1] == 0) and np.all(np.asarray(g_pad)[:, -5:] == 0)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_zero_variance_group_has_zero_policy_gradient(agg):
    # Group 0 (rows 0-3) all earned 1.5, group 1 has spread. Its advantage is exactly 0,
    # so (beta = 0) none of its tokens gets any gradient, while group 1's do.
    rewards = jnp.array([[1.5, 1.5, 1.5, 1.5], [1.5, 0.0, -1.0, 0.5]])
    adv = group_advantages(rewards, estimator="zscore", ddof=1, eps=1e-6, clip=2.0).reshape(-1)
    np.testing.assert_array_equal(np.asarray(adv[:4]), 0.0)
    rng = np.random.default_rng(0)
    logps = jnp.asarray(np.log(rng.uniform(0.1, 0.9, (8, 5))), jnp.float32)
    mask = jnp.ones((8, 5), bool)
    cfg = LossConfig(kl_beta=0.0, aggregation=agg, constant_norm=5 if "constant" in agg else None)

    def f(lp):
        return L.grpo_loss(lp, jax.lax.stop_gradient(lp), lp, adv, mask, jnp.zeros_like(mask),
                           cfg, "mask_if_negative", 0.1)[0]  # fmt: skip

    g = np.asarray(jax.grad(f)(logps))
    np.testing.assert_array_equal(g[:4], 0.0)
    assert np.abs(g[4:]).sum() > 0


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradient_matches_closed_form_unclipped(agg):
    # mu = 1 (old = current, stop-gradient): rho = 1 and d rho / d logp = 1, so
    #   d l_t / d logp_t = -A_i + beta * d k3 / d logp_t = -A_i + beta * (1 - exp(ref - logp))
    # and the aggregation divides by n_tok (token-mean), n_i * n_seq (seq-mean-token-mean),
    # n_seq (seq-mean-token-sum) or n_seq * norm (constant-normalised).
    logps, _, refl, adv, mask, _ = make_batch(seed=4)
    beta, norm = 0.3, 9
    cfg = LossConfig(
        kl_beta=beta, aggregation=agg, constant_norm=norm if "constant" in agg else None
    )

    def f(lp):
        return L.grpo_loss(lp, jax.lax.stop_gradient(lp), refl, adv, mask, np.zeros_like(mask),
                           cfg, "include", 0.1)[0]  # fmt: skip

    g = np.asarray(jax.grad(f)(jnp.asarray(logps)))
    per_token = -adv[:, None] + beta * (1 - np.exp(refl - logps))
    n_i = mask.sum(1, keepdims=True)
    n_seq = (n_i > 0).sum()
    denom = {
        "token-mean": mask.sum(),
        "seq-mean-token-mean": np.maximum(n_i, 1) * n_seq,
        "seq-mean-token-sum": n_seq,
        "constant-normalised": n_seq * norm,
    }[agg]
    np.testing.assert_allclose(g, np.where(mask, per_token / denom, 0.0), rtol=1e-5, atol=1e-7)


def test_forced_token_gradients_by_mode():
    # Row 0: A = +1, row 1: A = -1; token 0 of each row is forced, token 1 generated.
    # token-mean, beta 0, rho = 1. Generated tokens: d/dlogp = -A / n_active.
    logps = jnp.log(jnp.array([[0.1, 0.5], [0.1, 0.5]]))
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones((2, 2), bool)
    forced = jnp.array([[True, False], [True, False]])
    cfg = LossConfig(kl_beta=0.0, aggregation="token-mean")

    def grad(mode):
        f = lambda lp: L.grpo_loss(
            lp, jax.lax.stop_gradient(lp), lp, adv, mask, forced, cfg, mode, 0.1
        )[0]
        return np.asarray(jax.grad(f)(logps))

    np.testing.assert_allclose(grad("include"), [[-0.25, -0.25], [0.25, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(grad("mask"), [[0, -0.5], [0, 0.5]], rtol=1e-6)
    # mask_if_negative: the forced token of the negative row is dropped (3 active tokens)
    np.testing.assert_allclose(grad("mask_if_negative"), [[-1 / 3, -1 / 3], [0, 1 / 3]], rtol=1e-6)
    # offpolicy: forced term -A p/(p+0.1); d/dlogp = -A * 0.1 p / (p + 0.1)^2 = -A * 0.25 at
    # p = 0.1; divided by 4 active tokens -> -0.0625 A
    np.testing.assert_allclose(grad("offpolicy"), [[-0.0625, -0.25], [0.0625, 0.25]], rtol=1e-5)


def test_jit_equals_eager_and_aux():
    logps, old, refl, adv, mask, forced = make_batch(seed=2)
    ent = np.abs(logps)
    cfg = LossConfig(dual_clip=2.0, entropy=True)
    args = (logps, old, refl, adv, mask, forced)
    eager = L.grpo_loss(
        *map(jnp.asarray, args), cfg, "mask_if_negative", 0.1, entropy=jnp.asarray(ent)
    )
    jitted = jax.jit(L.grpo_loss, static_argnums=(6, 7, 8))(
        *args, cfg, "mask_if_negative", 0.1, entropy=ent
    )
    np.testing.assert_allclose(float(eager[0]), float(jitted[0]), rtol=1e-6)
    assert eager[1].keys() == jitted[1].keys()
    for k in eager[1]:
        np.testing.assert_allclose(np.asarray(eager[1][k]), np.asarray(jitted[1][k]), rtol=1e-6)
    aux = jitted[1]
    # counts against numpy: row 1 (A < 0) loses its 2 forced tokens under mask_if_negative
    active = mask.copy()
    active[1, :2] = False
    rho = np.exp(np.where(mask, logps - old, 0))
    a = np.broadcast_to(adv[:, None], mask.shape)
    assert float(aux["n_tokens"]) == active.sum()
    assert float(aux["n_seqs"]) == 5  # row 3 is empty
    assert float(aux["clip_low_sum"]) == (active & (a < 0) & (rho < 0.8)).sum()
    assert float(aux["clip_high_sum"]) == (active & (a > 0) & (rho > 1.2)).sum()
    np.testing.assert_allclose(float(aux["ratio_sum"]), rho[active].sum(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["ratio_max"]), rho[active].max(), rtol=1e-6)
    np.testing.assert_allclose(float(aux["entropy_sum"]), ent[active].sum(), rtol=1e-5)
    assert float(aux["guided_tokens"]) == 5 and float(aux["guided_active_tokens"]) == 3
    assert float(aux["guided_seqs"]) == 2
    assert "entropy_sum" not in L.grpo_loss(*map(jnp.asarray, args), cfg, "include", 0.1)[1]


def test_sft_loss():
    # mean of -logp over the 3 response tokens: (0.5 + 1.0 + 1.5) / 3 = 1.0; padding is -inf
    logps = jnp.array([[-0.5, -1.0, -jnp.inf], [-1.5, -jnp.inf, -jnp.inf]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    loss, aux = L.sft_loss(logps, mask)
    assert float(loss) == pytest.approx(1.0) and float(aux["n_tokens"]) == 3
    rng = np.random.default_rng(0)
    lp = np.log(rng.uniform(0.1, 1, (4, 6))).astype(np.float32)
    m = rng.random((4, 6)) < 0.6
    np.testing.assert_allclose(float(jax.jit(L.sft_loss)(lp, m)[0]), ref.sft_loss(lp, m), rtol=1e-5)
    g = jax.grad(lambda x: L.sft_loss(x, mask)[0])(jnp.where(mask, logps, 0.0))
    np.testing.assert_allclose(g, np.where(mask, -1 / 3, 0.0), rtol=1e-6)


@pytest.mark.parametrize("label_weight", [1.0, 0.5, 5.0])
def test_sft_loss_label_weight(label_weight):
    """By hand: responses [-0.5, -1.0] and [-1.5]: labels 0.5 and 1.5 weigh label_weight,
    the other token 1: (w * 0.5 + 1.0 + w * 1.5) / (2 w + 1); and the numpy reference on
    random rows (a reduction of <= 24 f32 terms of size <= 2.3: rtol 1e-5 is generous)."""
    logps = jnp.array([[-0.5, -1.0, -jnp.inf], [-1.5, -jnp.inf, -jnp.inf]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    w = label_weight
    loss, aux = L.sft_loss(logps, mask, w)
    assert float(loss) == pytest.approx((w * 0.5 + 1.0 + w * 1.5) / (2 * w + 1), rel=1e-6)
    assert float(aux["n_tokens"]) == pytest.approx(2 * w + 1)
    rng = np.random.default_rng(1)
    lp = np.log(rng.uniform(0.1, 1, (4, 6))).astype(np.float32)
    m = rng.random((4, 6)) < 0.6
    m[:, 0] = True  # every response has its label token
    got = float(jax.jit(L.sft_loss, static_argnums=2)(lp, m, w)[0])
    np.testing.assert_allclose(got, ref.sft_loss(lp, m, w), rtol=1e-5)
    # the gradient of a label token is w / sum(w) times that of another token
    g = jax.grad(lambda x: L.sft_loss(x, mask, w)[0])(jnp.where(mask, logps, 0.0))
    np.testing.assert_allclose(g[0, :2], [-w / (2 * w + 1), -1 / (2 * w + 1)], rtol=1e-6)


def test_verdict_nll_against_numpy():
    """The auxiliary verdict loss against the float64 reference on random rows, with some
    verdicts unstated (-1, skipped). Each term is a log-sum-exp over C = 6 logits of size
    ~ 3 and the sum has <= 20 of them: f32 rounding is ~1e-6 of the total, rtol 1e-5."""
    rng = np.random.default_rng(0)
    D, R, C, N = 16, 4, 6, 5
    readout = L.verdict_readout(D, R, C, seed=3)
    h = rng.standard_normal((N, D)).astype(np.float32) * 3
    verdicts = rng.integers(-1, C, (N, R)).astype(np.int32)
    got, count = jax.jit(L.verdict_nll)(h, readout, verdicts)
    want, n = ref.verdict_nll(h, readout, verdicts)
    assert float(count) == n == (verdicts >= 0).sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # by hand: h = 0 gives uniform logits, so each stated verdict costs log C
    zero, _ = L.verdict_nll(np.zeros((N, D), np.float32), readout, verdicts)
    np.testing.assert_allclose(float(zero), n * np.log(C), rtol=1e-6)
    # the gradient w.r.t. h flows only through stated verdicts
    none = np.full((N, R), -1, np.int32)
    g = jax.grad(lambda x: L.verdict_nll(x, readout, none)[0])(h)
    assert float(jnp.abs(g).max()) == 0.0


def test_verdict_readout_is_fixed_by_its_seed():
    """Same seed, same readout; another seed, another; entries N(0, 1/D): the sample
    variance of 64 x 6 x 8 = 3072 draws is within 5 sigma (sqrt(2/3072) = 0.026) of 1/D."""
    a, b = L.verdict_readout(64, 6, 8, 0), L.verdict_readout(64, 6, 8, 0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 6, 8) and a.dtype == np.float32
    assert not np.array_equal(a, L.verdict_readout(64, 6, 8, 1))
    assert abs(a.var() * 64 - 1) < 5 * np.sqrt(2 / a.size)


def test_sft_loss_extra_nll_adds_to_the_numerator():
    """extra_nll enters the numerator, not the token count: (1.5 + 2.0) / 3."""
    logps = jnp.array([[-0.5, -1.0], [-0.0, 0.0]])
    mask = jnp.array([[1, 1], [1, 0]], bool)
    loss, aux = L.sft_loss(logps, mask, 1.0, jnp.float32(2.0))
    assert float(loss) == pytest.approx(3.5 / 3) and float(aux["n_tokens"]) == 3


@pytest.mark.parametrize("field", ["label_weight=3.0", "label_noise=0.5", "verdict_weight=1.0"])
def test_sft_label_fields_are_label_first_only(tmp_path, field):
    from agrl.config import ConfigError, load_config
    from agrl.train.stages import run_sft

    cfg = load_config(None, [f"sft.{field}", "train.response_order=think_first",
                             f"paths.out={tmp_path}", f"paths.world={tmp_path}"])  # fmt: skip
    with pytest.raises(ConfigError, match=f"sft.{field}: acts on the first response token"):
        run_sft(cfg)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_swap_label_inputs(p):
    """A swapped label token becomes another label's token, uniformly over the other three;
    a first token that is no label is never touched; the swap rate is p (binomial: 5 sigma
    of n = 20000 draws is at most 0.018)."""
    labels = np.array([11, 12, 13, 14], np.int32)
    rng = np.random.default_rng(0)
    first = rng.choice(np.array([11, 12, 13, 14, 99], np.int32), 20000)
    got = np.asarray(L.swap_label_inputs(jnp.asarray(first), jnp.asarray(labels),
                                         jax.random.key(3), p))  # fmt: skip
    is_label = np.isin(first, labels)
    assert (got[~is_label] == first[~is_label]).all()
    assert np.isin(got[is_label], labels).all()
    swapped = is_label & (got != first)
    assert abs(swapped.sum() / is_label.sum() - p) < 5 * np.sqrt(0.25 / is_label.sum())
    if p > 0:  # the replacement never repeats the label, and each other label is as likely
        pairs = np.stack([first[swapped], got[swapped]], 1)
        for a in labels:
            to = pairs[pairs[:, 0] == a, 1]
            counts = np.array([(to == b).sum() for b in labels if b != a])
            assert len(to) == counts.sum() and counts.min() > 0
            n = len(to)
            assert np.abs(counts / n - 1 / 3).max() < 5 * np.sqrt((2 / 9) / n)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss(beta):
    # Policy equal to the reference: margin 0, loss log 2, dloss/dchosen = -beta / 2 / B
    z = jnp.zeros(4)
    loss, aux = L.dpo_loss(z, z, z, z, beta)
    assert float(loss) == pytest.approx(np.log(2.0))
    g = jax.grad(lambda c: L.dpo_loss(c, z, z, z, beta)[0])(z)
    np.testing.assert_allclose(g, -beta * 0.5 / 4, rtol=1e-6)
    rng = np.random.default_rng(1)
    c, r, rc, rr = (rng.normal(-20, 5, 8).astype(np.float32) for _ in range(4))
    loss, aux = jax.jit(L.dpo_loss, static_argnums=4)(c, r, rc, rr, beta)
    np.testing.assert_allclose(float(loss), ref.dpo_loss(c, r, rc, rr, beta), rtol=1e-5)
    margin = beta * ((c - rc) - (r - rr))
    assert float(aux["accuracy_sum"]) == (margin > 0).sum() and float(aux["n_pairs"]) == 8


def test_registered_loss_fn_is_used():
    def plain_pg(logps, old, refl, adv, mask, forced, cfg, mode, gamma, *, entropy=None):
        m = mask.astype(jnp.float32)
        num = -(adv[:, None] * logps * m).sum()
        return num / m.sum(), {"loss_num": num, "loss_den": m.sum()}

    L.register_loss_fn("reinforce", plain_pg)
    logps, old, refl, adv, mask, forced = make_batch(seed=3)
    out, aux = L.policy_loss(
        logps, old, refl, adv, mask, forced, LossConfig(fn="reinforce"), "include", 0.1
    )
    want = -(adv[:, None] * np.where(mask, logps, 0)).sum() / mask.sum()
    np.testing.assert_allclose(float(out), want, rtol=1e-5)
    default, _ = L.policy_loss(logps, old, refl, adv, mask, forced, LossConfig(), "include", 0.1)
    assert float(default) != pytest.approx(want)
    with pytest.raises(ConfigError, match="loss.fn"):
        L.policy_loss(logps, old, refl, adv, mask, forced, LossConfig(fn="nope"), "include", 0.1)


def test_config_guard_rails():
    with pytest.raises(ConfigError, match="loss.eps_high"):
        LossConfig(eps_low=0.3, eps_high=0.2)
    with pytest.raises(ConfigError, match="loss.eps_low"):
        LossConfig(eps_low=1.0, eps_high=1.2)
    with pytest.raises(ConfigError, match="loss.dual_clip"):
        LossConfig(dual_clip=1.0)
    with pytest.raises(ConfigError, match="loss.constant_norm"):
        LossConfig(aggregation="constant-normalised", constant_norm=0)
    with pytest.raises(ConfigError, match="loss.mu"):
        LossConfig(mu=0)
    with pytest.warns(UserWarning, match="k1"):
        LossConfig(kl_estimator="k1", kl_beta=0.02, mu=1)
    with pytest.warns(UserWarning, match="constant_norm"):
        LossConfig(constant_norm=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LossConfig()
        LossConfig(kl_estimator="k1", kl_beta=0.0, mu=1)
        LossConfig(kl_estimator="k1", kl_beta=0.02, mu=2)


# ---------------------------------------------------------------------------------------
# docs/algorithm.md matches the code

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithm.md"


def test_docs_name_existing_functions():
    text = DOC.read_text()
    refs = set(re.findall(r"([\w/]+)\.py:(\w+)", text))
    assert len(refs) >= 20
    for path, name in refs:
        mod = importlib.import_module("agrl." + path.removeprefix("agrl/").replace("/", "."))
        assert hasattr(mod, name), f"docs/algorithm.md names {path}.py:{name}"


def test_docs_extension_snippet_runs():
    from agrl.rl import advantages, rewards

    code = DOC.read_text().split("```python\n")[1].split("```")[0]
    exec(code, {})
    r = jnp.array([[1.0, 0.0, 0.5]])
    np.testing.assert_allclose(
        advantages.compute_advantages(r, AdvantageConfig(estimator="rank")), [[1, -1, 0]]
    )
    z = jnp.zeros((1, 6), jnp.int32)
    out, _ = rewards.compute_rewards(
        jnp.array([2]), z, jnp.array([True]), jnp.array([2]), z, jnp.array([True]),
        RewardConfig(fn="strict"),
    )  # fmt: skip
    assert np.isfinite(np.asarray(out)).all()
    lp, m = jnp.full((2, 3), -1.0), jnp.ones((2, 3), bool)
    value, _ = L.policy_loss(
        lp, lp, lp, jnp.array([1.0, -3.0]), m, ~m, LossConfig(fn="reinforce"), "include", 0.1
    )
    # -(1 * -1 * 3 + -3 * -1 * 3) / 6 = -(-3 + 9) / 6 = -1
    assert float(value) == pytest.approx(-1.0)
