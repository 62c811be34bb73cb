"""Rule books as data (docs/rulebook.md): the shipped world book equals the historical
engine, a user's book drives render/parse and data validation, bad TOML is a named error."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agrl.config import ConfigError, TaskConfig
from agrl.task.data import DataError, load_records
from agrl.task.format import (
    assemble_response,
    check_order,
    format_words,
    gold_text,
    parse_response,
    render_response,
)
from agrl.task.rules import (
    LABEL_ONLY,
    MISSING,
    WORLD,
    RuleBookError,
    deciding_rule,
    load_rule_book,
    rule_label,
)

# ---------------------------------------------------------------------------------------
# The world book reproduces the engine as it was written before rule books were data.

OLD_NA, OLD_MATCH, OLD_MISMATCH, OLD_ACCESSORY, OLD_PARTIAL = 0, 1, 2, 3, 4
OLD_DIMS = ("category", "brand", "negation", "need", "audience", "attributes")


def reference_label(v: np.ndarray) -> np.ndarray:
    """The pre-rule-book engine, verbatim in numpy: [N, 6] -> [N]."""
    cat, brand, attr = v[:, 0], v[:, 1], v[:, 5]
    is_1 = cat == OLD_MISMATCH
    is_2 = (cat == OLD_ACCESSORY) | (brand == OLD_MISMATCH)
    for i in (2, 3, 4):
        is_2 = is_2 | (v[:, i] == OLD_MISMATCH)
    is_3 = (attr == OLD_MISMATCH) | (attr == OLD_PARTIAL) | (brand == OLD_PARTIAL)
    return np.where(is_1, 1, np.where(is_2, 2, np.where(is_3, 3, 4)))


def reference_rule(v) -> str:
    d = dict(zip(OLD_DIMS, (int(x) for x in v), strict=True))
    if d["category"] == OLD_MISMATCH:
        return "category"
    if d["category"] == OLD_ACCESSORY:
        return "accessory"
    for name in ("brand", "negation", "need", "audience"):
        if d[name] == OLD_MISMATCH:
            return name
    if d["attributes"] in (OLD_MISMATCH, OLD_PARTIAL):
        return "attributes"
    return "alternative" if d["brand"] == OLD_PARTIAL else "all-match"


ALL_CODES = (MISSING, OLD_NA, OLD_MATCH, OLD_MISMATCH, OLD_ACCESSORY, OLD_PARTIAL)
ALL_ROWS = np.asarray(list(itertools.product(ALL_CODES, repeat=6)), dtype=np.int32)


def test_world_toml_reproduces_the_engine_on_every_verdict_combination():
    book = load_rule_book("world")
    assert book is WORLD and book.dims == OLD_DIMS
    assert book.code_names == ("n/a", "match", "mismatch", "accessory", "partial")
    want = reference_label(ALL_ROWS)
    np.testing.assert_array_equal(rule_label(ALL_ROWS, np, book), want)
    dev = jax.jit(lambda v: rule_label(v, xp=jnp, book=book))(jnp.asarray(ALL_ROWS))
    np.testing.assert_array_equal(np.asarray(dev), want)
    for row in ALL_ROWS[::7]:  # every 7th of 46656 rows: deciding rule as before
        assert deciding_rule(row, book) == reference_rule(row)


def test_rule_book_is_hashable_and_a_valid_static_argument():
    f = jax.jit(lambda v, book: rule_label(v, xp=jnp, book=book), static_argnames="book")
    assert int(f(jnp.asarray([OLD_MISMATCH, 0, 0, 0, 0, 0]), book=WORLD)) == 1
    assert hash(WORLD) == hash(load_rule_book("world")) and len({WORLD, LABEL_ONLY}) == 2


# ---------------------------------------------------------------------------------------
# A user's book unlike the world's.

APPAREL = """
name = "apparel"
default_label = 4
default_rule = "fits"

[[dimension]]
name = "fit"
values = ["match", "tight", "loose"]

[[dimension]]
name = "color"
values = ["n/a", "match", "mismatch", "accessory"]

[[rule]]
name = "too-tight"
label = 1
when = ["fit=tight"]

[[rule]]
name = "accessory"
label = 3
when = ["color=accessory"]

