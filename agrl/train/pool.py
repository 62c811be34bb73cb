"""The RL prompt pool: every prompt of the RL split tokenised once, with its gold side
(label, verdicts, gold response ids for forced prefixes) and, for guidance.form=hint, its
hinted prompts at every guidance level (SPEC 5; docs/algorithm.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agrl.rl.types import Gold
from agrl.task.data import encode_prompts, encode_responses, has_verdicts, pad_right, verdict_array
from agrl.task.format import gold_text, has_gold_rationale, hint_verdict_count, render_hint
from agrl.task.rules import RuleBook, load_rule_book


@dataclass(frozen=True)
class PromptPool:
    """The RL prompt pool as host arrays.  M prompts, Lg = longest gold response."""

    prompt_ids: tuple[np.ndarray, ...]  # M token-id vectors (variable length)
    gold_label: np.ndarray  # [M] int32 1..4
    gold_verdicts: np.ndarray  # [M, R] int32 (-1 unknown)
    has_verdicts: np.ndarray  # [M] bool
    gold_ids: np.ndarray  # [M, Lg] int32 gold response tokens (label first), pad after
    gold_len: np.ndarray  # [M] int32
    query_type: tuple[str, ...]  # M names ("" when unknown)
    # guidance.form=hint: hint_ids[level][m] = prompt m with its gold hint at that level
    hint_ids: tuple[tuple[np.ndarray, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def gold(self, idx: np.ndarray) -> Gold:
        """The gold side of prompts idx [B]."""
        return Gold(
            self.gold_label[idx],
            self.gold_verdicts[idx],
            self.has_verdicts[idx],
            self.gold_ids[idx],
            self.gold_len[idx],
        )


def build_pool(
    records: list[dict],
    tok,
    order: str,
    book: RuleBook | None = None,
    hint_max_level: int | None = None,
) -> PromptPool:
    """Tokenised prompts and gold fields of a split (gold response = what AGR forces).

    The gold response is `gold_response`, else label + `rationale`, else the label alone
    (agrl.task.format.gold_text). Without a gold rationale guidance is label-only: the
    forced prefix is the gold label token at every level (none in think-first order, where
    the label is not the first token). With hint_max_level (guidance.form=hint) the pool
    also holds each prompt with its gold hint at every level 0..hint_max_level
    (agrl.task.format.render_hint; records without verdicts get the label-only hint).
    """
    book = load_rule_book("world") if book is None else book
    prompts = [np.asarray(x, np.int32) for x in encode_prompts(tok, records, order)]
    label_only = [not has_gold_rationale(r) for r in records]
    texts = [
        "" if (lo and order != "label_first") else gold_text(r, order, book)
        for r, lo in zip(records, label_only, strict=True)
    ]
    gold = encode_responses(tok, texts)
    # The forced prefix never includes eos: guidance stops where the rationale ends.
    gold = [
        g[: 1 if lo else -1] if t else [] for g, t, lo in zip(gold, texts, label_only, strict=True)
    ]
    Lg = max(1, max(len(g) for g in gold))
    gold_ids, gold_mask = pad_right(gold, Lg, int(tok.pad_token_id))
    with_v = has_verdicts(records)
    shape = (len(records), book.R)
    verdicts = verdict_array(records, book) if with_v else np.full(shape, -1, np.int32)
    hint_ids: tuple[tuple[np.ndarray, ...], ...] = ()
    if hint_max_level is not None:
        hint_ids = tuple(
            tuple(np.asarray(x, np.int32) for x in encode_prompts(tok, records, order, hints))
            for hints in _hints(records, verdicts if with_v else None, hint_max_level, book)
        )
    return PromptPool(
        prompt_ids=tuple(prompts),
        gold_label=np.asarray([r["label"] for r in records], np.int32),
        gold_verdicts=verdicts,
        has_verdicts=np.full(len(records), with_v),
        gold_ids=gold_ids,
        gold_len=gold_mask.sum(-1).astype(np.int32),
        query_type=tuple(r.get("query_type", "") for r in records),
        hint_ids=hint_ids,
    )


def _hints(records, verdicts, max_level: int, book: RuleBook) -> list[list[str]]:
    """hints[level][m]: record m's gold hint at each level 0..max_level."""
    return [
        [
            render_hint(
                r["label"],
                None if verdicts is None else verdicts[m],
                hint_verdict_count(level, max_level, book.R),
                book,
            )  # fmt: skip
            for m, r in enumerate(records)
        ]
        for level in range(max_level + 1)
    ]


__all__ = ["PromptPool", "build_pool"]
