"""agrl.eval.policy_eval: greedy + posterior evaluation, pass@G, sample_correct, batching."""

from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest

from agrl.config import build_config
from agrl.eval.policy_eval import evaluate_policy, pass_at_g, sample_correct
from agrl.model import init_params
from agrl.task.data import load_records, padded_batches
from agrl.task.format import render_response
from agrl.task.tokenizer import load_tokenizer
from agrl.world.config import WorldConfig
from agrl.world.splits import write_world

TINY = [
    "model.vocab_size=384", "model.hidden_size=32", "model.intermediate_size=64",
    "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
    "sampling.max_new_tokens=40", "sampling.prompt_buckets=16,32", "sampling.group_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_world(WorldConfig(n_sft=8, n_rl=8, n_b_eval=11, n_w_eval=8), d)
    cfg = build_config(overrides=TINY)
    # A random model with peaked logits: its greedy answers differ between prompts.
    params = init_params(cfg.model, jax.random.key(3), init_std=0.3)
    return cfg, params, load_tokenizer(d / "tokenizer"), load_records(d / "b_eval.jsonl")


def test_padded_batches_cover_every_sequence_once_in_fixed_shapes():
    seqs = [[1], [2, 3], [4, 5, 6], [7], [8, 9]]
    got = list(padded_batches(seqs, 2, 0, length=lambda n: 4 * -(-n // 4)))
    assert [(s, n) for s, n, _, _ in got] == [(0, 2), (2, 2), (4, 1)]
    assert all(ids.shape == (2, 4) and mask.shape == (2, 4) for _, _, ids, mask in got)
    _, _, ids, mask = got[2]  # the last chunk repeats its final sequence
    np.testing.assert_array_equal(ids, [[0, 0, 8, 9], [0, 0, 8, 9]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 1, 1]])
    rows = [ids[i][mask[i]].tolist() for _, n, ids, mask in got for i in range(n)]
    assert rows == seqs


def test_metrics_do_not_depend_on_the_batch_size(setup):
    """Padding the last batch by repetition must not leak into the metrics (11 records)."""
    cfg, params, tok, records = setup
    m4, p4 = evaluate_policy(params, cfg, tok, records, batch_size=4)
    m64, p64 = evaluate_policy(params, cfg, tok, records, batch_size=64)
    assert p4["texts"] == p64["texts"] and len(p4["texts"]) == len(records)
    np.testing.assert_array_equal(p4["pred_label"], p64["pred_label"])
    # the posterior is a softmax over the 4 label tokens of the same prefill
    np.testing.assert_allclose(p4["probs"], p64["probs"], atol=1e-6)
    np.testing.assert_allclose(p4["probs"].sum(-1), 1.0, atol=1e-6)
    assert m4["accuracy"] == m64["accuracy"] and m4["n"] == len(records)
    assert m4["posterior"]["n"] == len(records)
    assert set(m4["teacher_split"]) == {"teacher_wrong", "teacher_right"}
    assert m4["predictions"] == {  # per record, for paired comparisons of two models
        "pred_label": p4["pred_label"].tolist(),
        "gold_label": [r["label"] for r in records],
    }


def test_greedy_answer_equals_the_sampler_alone(setup):
    """Record i's greedy text is what the sampler gives for its prompt on its own."""
    cfg, params, tok, records = setup
    _, preds = evaluate_policy(params, cfg, tok, records[:3], batch_size=2)
    _, solo = evaluate_policy(params, cfg, tok, records[2:3], batch_size=1)
    assert preds["texts"][2] == solo["texts"][0]


def test_sample_correct_hand_case(setup):
    """A fake sampler returns fixed responses: 2 prompts x G=2, gold labels (2, 4)."""
    cfg, _, tok, records = setup
    texts = [
        render_response(2, [1, 1, 1, 0, 0, 0], "q", "i"),  # right
        render_response(3, [1, 1, 1, 0, 0, 0], "q", "i"),  # wrong label
        "garbage",  # unparseable
        render_response(4, [1, 1, 0, 0, 0, 0], "q", "i"),  # right
    ]
    enc = [tok.encode(t, add_special_tokens=False) for t in texts]
    T = max(map(len, enc))
    tokens = np.zeros((4, T), np.int32)
    mask = np.zeros((4, T), bool)
    for i, e in enumerate(enc):
        tokens[i, : len(e)], mask[i, : len(e)] = e, True
    fake = lambda *a: types.SimpleNamespace(tokens=tokens, mask=mask)  # noqa: E731
    ids = np.zeros((2, 3), np.int32)
    toks, m, correct = sample_correct(fake, None, tok, ids, ids > 0, np.array([2, 4]), None,
                                      "label_first")  # fmt: skip
    np.testing.assert_array_equal(correct, [[True, False], [False, True]])
    assert toks.shape == (4, T) and m.sum() == sum(map(len, enc))


def test_pass_at_g_counts_every_prompt_once(setup):
    cfg, params, tok, records = setup
    cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, group_size=2))
    out = pass_at_g(params, cfg, tok, records, seed=0)
    assert out["group_size"] == 2 and out["overall"]["n"] == len(records)
    assert sum(v["n"] for v in out["by_type"].values()) == len(records)
    o = out["overall"]
    assert 0 <= o["zero_correct"] <= 1 - o["pass_at_g"] + 1e-12
    assert o["all_correct"] <= o["mean_accuracy"] <= o["pass_at_g"]
