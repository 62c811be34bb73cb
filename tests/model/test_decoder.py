"""Decoder modules: RMSNorm and RoPE by hand, GQA attention against numpy, causal masking, left
padding, cached prefill + decode == full forward, scan == unrolled (agrl.model.decoder).

Tolerances are f32 rounding bounds: EPS (2^-23) times the magnitude of the compared values
times the length of the longest reduction feeding them (each summand can add one rounding).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.model import decoder, preset
from agrl.model.attention import attention, fork_cache, init_cache
from agrl.model.decoder import (
    cached_hidden_states,
    forward,
    fuse_params,
    hidden_states,
    positions_from_mask,
    project_vocab,
)
from agrl.model.layers import apply_rope, rms_norm, rope, rope_tables
from agrl.model.params import init_params

EPS = float(np.finfo(np.float32).eps)
CFG = dataclasses.replace(
    preset("tiny"), vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8,
)  # fmt: skip
# The reductions feeding a logit: D (projections, norms), F (down projection), the keys.
REDUCTION = CFG.hidden_size + CFG.intermediate_size + 32


def tol(ref, n: int) -> float:
    return EPS * float(np.abs(ref).max()) * n


@pytest.fixture(scope="module", params=["qwen3", "qwen2"])
def model(request):
    cfg = dataclasses.replace(CFG, arch=request.param, qk_norm=None, qkv_bias=None)
    params = init_params(cfg, jax.random.key(0), init_std=0.3)
    if cfg.qkv_bias:  # init_params zeroes biases; make them matter
        keys = iter(jax.random.split(jax.random.key(1), 3))
        for b in ("bq", "bk", "bv"):
            params["layers"][b] = 0.3 * jax.random.normal(next(keys), params["layers"][b].shape)
    return cfg, params


def left_padded(rng, lengths, width):
    ids = rng.integers(1, CFG.vocab_size, (len(lengths), width)).astype(np.int32)
    mask = np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]
    return np.where(mask, ids, 0).astype(np.int32), mask


# ---------------------------------------------------------------------------------------
# Hand-checkable pieces.


def test_rms_norm_by_hand():
    # x = [3, 4]: mean(x^2) = 12.5, so y = w * x / sqrt(12.5) = [1, 2] * [0.8485, 1.1314]
    y = np.asarray(rms_norm(jnp.array([[3.0, 4.0]]), jnp.array([1.0, 2.0]), 0.0))
    want = np.array([[3.0, 8.0]]) / np.sqrt(12.5)
    np.testing.assert_allclose(y, want, rtol=0, atol=tol(want, 4))


def test_rope_by_hand():
    # Hd = 4, theta = 100: inv_freq = [1, 100^-0.5 = 0.1]; at position p the pairs (x0, x2)
    # and (x1, x3) rotate by angles p and 0.1 p ("rotate_half": the halves pair up).
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    for p in (0, 1, 5):
        y = np.asarray(rope(jnp.asarray(x)[None, None, None], jnp.array([[p]]), 100.0))[0, 0, 0]
        a = np.array([p, 0.1 * p])
        want = np.concatenate(
            [x[:2] * np.cos(a) - x[2:] * np.sin(a), x[2:] * np.cos(a) + x[:2] * np.sin(a)]
        )
        # the angle p * inv_freq is rounded once (relative EPS), so sin/cos by EPS * p
        np.testing.assert_allclose(y, want, rtol=0, atol=tol(x, 4) * max(p, 1))


def test_rope_scores_depend_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32) for _ in range(2))
    dots = []
    for m, n in ((3, 1), (7, 5), (12, 10)):
        qm = rope(q, jnp.array([[m]]), 10000.0)
        kn = rope(k, jnp.array([[n]]), 10000.0)
        dots.append(float(jnp.sum(qm * kn)))
    # angles up to 12 rad rounded to relative EPS: error ~ 12 * EPS per coordinate pair
    assert np.ptp(dots) <= tol(np.asarray(q) * np.asarray(k), 8) * 12 * 8


def test_gqa_attention_against_numpy():
    # H = 4 query heads share K = 2 kv heads: head h uses kv head h // 2.
    rng = np.random.default_rng(0)
    B, S, C, H, K, Hd = 2, 3, 5, 4, 2, 8
    q = rng.standard_normal((B, S, H, Hd)).astype(np.float32)
    k, v = (rng.standard_normal((B, K, C, Hd)).astype(np.float32) for _ in range(2))
    allowed = rng.random((B, S, C)) < 0.7
    allowed[..., 0] = True
    out = np.asarray(attention(*(jnp.asarray(a) for a in (q, k, v, allowed))))
    kh, vh = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)  # [B, H, C, Hd]
    s = np.einsum("bshd,bhcd->bhsc", q.astype(np.float64), kh) / np.sqrt(Hd)
    # a score error of EPS * |s| * Hd moves the output by about that times |v|; the weighted
    # sum over C keys adds EPS * |v| * C
    atol = EPS * float(np.abs(v).max()) * (float(np.abs(s).max()) * Hd + C)
    s = np.where(allowed[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bhsc,bhcd->bshd", p, vh)
    np.testing.assert_allclose(out, want, rtol=0, atol=atol)


def test_gqa_equals_repeated_kv_heads(model):
    """A K-kv-head model equals the H-kv-head model whose kv heads are the K heads repeated."""
    cfg, params = model
    Q = cfg.num_heads // cfg.num_kv_heads
    mha = dataclasses.replace(cfg, num_kv_heads=cfg.num_heads)
    lay = dict(params["layers"])
    for w in ("wk", "wv"):
        lay[w] = jnp.repeat(lay[w], Q, axis=2)  # [L, D, K, Hd] -> [L, D, H, Hd]
    for b in ("bk", "bv"):
        if b in lay:
            lay[b] = jnp.repeat(lay[b], Q, axis=1)
    ids, mask = left_padded(np.random.default_rng(0), [6, 4], 6)
    pos = positions_from_mask(mask)
    a = np.asarray(forward(params, cfg, ids, pos, mask))
    b = np.asarray(forward({**params, "layers": lay}, mha, ids, pos, mask))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol(a, REDUCTION))


# ---------------------------------------------------------------------------------------
# Whole-decoder invariances.


def test_causal_future_tokens_do_not_change_the_past(model):
    cfg, params = model
    ids, mask = left_padded(np.random.default_rng(0), [8, 8], 8)
    pos = positions_from_mask(mask)
    changed = ids.copy()
    changed[:, 5:] = (ids[:, 5:] + 7) % cfg.vocab_size
    a = np.asarray(forward(params, cfg, ids, pos, mask))
    b = np.asarray(forward(params, cfg, changed, pos, mask))
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # same arithmetic on the same inputs
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3


def test_completion_logps_input_ids_change_only_what_follows(model):
    """input_ids feeds other completion tokens while scoring completion_ids: the first
    token's log-prob (predicted from the prompt) is bit-identical, later ones change, and
    input_ids = completion_ids is plain teacher forcing."""
    cfg, params = model
    rng = np.random.default_rng(0)
    prompt, pmask = left_padded(rng, [4, 6], 6)
    comp = rng.integers(1, cfg.vocab_size, (2, 5)).astype(np.int32)
    cmask = np.ones((2, 5), bool)
    fed = comp.copy()
    fed[:, 0] = (comp[:, 0] + 5) % cfg.vocab_size
    base = np.asarray(decoder.completion_logps(params, cfg, prompt, pmask, comp, cmask))
    same = decoder.completion_logps(params, cfg, prompt, pmask, comp, cmask, input_ids=comp)
    np.testing.assert_array_equal(base, np.asarray(same))
    got = np.asarray(decoder.completion_logps(params, cfg, prompt, pmask, comp, cmask,
                                              input_ids=fed))  # fmt: skip
    np.testing.assert_array_equal(got[:, 0], base[:, 0])
    assert np.abs(got[:, 1:] - base[:, 1:]).max() > 1e-3


def test_left_padding_does_not_change_real_positions(model):
    cfg, params = model
    ids, mask = left_padded(np.random.default_rng(0), [5], 5)
    a = np.asarray(forward(params, cfg, ids, positions_from_mask(mask), mask))[0]
    pad_ids = np.concatenate([np.full((1, 3), 9, np.int32), ids], 1)  # junk ids on padding
    pad_mask = np.concatenate([np.zeros((1, 3), bool), mask], 1)
    b = np.asarray(forward(params, cfg, pad_ids, positions_from_mask(pad_mask), pad_mask))[0, 3:]
    np.testing.assert_allclose(a, b, rtol=0, atol=tol(a, REDUCTION))


def test_scan_equals_unrolled(model, monkeypatch):
    cfg, params = model
    ids, mask = left_padded(np.random.default_rng(0), [7, 4], 7)
    pos = positions_from_mask(mask)
    unrolled = np.asarray(jax.jit(lambda p: forward(p, cfg, ids, pos, mask))(params))
    monkeypatch.setattr(decoder, "UNROLL_MAX_LAYERS", 0)  # scan one layer per iteration
    rolled = np.asarray(jax.jit(lambda p: forward(p, cfg, ids, pos, mask))(params))
    np.testing.assert_allclose(rolled, unrolled, rtol=0, atol=tol(unrolled, REDUCTION))


def test_cached_prefill_then_decode_equals_full_forward(model):
    """init_cache(B, P + T): prefill P (left-padded) tokens, then one token per call; the
    logits at every position equal the full forward's."""
    cfg, params = model
    P, T = 6, 5
    ids, mask = left_padded(np.random.default_rng(0), [6, 3], P + T)
    ids, mask = np.roll(ids, -T, 1), np.roll(mask, -T, 1)  # prompt left-padded to P, then T
    mask[:, P:] = True
    pos = positions_from_mask(mask)
    full = np.asarray(forward(params, cfg, ids, pos, mask))
    fused = fuse_params(params, cfg)
    h, cache = cached_hidden_states(fused, cfg, ids[:, :P], pos[:, :P], mask[:, :P],
                                    init_cache(cfg, 2, P + T))  # fmt: skip
    got = [project_vocab(h, fused["unembed"])]
    for t in range(P, P + T):
        s = slice(t, t + 1)
        h, cache = cached_hidden_states(fused, cfg, ids[:, s], pos[:, s], mask[:, s], cache)
        got.append(project_vocab(h, fused["unembed"]))
    got = np.concatenate([np.asarray(g) for g in got], 1)
    real = mask[:, :, None]  # padded query rows attend nothing real; compare real ones
    np.testing.assert_allclose(got * real, full * real, rtol=0, atol=tol(full, REDUCTION))
    # the unfused entry point gives the same
    h2, _ = hidden_states(params, cfg, ids[:, :P], pos[:, :P], mask[:, :P],
                          init_cache(cfg, 2, P + T))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(project_vocab(h2, fused["unembed"])), got[:, :P])


