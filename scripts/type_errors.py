"""Where a trained model errs, per query type: gold x predicted label counts on b_eval for
each query type (or one, --type), and up to --show wrong answers of that type with the
model's own response next to the gold one (does the rationale follow the title or the
label?). Greedy decoding, as `agrl eval`.

  python scripts/type_errors.py RUN_DIR WORLD_DIR [--type negation] [--show 5] [--n 1000]

RUN_DIR is a finished training run (config.json + model/); WORLD_DIR the world it was
evaluated on (b_eval.jsonl + tokenizer/). docs/results.md's negation table is made with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

from agrl.config.io import config_from_dict
from agrl.eval.policy_eval import evaluate_policy
from agrl.model.hf import load_pretrained
from agrl.task.data import load_records
from agrl.task.tokenizer import load_tokenizer

LABELS = (1, 2, 3, 4)


def confusion(golds: list[int], preds: list[int]) -> dict[tuple[int, int], int]:
    """(gold, predicted) -> count; predicted 0 is an answer that does not parse."""
    return dict(Counter(zip(golds, preds, strict=True)))


def table(name: str, counts: dict[tuple[int, int], int]) -> str:
    """A markdown table: one row per gold label, one column per predicted label."""
    lines = [
        f"| {name}: gold \\ predicted | 1 | 2 | 3 | 4 | unparsed | right |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in LABELS:
        row = [counts.get((g, p), 0) for p in (*LABELS, 0)]
        if sum(row):
            lines.append(f"| {g} | " + " | ".join(map(str, row)) + f" | {row[g - 1]}/{sum(row)} |")
    return "\n".join(lines)


def b_eval_predictions(
    run: Path, world: Path, n: int, query_type: str = ""
) -> tuple[list[dict], dict, dict]:
    """(records, metrics, predictions) of the finished run's model, greedy, on the first n
    b_eval records of the world (only those of `query_type` when given); a record without a
    query type (a user's own data) gets "(no type)"."""
    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    params, model_cfg = load_pretrained(run / "model")
    cfg = dataclasses.replace(cfg, model=model_cfg)
    records = load_records(world / "b_eval.jsonl")[:n]
    for r in records:
        r.setdefault("query_type", "(no type)")
    types = sorted({r["query_type"] for r in records})
    if query_type and query_type not in types:
        raise SystemExit(f"--type {query_type}: no such query type in b_eval (have {types})")
    if query_type:
        records = [r for r in records if r["query_type"] == query_type]
    metrics, pred = evaluate_policy(params, cfg, load_tokenizer(world / "tokenizer"), records)
    return records, metrics, pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("world")
    ap.add_argument("--type", default="", help="one query type (default: every type)")
    ap.add_argument("--show", type=int, default=0, help="wrong answers to print")
    ap.add_argument("--n", type=int, default=1000, help="first N b_eval records")
    args = ap.parse_args()
    records, metrics, pred = b_eval_predictions(Path(args.run), Path(args.world), args.n, args.type)
    types = sorted({r["query_type"] for r in records})
    print(f"accuracy {100 * metrics['accuracy']:.1f} on {len(records)} b_eval records")
    preds = [int(p) for p in pred["pred_label"]]
    for t in types:
        idx = [i for i, r in enumerate(records) if r["query_type"] == t]
        counts = confusion([records[i]["label"] for i in idx], [preds[i] for i in idx])
        print("\n" + table(t, counts))
    wrong = [i for i, r in enumerate(records) if preds[i] != r["label"]][: args.show]
    for i in wrong:
        r = records[i]
        print(f"\nquery: {r['query']} | title: {r['item']} | gold {r['label']}, said {preds[i]}")
        print(f"  gold : {r.get('rationale', '(no rationale)')}")
        print(f"  model: {pred['texts'][i]}")


if __name__ == "__main__":
    main()
