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

The parser is tolerant: it never raises, accepts missing spaces around markers and a
trailing end-of-sequence marker, and reports what it could read plus a format-ok flag.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from agrl.task.rules import (
    ALLOWED_CODES,
    CODE_NAMES,
    CODE_OF_NAME,
    DIM_INDEX,
    DIMS,
    MISSING,
    R,
    deciding_rule,
    rule_label,
)

Order = Literal["label_first", "think_first"]
ORDERS: tuple[str, ...] = ("label_first", "think_first")

LABEL_OPEN, LABEL_CLOSE = "<label>", "</label>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
QUERY_TAG, ITEM_TAG, SEP, ARROW = "query:", "item:", "|", "->"
# End-of-sequence texts a decoder may leave at the end of a response (ours and HF ones).
END_MARKERS: tuple[str, ...] = ("<eos>", "</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")
# Every fixed word the format itself writes (the tokenizer's vocabulary includes them).
FORMAT_WORDS: tuple[str, ...] = (
    LABEL_OPEN,
    LABEL_CLOSE,
    THINK_OPEN,
    THINK_CLOSE,
    QUERY_TAG,
    ITEM_TAG,
    SEP,
    ARROW,
    "1",
    "2",
    "3",
    "4",
    *(f"{d}={CODE_NAMES[c]}" for d in DIMS for c in sorted(ALLOWED_CODES[d])),
    *(f"rule={name}" for name in ("category", "accessory", "brand", "negation", "need")),
    *(f"rule={name}" for name in ("audience", "attributes", "alternative", "all-match")),
)


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


def render_prompt(query: str, item: str, order: Order = "label_first") -> str:
    """The judge prompt; it ends with the opener of the first response section."""
    _check_order(order)
    opener = LABEL_OPEN if order == "label_first" else THINK_OPEN
    return f"{QUERY_TAG} {_words(query)} {ITEM_TAG} {_words(item)} {opener}"


def render_rationale(verdicts: Sequence[int], query_summary: str, item_summary: str) -> str:
    """The rationale text.  verdicts: [R] codes. Rule name and label come from the engine."""
    v = np.asarray(verdicts, dtype=np.int32).reshape(R)
    stated = " ".join(f"{d}={CODE_NAMES[int(v[i])]}" for i, d in enumerate(DIMS))
    engine_label = int(rule_label(v))
    return (
        f"{QUERY_TAG} {_words(query_summary)} {SEP} {ITEM_TAG} {_words(item_summary)} {SEP} "
        f"{stated} {SEP} rule={deciding_rule(v)} {ARROW} {engine_label}"
    )


def render_response(
    label: int,
    verdicts: Sequence[int],
    query_summary: str,
    item_summary: str,
    order: Order = "label_first",
) -> str:
    """A full response (no end-of-sequence token: the tokenizer helpers append eos).

    `label` is the stated label; the rationale states the engine's label for `verdicts`,
    so a gold response (label == rule_label(verdicts)) is consistent with itself.
    """
    _check_order(order)
    if int(label) not in (1, 2, 3, 4):
        raise ValueError(f"label={label!r}: must be 1..4")
    return assemble_response(label, render_rationale(verdicts, query_summary, item_summary), order)


def assemble_response(label: int, rationale: str, order: Order = "label_first") -> str:
    """A response from a label and a rationale text (e.g. a record's `rationale` field),
    so a stored label-first world can be trained in think-first order."""
    _check_order(order)
    rationale = _words(rationale)
    if order == "label_first":
        return f"{int(label)} {LABEL_CLOSE} {THINK_OPEN} {rationale} {THINK_CLOSE}"
    return f"{rationale} {THINK_CLOSE} {LABEL_OPEN} {int(label)} {LABEL_CLOSE}"


_VERDICT_RE = re.compile(
    r"(?<![\w-])(" + "|".join(DIMS) + r")\s*=\s*([A-Za-z/]+)",
)
_LABEL_FIRST_RE = re.compile(
    r"\A\s*(?:<label>\s*)?([1-4])\s*</label>\s*<think>(.*)</think>\s*\Z", re.DOTALL
)
_LABEL_FIRST_HEAD_RE = re.compile(r"\A\s*(?:<label>\s*)?([1-4])(?![0-9])")
_THINK_FIRST_RE = re.compile(
    r"\A\s*(?:<think>)?(.*)</think>\s*<label>\s*([1-4])\s*</label>\s*\Z", re.DOTALL
)
_THINK_FIRST_LABEL_RE = re.compile(r"<label>\s*([1-4])(?![0-9])")


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


def _parse_verdicts(body: str) -> tuple[np.ndarray, bool]:
    """Verdict codes [R] int32 stated in `body`, and whether each dim is stated once, validly."""
    verdicts = np.full((R,), MISSING, dtype=np.int32)
    seen = np.zeros((R,), dtype=np.int32)
    ok = True
    for m in _VERDICT_RE.finditer(body):
        dim, name = m.group(1), m.group(2).lower()
        i = DIM_INDEX[dim]
        seen[i] += 1
        code = CODE_OF_NAME.get(name)
        if code is None or code not in ALLOWED_CODES[dim]:
            ok = False
            continue
        if seen[i] == 1:
            verdicts[i] = code
    ok = ok and bool((seen == 1).all()) and bool((verdicts != MISSING).all())
    return verdicts, ok


def parse_response(text: str, order: Order = "label_first") -> Parsed:
    """Parse one response; never raises on any string.

    format_ok requires the full structure (label, closing markers, every dim stated exactly
    once with a code allowed for it, nothing after the last marker but an end marker).
    The label and verdicts are read as far as possible even when the format is broken.
    """
    if not isinstance(text, str):
        return Parsed(0, np.full((R,), MISSING, dtype=np.int32), False)
    body = _strip_end(text)
    if order == "think_first":
        full = _THINK_FIRST_RE.match(body)
        if full:
            verdicts, ok = _parse_verdicts(full.group(1))
            return Parsed(int(full.group(2)), verdicts, ok)
        labels = _THINK_FIRST_LABEL_RE.findall(body)
        verdicts, _ = _parse_verdicts(body)
        return Parsed(int(labels[-1]) if labels else 0, verdicts, False)
    full = _LABEL_FIRST_RE.match(body)
    if full:
        verdicts, ok = _parse_verdicts(full.group(2))
        return Parsed(int(full.group(1)), verdicts, ok)
    head = _LABEL_FIRST_HEAD_RE.match(body)
    verdicts, _ = _parse_verdicts(body)
    return Parsed(int(head.group(1)) if head else 0, verdicts, False)


def parse_batch(
    texts: Sequence[str], order: Order = "label_first"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse N responses -> (labels [N] int32, verdicts [N, R] int32, format_ok [N] bool)."""
    parsed = [parse_response(t, order) for t in texts]
    labels = np.asarray([p.label for p in parsed], dtype=np.int32).reshape(len(parsed))
    verdicts = np.stack([p.verdicts for p in parsed]) if parsed else np.zeros((0, R), np.int32)
    ok = np.asarray([p.format_ok for p in parsed], dtype=bool).reshape(len(parsed))
    return labels, verdicts.astype(np.int32), ok