@pytest.mark.parametrize("chunk", [1, 2])
def test_forked_cache_decode_equals_full_forward(model, chunk):
    """Prefill B prompts once, fork G = 3 rows each (prompt block shared), feed each row its
    own continuation `chunk` tokens per call: logits equal the full forward of every row's
    prompt + continuation (the two-block attention is one softmax over both blocks)."""
    cfg, params = model
    B, G, P, T = 2, 3, 5, 4
    rng = np.random.default_rng(1)
    prompt, pmask = left_padded(rng, [5, 2], P)
    cont = rng.integers(1, cfg.vocab_size, (B * G, T)).astype(np.int32)
    ids = np.concatenate([np.repeat(prompt, G, 0), cont], 1)
    mask = np.concatenate([np.repeat(pmask, G, 0), np.ones((B * G, T), bool)], 1)
    pos = positions_from_mask(mask)
    full = np.asarray(forward(params, cfg, ids, pos, mask))[:, P:]
    fused = fuse_params(params, cfg)
    _, cache = cached_hidden_states(fused, cfg, prompt, pos[::G, :P], pmask,
                                    init_cache(cfg, B, P))  # fmt: skip
    cache = fork_cache(cfg, cache, G, T)
    got = []
    for t in range(0, T, chunk):
        s = slice(P + t, P + t + chunk)
        h, cache = cached_hidden_states(fused, cfg, ids[:, s], pos[:, s], mask[:, s], cache)
        got.append(np.asarray(project_vocab(h, fused["unembed"])))
    np.testing.assert_allclose(np.concatenate(got, 1), full, rtol=0, atol=tol(full, REDUCTION))


def test_rope_tables_shared_by_apply_rope():
    """rope == apply_rope with the tables (the decoder builds them once per forward)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 8)), jnp.float32)
    pos = jnp.array([[0, 1, 2], [4, 5, 6]])
    a = rope(x, pos, 10000.0)
    b = apply_rope(x, *rope_tables(pos, 8, 10000.0))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