[[rule]]
name = "off"
label = 2
when = ["fit=loose", "color=mismatch"]
"""


@pytest.fixture
def apparel(tmp_path):
    path = tmp_path / "apparel.toml"
    path.write_text(APPAREL)
    return load_rule_book(str(path))


def test_user_book_codes_and_rules(apparel):
    assert apparel.dims == ("fit", "color") and apparel.R == 2
    # n/a is 0, the others in order of first appearance
    assert apparel.code_names == ("n/a", "match", "tight", "loose", "mismatch", "accessory")
    code = apparel.code_of
    rows = np.asarray([
        [code("match"), code("n/a")],  # nothing fires -> default 4
        [code("tight"), code("accessory")],  # first hit wins: 1
        [code("match"), code("accessory")],  # 3
        [code("loose"), code("match")],  # any-of: 2
        [code("match"), code("mismatch")],  # 2
    ], np.int32)  # fmt: skip
    np.testing.assert_array_equal(rule_label(rows, np, apparel), [4, 1, 3, 2, 2])
    jitted = jax.jit(lambda v: rule_label(v, xp=jnp, book=apparel))(jnp.asarray(rows))
    np.testing.assert_array_equal(np.asarray(jitted), [4, 1, 3, 2, 2])
    assert [deciding_rule(r, apparel) for r in rows] == ["fits", "too-tight", "accessory",
                                                         "off", "off"]  # fmt: skip
    words = format_words(apparel)
    assert {"fit=tight", "color=accessory", "rule=fits", "rule=too-tight"} <= set(words)
    assert "category=match" not in words


@pytest.mark.parametrize("order", ["label_first", "think_first"])
def test_user_book_render_parse_round_trip(apparel, order):
    v = np.asarray([apparel.code_of("match"), apparel.code_of("accessory")], np.int32)
    text = render_response(3, v, "red scarf", "scarf red wool", order, apparel)
    assert "fit=match color=accessory | rule=accessory -> 3" in text
    p = parse_response(text + " <eos>", order, apparel)
    assert p.format_ok and p.label == 3
    np.testing.assert_array_equal(p.verdicts, v)
    # the world's parser does not accept it, nor this book a world response
    assert not parse_response(text, order, WORLD).format_ok
    world_text = render_response(4, [1, 0, 0, 0, 0, 0], "q", "i", order)
    assert not parse_response(world_text, order, apparel).format_ok
    bad = text.replace("color=accessory", "color=tight")  # a value the dim does not take
    assert not parse_response(bad, order, apparel).format_ok


def _write(tmp_path, records):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_data_validation_follows_the_book(apparel, tmp_path):
    rec = {"query": "red scarf", "item": "scarf red", "label": 3,
           "verdicts": {"fit": "match", "color": "accessory"}}  # fmt: skip
    (got,) = load_records(_write(tmp_path, [rec]), apparel)
    assert got["verdicts"] == {"fit": "match", "color": "accessory"}
    with pytest.raises(DataError, match="verdicts.fit.*unknown dimension"):
        load_records(_write(tmp_path, [rec]))  # the world book knows no `fit`
    cases = [
        ({"fit": "match", "color": "tight"}, "verdicts.color.*'tight' is not one of"),
        ({"fit": "match"}, "verdicts.color.*missing"),
        ({"fit": "tight", "color": "n/a"}, "imply label 1 by the rule engine, but label=3"),
    ]
    for verdicts, message in cases:
        with pytest.raises(DataError, match=message):
            load_records(_write(tmp_path, [rec | {"verdicts": verdicts}]), apparel)


# ---------------------------------------------------------------------------------------
# The label-only book.


def test_label_only_book_renders_and_parses_the_label_alone():
    book = load_rule_book("label_only")
    assert book is LABEL_ONLY and not book.has_rules and book.R == 0
    text = render_response(2, [], "", "", "label_first", book)
    assert text == "2 </label>"
    p = parse_response(text + " <eos>", "label_first", book)
    assert p.format_ok and p.label == 2 and p.verdicts.shape == (0,)
    rationale = assemble_response(3, "free text here")  # a record's rationale is allowed
    assert parse_response(rationale, "label_first", book).format_ok
    assert not parse_response("2 junk", "label_first", book).format_ok
    assert parse_response("2 junk", "label_first", book).label == 2
    assert gold_text({"label": 1}, "label_first", book) == "1 </label>"
    assert gold_text({"label": 1, "rationale": "r"}).startswith("1 </label> <think> r")
    with pytest.raises(ValueError, match="think_first.*label_first"):
        check_order(book, "think_first")
    check_order(WORLD, "think_first")


# ---------------------------------------------------------------------------------------
# Named errors.


@pytest.mark.parametrize(
    "edit, field, message",
    [
        (('when = ["fit=loose"', 'when = ["size=loose"'), "rule[2].when", "unknown dimension"),
        (('when = ["fit=loose"', 'when = ["fit=huge"'), "rule[2].when", "fit takes"),
        (("label = 3", "label = 5"), "rule[1].label", "must be a label 1..4"),
        (('name = "color"', 'name = "fit"'), "dimension[1].name", "duplicate dimension"),
        (('name = "off"', 'name = "accessory"'), "rule[2].name", "duplicate rule"),
        (('name = "off"', 'name = "fits"'), "default_rule", "also a rule's name"),
        (('"tight", "loose"', '"tight", "Loose X"'), "dimension[0].values", "lowercase"),
        (('[[rule]]\nname = "off"', '[[rule]]\nnmae = "off"'), "rule[2].nmae", "unknown"),
        (("default_label = 4", "default_label = 0"), "default_label", "1..4"),
        (("default_label = 4", "default_label = [4"), "<toml>", "invalid TOML"),
    ],
)
def test_bad_rule_book_is_a_named_error(tmp_path, edit, field, message):
    old, new = edit
    assert old in APPAREL
    path = tmp_path / "bad.toml"
    path.write_text(APPAREL.replace(old, new, 1))
    with pytest.raises(RuleBookError, match=message) as e:
        load_rule_book(str(path))
    assert e.value.field == field and str(path) in str(e.value)


def test_missing_rule_book_file_and_config_check(tmp_path):
    with pytest.raises(RuleBookError, match="<file>.*cannot read"):
        load_rule_book(str(tmp_path / "nope.toml"))
    assert TaskConfig().rule_book == "world"
    with pytest.raises(ConfigError, match="task.rule_book"):
        TaskConfig(rule_book="wrold")
