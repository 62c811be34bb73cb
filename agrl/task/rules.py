"""The relevance rule engine (SPEC 2): per-rule verdict codes -> relevance label 1..4.

One implementation serves the host (numpy) and jit (jax.numpy): `rule_label` only uses
array operations that both namespaces share, selected by the `xp` argument.

Verdict dimensions, in this fixed order (R = 6):
    category, brand, negation, need, audience, attributes
Verdict codes (ints, so that a whole batch is one [N, R] array):
    NA = 0          the rule does not apply to this query
    MATCH = 1       the item satisfies the rule
    MISMATCH = 2    the item violates the rule (negation: the negated property is present)
    ACCESSORY = 3   category only: the item is an accessory of the asked product
    PARTIAL = 4     attributes: unverifiable from the title; brand: an "alternative" query
                    answered by the original (luxury) brand
    MISSING = -1    (parser output only) the response did not state this verdict

Rules, first hit wins:
    category == MISMATCH                                          -> 1 Irrelevant
    category == ACCESSORY, or brand / negation / need / audience
        == MISMATCH                                               -> 2 Mismatch
    attributes in {MISMATCH, PARTIAL}, or brand == PARTIAL        -> 3 Related
    otherwise                                                     -> 4 Excellent
MISSING verdicts count as NA here; whether a response is well formed is the parser's call.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

DIMS: tuple[str, ...] = ("category", "brand", "negation", "need", "audience", "attributes")
R = len(DIMS)
DIM_INDEX = {name: i for i, name in enumerate(DIMS)}

MISSING, NA, MATCH, MISMATCH, ACCESSORY, PARTIAL = -1, 0, 1, 2, 3, 4
CODE_NAMES: dict[int, str] = {
    NA: "n/a",
    MATCH: "match",
    MISMATCH: "mismatch",
    ACCESSORY: "accessory",
    PARTIAL: "partial",
}
CODE_OF_NAME: dict[str, int] = {v: k for k, v in CODE_NAMES.items()}
# Which codes each dimension may take (the parser and the data validator enforce this).
ALLOWED_CODES: dict[str, frozenset[int]] = {
    "category": frozenset({MATCH, MISMATCH, ACCESSORY}),
    "brand": frozenset({NA, MATCH, MISMATCH, PARTIAL}),
    "negation": frozenset({NA, MATCH, MISMATCH}),
    "need": frozenset({NA, MATCH, MISMATCH}),
    "audience": frozenset({NA, MATCH, MISMATCH}),
    "attributes": frozenset({NA, MATCH, MISMATCH, PARTIAL}),
}

LABELS = (1, 2, 3, 4)
LABEL_NAMES = {4: "Excellent", 3: "Related", 2: "Mismatch", 1: "Irrelevant"}

# Name of the rule that decided the label, for rationales ("rule=negation -> 2").
RULE_NAMES = (
    "category",
    "accessory",
    "brand",
    "negation",
    "need",
    "audience",
    "attributes",
    "alternative",
    "all-match",
)


def rule_label(verdicts, xp: ModuleType = np):
    """Relevance label of each verdict row.  verdicts: [..., R] int -> [...] int32 in 1..4.

    xp is numpy on the host or jax.numpy under jit; the code is the same for both.
    """
    cat = verdicts[..., DIM_INDEX["category"]]
    brand = verdicts[..., DIM_INDEX["brand"]]
    is_1 = cat == MISMATCH
    is_2 = (cat == ACCESSORY) | (brand == MISMATCH)
    for name in ("negation", "need", "audience"):
        is_2 = is_2 | (verdicts[..., DIM_INDEX[name]] == MISMATCH)
    attr = verdicts[..., DIM_INDEX["attributes"]]
    is_3 = (attr == MISMATCH) | (attr == PARTIAL) | (brand == PARTIAL)
    label = xp.where(is_1, 1, xp.where(is_2, 2, xp.where(is_3, 3, 4)))
    return label.astype(xp.int32)


def deciding_rule(verdicts: np.ndarray) -> str:
    """Host only: the name of the first rule that fired for one verdict row [R]."""
    v = {name: int(verdicts[i]) for i, name in enumerate(DIMS)}
    if v["category"] == MISMATCH:
        return "category"
    if v["category"] == ACCESSORY:
        return "accessory"
    for name in ("brand", "negation", "need", "audience"):
        if v[name] == MISMATCH:
            return name
    if v["attributes"] in (MISMATCH, PARTIAL):
        return "attributes"
    if v["brand"] == PARTIAL:
        return "alternative"
    return "all-match"
