"""The default AGRL math on a fixed input equals the committed golden values.

A failure means the math changed. If that was intended, regenerate with
`python -m tests.golden.regen` and say why in the commit message.
"""

import numpy as np
import pytest

from tests.golden.regen import PATH, compute_golden, make_inputs
from tests.tolerance import f32_tol

GOLDEN = np.load(PATH)
OUT_KEYS = sorted(k[len("out/") :] for k in GOLDEN.files if k.startswith("out/"))


def test_inputs_are_reproducible():
    # a changed input generator is not a change of the math; catch it separately
    x = make_inputs()
    for k, v in x.items():
        np.testing.assert_array_equal(v, GOLDEN[f"in/{k}"], err_msg=k)


@pytest.fixture(scope="module")
def outputs():
    return compute_golden({k[len("in/") :]: GOLDEN[k] for k in GOLDEN.files if k.startswith("in/")})


def test_golden_is_not_trivial():
    assert GOLDEN["out/guided"].any() and not GOLDEN["out/guided"].all()
    assert np.unique(GOLDEN["out/reward"]).size > 2
    assert 0 < float(GOLDEN["out/aux/guided_active_tokens"]) < float(GOLDEN["out/aux/n_tokens"])


@pytest.mark.parametrize("key", OUT_KEYS)
def test_matches_golden(outputs, key):
    assert set(outputs) == set(OUT_KEYS)
    want, got = GOLDEN[f"out/{key}"], outputs[key]
    assert got.shape == want.shape and got.dtype == want.dtype, key
    if np.issubdtype(want.dtype, np.floating):
        # Another CPU may order the f32 sums differently: each value is at most a reduction
        # over every token of the batch (mask [N, T]), chained through the loss (depth 3).
        tol = f32_tol(max(float(np.abs(want).max()), 1.0), GOLDEN["in/mask"].size, depth=3)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=key)
    else:
        np.testing.assert_array_equal(got, want, err_msg=key)
