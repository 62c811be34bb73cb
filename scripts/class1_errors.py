"""Where a trained model misses class 1 (category mismatch) on b_eval: the label-1 records
split by whether the query's and the item's categories share a department, with what the
model predicted on each; and the records it labels 1 wrongly, by gold label.

  python scripts/class1_errors.py RUN_DIR WORLD_DIR [--n 1000]

RUN_DIR is a finished training run (config.json + model/); WORLD_DIR the world it was
evaluated on (b_eval.jsonl + tokenizer/). Greedy decoding, as `agrl eval`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from type_errors import b_eval_predictions

from agrl.world.catalog import CATEGORY


def item_category(record: dict) -> str:
    """The item's category as the gold rationale names it ("... | item: <category> ...")."""
    return record["rationale"].split("| item: ")[1].split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("world")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    records, metrics, pred = b_eval_predictions(Path(args.run), Path(args.world), args.n)
    print(f"macro-F1 {100 * metrics['macro_f1']:.1f} on {len(records)} b_eval records")
    total, predicted = Counter(), Counter()
    for r, p in zip(records, pred["pred_label"], strict=True):
        if r["label"] != 1:
            continue
        q, it = CATEGORY[r["meta"]["category"]], CATEGORY.get(item_category(r))
        kind = "same department" if it is not None and it.dept == q.dept else "other department"
        total[kind] += 1
        predicted[kind, int(p)] += 1
    for kind, n in total.items():
        by = ", ".join(f"{p}: {predicted[kind, p]}" for p in range(5) if predicted[kind, p])
        print(f"label 1, {kind}: {n} records, {n - predicted[kind, 1]} wrong (predicted {by})")
    false_1 = Counter(
        r["label"] for r, p in zip(records, pred["pred_label"], strict=True)
        if p == 1 and r["label"] != 1
    )  # fmt: skip
    print("predicted 1 where the gold label is:", dict(sorted(false_1.items())) or "none")


if __name__ == "__main__":
    main()
