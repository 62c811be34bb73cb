"""Label-posterior scoring: equals the full forward's label softmax; score_file end to end."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from agrl.eval.scoring import cumpt_tiers, label_posterior, score_file
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
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    probs = np.asarray([r["probs"] for r in rows])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert [r["tier"] for r in rows] == [("Bad", "Mid", "Good")[t] for t in cumpt_tiers(probs, 0.5)]
    assert [r["pred_label"] for r in rows] == list(probs.argmax(-1) + 1)
    assert summary["n"] == 5 and 0.0 <= summary["cumpt_accuracy"] <= 1.0
    np.testing.assert_allclose(summary["mean_probs"], probs.mean(0), atol=1e-5)
