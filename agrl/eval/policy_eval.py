"""Evaluate a policy on a labelled split (SPEC 7): greedy decoding and the label posterior.

Greedy: decode every prompt with temperature 0, parse label and verdicts, and score them
with agrl.eval.metrics.classification_metrics (per-class F1, Good F1, macro-F1, accuracy, rule
adherence, step accuracy, ordinal MAE, confusion, accuracy per query type).
Posterior (label-first order only): prefill only, softmax over the 4 label tokens at the
first response position, scored with posterior_metrics (incl. CumPT tiers).
Batches have a fixed size (the last one is padded by repetition), so one compile serves a
whole split per prompt-length bucket.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from agrl.config import Config, ModelConfig, SamplingConfig
from agrl.eval.metrics import classification_metrics, posterior_metrics
from agrl.eval.scoring import label_posterior
from agrl.sampling import make_sampler
from agrl.task.data import (
    decode_completions,
    encode_prompts,
    has_verdicts,
    padded_batches,
    verdict_array,
)
from agrl.task.format import parse_batch
from agrl.task.rules import RuleBook, load_rule_book
from agrl.task.tokenizer import eos_ids, label_token_variants


@lru_cache(maxsize=8)
def _greedy_sampler(model_cfg: ModelConfig, sampling_cfg: SamplingConfig, eos: tuple, pad: int):
    greedy = dataclasses.replace(sampling_cfg, temperature=0.0)
    return make_sampler(model_cfg, greedy, eos_ids=eos, pad_id=pad, group_size=1)


@lru_cache(maxsize=8)
def _posterior_fn(model_cfg: ModelConfig):
    return jax.jit(lambda p, ids, mask, labels: label_posterior(p, model_cfg, ids, mask, labels))


def evaluate_policy(
    params: Any,
    cfg: Config,
    tok,
    records: list[dict],
    *,
    batch_size: int = 64,
    beta: float = 0.5,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metrics, predictions) of greedy decoding (+ label posterior in label-first order).

    metrics: classification_metrics of the greedy answers, plus `posterior` (a dict of
    posterior_metrics) when the order is label-first.  predictions: pred_label [N],
    pred_verdicts [N, R], format_ok [N], texts (list), probs [N, 4] (label-first only).
    """
    order, book = cfg.train.response_order, load_rule_book(cfg.task.rule_book)
    pad = int(tok.pad_token_id)
    sampler = _greedy_sampler(cfg.model, cfg.sampling, tuple(eos_ids(tok)), pad)
    prompts = encode_prompts(tok, records, order)
    label_ids = jnp.asarray(label_token_variants(tok))
    texts: list[str] = []
    probs: list[np.ndarray] = []
    batches = padded_batches(prompts, batch_size, pad, sampler.bucket)
    total = -(-len(prompts) // batch_size)
    for _, n, ids, mask in tqdm(batches, total=total, desc="eval", disable=not progress):
        out = sampler(params, ids, mask, jax.random.key(0))  # greedy: the key is unused
        toks, m = np.asarray(out.tokens)[:n], np.asarray(out.mask)[:n]
        texts += decode_completions(tok, toks, m)
        if order == "label_first":
            p = _posterior_fn(cfg.model)(params, jnp.asarray(ids), jnp.asarray(mask), label_ids)
            probs.append(np.asarray(p, np.float64)[:n])
    labels, verdicts, ok = parse_batch(texts, order, book)
    gold = np.asarray([r["label"] for r in records], np.int32)
    qtypes = [r.get("query_type", "") for r in records]
    metrics = record_metrics(records, labels, book, pred_verdicts=verdicts, format_ok=ok)
    preds: dict[str, Any] = {
        "pred_label": labels,
        "pred_verdicts": verdicts,
        "format_ok": ok,
        "texts": texts,
    }
    # Per-record labels, so that two models can be compared on the same records (a paired
    # bootstrap, agrl.eval.bootstrap); aggregate_seeds leaves these lists out.
    metrics["predictions"] = {"pred_label": labels.tolist(), "gold_label": gold.tolist()}
    if probs:
        preds["probs"] = np.concatenate(probs)
        metrics["posterior"] = posterior_metrics(
            preds["probs"], gold, beta=beta, query_type=qtypes if any(qtypes) else None
        )
    return metrics, preds


def record_metrics(
    records: list[dict], pred_labels: np.ndarray, book: RuleBook, *, pred_verdicts=None,
    format_ok=None,
) -> dict[str, Any]:  # fmt: skip
    """Metrics of predictions on records: classification_metrics (accuracy per query type;
    step metrics when pred_verdicts [N, R] are given and the records carry verdicts) and,
    when the records carry the teacher's labels, the teacher split. pred_labels [N], 0 where
    unparsed."""
    gold = np.asarray([r["label"] for r in records], np.int32)
    qtypes = [r.get("query_type", "") for r in records]
    with_v = pred_verdicts is not None and has_verdicts(records)
    metrics = classification_metrics(
        pred_labels, gold, query_type=qtypes if any(qtypes) else None,
        pred_verdicts=pred_verdicts, gold_verdicts=verdict_array(records, book) if with_v else None,
        format_ok=format_ok, book=book,
    )  # fmt: skip
    if all("teacher_label" in r.get("meta", {}) for r in records):
        metrics["teacher_split"] = teacher_split_metrics(records, pred_labels)
    return metrics


def teacher_split_metrics(records: list[dict], pred_labels: np.ndarray) -> dict[str, Any]:
    """Greedy accuracy on the records the world's teacher gets wrong vs right.

    records carry meta.teacher_label (the label the teacher wrote for them, agrl.world);
    pred_labels [N] (0 where unparsed).  Returns {"teacher_wrong"|"teacher_right":
    {"n", "accuracy", "by_type": {query type: accuracy}}}: how far a model moved past the
    teacher's systematic errors, which is what guidance with gold answers (AGR) is for.
    """
    gold = np.asarray([r["label"] for r in records])
    wrong = np.asarray([r["meta"]["teacher_label"] != r["label"] for r in records])
    types = np.asarray([r.get("query_type", "") for r in records], dtype=object)
    correct = np.asarray(pred_labels) == gold
    out: dict[str, Any] = {}
    for name, sel in (("teacher_wrong", wrong), ("teacher_right", ~wrong)):
        by_type = {
            str(t): float(correct[sel & (types == t)].mean())
            for t in sorted(set(types[sel].tolist()))
        }
        acc = float(correct[sel].mean()) if sel.any() else float("nan")
        out[name] = {"n": int(sel.sum()), "accuracy": acc, "by_type": by_type}
    return out


# Diagnostics of a policy's rollout groups (`agrl reproduce`, issue 6 item 4).


def _group_stats(acc: np.ndarray) -> dict[str, float]:
    """Per-prompt accuracy among G samples [n] -> pass@G, mean accuracy, zero/all-correct."""
    return {
        "n": int(len(acc)),
        "pass_at_g": float((acc > 0).mean()),
        "mean_accuracy": float(acc.mean()),
        "zero_correct": float((acc == 0).mean()),
        "all_correct": float((acc == 1).mean()),
    }


def sample_correct(
    sampler, params, tok, ids, mask, gold_labels, key, order: str, book: RuleBook | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample one chunk of prompts and check the parsed labels against the gold ones.

    ids, mask [B, P] (left-padded prompts); gold_labels [n] for the first n <= B prompts
    (the rest is batch padding).  Returns (tokens [n*G, T], mask [n*G, T], correct [n, G]
    bool) with G = the sampler's group size: well formed (under `book`, the rule book in
    force, default the world's) and equal to the gold label.
    """
    n = len(gold_labels)
    out = sampler(params, ids, mask, key)
    G = out.tokens.shape[0] // ids.shape[0]
    toks, m = np.asarray(out.tokens)[: n * G], np.asarray(out.mask)[: n * G]
    labels, _, ok = parse_batch(decode_completions(tok, toks, m), order, book)
    return toks, m, (ok & (labels == np.repeat(gold_labels, G))).reshape(n, G)


def pass_at_g(params, cfg: Config, tok, records: list[dict], seed: int) -> dict[str, Any]:
    """Sample G = sampling.group_size responses per prompt (the training sampler settings),
    and report per query type the share of prompts with at least one correct label (pass@G),
    the mean accuracy, and the share with zero correct (a zero-variance outcome group:
    no GRPO gradient, the case AGR is for) or all correct."""
    order, G, pad = cfg.train.response_order, cfg.sampling.group_size, int(tok.pad_token_id)
    sampler = make_sampler(cfg.model, cfg.sampling, eos_ids=tuple(eos_ids(tok)), pad_id=pad)
    prompts = encode_prompts(tok, records, order)
    bs = max(1, 64 // G)
    key, book = jax.random.key(seed), load_rule_book(cfg.task.rule_book)
    acc = []
    for start, n, ids, mask in padded_batches(prompts, bs, pad):
        gold = np.asarray([r["label"] for r in records[start : start + n]])
        k = jax.random.fold_in(key, start)
        correct = sample_correct(sampler, params, tok, ids, mask, gold, k, order, book)[2]
        acc.append(correct.mean(1))
    acc_all = np.concatenate(acc)
    types = np.asarray([r.get("query_type", "") for r in records], dtype=object)
    by_type = {t: _group_stats(acc_all[types == t]) for t in sorted(set(types.tolist()))}
    return {"group_size": G, "overall": _group_stats(acc_all), "by_type": by_type}
