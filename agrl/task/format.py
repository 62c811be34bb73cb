"""Render and parse the judge's prompt and response text (SPEC 2). Host side only.

Label-first order (the default, as in TaoSR1/AGRL):
    prompt   = "query: <query> item: <item> <label>"
    response = "<L> </label> <think> <rationale> </think>"
Think-first order (for the TaoSR1 order comparison):
    prompt   = "query: <query> item: <item> <think>"
    response = "<rationale> </think> <label> <L> </label>"
with
    rationale = "query: <q summary> | item: <i summary> | category=match brand=n/a ...
                 | rule=<deciding rule> -> <engine label>"
The prompt ends with the label opener, so in label-first order the FIRST response token is
the label digit: label-posterior scoring reads the 4 label-token probabilities there and
guided replay forces the gold label there. Every text is single-space-separated words
(markers included), so a word-level tokenizer decodes it back exactly; Qwen/Llama
tokenizers also encode "1".."4" at the start of a response as one token each.

Verdict dimensions, value names and rule names come from the rule book in force (every
function takes `book`, default the world's, agrl.task.rules); a label-only book (no
dimensions) writes the label alone: response = "<L> </label>", label-first only.

The parser is tolerant: it never raises, accepts missing spaces around markers and a
trailing end-of-sequence marker, and reports what it could read plus a format-ok flag.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from agrl.task.rules import MISSING, WORLD, RuleBook, deciding_rule, rule_label

Order = Literal["label_first", "think_first"]
ORDERS: tuple[str, ...] = ("label_first", "think_first")

LABEL_OPEN, LABEL_CLOSE = "<label>", "</label>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
QUERY_TAG, ITEM_TAG, SEP, ARROW = "query:", "item:", "|", "->"
# End-of-sequence texts a decoder may leave at the end of a response (ours and HF ones).
END_MARKERS: tuple[str, ...] = ("<eos>", "</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")


def format_words(book: RuleBook | None = None) -> tuple[str, ...]:
    """Every fixed word the format writes under `book` (a word tokenizer's vocabulary needs
    them): markers, labels, every "dim=value" the book allows and every "rule=name"."""
    book = WORLD if book is None else book
    return (
        LABEL_OPEN, LABEL_CLOSE, THINK_OPEN, THINK_CLOSE, QUERY_TAG, ITEM_TAG, SEP, ARROW,
        "1", "2", "3", "4",
        *(f"{d}={book.code_names[c]}" for i, d in enumerate(book.dims) for c in book.allowed[i]),
        *(f"rule={name}" for name in (book.rule_names() if book.has_rules else ())),
    )  # fmt: skip


# The world book's format words.
FORMAT_WORDS: tuple[str, ...] = format_words(WORLD)


class Parsed(NamedTuple):
    """One parsed response: label in 1..4 (0 unparseable), verdicts [R] int32 (-1 missing)."""

    label: int
    verdicts: np.ndarray
    format_ok: bool


def _words(text: str) -> str:
    """Collapse all whitespace to single spaces (the word-level round-trip form)."""
    return " ".join(str(text).split())


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: must be one of {ORDERS}")


def render_prompt(
    query: str, item: str, order: Order = "label_first", hint: str | None = None
) -> str:
    """The judge prompt; it ends with the opener of the first response section. `hint`
    (guidance.form=hint, `render_hint`) goes between the item and the opener."""
    _check_order(order)
    opener = LABEL_OPEN if order == "label_first" else THINK_OPEN
    middle = f" {_words(hint)}" if hint else ""
    return f"{QUERY_TAG} {_words(query)} {ITEM_TAG} {_words(item)}{middle} {opener}"


def hint_verdict_count(level: int, max_level: int, n_dims: int) -> int:
    """Gold verdicts a hint at `level` shows: round(level / max_level * n_dims), rounding
    half up, in integers (max_level 0: none), as guidance_length does for the prefix."""
    if max_level == 0:
        return 0
    return min((2 * level * n_dims + max_level) // (2 * max_level), n_dims)


def render_hint(
    label: int, verdicts: Sequence[int] | None, n_verdicts: int, book: RuleBook | None = None
) -> str:
    """The gold hint of guidance.form=hint, in the format's own words:
    "<think> <first n_verdicts gold verdicts> rule=<deciding rule> -> <label> </think>".
    Without verdicts (label-only records or book) it is "<think> -> <label> </think>"."""
    book = WORLD if book is None else book
    words = [THINK_OPEN]
    if verdicts is not None and book.has_rules and int(np.min(verdicts)) >= 0:
        v = np.asarray(verdicts, dtype=np.int32).reshape(book.R)
        shown = book.dims[: max(0, min(n_verdicts, book.R))]
        words += [f"{d}={book.code_names[int(v[i])]}" for i, d in enumerate(shown)]
        words.append(f"rule={deciding_rule(v, book)}")
    words += [ARROW, str(int(label)), THINK_CLOSE]
    return " ".join(words)


def check_order(book: RuleBook | None, order: str) -> None:
    """ValueError unless `order` is known and usable with the book: a label-only book has
    no rationale to think about first, so it is label-first only."""
    _check_order(order)
    if order == "think_first" and not (WORLD if book is None else book).has_rules:
        raise ValueError(
            f"train.response_order=think_first: the rule book {book.name!r} has no verdict "
            "dimensions (nothing to think about before the label); use label_first"
        )


def render_rationale(
    verdicts: Sequence[int], query_summary: str, item_summary: str, book: RuleBook | None = None
) -> str:
    """The rationale text.  verdicts: [R] codes. Rule name and label come from the engine."""
    book = WORLD if book is None else book
    v = np.asarray(verdicts, dtype=np.int32).reshape(book.R)
    stated = " ".join(f"{d}={book.code_names[int(v[i])]}" for i, d in enumerate(book.dims))
    engine_label = int(rule_label(v, book=book))
    return (
        f"{QUERY_TAG} {_words(query_summary)} {SEP} {ITEM_TAG} {_words(item_summary)} {SEP} "
        f"{stated} {SEP} rule={deciding_rule(v, book)} {ARROW} {engine_label}"
    )


def render_response(
    label: int,
    verdicts: Sequence[int],
    query_summary: str,
    item_summary: str,
    order: Order = "label_first",
    book: RuleBook | None = None,
) -> str:
    """A full response (no end-of-sequence token: the tokenizer helpers append eos).

    `label` is the stated label; the rationale states the engine's label for `verdicts`,
    so a gold response (label == rule_label(verdicts)) is consistent with itself. A
    label-only book renders the label alone (`label_response`).
    """
    book = WORLD if book is None else book
    check_order(book, order)
    if int(label) not in (1, 2, 3, 4):
        raise ValueError(f"label={label!r}: must be 1..4")
    if not book.has_rules:
        return label_response(label)
    rationale = render_rationale(verdicts, query_summary, item_summary, book)
    return assemble_response(label, rationale, order)


def label_response(label: int) -> str:
    """The label-only response "<L> </label>" (label-first; what a label-only book writes)."""
    return f"{int(label)} {LABEL_CLOSE}"


def assemble_response(label: int, rationale: str, order: Order = "label_first") -> str:
    """A response from a label and a rationale text (e.g. a record's `rationale` field),
    so a stored label-first world can be trained in think-first order."""
    _check_order(order)
    rationale = _words(rationale)
    if order == "label_first":
        return f"{int(label)} {LABEL_CLOSE} {THINK_OPEN} {rationale} {THINK_CLOSE}"
    return f"{rationale} {THINK_CLOSE} {LABEL_OPEN} {int(label)} {LABEL_CLOSE}"


def gold_text(record: dict, order: Order = "label_first", book: RuleBook | None = None) -> str:
    """The gold response of a record: `gold_response`, else its label with its `rationale`
    (`assemble_response`), else the label alone (`label_response`)."""
    if record.get("gold_response"):
        return record["gold_response"]
    if record.get("rationale"):
        return assemble_response(record["label"], record["rationale"], order)
    check_order(book, order)
    return label_response(record["label"])


def has_gold_rationale(record: dict) -> bool:
    """Whether the record's gold response goes past the label (guidance can force more)."""
    return bool(record.get("gold_response") or record.get("rationale"))


_LABEL_FIRST_RE = re.compile(
    r"\A\s*(?:<label>\s*)?([1-4])\s*</label>\s*<think>(.*)</think>\s*\Z", re.DOTALL
)
# Label-only books: the label, optionally followed by a free-form rationale.
_LABEL_ONLY_RE = re.compile(
    r"\A\s*(?:<label>\s*)?([1-4])\s*</label>(?:\s*<think>.*</think>)?\s*\Z", re.DOTALL
)
_LABEL_FIRST_HEAD_RE = re.compile(r"\A\s*(?:<label>\s*)?([1-4])(?![0-9])")
_THINK_FIRST_RE = re.compile(
    r"\A\s*(?:<think>)?(.*)</think>\s*<label>\s*([1-4])\s*</label>\s*\Z", re.DOTALL
)
_THINK_FIRST_LABEL_RE = re.compile(r"<label>\s*([1-4])(?![0-9])")


@functools.lru_cache(maxsize=16)
def _verdict_re(book: RuleBook) -> re.Pattern:
    dims = sorted(book.dims, key=len, reverse=True)  # longest first: "fitness" before "fit"
    return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, dims)) + r")\s*=\s*([A-Za-z/]+)")


