"""User and world data: the JSONL record schema, its validation, tokenisation and padding.

Schema (docs/data.md): one JSON object per line with
    query (str), item (str), label (int 1..4)              required
    id (str, unique; default "line-<n>"), query_type, verdicts (dim -> value name, every
    dimension of the rule book in force, consistent with the label by its rules),
    rationale, response,
    gold_response (str), meta (object, free-form)          optional
Every problem raises DataError "<path>:<line>: field '<field>': <problem>"; nothing is
silently dropped (blank lines are not records and are skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from agrl.task.format import Order, render_prompt
from agrl.task.rules import WORLD, RuleBook, rule_label

QUERY_TYPES: tuple[str, ...] = ("plain", "attribute", "negation", "alternative", "qa", "knowledge")


HARD_TYPES: tuple[str, ...] = ("negation", "alternative", "qa", "knowledge")
MAX_LINE_BYTES = 1 << 20  # 1 MiB: longer lines are rejected, not truncated
MAX_TEXT_CHARS = 4096  # per text field (query, item, rationale, response)
REQUIRED = ("query", "item", "label")
TEXT_FIELDS = ("query", "item", "rationale", "response", "gold_response")
KNOWN_FIELDS = frozenset(
    {"id", "query", "item", "label", "query_type", "verdicts", "meta", *TEXT_FIELDS}
)


class DataError(ValueError):
    """A bad record or file; the message names the file, line and field."""

    def __init__(self, path, line: int, field: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(f"{path}:{line}: field '{field}': {problem}")


def _validate(rec, path, line: int, book: RuleBook, require_label: bool = True) -> dict:
    """Check one parsed line; return the record with `verdicts` normalised."""
    if not isinstance(rec, dict):
        raise DataError(path, line, "<record>", f"must be a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - KNOWN_FIELDS)
    if unknown:
        raise DataError(
            path, line, unknown[0], f"unknown field; allowed: {', '.join(sorted(KNOWN_FIELDS))}"
        )
    for name in REQUIRED if require_label else ("query", "item"):
        if name not in rec:
            required = ", ".join(REQUIRED if require_label else ("query", "item"))
            raise DataError(path, line, name, f"missing (required: {required})")
    for name in TEXT_FIELDS:
        if name in rec:
            v = rec[name]
            if not isinstance(v, str):
                raise DataError(path, line, name, f"must be a string, got {type(v).__name__}")
            if name in ("query", "item") and not v.strip():
                raise DataError(path, line, name, "must not be empty")
            if len(v) > MAX_TEXT_CHARS:
                raise DataError(path, line, name, f"longer than {MAX_TEXT_CHARS} characters")
            try:  # JSON allows "\ud800"; no tokenizer or file writer does
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DataError(path, line, name, f"not valid text ({e.reason})") from None
    if "label" not in rec:  # only when not required: an unlabelled record to score
        if "verdicts" in rec:
            raise DataError(path, line, "verdicts", "given without a label")
        return _validate_optional(rec, path, line)
    label = rec["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(path, line, "label", f"must be an integer 1..4, got {label!r}")
    if label not in (1, 2, 3, 4):
        raise DataError(path, line, "label", f"must be 1..4, got {label}")
    rec = _validate_optional(rec, path, line)
    if "verdicts" in rec:
        rec = {**rec, "verdicts": _validate_verdicts(rec["verdicts"], label, path, line, book)}
    return rec


def _validate_optional(rec: dict, path, line: int) -> dict:
    if "id" in rec and (not isinstance(rec["id"], str) or not rec["id"]):
        raise DataError(path, line, "id", f"must be a non-empty string, got {rec['id']!r}")
    if "query_type" in rec and rec["query_type"] not in QUERY_TYPES:
        raise DataError(
            path, line, "query_type", f"{rec['query_type']!r} is not one of {QUERY_TYPES}"
        )
    if "meta" in rec and not isinstance(rec["meta"], dict):
        raise DataError(path, line, "meta", "must be a JSON object")
    return rec


def _validate_verdicts(verdicts, label: int, path, line: int, book: RuleBook) -> dict[str, str]:
    if not isinstance(verdicts, dict):
        raise DataError(path, line, "verdicts", "must be an object {dimension: value}")
    for dim in verdicts:
        if dim not in book.dims:
            raise DataError(
                path, line, f"verdicts.{dim}",
                f"unknown dimension; rule book {book.name!r} has {book.dims}",
            )  # fmt: skip
    codes = []
    for i, dim in enumerate(book.dims):
        if dim not in verdicts:
            raise DataError(path, line, f"verdicts.{dim}", "missing (all dimensions required)")
        name = verdicts[dim]
        allowed = sorted(book.allowed_names(dim))
        if not isinstance(name, str) or book.code_of(name) not in book.allowed[i]:
            raise DataError(path, line, f"verdicts.{dim}", f"{name!r} is not one of {allowed}")
        codes.append(book.code_of(name))
    implied = int(rule_label(np.asarray(codes, np.int32).reshape(book.R), book=book))
    if implied != label:
        raise DataError(
            path, line, "verdicts", f"imply label {implied} by the rule engine, but label={label}"
        )
    return {dim: verdicts[dim] for dim in book.dims}


def load_records(
    path: str | Path, book: RuleBook | None = None, require_label: bool = True
) -> list[dict]:
    """Read and validate a JSONL file; every record gets an `id` (default "line-<n>").
    `verdicts` are checked against `book` (the rule book in force; default the world's).

    require_label=False accepts records without `label` (input to `agrl score`); every
    other check is the same, and a label that is present is checked as usual."""
    book = WORLD if book is None else book
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(path, 0, "<file>", f"cannot read: {e.strerror or e}") from None
    records: list[dict] = []
    first_line_of: dict[str, int] = {}
    for n, bline in enumerate(raw.split(b"\n"), start=1):
        if len(bline) > MAX_LINE_BYTES:
            raise DataError(path, n, "<line>", f"longer than {MAX_LINE_BYTES} bytes")
        try:
            text = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, n, "<line>", f"not valid UTF-8 (byte {e.start})") from None
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                path, n, "<json>", f"invalid JSON: {e.msg} (column {e.colno})"
            ) from None
        rec = _validate(rec, path, n, book, require_label)
        rec.setdefault("id", f"line-{n}")
        if rec["id"] in first_line_of:
            raise DataError(
                path,
                n,
                "id",
                f"duplicate id {rec['id']!r} (first on line {first_line_of[rec['id']]})",
            )
        first_line_of[rec["id"]] = n
        records.append(rec)
    if not records:
        raise DataError(path, 0, "<file>", "no records (the file is empty)")
    return records


def has_verdicts(records: Sequence[dict]) -> bool:
    """True when every record carries gold verdicts (else rewards fall back to the label)."""
    return bool(records) and all("verdicts" in r for r in records)


def verdict_array(records: Sequence[dict], book: RuleBook | None = None) -> np.ndarray:
    """Gold verdict codes [N, R] int32 of records that all have verdicts (under `book`)."""
    book = WORLD if book is None else book
    return np.asarray(
        [[book.code_of(r["verdicts"][d]) for d in book.dims] for r in records], dtype=np.int32
    ).reshape(len(records), book.R)


def has_supervision(records: Sequence[dict]) -> bool:
    """True when any record carries more than its label: verdicts, a rationale, a response
    or a gold response (else only a label-only rule book can be learned from the data)."""
    extra = ("verdicts", "rationale", "response", "gold_response")
    return any(any(k in r for k in extra) for r in records)


# ----------------------------------------------------------------------------- tokens
def encode_prompts(
    tok, records: Sequence[dict], order: Order = "label_first", hints: Sequence[str] | None = None
) -> list[list[int]]:
    """Prompt ids per record: [bos] (when the tokenizer has one) + the rendered prompt, with
    hints[i] in record i's prompt when given (guidance.form=hint)."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    hints = [None] * len(records) if hints is None else hints
    return [
        bos + tok.encode(render_prompt(r["query"], r["item"], order, h), add_special_tokens=False)
        for r, h in zip(records, hints, strict=True)
    ]


def encode_responses(tok, texts: Sequence[str]) -> list[list[int]]:
    """Response ids per text, each ending with eos."""
    if tok.eos_token_id is None:
        raise ValueError("tokenizer has no eos token")
    return [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]


def decode_completions(tok, tokens, mask) -> list[str]:
    """Texts of sampled completions: row i is decode(tokens[i][mask[i]]) (eos kept; the
    parser tolerates it).  tokens, mask: [N, T] host arrays."""
    rows = [np.asarray(t)[np.asarray(m, bool)].tolist() for t, m in zip(tokens, mask, strict=True)]
    return tok.batch_decode(rows, skip_special_tokens=False)


def _pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int, left: bool):
    ids = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens > length {length}")
        if len(s) == 0:
            continue
        sl = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, sl] = s
        mask[i, sl] = True
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], length: int, pad_id: int):
    """Left-pad to [B, L]: (ids [B, L] int32, mask [B, L] bool). Prompts end at column L-1."""
    return _pad(seqs, length, pad_id, left=True)


