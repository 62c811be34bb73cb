"""Rule engine (SPEC 2): host and jit forms agree everywhere; hand cases; rule names."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.task.rules import (
    ACCESSORY,
    ALLOWED_CODES,
    DIMS,
    MATCH,
    MISMATCH,
    MISSING,
    NA,
    PARTIAL,
    R,
    deciding_rule,
    rule_label,
)

# Every combination of every code (MISSING included) in every dim: 6^6 = 46656 rows.
ALL_CODES = (MISSING, NA, MATCH, MISMATCH, ACCESSORY, PARTIAL)
ALL_ROWS = np.asarray(list(itertools.product(ALL_CODES, repeat=R)), dtype=np.int32)

# The label each rule name implies (first hit wins).
RULE_TO_LABEL = {
    "category": 1,
    "accessory": 2,
    "brand": 2,
    "negation": 2,
    "need": 2,
    "audience": 2,
    "attributes": 3,
    "alternative": 3,
    "all-match": 4,
}


def _row(**kw):
    v = np.full((R,), NA, dtype=np.int32)
    v[0] = MATCH
    for k, c in kw.items():
        v[DIMS.index(k)] = c
    return v


@pytest.mark.parametrize(
    "row, label",
    [
        (_row(), 4),  # category match, nothing else asked
        (_row(category=MISMATCH, brand=MISMATCH), 1),  # category first
        (_row(category=ACCESSORY), 2),
        (_row(negation=MISMATCH, attributes=PARTIAL), 2),  # negation beats attributes
        (_row(brand=PARTIAL), 3),  # alternative answered by the original brand
        (_row(attributes=MISMATCH), 3),
        (_row(brand=MATCH, need=MATCH, audience=MATCH, attributes=MATCH), 4),
        (_row(need=MISSING), 4),  # missing counts as n/a in the engine
    ],
)
def test_hand_cases(row, label):
    assert int(rule_label(row)) == label
    assert RULE_TO_LABEL[deciding_rule(row)] == label


def test_host_equals_jit_on_all_combinations():
    host = rule_label(ALL_ROWS)
    dev = np.asarray(jax.jit(lambda v: rule_label(v, xp=jnp))(jnp.asarray(ALL_ROWS)))
    assert host.dtype == np.int32 and dev.dtype == np.int32
    np.testing.assert_array_equal(host, dev)
    assert set(np.unique(host).tolist()) == {1, 2, 3, 4}


def test_deciding_rule_agrees_with_label_on_allowed_combinations():
    allowed = [sorted(ALLOWED_CODES[d]) for d in DIMS]
    rows = np.asarray(list(itertools.product(*allowed)), dtype=np.int32)
    labels = rule_label(rows)
    for row, label in zip(rows, labels, strict=True):
        assert RULE_TO_LABEL[deciding_rule(row)] == int(label)