def _strip_end(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def _parse_verdicts(body: str, book: RuleBook) -> tuple[np.ndarray, bool]:
    """Verdict codes [R] int32 stated in `body`, and whether each dim is stated once, validly."""
    verdicts = np.full((book.R,), MISSING, dtype=np.int32)
    if not book.has_rules:
        return verdicts, True
    seen = np.zeros((book.R,), dtype=np.int32)
    ok = True
    for m in _verdict_re(book).finditer(body):
        dim, name = m.group(1), m.group(2).lower()
        i = book.dim_index(dim)
        seen[i] += 1
        code = book.code_of(name)
        if code is None or code not in book.allowed[i]:
            ok = False
            continue
        if seen[i] == 1:
            verdicts[i] = code
    ok = ok and bool((seen == 1).all()) and bool((verdicts != MISSING).all())
    return verdicts, ok


def parse_response(text: str, order: Order = "label_first", book: RuleBook | None = None) -> Parsed:
    """Parse one response; never raises on any string.

    format_ok requires the full structure (label, closing markers, every dim stated exactly
    once with a code allowed for it, nothing after the last marker but an end marker); a
    label-only book asks for the label structure only ("<L> </label>", optionally followed
    by "<think> ... </think>"). The label and verdicts are read as far as possible even
    when the format is broken.
    """
    book = WORLD if book is None else book
    if not isinstance(text, str):
        return Parsed(0, np.full((book.R,), MISSING, dtype=np.int32), False)
    body = _strip_end(text)
    if order == "think_first":
        full = _THINK_FIRST_RE.match(body)
        if full:
            verdicts, ok = _parse_verdicts(full.group(1), book)
            return Parsed(int(full.group(2)), verdicts, ok)
        labels = _THINK_FIRST_LABEL_RE.findall(body)
        verdicts, _ = _parse_verdicts(body, book)
        return Parsed(int(labels[-1]) if labels else 0, verdicts, False)
    if not book.has_rules:
        full = _LABEL_ONLY_RE.match(body)
        if full:
            return Parsed(int(full.group(1)), np.zeros((0,), np.int32), True)
    else:
        full = _LABEL_FIRST_RE.match(body)
        if full:
            verdicts, ok = _parse_verdicts(full.group(2), book)
            return Parsed(int(full.group(1)), verdicts, ok)
    head = _LABEL_FIRST_HEAD_RE.match(body)
    verdicts, _ = _parse_verdicts(body, book)
    return Parsed(int(head.group(1)) if head else 0, verdicts, False)


def parse_batch(
    texts: Sequence[str], order: Order = "label_first", book: RuleBook | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse N responses -> (labels [N] int32, verdicts [N, R] int32, format_ok [N] bool)."""
    book = WORLD if book is None else book
    parsed = [parse_response(t, order, book) for t in texts]
    labels = np.asarray([p.label for p in parsed], dtype=np.int32).reshape(len(parsed))
    verdicts = np.stack([p.verdicts for p in parsed]) if parsed else np.zeros((0, book.R), np.int32)
    ok = np.asarray([p.format_ok for p in parsed], dtype=bool).reshape(len(parsed))
    return labels, verdicts.astype(np.int32), ok
