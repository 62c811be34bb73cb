"""The four splits of the relevance world, their files and summary (SPEC 3).

Splits are generated in the order b_eval, w_eval, rl, sft, each from its own seeded
stream, so resizing `sft` never changes the evaluation sets. Label counts are exact
(largest-remainder rounding of the split's label mix); query types are drawn from the
split's type mix among the types that can yield the drawn label. A (query, item) text
pair is never repeated within or across splits; ids are "<split>-<index>".
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from agrl.task.data import QUERY_TYPES
from agrl.task.format import FORMAT_WORDS, render_prompt, render_rationale, render_response
from agrl.task.rules import CODE_NAMES, DIMS, rule_label
from agrl.task.tokenizer import build_tokenizer
from agrl.world import catalog as C
from agrl.world.config import SPLITS, WorldConfig
from agrl.world.generate import (
    ATTR_KINDS,
    feasible_types,
    item_summary,
    query_summary,
    sample_pair,
)
from agrl.world.teacher import draw_slices, teacher_judge, teacher_knowledge
from agrl.world.text import query_text, title_text

GEN_ORDER: tuple[str, ...] = ("b_eval", "w_eval", "rl", "sft")
SPLIT_INDEX = {s: i for i, s in enumerate(SPLITS)}


def label_counts(n: int, mix: tuple[float, ...]) -> np.ndarray:
    """Exact per-label counts [4] summing to n: largest-remainder rounding of n * mix."""
    w = np.asarray(mix, dtype=np.float64)
    raw = n * w / w.sum()
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _pick_type(rng: np.random.Generator, label: int, mix: tuple[float, ...]) -> str:
    allowed = feasible_types(label)
    w = np.asarray([mix[QUERY_TYPES.index(t)] for t in allowed], dtype=np.float64)
    if w.sum() == 0:
        w = np.ones_like(w)
    return allowed[int(rng.choice(len(allowed), p=w / w.sum()))]


def _split(split: str, cfg: WorldConfig, taken: set[tuple[str, str]], slices, know) -> list[dict]:
    n = cfg.size(split)
    rng = np.random.default_rng([cfg.seed, SPLIT_INDEX[split]])
    teacher_rng = np.random.default_rng([cfg.seed, SPLIT_INDEX[split], 1])
    counts = label_counts(n, getattr(cfg, f"{split}_label_mix"))
    labels = rng.permutation(np.repeat(np.arange(1, 5), counts))
    type_mix = getattr(cfg, f"{split}_type_mix")
    records = []
    for i, label in enumerate(labels.tolist()):
        qtype = _pick_type(rng, label, type_mix)
        while True:
            q, it, verdicts = sample_pair(rng, qtype, label, cfg)
            pair = (query_text(rng, q, cfg), title_text(rng, it, cfg))
            if pair not in taken:
                break
        taken.add(pair)
        assert int(rule_label(verdicts)) == label
        qs, its = query_summary(q), item_summary(q, it)
        teach = teacher_judge(teacher_rng, q, it, label, slices, know, cfg.teacher)
        rec = {
            "id": f"{split}-{i:05d}",
            "query": pair[0],
            "item": pair[1],
            "label": label,
            "query_type": qtype,
            "verdicts": {d: CODE_NAMES[int(verdicts[j])] for j, d in enumerate(DIMS)},
            "rationale": render_rationale(verdicts, qs, its),
            "gold_response": render_response(label, verdicts, qs, its),
        }
        if split == "sft":
            rec["response"] = teach.response
        rec["meta"] = {
            "category": q.cat,
            "department": C.CATEGORY[q.cat].dept,
            "teacher_label": teach.label,
            "teacher_errors": list(teach.errors),
        }
        records.append(rec)
    return records


def generate_world(cfg: WorldConfig) -> dict[str, list[dict]]:
    """All four splits as lists of records (the JSONL schema of docs/data.md)."""
    slices = draw_slices(cfg.teacher, cfg.seed)
    know = teacher_knowledge(slices)
    taken: set[tuple[str, str]] = set()
    out = {s: _split(s, cfg, taken, slices, know) for s in GEN_ORDER}
    return {s: out[s] for s in SPLITS}


def dump_records(records: list[dict], path: str | Path) -> None:
    """One JSON object per line, keys in schema order, UTF-8, trailing newline."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    Path(path).write_text(text, encoding="utf-8")


def world_vocabulary() -> list[str]:
    """Every word the world can write (catalog, templates, summaries, format markers)."""

    words: list[str] = list(FORMAT_WORDS)
    for c in C.CATEGORIES:
        words += [c.name, *c.synonyms, *c.substances, *c.features]
    for b in C.BRANDS:
        words += [b.name, *b.aliases]
    words += list(C.TIERS) + list(C.COLORS) + list(C.SIZES) + list(C.AUDIENCES) + [C.UNISEX]
    for syn in (*C.COLOR_SYNONYMS.values(), *C.AUDIENCE_SYNONYMS.values()):
        words += list(syn)
    words += list(C.properties()) + list(C.TITLE_FILLERS)
    for neg in C.NEGATION_WORDS:
        words += list(neg)
    for template in (*C.ALTERNATIVE_TEMPLATES, *C.QA_TEMPLATES):
        words += [w for w in template.split() if not w.startswith("{")]
    words += ["not", "alt-to", "need", "has", "no", "is", "lacks"]
    words += [f"{k}-unstated" for k in ATTR_KINDS]
    return list(dict.fromkeys(words))


def summarize(world: dict[str, list[dict]]) -> dict:
    """Counts per split: n, per label, per query type, and teacher accuracy on sft."""
    summary = {}
    for split, recs in world.items():
        s = {
            "n": len(recs),
            "labels": {lab: sum(r["label"] == lab for r in recs) for lab in (1, 2, 3, 4)},
            "types": {t: sum(r.get("query_type") == t for r in recs) for t in QUERY_TYPES},
        }
        if split == "sft" and recs:
            right = Counter(
                r["query_type"] for r in recs if r["meta"]["teacher_label"] == r["label"]
            )
            s["teacher_acc"] = {t: right[t] / s["types"][t] for t in QUERY_TYPES if s["types"][t]}
        summary[split] = s
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table: one row per split, counts per label and per query type."""
    cols = ["split", "n", "L1", "L2", "L3", "L4", *QUERY_TYPES]
    rows = [cols]
    for split, s in summary.items():
        rows.append(
            [split, str(s["n"])]
            + [str(s["labels"][lab]) for lab in (1, 2, 3, 4)]
            + [str(s["types"][t]) for t in QUERY_TYPES]
        )
    if "teacher_acc" in summary.get("sft", {}):
        acc = summary["sft"]["teacher_acc"]
        rows.append(
            ["teacher", "acc", "", "", "", ""]
            + [f"{acc[t]:.2f}" if t in acc else "-" for t in QUERY_TYPES]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def write_world(cfg: WorldConfig, out_dir: str | Path) -> dict:
    """Write <split>.jsonl for every split and tokenizer/ into out_dir; return the summary."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_world(cfg)
    for split, recs in world.items():
        dump_records(recs, out / f"{split}.jsonl")
    texts = world_vocabulary()
    for recs in world.values():
        for r in recs:
            texts += [render_prompt(r["query"], r["item"]), r["gold_response"]]
            texts += [r["response"]] if "response" in r else []
    build_tokenizer(texts, out / "tokenizer")
    summary = summarize(world)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary
