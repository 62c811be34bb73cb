"""Response format (SPEC 2): render/parse round trips, tolerance, parser never raises."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agrl.task.format import (
    FORMAT_WORDS,
    LABEL_OPEN,
    THINK_OPEN,
    assemble_response,
    hint_verdict_count,
    parse_batch,
    parse_response,
    render_hint,
    render_prompt,
    render_response,
)
from agrl.task.rules import CODE_OF_NAME, DIMS, MISSING, R
from agrl.world import WorldConfig, generate_world

GOLD = render_response(2, [1, 1, 2, 0, 0, 0], "jacket not leather", "jacket basix has leather")


@pytest.fixture(scope="module")
def records():
    world = generate_world(WorldConfig(seed=1, n_sft=200, n_rl=100, n_b_eval=40, n_w_eval=40))
    return [r for recs in world.values() for r in recs]


def test_example_text():
    assert GOLD == (
        "2 </label> <think> query: jacket not leather | item: jacket basix has leather | "
        "category=match brand=match negation=mismatch need=n/a audience=n/a attributes=n/a "
        "| rule=negation -> 2 </think>"
    )
    assert (
        render_prompt("red  jacket", "basix\tcoat") == "query: red jacket item: basix coat <label>"
    )
    assert render_prompt("a", "b", "think_first").endswith(THINK_OPEN)


@pytest.mark.parametrize("order", ["label_first", "think_first"])
def test_round_trip_on_every_record(records, order):
    for r in records:
        v = [CODE_OF_NAME[r["verdicts"][d]] for d in DIMS]
        text = render_response(r["label"], v, "q", "i", order)
        p = parse_response(text, order)
        assert p.format_ok and p.label == r["label"]
        np.testing.assert_array_equal(p.verdicts, v)
        assert render_prompt(r["query"], r["item"], order).endswith(
            LABEL_OPEN if order == "label_first" else THINK_OPEN
        )


def test_assemble_from_stored_rationale(records):
    for r in records:
        assert assemble_response(r["label"], r["rationale"]) == r["gold_response"]
        p = parse_response(
            assemble_response(r["label"], r["rationale"], "think_first"), "think_first"
        )
        assert p.format_ok and p.label == r["label"]


def test_label_first_token_is_the_label(records):
    for r in records:
        assert r["gold_response"].split(" ")[0] == str(r["label"])
        assert r["gold_response"].endswith("</think>")


def test_tolerant_spacing_and_end_markers():
    squashed = GOLD.replace(" </label> ", "</label>").replace(" </think>", "</think>")
    for text in (squashed, "<label> " + GOLD, GOLD + " <eos>", GOLD + "<|im_end|>\n"):
        p = parse_response(text)
        assert p.format_ok and p.label == 2, text
    think = render_response(3, [1, 4, 0, 0, 0, 0], "q", "i", "think_first")
    assert parse_response("<think> " + think, "think_first").format_ok


@pytest.mark.parametrize(
    "text, label, ok",
    [
        ("", 0, False),
        ("2", 2, False),  # label only: readable, not well formed
        ("7 </label> <think> </think>", 0, False),
        (GOLD.replace("need=n/a", ""), 2, False),  # a missing dim
        (GOLD.replace("need=n/a", "need=accessory"), 2, False),  # code not allowed there
        (GOLD.replace("brand=match", "brand=match brand=n/a"), 2, False),  # stated twice
        (GOLD + " extra words", 2, False),  # trailing text after the last marker
        (GOLD.replace("</think>", ""), 2, False),
    ],
)
def test_broken_responses(text, label, ok):
    p = parse_response(text)
    assert (p.label, p.format_ok) == (label, ok)
    assert p.verdicts.shape == (R,) and p.verdicts.dtype == np.int32


def test_missing_dim_reads_as_missing():
    p = parse_response(GOLD.replace("audience=n/a", ""))
    assert p.verdicts[DIMS.index("audience")] == MISSING
    assert p.verdicts[DIMS.index("negation")] == CODE_OF_NAME["mismatch"]


def test_parse_batch_shapes():
    labels, verdicts, ok = parse_batch([GOLD, "junk", GOLD.replace("2", "3", 1)])
    assert labels.tolist() == [2, 0, 3] and ok.tolist() == [True, False, True]
    assert verdicts.shape == (3, R) and verdicts.dtype == np.int32 and labels.dtype == np.int32
    labels, verdicts, ok = parse_batch([])
    assert labels.shape == (0,) and verdicts.shape == (0, R) and ok.shape == (0,)


def test_render_rejects_bad_label_and_order():
    with pytest.raises(ValueError, match="label"):
        render_response(5, [1] * R, "q", "i")
    with pytest.raises(ValueError, match="order"):
        render_prompt("q", "i", "sideways")


_corruption = st.lists(
    st.tuples(st.integers(0, len(GOLD)), st.integers(0, 8), st.text(max_size=6)), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(["label_first", "think_first"]))
def test_parser_never_raises_on_random_text(text, order):
    p = parse_response(text, order)
    assert p.label in (0, 1, 2, 3, 4) and p.verdicts.shape == (R,)
    assert set(p.verdicts.tolist()) <= {MISSING, 0, 1, 2, 3, 4}


@settings(max_examples=300, deadline=None)
@given(_corruption, st.sampled_from(["label_first", "think_first"]))
def test_parser_never_raises_on_corrupted_responses(edits, order):
    text = (
        GOLD if order == "label_first" else render_response(2, [1, 1, 2, 0, 0, 0], "q", "i", order)
    )
    for pos, cut, insert in edits:
        text = text[:pos] + insert + text[pos + cut :]
    p = parse_response(text, order)
    assert p.label in (0, 1, 2, 3, 4)
    if p.format_ok:
        assert (p.verdicts != MISSING).all()


def test_hint_verdict_count_rounds_half_up_like_the_prefix_length():
    # round(level / max_level * R), half up: R = 6, max_level 3 -> 0, 2, 4, 6; max_level 4
    # -> 0, 1.5 -> 2, 3, 4.5 -> 5, 6; max_level 0 -> none
    assert [hint_verdict_count(lv, 3, 6) for lv in range(4)] == [0, 2, 4, 6]
    assert [hint_verdict_count(lv, 4, 6) for lv in range(5)] == [0, 2, 3, 5, 6]
    assert hint_verdict_count(0, 0, 6) == 0
    for max_level in range(1, 6):  # the reference: floor(level * R / max_level + 1/2)
        for lv in range(max_level + 1):
            assert hint_verdict_count(lv, max_level, R) == int(np.floor(lv * R / max_level + 0.5))


def test_hint_text_and_hinted_prompt(records):
    r = records[0]
    v = np.asarray([CODE_OF_NAME[r["verdicts"][d]] for d in DIMS])
    rule = r["rationale"].split("rule=")[1].split()[0]
    assert render_hint(r["label"], v, 0) == f"<think> rule={rule} -> {r['label']} </think>"
    full = render_hint(r["label"], v, R)
    stated = " ".join(f"{d}={r['verdicts'][d]}" for d in DIMS)
    assert full == f"<think> {stated} rule={rule} -> {r['label']} </think>"
    assert render_hint(2, None, 3) == "<think> -> 2 </think>"  # no verdicts: the label only
    assert render_hint(2, np.full(R, MISSING), 3) == "<think> -> 2 </think>"
    prompt = render_prompt(r["query"], r["item"], "label_first", full)
    assert prompt == f"{render_prompt(r['query'], r['item'])[: -len(' <label>')]} {full} <label>"
    # every hint word is a format word, so the world's word-level tokenizer knows it
    assert set(full.split()) <= set(FORMAT_WORDS)
