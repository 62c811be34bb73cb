"""The relevance rule engine (SPEC 2): per-rule verdict codes -> relevance label 1..4.

The rules are data: a `RuleBook` loaded from a TOML file (schema in docs/rulebook.md),
frozen and made of tuples only, so it is hashable and can be a static jit argument or a
closure constant. `load_rule_book(spec)` takes "world" (the default, the relevance world's
book shipped as agrl/task/rulebooks/world.toml), "label_only" (no dimensions: the response
is the label alone) or a path to a user's TOML file.

One implementation serves the host (numpy) and jit (jax.numpy): `rule_label` only uses
array operations that both namespaces share, selected by the `xp` argument.

Verdict codes (ints, so that a whole batch is one [N, R] array, R = len(book.dims)):
    0 is "n/a" (the rule does not apply); the book's other value names get 1, 2, ... in
    order of first appearance in its [[dimension]] tables; MISSING = -1 is parser output
    only (the response did not state this verdict) and counts as n/a in the engine.
Rules: tried in order, the first whose condition list (any-of) holds decides the label;
none holds -> book.default_label.

The world book (module constants below, for the world generator and tests):
    dimensions category, brand, negation, need, audience, attributes (R = 6)
    NA = 0, MATCH = 1, MISMATCH = 2, ACCESSORY = 3 (category only), PARTIAL = 4
    (attributes: unverifiable from the title; brand: an "alternative" query answered by
    the original brand)
    category == MISMATCH                                          -> 1 Irrelevant
    category == ACCESSORY, or brand / negation / need / audience
        == MISMATCH                                               -> 2 Mismatch
    attributes in {MISMATCH, PARTIAL}, or brand == PARTIAL        -> 3 Related
    otherwise                                                     -> 4 Excellent
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from agrl.config.schema import BUILTIN_RULE_BOOKS

LABELS = (1, 2, 3, 4)
LABEL_NAMES = {4: "Excellent", 3: "Related", 2: "Mismatch", 1: "Irrelevant"}
MISSING = -1
NA_NAME = "n/a"
BUILTIN_DIR = Path(__file__).resolve().parent / "rulebooks"
BUILTIN: tuple[str, ...] = BUILTIN_RULE_BOOKS  # rulebooks/<name>.toml

_DIM_RE = re.compile(r"[a-z][a-z0-9_]*\Z")  # a verdict is written "<dim>=<value>"
_VALUE_RE = re.compile(r"[a-z][a-z/]*\Z")  # what the parser reads after "=" (e.g. n/a)
_RULE_RE = re.compile(r"[A-Za-z0-9_/-]+\Z")  # a rationale says "rule=<name>"
_TOP_KEYS = {"name", "description", "default_label", "default_rule", "dimension", "rule"}


class RuleBookError(ValueError):
    """A bad rule-book file; the message names the file and the field."""

    def __init__(self, path, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{path}: field '{field}': {problem}")


@dataclass(frozen=True)
class Rule:
    """One rule: label `label` when any (dimension index, code) pair of `when` holds."""

    name: str
    label: int
    when: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RuleBook:
    """Dimensions, value codes and ordered rules (tuples only: hashable, jit-static)."""

    name: str
    dims: tuple[str, ...]  # R verdict dimensions, in response order
    allowed: tuple[tuple[int, ...], ...]  # [R] sorted codes each dimension may take
    code_names: tuple[str, ...]  # code -> value name; code 0 is "n/a"
    rules: tuple[Rule, ...]  # first hit wins
    default_label: int = 4
    default_rule: str = "default"
    source: str = ""  # the file it was read from

    @property
    def R(self) -> int:  # noqa: N802 (the SPEC's name for the verdict width)
        return len(self.dims)

    @property
    def has_rules(self) -> bool:
        """False for a label-only book: no verdicts, no r_step / r_cons, no rule metrics."""
        return bool(self.dims)

    def dim_index(self, dim: str) -> int:
        return self.dims.index(dim)

    def code_of(self, value: str) -> int | None:
        """The code of a value name, None if the book has no such value."""
        return self.code_names.index(value) if value in self.code_names else None

    def allowed_names(self, dim: str) -> tuple[str, ...]:
        return tuple(self.code_names[c] for c in self.allowed[self.dim_index(dim)])

    def rule_names(self) -> tuple[str, ...]:
        """Every name a rationale can give as the deciding rule (rules, then the default)."""
        return (*(r.name for r in self.rules), self.default_rule)

    def describe(self) -> str:
        """One line for start-up messages."""
        if not self.has_rules:
            return f"rule book {self.name!r}: label only (no verdict dimensions)"
        return (
            f"rule book {self.name!r}: {self.R} dims ({', '.join(self.dims)}), "
            f"{len(self.rules)} rules, default label {self.default_label}"
        )


# ---------------------------------------------------------------------------------------
# Loading.


def _get(table: dict, key: str, kind, path, field: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise RuleBookError(path, field, "missing")
        return default
    value = table[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RuleBookError(path, field, f"must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise RuleBookError(path, field, f"must be a {kind.__name__}, got {value!r}")
    return value


def _check_keys(table: Any, allowed: set[str], path, field: str) -> dict:
    if not isinstance(table, dict):
        raise RuleBookError(path, field, f"must be a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RuleBookError(path, f"{field}.{unknown[0]}".lstrip("."),
                            f"unknown field; allowed: {', '.join(sorted(allowed))}")  # fmt: skip
    return table


def _label(value: Any, path, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in LABELS:
        raise RuleBookError(path, field, f"must be a label 1..4, got {value!r}")
    return value


def rule_book_from_dict(data: dict, path: str = "<dict>", name: str = "") -> RuleBook:
    """A RuleBook from the parsed TOML tables (schema in docs/rulebook.md)."""
    _check_keys(data, _TOP_KEYS, path, "")
    book_name = _get(data, "name", str, path, "name", name or Path(str(path)).stem)
    if not book_name.strip():
        raise RuleBookError(path, "name", "must not be empty")
    dims: list[str] = []
    dim_values: list[list[str]] = []
    for i, table in enumerate(_get(data, "dimension", list, path, "dimension", [])):
        field = f"dimension[{i}]"
        _check_keys(table, {"name", "values", "description"}, path, field)
        dim = _get(table, "name", str, path, f"{field}.name")
        if not _DIM_RE.match(dim):
            raise RuleBookError(path, f"{field}.name", f"{dim!r}: use [a-z][a-z0-9_]*")
        if dim in dims:
            raise RuleBookError(path, f"{field}.name", f"duplicate dimension {dim!r}")
        values = _get(table, "values", list, path, f"{field}.values")
        if not values:
            raise RuleBookError(path, f"{field}.values", "must list at least one value")
        for v in values:
            if not isinstance(v, str) or not _VALUE_RE.match(v):
                raise RuleBookError(path, f"{field}.values",
                                    f"{v!r}: values are lowercase letters and '/'")  # fmt: skip
        if len(set(values)) != len(values):
            raise RuleBookError(path, f"{field}.values", f"duplicate values in {values}")
        dims.append(dim)
        dim_values.append(list(values))
    code_names = [NA_NAME] + list(dict.fromkeys(v for vs in dim_values for v in vs if v != NA_NAME))
    allowed = tuple(tuple(sorted(code_names.index(v) for v in vs)) for vs in dim_values)
    rules: list[Rule] = []
    for i, table in enumerate(_get(data, "rule", list, path, "rule", [])):
        field = f"rule[{i}]"
        _check_keys(table, {"name", "label", "when", "description"}, path, field)
        rule_name = _get(table, "name", str, path, f"{field}.name")
        if not _RULE_RE.match(rule_name):
            raise RuleBookError(path, f"{field}.name", f"{rule_name!r}: use [A-Za-z0-9_/-]+")
        if rule_name in (r.name for r in rules):
            raise RuleBookError(path, f"{field}.name", f"duplicate rule {rule_name!r}")
        label = _label(_get(table, "label", int, path, f"{field}.label"), path, f"{field}.label")
        when = _get(table, "when", list, path, f"{field}.when")
        if not when:
            raise RuleBookError(path, f"{field}.when", "must list at least one 'dim=value'")
        conds = []
        for cond in when:
            if not isinstance(cond, str) or cond.count("=") != 1:
                raise RuleBookError(path, f"{field}.when", f"{cond!r}: expected 'dim=value'")
            dim, value = (s.strip() for s in cond.split("="))
            if dim not in dims:
                problem = f"{cond!r}: unknown dimension {dim!r} (known: {dims})"
                raise RuleBookError(path, f"{field}.when", problem)
            if value not in dim_values[dims.index(dim)]:
                problem = f"{cond!r}: {dim} takes {dim_values[dims.index(dim)]}"
                raise RuleBookError(path, f"{field}.when", problem)
            conds.append((dims.index(dim), code_names.index(value)))
        rules.append(Rule(rule_name, label, tuple(conds)))
    default_label = _label(data.get("default_label", 4), path, "default_label")
    default_rule = _get(data, "default_rule", str, path, "default_rule", "default")
    if not _RULE_RE.match(default_rule):
        raise RuleBookError(path, "default_rule", f"{default_rule!r}: use [A-Za-z0-9_/-]+")
    if default_rule in (r.name for r in rules):
        raise RuleBookError(path, "default_rule", f"{default_rule!r} is also a rule's name")
    return RuleBook(book_name, tuple(dims), allowed, tuple(code_names), tuple(rules),
                    default_label, default_rule, str(path))  # fmt: skip


def read_rule_book(path: str | Path) -> RuleBook:
    """A RuleBook from a TOML file; every problem raises RuleBookError naming file + field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RuleBookError(
            path, "<file>", f"cannot read: {getattr(e, 'strerror', e) or e}"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RuleBookError(path, "<toml>", f"invalid TOML: {e}") from None
    return rule_book_from_dict(data, str(path))


@functools.cache
def _builtin(name: str) -> RuleBook:
    return read_rule_book(BUILTIN_DIR / f"{name}.toml")


def load_rule_book(spec: str = "world") -> RuleBook:
    """The book named by `task.rule_book`: "world", "label_only" or a TOML file path."""
    return _builtin(spec) if spec in BUILTIN else read_rule_book(spec)


WORLD = _builtin("world")
LABEL_ONLY = _builtin("label_only")


# ---------------------------------------------------------------------------------------
# The engine.


def rule_label(verdicts, xp: ModuleType = np, book: RuleBook | None = None):
    """Relevance label of each verdict row.  verdicts: [..., R] int -> [...] int32 in 1..4.

    Rules are applied from last to first with `where`, so the first hit wins. xp is numpy
    on the host or jax.numpy under jit; the code is the same for both. book: default WORLD.
    """
    book = WORLD if book is None else book
    label = xp.full(verdicts.shape[:-1], book.default_label, dtype=xp.int32)
    for rule in reversed(book.rules):
        hit = verdicts[..., rule.when[0][0]] == rule.when[0][1]
        for d, code in rule.when[1:]:
            hit = hit | (verdicts[..., d] == code)
        label = xp.where(hit, xp.int32(rule.label), label)
    return label.astype(xp.int32)


def deciding_rule(verdicts: np.ndarray, book: RuleBook | None = None) -> str:
    """Host only: the name of the first rule that fired for one verdict row [R]."""
    book = WORLD if book is None else book
    v = np.asarray(verdicts).reshape(book.R)
    for rule in book.rules:
        if any(int(v[d]) == code for d, code in rule.when):
            return rule.name
    return book.default_rule


# ---------------------------------------------------------------------------------------
# The world book's values as module constants (the world generator and tests use them).

DIMS: tuple[str, ...] = WORLD.dims
R = WORLD.R
DIM_INDEX = {name: i for i, name in enumerate(DIMS)}
NA, MATCH, MISMATCH, ACCESSORY, PARTIAL = (
    WORLD.code_of(n) for n in (NA_NAME, "match", "mismatch", "accessory", "partial")
)
CODE_NAMES: dict[int, str] = dict(enumerate(WORLD.code_names))
CODE_OF_NAME: dict[str, int] = {v: k for k, v in CODE_NAMES.items()}
# Which codes each dimension may take (the parser and the data validator enforce this).
ALLOWED_CODES: dict[str, frozenset[int]] = {
    d: frozenset(WORLD.allowed[i]) for i, d in enumerate(DIMS)
}
# Name of the rule that decided the label, for rationales ("rule=negation -> 2").
RULE_NAMES = WORLD.rule_names()
