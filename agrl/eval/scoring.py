"""Label-posterior scoring, the way the paper serves (PAPER.md, SPEC 7): prefill only.

The prompt ends with the label opener, so the first response token is the label digit.
P(label = l | prompt) = the softmax over every label token at that position, summed over the
spellings of l (`agrl.task.tokenizer.label_token_variants`: "4" and, in a BPE vocabulary,
"Ġ4"); the CumPT tiers (one threshold beta over cumulative probabilities) come from
agrl.eval.metrics. Records need no label to be scored; with labels, the summary also
carries the posterior metrics and the accuracy per tier.
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
from agrl.eval.metrics import TIER_NAMES, cumpt_tiers, gold_tiers, posterior_metrics
from agrl.model.decoder import hidden_states, logits_from_hidden, positions_from_mask
from agrl.model.hf import load_pretrained
from agrl.model.params import Params
from agrl.task.data import (
    DataError,
    encode_prompts,
    load_records,
    padded_batches,
    pick_bucket,
)
from agrl.task.tokenizer import label_token_variants, load_tokenizer

__all__ = ["cumpt_tiers", "format_tier_summary", "label_posterior", "score_file", "tier_summary"]


def label_posterior(
    params: Params,
    cfg: ModelConfig,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    label_ids: jax.Array,
) -> jax.Array:
    """probs [B, 4]: P(l) = sum_k exp z[b, P-1, label_ids[l, k]] / sum_{l', k'} (same).

    prompt_ids, prompt_mask: [B, P] left-padded (the last column is each prompt's last
    token); label_ids: [4] int32 token ids of "1".."4", or [4, K] with every spelling of
    each label (`label_token_variants`, -1 for none). Only the last position is projected
    to the vocabulary, and only its label columns.
    """
    mask = prompt_mask.astype(bool)
    h, _ = hidden_states(params, cfg, prompt_ids, positions_from_mask(mask), mask)
    z = logits_from_hidden(params, cfg, h[:, -1])  # [B, V] f32
    ids = label_ids.reshape(4, -1)
    zl = jnp.where(ids >= 0, z[:, jnp.maximum(ids, 0)], -jnp.inf)  # [B, 4, K]
    return jax.nn.softmax(jax.nn.logsumexp(zl, axis=-1), axis=-1)


_label_posterior = jax.jit(label_posterior, static_argnums=1)


# Power-of-two prompt-length buckets: at most log2(longest prompt) compilations per file.
SCORE_BUCKETS: tuple[int, ...] = tuple(16 * 2**i for i in range(16))


def tier_summary(tiers, gold_label=None, pred_label=None) -> list[dict[str, Any]]:
    """One row per CumPT tier (Good, Mid, Bad): count and share of the records; with gold
    labels also `tier_accuracy` (the share of the tier's records whose gold tier is this
    tier: 4, 3 -> Good, 2 -> Mid, 1 -> Bad) and, given pred_label, `label_accuracy` (the
    share whose predicted label is the gold one); None for an empty tier."""
    tiers = np.asarray(tiers)
    n = max(len(tiers), 1)
    gold = None if gold_label is None else np.asarray(gold_label)
    rows = []
    for t in (2, 1, 0):
        here = tiers == t
        row: dict[str, Any] = {"tier": TIER_NAMES[t], "count": int(here.sum()),
                               "share": float(here.sum() / n)}  # fmt: skip
        if gold is not None:
            hit = gold_tiers(gold)[here] == t
            row["tier_accuracy"] = float(hit.mean()) if here.any() else None
            if pred_label is not None:
                hit = np.asarray(pred_label)[here] == gold[here]
                row["label_accuracy"] = float(hit.mean()) if here.any() else None
        rows.append(row)
    return rows


def format_tier_summary(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `tier_summary` rows (accuracy columns only when present)."""
    cols = [c for c in ("tier_accuracy", "label_accuracy") if any(c in r for r in rows)]
    head = "| tier | count | share |" + "".join(f" {c.replace('_', ' ')} |" for c in cols)
    lines = [head, "|" + " --- |" * (3 + len(cols))]
    for r in rows:
        line = f"| {r['tier']} | {r['count']} | {r['share']:.3f} |"
        for c in cols:
            line += " - |" if r.get(c) is None else f" {r[c]:.3f} |"
        lines.append(line)
    return "\n".join(lines)


def score_file(
    model_dir: str | Path,
    data_path: str | Path,
    out_path: str | Path,
    batch_size: int = 64,
    beta: float = 0.5,
) -> dict[str, Any]:
    """Score every record of a JSONL file with the model directory's label posterior.

    Records need query and item; label is optional (all or none of them may have one).
    Writes one JSON line per record: the input fields id, query, item (and label, query_type
    when present), p1..p4 (the posterior), pred_label (argmax), expected_label
    (sum_l l * P(l), in [1, 4]) and tier (CumPT at beta). Returns the summary: count,
    mean posterior, `tiers` (`tier_summary`) and, when the records are labelled,
    `agrl.eval.metrics.posterior_metrics` against the labels.
    """

    params, cfg = load_pretrained(model_dir)
    tok = load_tokenizer(model_dir)
    labels = jnp.asarray(label_token_variants(tok))
    records = load_records(data_path, require_label=False)
    labelled = ["label" in r for r in records]
    if any(labelled) and not all(labelled):
        missing = labelled.index(False)
        raise DataError(data_path, 0, "label", f"on some records but not on record "
                        f"{records[missing]['id']!r}: label all records or none")  # fmt: skip
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
    expected = probs @ np.arange(1.0, 5.0)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for r, p, e, t in zip(records, probs, expected, tiers, strict=True):
            row = {k: r[k] for k in ("id", "query", "item", "label", "query_type") if k in r}
            row |= {f"p{i + 1}": round(float(x), 6) for i, x in enumerate(p)}
            row |= {"pred_label": int(np.argmax(p)) + 1, "expected_label": round(float(e), 6),
                    "tier": TIER_NAMES[int(t)]}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    gold = np.asarray([r["label"] for r in records]) if all(labelled) else None
    summary = {
        "n": len(records),
        "model_dir": str(model_dir),
        "data": str(data_path),
        "labelled": gold is not None,
        "mean_probs": probs.mean(axis=0).tolist(),
        "tiers": tier_summary(tiers, gold, probs.argmax(axis=1) + 1),
    }
    if gold is None:
        return summary
    return summary | posterior_metrics(probs, gold, beta=beta)
