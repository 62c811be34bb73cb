"""The simulated teacher (SPEC 3): systematic, slice-bound mistakes; lacked facts absent."""

import re
from dataclasses import replace

import numpy as np
import pytest

from agrl.task.format import parse_response
from agrl.task.rules import rule_label
from agrl.world import catalog as C
from agrl.world import generate_world
from agrl.world.config import TeacherConfig, WorldConfig
from agrl.world.teacher import draw_slices

CFG = WorldConfig(seed=5, n_sft=1500, n_rl=40, n_b_eval=40, n_w_eval=40)


@pytest.fixture(scope="module")
def sft():
    return generate_world(CFG)["sft"]


def test_slices_are_seeded_fractions():
    t = TeacherConfig()
    a, b = draw_slices(t, 0), draw_slices(t, 1)
    assert a == draw_slices(t, 0) and a != b
    assert len(a.knowledge) == round(t.knowledge_slices * len(C.substances()))
    assert draw_slices(replace(t, negation_slices=0.0), 0).negation == ()


def test_lacked_facts_appear_correctly_nowhere_in_sft(sft):
    lacked = draw_slices(CFG.teacher, CFG.seed).knowledge
    assert lacked
    seen_wrong = 0
    for r in sft:
        for s in lacked:
            for m in re.finditer(rf"(?<![\w-]){re.escape(s)} (is|not) ([\w-]+)", r["response"]):
                truth = m.group(2) in C.KNOWLEDGE[s]
                assert (m.group(1) == "is") != truth, (r["id"], m.group(0))
                seen_wrong += 1
    assert seen_wrong > 10  # the teacher does write (wrong) facts about them


def test_teacher_is_confidently_wrong_on_its_slices(sft):
    # Where a blind spot applied and changed the judgement, the written label is never gold.
    hit = [r for r in sft if set(r["meta"]["teacher_errors"]) - {"label_noise"}]
    wrong = [r for r in hit if r["meta"]["teacher_label"] != r["label"]]
    assert len(wrong) > 0.3 * len(hit)
    for r in wrong:
        assert parse_response(r["response"]).label != r["label"]
    # plain queries have no blind spot: only label noise makes the teacher wrong there
    plain = [r for r in sft if r["query_type"] == "plain"]
    acc = np.mean([r["meta"]["teacher_label"] == r["label"] for r in plain])
    assert acc > 0.9


def test_teacher_responses_parse_and_are_rule_consistent_except_noise(sft):
    for r in sft:
        p = parse_response(r["response"])
        assert p.format_ok
        consistent = int(rule_label(p.verdicts)) == p.label
        assert consistent == ("label_noise" not in r["meta"]["teacher_errors"])
        assert p.label == r["meta"]["teacher_label"]


def test_noise_never_gives_the_gold_label_and_rate_is_small(sft):
    noisy = [r for r in sft if "label_noise" in r["meta"]["teacher_errors"]]
    assert 0 < len(noisy) < 0.08 * len(sft)
    assert all(r["meta"]["teacher_label"] != r["label"] for r in noisy)


def test_zero_error_teacher_is_gold_up_to_nothing():
    t = TeacherConfig(
        negation_slices=0, alternative_slices=0, knowledge_slices=0, qa_slices=0,
        attribute_slices=0, label_noise=0,
    )  # fmt: skip
    recs = generate_world(replace(CFG, n_sft=300, teacher=t))["sft"]
    assert all(r["response"] == r["gold_response"] for r in recs)
