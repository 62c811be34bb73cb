"""Label-only data (query, item, label: nothing else) through SFT and GRPO: the run switches
to the label_only rule book, the reward is the label and has variance (a gradient), rule
metrics are absent; AGR's label-only guidance; the zero-variance warning."""

import json

import numpy as np
import pytest

from agrl.config import load_config, method_preset
from agrl.task.data import load_records
from agrl.task.format import format_words, render_prompt
from agrl.task.rules import LABEL_ONLY
from agrl.task.tokenizer import build_tokenizer, label_token_ids, load_tokenizer
from agrl.train.loop import ZeroVarianceWatch
from agrl.train.metrics_log import read_metrics
from agrl.train.rollout import build_pool
from agrl.train.stages import run_rl, run_sft

pytestmark = pytest.mark.slow

TINY = [
    "model.vocab_size=64", "model.hidden_size=32", "model.intermediate_size=64",
    "model.num_layers=1", "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
    "sampling.max_new_tokens=4", "sampling.prompt_buckets=16", "sampling.group_size=4",
    "sampling.temperature=1.0", "mesh.data=1", "train.eval_every=100", "train.eval_size=4",
]  # fmt: skip
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


def test_sft_then_grpo_on_label_only_records(data, tmp_path, capsys):
    paths = [f"paths.tokenizer={data / 'tok'}", f"paths.train_data={data / 'data.jsonl'}"]
    sft = run_sft(load_config(None, TINY + paths + [
        f"paths.out={tmp_path / 'sft'}", "sft.steps=8", "sft.lr=1e-2", "sft.batch_size=8",
    ]))  # fmt: skip
    out = capsys.readouterr().out
    assert "uses task.rule_book=label_only" in out and "label only" in out
    assert "0 `response` fields, 24 gold responses" in out
    saved = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert saved["task"]["rule_book"] == "label_only"

    preset = [f"{k}={v}" for k, v in method_preset("grpo").items()]
    cfg = load_config(None, preset + TINY + paths + [
        f"paths.init={sft['model']}", f"paths.out={tmp_path / 'rl'}",
        f"paths.eval_data={data / 'data.jsonl'}", "train.method=grpo", "train.steps=2",
        "train.prompts_per_step=4", "train.ckpt_every=2", "optim.lr=1e-3",
    ])  # fmt: skip
    summary = run_rl(cfg)
    out = capsys.readouterr().out
    assert "reward: r_label only" in out and "guidance: off" in out
    rows = read_metrics(tmp_path / "rl")
    assert [r["step"] for r in rows] == [0, 1]
    assert max(r["grad_norm"] for r in rows) > 0  # label rewards vary: a gradient flows
    for r in rows:
        assert "reward/r_label" in r and "reward/r_step" not in r and "reward/r_cons" not in r
    ev = json.loads((tmp_path / "rl" / "eval.json").read_text())
    assert summary["eval"]["n"] == 4 and "accuracy" in ev
    assert "rule_adherence" not in ev and "step_accuracy" not in ev


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
