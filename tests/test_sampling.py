"""Sampler: greedy equals transformers, frequencies, forced prefixes, logps, EOS, buckets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from agrl.config import SamplingConfig
from agrl.model import completion_logps, forward, init_params, load_pretrained, preset
from agrl.sampling import make_sampler, sample_logits
from tests.hf_models import make_hf_model
from tests.tolerance import f32_tol

SC = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, prompt_buckets=(8, 16))
TINY = dataclasses.replace(
    preset("tiny"), vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(TINY, jax.random.key(0), init_std=0.3)


def left_pad(rows: list[list[int]], width: int):
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, True
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_greedy_equals_transformers(tmp_path, arch):
    model = make_hf_model(arch, tmp_path, tie=arch != "llama")
    params, cfg = load_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    ids, mask = left_pad([list(rng.integers(3, 96, n)) for n in (11, 5, 8, 1)], 11)
    eos = 2
    with torch.no_grad():
        ref = model.generate(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=32,
            eos_token_id=eos,
            pad_token_id=0,
        )[:, ids.shape[1] :].numpy()
    sc = dataclasses.replace(SC, temperature=0.0, max_new_tokens=32, prompt_buckets=(16,))
    out = make_sampler(cfg, sc, eos_ids=(eos,), group_size=1)(params, ids, mask, jax.random.key(0))
    got = np.where(np.asarray(out.mask), np.asarray(out.tokens), 0)
    ref = np.pad(ref, ((0, 0), (0, 32 - ref.shape[1])))
    np.testing.assert_array_equal(got, ref)
    assert np.asarray(out.mask).sum() > 40  # most rows decode well past a few tokens


@pytest.mark.parametrize("top_k,top_p,temp", [(0, 1.0, 1.0), (3, 1.0, 0.5), (0, 0.7, 2.0)])
def test_sample_logits_frequencies(top_k, top_p, temp):
    # z = log([0.4, 0.3, 0.15, 0.1, 0.05]); expected p ~ z / temp, truncated to the top_k,
    # then to the smallest prefix with mass >= top_p, renormalised.
    z = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], np.float32))
    n = 40_000
    logits = jnp.asarray(np.tile(z[[2, 0, 4, 1, 3]], (n, 1)))  # unsorted vocab order
    tok = np.asarray(
        sample_logits(logits, jax.random.key(1), temperature=temp, top_k=top_k, top_p=top_p)
    )
    p = np.exp(z / temp) / np.exp(z / temp).sum()
    if top_k:
        p[top_k:] = 0
    if top_p < 1:
        keep = np.cumsum(p) - p < top_p * p.sum()
        p = np.where(keep, p, 0)
    p = p / p.sum()
    expected = p[[2, 0, 4, 1, 3]]  # vocab order: token v holds z[order[v]]
    freq = np.bincount(tok, minlength=5) / n
    np.testing.assert_allclose(freq, expected, atol=0.01)
    assert np.all(freq[expected == 0] == 0)


def test_first_token_frequencies_match_model(tiny_params):
    """G=4000 samples of one prompt: the first token follows softmax(z / 0.8) of the model."""
    ids, mask = left_pad([[5, 9, 11]], 3)
    sc = dataclasses.replace(SC, temperature=0.8, max_new_tokens=1)
    out = make_sampler(TINY, sc, group_size=4000)(tiny_params, ids, mask, jax.random.key(3))
    z = np.asarray(forward(tiny_params, TINY, ids, np.array([[0, 1, 2]]), mask))[0, -1]
    p = np.exp((z - z.max()) / 0.8)
    p /= p.sum()
    freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=TINY.vocab_size) / 4000
    assert p.max() > 0.1  # a distribution with visible structure
    assert np.abs(freq - p).max() < 0.025


def _recompute(params, cfg, ids, mask, out, temperature, group):
    ids, mask = np.repeat(ids, group, 0), np.repeat(mask, group, 0)
    return np.asarray(
        completion_logps(
            params, cfg, jnp.asarray(ids), jnp.asarray(mask), out.tokens, out.mask,
            temperature=temperature,
        )
    )  # fmt: skip


def test_forced_prefixes_and_logps(tiny_params):
    ids, mask = left_pad([[3, 4, 5, 6, 7], [8, 9]], 6)
    G, T = 3, 8
    forced_ids = np.zeros((2 * G, 5), np.int32)
    forced_ids[1, :4] = [10, 11, 12, 13]
    forced_ids[3, :2] = [20, 21]
    forced_ids[5, :5] = [30, 31, 32, 33, 34]
    forced_len = np.array([0, 4, 0, 2, 0, 5], np.int32)
    sc = dataclasses.replace(SC, temperature=0.7, top_k=20, max_new_tokens=T)
    sampler = make_sampler(TINY, sc, group_size=G)
    out = sampler(tiny_params, ids, mask, jax.random.key(7), forced_ids, forced_len)
    tokens, fm = np.asarray(out.tokens), np.asarray(out.forced_mask)
    for row, n in enumerate(forced_len):
        np.testing.assert_array_equal(tokens[row, :n], forced_ids[row, :n])
        np.testing.assert_array_equal(fm[row], np.arange(T) < n)
    assert np.all(np.asarray(out.mask)) and np.all(np.asarray(out.lengths) == T)  # no EOS
    ref = _recompute(tiny_params, TINY, ids, mask, out, 0.7, G)
    tol = f32_tol(np.abs(ref).max(), TINY.intermediate_size, depth=TINY.num_layers + 1)
    np.testing.assert_allclose(np.asarray(out.logps), ref, atol=tol)
    # Forcing one row leaves the unforced rows of the same call unchanged.
    free = sampler(tiny_params, ids, mask, jax.random.key(7))
    for row in (0, 2, 4):
        np.testing.assert_array_equal(np.asarray(free.tokens[row]), tokens[row])


def test_eos_stops_rows_and_loop(tiny_params):
    ids, mask = left_pad([[3, 4], [5, 6]], 2)
    G, T = 2, 8
    eos = (40, 41)
    forced_ids = np.zeros((4, 3), np.int32)
    forced_ids[0, :3] = [7, 8, 40]  # row 0 ends at step 2 on the first EOS id
    forced_ids[1, :1] = [41]  # row 1 at step 0 on the second
    forced_ids[2, :2] = [9, 41]
    forced_ids[3, :3] = [9, 9, 40]
    sc = dataclasses.replace(SC, max_new_tokens=T)
    out = make_sampler(TINY, sc, eos_ids=eos, pad_id=63, group_size=G)(
        tiny_params, ids, mask, jax.random.key(0), forced_ids, np.array([3, 1, 2, 3])
    )
    np.testing.assert_array_equal(np.asarray(out.lengths), [3, 1, 2, 3])
    assert int(out.steps) == 3  # the loop exits once every row has emitted an EOS
    tokens = np.asarray(out.tokens)
    assert np.all(tokens[~np.asarray(out.mask)] == 63)
    assert np.all(np.asarray(out.logps)[~np.asarray(out.mask)] == 0)


def test_left_padding_and_buckets(tiny_params):
    """A prompt gives the same greedy completion whatever its padding; one compile per bucket."""
    sc = dataclasses.replace(SC, temperature=0.0)
    sampler = make_sampler(TINY, sc, group_size=1)
    prompt = [3, 14, 15, 9, 2]
    outs = []
    for width in (5, 7, 8, 12, 16):
        ids, mask = left_pad([prompt, [1, 2]], width)
        outs.append(np.asarray(sampler(tiny_params, ids, mask, jax.random.key(0)).tokens[0]))
    assert all(np.array_equal(o, outs[0]) for o in outs)
    assert sampler.traces == 2  # buckets 8 and 16
    with pytest.raises(ValueError, match="largest bucket 16"):
        sampler(tiny_params, *left_pad([[1] * 17], 17), jax.random.key(0))


def test_keys_fold_per_call_and_step(tiny_params):
    ids, mask = left_pad([[3, 4, 5]], 3)
    sampler = make_sampler(TINY, SC, group_size=64)
    a = np.asarray(sampler(tiny_params, ids, mask, jax.random.key(0)).tokens)
    b = np.asarray(sampler(tiny_params, ids, mask, jax.random.key(0)).tokens)
    c = np.asarray(sampler(tiny_params, ids, mask, jax.random.key(1)).tokens)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5
    assert len({tuple(r) for r in a}) > 60  # the G rows of one prompt differ
