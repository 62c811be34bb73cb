"""The prompt reader (agrl/world/reader.py): the prompt carries every gold judgement."""

import numpy as np
import pytest

from agrl.task.rules import CODE_OF_NAME, DIMS, rule_label
from agrl.world import generate_world
from agrl.world.config import SPLITS, WorldConfig
from agrl.world.generate import GOLD_KNOWLEDGE, Item, Query, judge
from agrl.world.reader import (
    fact_exposure,
    needed_fact,
    prompt_ceiling,
    read_item,
    read_label,
    read_query,
)


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(seed=5, n_sft=500, n_rl=200, n_b_eval=300, n_w_eval=100))


def test_reader_recovers_every_gold_verdict(world):
    """Every record of every split: the verdicts judged from the parsed texts are gold's,
    so the prompt-only ceiling is 100% (before the qa fix, label-3 qa records failed)."""
    for split in SPLITS:
        for r in world[split]:
            got = judge(read_query(r["query"]), read_item(r["item"]))
            want = np.asarray([CODE_OF_NAME[r["verdicts"][d]] for d in DIMS])
            np.testing.assert_array_equal(got, want, err_msg=f"{r['id']}: {r['query']!r}")
    ceiling = prompt_ceiling(world["b_eval"])
    assert sum(n for _, n in ceiling.values()) == len(world["b_eval"])
    assert all(ok == n for ok, n in ceiling.values())


def test_reader_parses_templates_synonyms_and_aliases():
    q = read_query("which crimson kettle is fast-boil")
    assert (q.qtype, q.cat, q.attrs, q.need) == ("qa", "kettle", (("color", "red"),), "fast-boil")
    q = read_query("vtx phone dupe")
    assert (q.qtype, q.alt_brand, q.brand) == ("alternative", "vertexa", None)
    q = read_query("ladies wallet free of leather")
    assert (q.qtype, q.audience, q.negated, q.attrs) == ("negation", "women", "leather", ())
    it = read_item("new vtx phone gray xl")
    assert it == Item(cat="phone", brand="vertexa", color="grey", size="xl")


def test_a_dropped_attribute_is_seen_as_a_ceiling_miss():
    """The defect the reader exists to catch: a label-3 qa query whose attribute is not in
    the text reads as label 4 (the item states the feature but no colour)."""
    q = Query(qtype="qa", cat="kettle", attrs=(("color", "red"),), need="fast-boil")
    it = Item(cat="kettle", brand="vertexa", features=("fast-boil",))
    assert int(rule_label(judge(q, it))) == 3  # gold: the colour is unstated
    rec = {"query": "which kettle is fast-boil", "item": "vertexa kettle fast-boil",
           "query_type": "qa", "label": 3}  # fmt: skip
    assert read_label(rec["query"], rec["item"]) == 4
    assert prompt_ceiling([rec]) == {("qa", 3): (0, 1)}


def test_unknown_words_are_named():
    with pytest.raises(ValueError, match="'zzz' is not in the catalog"):
        read_query("zzz phone")
    with pytest.raises(ValueError, match="a category and a brand"):
        read_item("phone red")


def test_fact_exposure_and_needed_facts(world):
    rec = {"rationale": "query: coat need waterproof | item: coat acme nylon is waterproof | x"}
    assert fact_exposure([rec, rec]) == {("nylon", "waterproof", True): 2}
    seen = fact_exposure(world["sft"])  # gold rationales of the sft records
    teacher = fact_exposure(world["sft"], field="response")
    # gold rationales state only true facts; the teacher also writes inverted ones
    assert all((p in GOLD_KNOWLEDGE[s]) == holds for s, p, holds in seen)
    assert any((p in GOLD_KNOWLEDGE[s]) != holds for s, p, holds in teacher)
    assert seen and all(n >= 1 for n in seen.values())
    needed = [needed_fact(r) for r in world["b_eval"] if r["query_type"] == "knowledge"]
    assert any(needed)
    for r in world["b_eval"]:
        fact = needed_fact(r)
        if fact is not None:  # the gold rationale spells the fact it needs
            sign = "is" if fact[2] else "not"
            assert f"{fact[0]} {sign} {fact[1]}" in r["rationale"]
