"""agrl.rl.advantages against tests/reference.py, hand cases, invariances, the registry."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.config import AdvantageConfig, ConfigError, SamplingConfig
from agrl.rl import advantages as adv_mod
from agrl.rl.advantages import compute_advantages, group_advantages, group_stats
from tests import reference as ref

OPTIONS = list(
    itertools.product(("zscore", "no_std", "rloo"), (0, 1), (1e-6, 1e-2), (None, 2.0, 0.5))
)


def rewards_bg(seed, b=5, g=6):
    rng = np.random.default_rng(seed)
    r = rng.choice([-1.0, 0.0, 0.5, 1.0, 1.5], size=(b, g)).astype(np.float32)
    r[0] = 1.0  # a zero-variance group
    return r


@pytest.mark.parametrize("estimator,ddof,eps,clip", OPTIONS)
def test_matches_reference_all_options(estimator, ddof, eps, clip):
    r = rewards_bg(seed=OPTIONS.index((estimator, ddof, eps, clip)))
    cfg = AdvantageConfig(estimator=estimator, ddof=ddof, eps=eps, clip=clip)
    got = jax.jit(compute_advantages, static_argnames="cfg")(r, cfg=cfg)
    want = ref.advantages(r, estimator, ddof, eps, clip)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # zero-variance group -> zero advantage under every estimator
    np.testing.assert_array_equal(np.asarray(got[0]), 0.0)


def test_hand_computed():
    # r = [1, 0, 0, 0]: mean 1/4; std ddof=1 = sqrt((9/16 + 3 * 1/16) / 3) = 1/2
    # zscore: (3/4) / (1/2) = 1.5 and (-1/4) / (1/2) = -0.5 (eps 0)
    r = jnp.array([[1.0, 0.0, 0.0, 0.0]])
    z = group_advantages(r, estimator="zscore", ddof=1, eps=0.0, clip=None)
    np.testing.assert_allclose(z, [[1.5, -0.5, -0.5, -0.5]], rtol=1e-6)
    # ddof=0: std = sqrt(3/16) = 0.4330 -> 0.75 / 0.4330 = 1.7321 = sqrt(3)
    z0 = group_advantages(r, estimator="zscore", ddof=0, eps=0.0, clip=None)
    np.testing.assert_allclose(z0[0, 0], np.sqrt(3.0), rtol=1e-6)
    # clip at 1: 1.5 -> 1
    zc = group_advantages(r, estimator="zscore", ddof=1, eps=0.0, clip=1.0)
    np.testing.assert_allclose(zc, [[1.0, -0.5, -0.5, -0.5]], rtol=1e-6)
    # Dr.GRPO: r - mean = [3/4, -1/4, ...]
    nd = group_advantages(r, estimator="no_std", ddof=1, eps=0.0, clip=None)
    np.testing.assert_allclose(nd, [[0.75, -0.25, -0.25, -0.25]], rtol=1e-6)
    # RLOO: 1 - mean(0,0,0) = 1; 0 - mean(1,0,0) = -1/3
    lo = group_advantages(r, estimator="rloo", ddof=1, eps=0.0, clip=None)
    np.testing.assert_allclose(lo, [[1.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6)


@pytest.mark.parametrize("estimator", ["zscore", "no_std", "rloo"])
def test_group_permutation_equivariance(estimator):
    cfg = AdvantageConfig(estimator=estimator)
    r = rewards_bg(seed=11)
    perm = np.random.default_rng(0).permutation(r.shape[1])
    a = np.asarray(compute_advantages(jnp.asarray(r), cfg))
    a_perm = np.asarray(compute_advantages(jnp.asarray(r[:, perm]), cfg))
    np.testing.assert_allclose(a_perm, a[:, perm], rtol=1e-6, atol=1e-7)
    # and permuting the groups permutes the rows
    rows = np.random.default_rng(1).permutation(r.shape[0])
    np.testing.assert_allclose(
        np.asarray(compute_advantages(jnp.asarray(r[rows]), cfg)), a[rows], rtol=1e-6
    )


def test_jit_equals_eager():
    cfg = AdvantageConfig()
    r = jnp.asarray(rewards_bg(seed=2))
    np.testing.assert_array_equal(
        np.asarray(compute_advantages(r, cfg)),
        np.asarray(jax.jit(compute_advantages, static_argnames="cfg")(r, cfg=cfg)),
    )


def test_group_stats():
    correct = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    r = jnp.array([[1.5, 1.5, 1.5, 1.5], [1.5, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    s = group_stats(correct, r, difficulty_filter=0.9)
    np.testing.assert_allclose(s["acc"], [1.0, 0.25, 0.0])
    np.testing.assert_array_equal(s["zero_var"], [True, False, True])
    np.testing.assert_array_equal(s["keep"], [False, True, True])  # acc 1 >= 0.9 is dropped
    np.testing.assert_array_equal(group_stats(correct, r, None)["keep"], [True, True, True])


def test_registered_estimator_is_used():
    def rank_advantage(r, cfg):  # a user's estimator: centred ranks
        ranks = jnp.argsort(jnp.argsort(r, axis=-1), axis=-1).astype(jnp.float32)
        return ranks - ranks.mean(-1, keepdims=True)

    adv_mod.register_advantage_fn("rank", rank_advantage)
    r = jnp.array([[3.0, 1.0, 2.0]])
    got = compute_advantages(r, AdvantageConfig(estimator="rank"))
    np.testing.assert_allclose(got, [[1.0, -1.0, 0.0]])
    with pytest.raises(ConfigError, match="advantage.estimator"):
        compute_advantages(r, AdvantageConfig(estimator="nope"))


def test_config_guard_rails():
    with pytest.raises(ConfigError, match="advantage.ddof"):
        AdvantageConfig(ddof=2)
    with pytest.raises(ConfigError, match="advantage.clip"):
        AdvantageConfig(clip=0.0)
    with pytest.raises(ConfigError, match="advantage.eps"):
        AdvantageConfig(eps=-1.0)
    with pytest.raises(ConfigError, match="sampling.group_size"):
        SamplingConfig(group_size=1)  # a group of one has no baseline
