"""Label-posterior scoring, the way the paper serves (PAPER.md, SPEC 7): prefill only.

The prompt ends with the label opener, so the first response token is the label digit.
P(label = l | prompt) = softmax over the 4 label-token logits at that position; the CumPT
tiers (one threshold beta over cumulative probabilities) come from agrl.eval.metrics.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from agrl.config import ModelConfig
from agrl.eval.metrics import TIER_NAMES, cumpt_tiers, posterior_metrics
from agrl.model.decoder import hidden_states, logits_from_hidden, positions_from_mask
from agrl.model.hf import load_pretrained
from agrl.model.params import Params
from agrl.task.data import encode_prompts, load_records, padded_batches, pick_bucket
from agrl.task.tokenizer import label_token_ids, load_tokenizer

__all__ = ["cumpt_tiers", "label_posterior", "score_file"]


def label_posterior(
    params: Params,
    cfg: ModelConfig,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    label_ids: jax.Array,
) -> jax.Array:
    """probs [B, 4] = softmax_l z[b, P-1, label_ids[l]], labels 1..4 in order.

    prompt_ids, prompt_mask: [B, P] left-padded (the last column is each prompt's last
    token); label_ids: [4] int32 token ids of "1".."4".  Only the last position is
    projected to the vocabulary, and only its 4 label columns.
    """
    mask = prompt_mask.astype(bool)
    h, _ = hidden_states(params, cfg, prompt_ids, positions_from_mask(mask), mask)
    z = logits_from_hidden(params, cfg, h[:, -1])  # [B, V] f32
    return jax.nn.softmax(z[:, label_ids], axis=-1)


_label_posterior = jax.jit(label_posterior, static_argnums=1)


# Power-of-two prompt-length buckets: at most log2(longest prompt) compilations per file.
SCORE_BUCKETS: tuple[int, ...] = tuple(16 * 2**i for i in range(16))


def score_file(
    model_dir: str | Path,
    data_path: str | Path,
    out_path: str | Path,
    batch_size: int = 64,
    beta: float = 0.5,
) -> dict[str, Any]:
    """Score every record of a JSONL file with the model directory's label posterior.

    Writes one JSON line per record: id, probs (P1..P4), pred_label (argmax), tier (CumPT at
    beta), gold label.  Returns the summary: count, mean posterior, tier shares and
    `agrl.eval.metrics.posterior_metrics` against the gold labels.
    """

    params, cfg = load_pretrained(model_dir)
    tok = load_tokenizer(model_dir)
    labels = jnp.asarray(label_token_ids(tok))
    records = load_records(data_path)
    prompts = encode_prompts(tok, records)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    probs = []
    bucket = functools.partial(pick_bucket, buckets=SCORE_BUCKETS)
    batches = padded_batches(prompts, batch_size, pad_id, bucket)
    total = -(-len(prompts) // batch_size)
    for _, n, ids, mask in tqdm(batches, total=total, desc="score", unit="batch"):
        p = _label_posterior(params, cfg, jnp.asarray(ids), jnp.asarray(mask), labels)
        probs.append(np.asarray(p)[:n])
    probs = np.concatenate(probs).astype(np.float64)
    tiers = cumpt_tiers(probs, beta)
    gold = np.asarray([r["label"] for r in records])
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for r, p, t in zip(records, probs, tiers, strict=True):
            row = {
                "id": r["id"],
                "probs": [round(float(x), 6) for x in p],
                "pred_label": int(np.argmax(p)) + 1,
                "tier": TIER_NAMES[int(t)],
                "label": int(r["label"]),
            }
            f.write(json.dumps(row) + "\n")
    summary = {
        "n": len(records),
        "model_dir": str(model_dir),
        "data": str(data_path),
        "mean_probs": probs.mean(axis=0).tolist(),
    }
    return summary | posterior_metrics(probs, gold, beta=beta)