def pad_right(seqs: Sequence[Sequence[int]], length: int, pad_id: int):
    """Right-pad to [B, L]: (ids [B, L] int32, mask [B, L] bool). Responses start at 0."""
    return _pad(seqs, length, pad_id, left=False)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (buckets need not be sorted)."""
    fits = [b for b in buckets if b >= length]
    if not fits:
        raise ValueError(
            f"length {length} exceeds the largest bucket {max(buckets, default=None)}; "
            "add a larger bucket"
        )
    return min(fits)


def padded_batches(
    seqs: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    length: Callable[[int], int] | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Fixed-shape batches of prompts, in order: yields (start, n, ids, mask) with ids, mask
    [batch_size, L] left-padded (`pad_left`), n <= batch_size real rows (seqs[start:start+n]).

    The last chunk repeats its final sequence up to batch_size, so every call of the jitted
    function downstream sees one batch shape (one compile per length); L = length(longest
    in the chunk), or the longest itself (e.g. `lambda n: pick_bucket(n, buckets)`).
    """
    for start in range(0, len(seqs), batch_size):
        chunk = list(seqs[start : start + batch_size])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)
        longest = max(len(c) for c in chunk)
        ids, mask = pad_left(chunk, longest if length is None else length(longest), pad_id)
        yield start, n, ids, mask
