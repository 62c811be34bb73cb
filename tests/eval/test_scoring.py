"""Label-posterior scoring: equals the full forward's label softmax (over every spelling of
each label); score_file end to end, labelled and unlabelled."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from agrl.eval.scoring import (
    cumpt_tiers,
    format_tier_summary,
    label_posterior,
    score_file,
    tier_summary,
)
from agrl.model import forward, init_params, positions_from_mask, preset, save_pretrained
from agrl.task.format import render_prompt
from agrl.task.tokenizer import build_tokenizer
from tests.tolerance import f32_tol

CFG = dataclasses.replace(
    preset("tiny"), vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8,
)  # fmt: skip


def test_label_posterior_matches_forward_and_ignores_padding():
    params = init_params(CFG, jax.random.key(0), init_std=0.3)
    ids = jnp.asarray([[0, 0, 9, 10, 11], [12, 13, 14, 15, 16]], jnp.int32)
    mask = ids > 0
    labels = jnp.asarray([4, 5, 6, 7])
    probs = np.asarray(label_posterior(params, CFG, ids, mask, labels))
    z = np.asarray(forward(params, CFG, ids, positions_from_mask(mask), mask))[:, -1]
    ref = np.exp(z[:, 4:8]) / np.exp(z[:, 4:8]).sum(-1, keepdims=True)
    # probabilities (magnitude 1) from two code paths of a 2-layer model (mlp dim 48)
    tol = f32_tol(1.0, CFG.intermediate_size, depth=CFG.num_layers + 1)
    np.testing.assert_allclose(probs, ref, atol=tol)
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # different prompts, different posteriors
    more_pad = jnp.pad(ids[:1], ((0, 0), (3, 0)))
    again = label_posterior(params, CFG, more_pad, more_pad > 0, labels)
    np.testing.assert_allclose(np.asarray(again)[0], probs[0], atol=tol)


def test_label_posterior_sums_every_spelling_of_a_label():
    params = init_params(CFG, jax.random.key(0), init_std=0.3)
    ids = jnp.asarray([[0, 9, 10, 11], [12, 13, 14, 15]], jnp.int32)
    mask = ids > 0
    variants = jnp.asarray([[4, 20], [5, -1], [6, 21], [7, 22]])  # "2" has one spelling
    probs = np.asarray(label_posterior(params, CFG, ids, mask, variants))
    z = np.asarray(forward(params, CFG, ids, positions_from_mask(mask), mask))[:, -1]
    e = np.exp(z - z.max(-1, keepdims=True))
    mass = np.stack(
        [e[:, [4, 20]].sum(-1), e[:, 5], e[:, [6, 21]].sum(-1), e[:, [7, 22]].sum(-1)], -1
    )
    tol = f32_tol(1.0, CFG.intermediate_size, depth=CFG.num_layers + 1)
    np.testing.assert_allclose(probs, mass / mass.sum(-1, keepdims=True), atol=tol)
    only_first = np.asarray(label_posterior(params, CFG, ids, mask, variants[:, 0]))
    assert np.abs(probs - only_first).max() > 1e-3  # the other spellings carry mass


def test_tier_summary_counts_shares_and_accuracy():
    tiers = np.asarray([2, 2, 1, 0, 2])  # Good Good Mid Bad Good
    rows = tier_summary(tiers)
    assert [(r["tier"], r["count"]) for r in rows] == [("Good", 3), ("Mid", 1), ("Bad", 1)]
    assert rows[0]["share"] == 0.6 and "tier_accuracy" not in rows[0]
    rows = tier_summary(tiers, gold_label=[4, 2, 2, 1, 3], pred_label=[4, 3, 2, 1, 4])
    assert [r["tier_accuracy"] for r in rows] == [2 / 3, 1.0, 1.0]
    assert [r["label_accuracy"] for r in rows] == [1 / 3, 1.0, 1.0]
    table = format_tier_summary(rows)
    assert "| Good | 3 | 0.600 | 0.667 | 0.333 |" in table
    empty = tier_summary(np.asarray([2]), gold_label=[4], pred_label=[4])
    assert empty[1]["tier_accuracy"] is None and "| Mid | 0 | 0.000 | - | - |" in (
        format_tier_summary(empty)
    )


def test_score_file(tmp_path):
    records = [
        {"id": f"r{i}", "query": q, "item": it, "label": lab}
        for i, (q, it, lab) in enumerate(
            [("red shoes", "red leather shoes", 4), ("phone", "phone case black", 2),
             ("tea cup", "glass tea cup", 3), ("shoes not leather", "leather shoes", 1),
             ("blue phone", "blue phone new", 4)]
        )
    ]  # fmt: skip
    tok = build_tokenizer([render_prompt(r["query"], r["item"]) for r in records], tmp_path / "tok")
    cfg = dataclasses.replace(CFG, vocab_size=len(tok))
    save_pretrained(init_params(cfg, jax.random.key(1), 0.3), cfg, tmp_path / "m", tokenizer=tok)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = score_file(tmp_path / "m", data, tmp_path / "out" / "s.jsonl", batch_size=2, beta=0.5)
    rows = [json.loads(line) for line in (tmp_path / "out" / "s.jsonl").read_text().splitlines()]
    for row, rec in zip(rows, records, strict=True):
        assert {k: row[k] for k in rec} == rec  # the input fields travel with the scores
    probs = np.asarray([[r[f"p{i}"] for i in range(1, 5)] for r in rows])
    np.testing.assert_allclose([r["expected_label"] for r in rows], probs @ [1, 2, 3, 4], atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert [r["tier"] for r in rows] == [("Bad", "Mid", "Good")[t] for t in cumpt_tiers(probs, 0.5)]
    assert [r["pred_label"] for r in rows] == list(probs.argmax(-1) + 1)
    assert summary["n"] == 5 and 0.0 <= summary["cumpt_accuracy"] <= 1.0
    np.testing.assert_allclose(summary["mean_probs"], probs.mean(0), atol=1e-5)

    assert summary["labelled"] and sum(t["count"] for t in summary["tiers"]) == 5
    assert all("tier_accuracy" in t for t in summary["tiers"])
    # the same records without labels: same scores, no accuracy
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n"
                            for r in records))  # fmt: skip
    unl = score_file(tmp_path / "m", data, tmp_path / "u.jsonl", batch_size=2, beta=0.5)
    rows_u = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert all("label" not in r for r in rows_u) and not unl["labelled"]
    assert [r["tier"] for r in rows_u] == [r["tier"] for r in rows]
    assert "accuracy" not in unl and all("tier_accuracy" not in t for t in unl["tiers"])
    assert [t["count"] for t in unl["tiers"]] == [t["count"] for t in summary["tiers"]]
