"""The DPO pair cache (pairs.npz + pairs.json): written atomically, and a cache that a kill
left incomplete counts as absent (the pairs are mined again) instead of blocking --resume."""

import json

import numpy as np
import pytest

from agrl.train.pairs import load_pair_cache, save_pair_cache

PAIRS = {"prompt_ids": np.arange(6, dtype=np.int32).reshape(2, 3),
         "chosen_mask": np.array([[True, False], [True, True]])}  # fmt: skip
STATS = {"mined_prompts": 4, "pairs": 2}


def test_round_trip(tmp_path):
    save_pair_cache(tmp_path, PAIRS, STATS)
    pairs, stats = load_pair_cache(tmp_path)
    assert stats == STATS and sorted(pairs) == sorted(PAIRS)
    for k, v in PAIRS.items():
        np.testing.assert_array_equal(pairs[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.json", "pairs.npz"]


@pytest.mark.parametrize(
    "kill",
    ["before anything", "arrays written, marker not", "marker half written",
     "arrays cut short", "arrays of another mining", "marker not json"],
)  # fmt: skip
def test_an_incomplete_cache_is_absent(tmp_path, kill):
    save_pair_cache(tmp_path, PAIRS, STATS)
    arrays, marker = tmp_path / "pairs.npz", tmp_path / "pairs.json"
    if kill == "before anything":
        arrays.unlink(), marker.unlink()
        (tmp_path / "pairs.npz.tmp").write_bytes(b"PK\x03")
    elif kill == "arrays written, marker not":
        marker.unlink()
    elif kill == "marker half written":
        marker.rename(tmp_path / "pairs.json.tmp")
    elif kill == "arrays cut short":
        arrays.write_bytes(arrays.read_bytes()[:50])
    elif kill == "arrays of another mining":
        np.savez(arrays, prompt_ids=np.zeros((9, 9), np.int32))
    else:
        marker.write_text("{")
    assert load_pair_cache(tmp_path) is None
    save_pair_cache(tmp_path, PAIRS, STATS)  # mined again: the cache is whole once more
    assert load_pair_cache(tmp_path)[1] == STATS
    assert json.loads(marker.read_text())["arrays_bytes"] == arrays.stat().st_size
