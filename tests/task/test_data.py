"""User data (SPEC 3): schema validation errors name file, line and field; padding."""

import json

import numpy as np
import pytest

from agrl.task.data import (
    MAX_LINE_BYTES,
    DataError,
    encode_prompts,
    encode_responses,
    has_verdicts,
    load_records,
    pad_left,
    pad_right,
    pick_bucket,
    verdict_array,
)
from agrl.task.tokenizer import build_tokenizer
from agrl.world.splits import world_vocabulary

GOOD = {"query": "red jacket", "item": "basix coat red", "label": 4}
VERDICTS = {
    "category": "match",
    "brand": "n/a",
    "negation": "n/a",
    "need": "n/a",
    "audience": "n/a",
    "attributes": "match",
}
NO_NEED = {k: v for k, v in VERDICTS.items() if k != "need"}


def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    if isinstance(lines, bytes):
        p.write_bytes(lines)
    else:
        p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_minimal_records_get_ids_and_no_verdicts(tmp_path):
    p = _write(tmp_path, [GOOD, "", {**GOOD, "id": "x", "verdicts": VERDICTS}])
    recs = load_records(p)
    assert [r["id"] for r in recs] == ["line-1", "x"]  # the blank line 2 is not a record
    assert not has_verdicts(recs) and has_verdicts(recs[1:])
    assert verdict_array(recs[1:]).tolist() == [[1, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize(
    "line, field, problem",
    [
        ("{not json", "<json>", "invalid JSON"),
        ("[1, 2]", "<record>", "JSON object"),
        ({"query": "a", "label": 4}, "item", "missing"),
        ({**GOOD, "label": 7}, "label", "1..4"),
        ({**GOOD, "label": "4"}, "label", "integer"),
        ({**GOOD, "label": True}, "label", "integer"),
        ({**GOOD, "query": 3}, "query", "string"),
        ({**GOOD, "item": "  "}, "item", "empty"),
        ({**GOOD, "id": 5}, "id", "non-empty string"),
        ({**GOOD, "query_type": "weird"}, "query_type", "not one of"),
        ({**GOOD, "lable": 4}, "lable", "unknown field"),
        ({**GOOD, "verdicts": ["match"]}, "verdicts", "object"),
        ({**GOOD, "verdicts": {**VERDICTS, "colour": "match"}}, "verdicts.colour", "unknown"),
        ({**GOOD, "verdicts": NO_NEED}, "verdicts.need", "missing"),
        ({**GOOD, "verdicts": {**VERDICTS, "category": "n/a"}}, "verdicts.category", "not one of"),
        ({**GOOD, "verdicts": {**VERDICTS, "brand": "mismatch"}}, "verdicts", "imply label 2"),
    ],
)  # fmt: skip
def test_bad_line_names_file_line_and_field(tmp_path, line, field, problem):
    p = _write(tmp_path, [GOOD, line])
    with pytest.raises(DataError) as e:
        load_records(p)
    assert str(e.value).startswith(f"{p}:2: field '{field}': ")
    assert problem in str(e.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_records(_write(tmp_path, b""))
    with pytest.raises(DataError, match="empty"):
        load_records(_write(tmp_path, b"\n  \n"))
    with pytest.raises(DataError, match="cannot read"):
        load_records(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match=r":2: field '<line>': not valid UTF-8"):
        load_records(_write(tmp_path, json.dumps(GOOD).encode() + b'\n{"query": "\xff\xfe"}\n'))
    long = json.dumps({**GOOD, "query": "x" * MAX_LINE_BYTES})
    with pytest.raises(DataError, match=r":1: field '<line>': longer than 1048576 bytes"):
        load_records(_write(tmp_path, [long]))
    with pytest.raises(DataError, match=r":3: field 'id': duplicate id 'a' \(first on line 1\)"):
        load_records(
            _write(tmp_path, [{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}])
        )


def test_encode_and_pad(tmp_path):
    tok = build_tokenizer(world_vocabulary(), tmp_path / "tok")
    recs = [GOOD, {"query": "phone", "item": "kiwix phone black", "label": 4}]
    prompts = encode_prompts(tok, recs)
    assert all(p[0] == tok.bos_token_id for p in prompts)
    assert tok.decode(prompts[0][1:]) == "query: red jacket item: basix coat red <label>"
    resp = encode_responses(tok, ["4 </label>", "2"])
    assert [r[-1] for r in resp] == [tok.eos_token_id] * 2
    ids, mask = pad_left(prompts, 16, tok.pad_token_id)
    assert ids.shape == (2, 16) and ids.dtype == np.int32 and mask.dtype == bool
    assert mask[:, -1].all() and ids[1, -1] == prompts[1][-1]
    assert mask.sum(1).tolist() == [len(p) for p in prompts]
    rids, rmask = pad_right(resp, 4, 0)
    assert rids.tolist() == [resp[0] + [0], resp[1] + [0, 0]]
    assert rmask.tolist() == [[True] * 3 + [False], [True, True, False, False]]
    with pytest.raises(ValueError, match="> length"):
        pad_right(resp, 2, 0)


def test_pick_bucket():
    assert pick_bucket(20, (32, 48, 64)) == 32
    assert pick_bucket(32, (64, 32)) == 32
    assert pick_bucket(33, (32, 48, 64)) == 48
    with pytest.raises(ValueError, match="largest bucket 64"):
        pick_bucket(65, (32, 48, 64))
