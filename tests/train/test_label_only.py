"""Label-only data (query, item, label: nothing else): AGR's label-only guidance and the
zero-variance warning. The SFT -> GRPO run on such data, through the CLI, with its
start-up switch to the label_only book, a live gradient and no rule metrics, is
tests/test_your_data.py."""

import json

import numpy as np
import pytest

from agrl.task.data import load_records
from agrl.task.format import format_words, render_prompt
from agrl.task.rules import LABEL_ONLY
from agrl.task.tokenizer import build_tokenizer, label_token_ids, load_tokenizer
from agrl.train.loop import ZeroVarianceWatch
from agrl.train.pool import build_pool

COLORS, THINGS = ("red", "blue", "green"), ("kettle", "scarf", "lamp")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("label_only")
    rng = np.random.default_rng(0)
    records = []
    for n in range(24):
        qc, qt, ic, it = (str(rng.choice(x)) for x in (COLORS, THINGS, COLORS, THINGS))
        label = 1 + 2 * (qt == it) + (qc == ic)
        records.append({"id": f"r{n}", "query": f"{qc} {qt}", "item": f"{it} {ic}",
                        "label": label})  # fmt: skip
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = [render_prompt(r["query"], r["item"]) for r in records] + list(format_words(LABEL_ONLY))
    build_tokenizer(texts, d / "tok")
    return d


def test_agr_guidance_without_gold_rationale_forces_the_label_only(data):
    tok = load_tokenizer(data / "tok")
    records = load_records(data / "data.jsonl")
    with_rationale = dict(records[0], rationale="red kettle")
    pool = build_pool([*records[:3], with_rationale], tok, "label_first", LABEL_ONLY)
    labels = label_token_ids(tok)
    np.testing.assert_array_equal(pool.gold_len[:3], 1)  # level 0 and up: the label alone
    np.testing.assert_array_equal(pool.gold_ids[:3, 0], labels[pool.gold_label[:3] - 1])
    assert pool.gold_len[3] > 2  # label + rationale: guidance can force more
    assert pool.gold_verdicts.shape == (4, 0)


def test_zero_variance_warning_is_printed_once(capsys):
    watch = ZeroVarianceWatch(3)
    for step in range(10):
        watch.update(step, {"zero_variance_frac_mixed": 0.0 if step == 1 else 1.0})
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "at step 4" in err and "3 consecutive steps" in err
    quiet = ZeroVarianceWatch(0)
    for step in range(50):
        quiet.update(step, {"zero_variance_frac_mixed": 1.0})
    assert capsys.readouterr().err == ""
