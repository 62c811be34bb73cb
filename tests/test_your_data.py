"""The own-data path of docs/your_data.md, end to end through the CLI, as a new user runs it:
a tiny random Qwen3 saved by transformers with a byte-level BPE tokenizer (Qwen-style
special tokens), label-only JSONL (query, item, label), then

    agrl validate -> train sft --init -> train rl (grpo) -> eval -> export -> score
    -> transformers generate with the exported chat template, stopping at eos.

Checks what a user relies on: the label-only book is chosen and said, RL gets a gradient,
eval.json has no rule metrics, the export loads in transformers and stops at eos, and
unlabelled scoring rows carry the input fields and a tier."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agrl.cli import main
from agrl.task.format import render_prompt
from agrl.train.metrics_log import read_metrics
from tests.hf_models import make_bpe_tokenizer, make_hf_model

pytestmark = pytest.mark.slow

COLORS, THINGS = ("red", "blue", "green", "black"), ("kettle", "scarf", "lamp", "boots")
SMALL = [
    "sampling.max_new_tokens=6", "sampling.prompt_buckets=24", "sampling.group_size=4",
    "train.eval_size=8", "mesh.data=1",
]  # fmt: skip


def _records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        qc, qt, ic, it = (str(rng.choice(x)) for x in (COLORS, THINGS, COLORS, THINGS))
        label = 1 + 2 * (qt == it) + (qc == ic)  # the user's own guideline
        out.append({"id": f"u{seed}-{i}", "query": f"{qc} {qt}", "item": f"{it} {ic} sale",
                    "label": label})  # fmt: skip
    return out


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_label_only_data_and_a_qwen3_checkpoint_end_to_end(tmp_path, capsys):
    train = _write(tmp_path / "train.jsonl", _records(48, 0))
    evals = _write(tmp_path / "eval.jsonl", _records(8, 1))
    unlabelled = _write(
        tmp_path / "new.jsonl",
        [{k: v for k, v in r.items() if k != "label"} for r in _records(6, 2)],
    )
    hf = tmp_path / "qwen3"
    texts = [render_prompt(r["query"], r["item"]) for r in _records(48, 0)]
    tok = make_bpe_tokenizer(hf, texts + ["1 </label>", "<label> 4 </label> <think> </think>"])
    make_hf_model("qwen3", hf, vocab_size=len(tok), max_position_embeddings=64)

    def agrl(*argv) -> str:
        assert main([str(a) for a in argv]) == 0, argv
        return capsys.readouterr().out

    assert "48 records OK" in agrl("validate", train)
    data = [f"paths.train_data={train}", f"paths.eval_data={evals}"]
    out = agrl("train", "sft", "--init", hf, "--out", tmp_path / "sft", *data, *SMALL,
               "sft.steps=6", "sft.batch_size=8", "sft.lr=3e-3")  # fmt: skip
    assert "task.rule_book=label_only" in out  # the switch is said, not silent
    assert "0 `response` fields, 48 gold responses" in out
    saved = json.loads((tmp_path / "sft" / "config.json").read_text())
    assert saved["task"]["rule_book"] == "label_only"  # recorded with the run
    assert f"tokenizer: {hf}" in out  # the checkpoint's own tokenizer, by default

    out = agrl("train", "rl", "--init", tmp_path / "sft" / "model", "--out", tmp_path / "rl",
               *data, *SMALL, "train.method=grpo", "train.steps=2",
               "train.prompts_per_step=4", "train.eval_every=0", "train.ckpt_every=1",
               "optim.lr=1e-3")  # fmt: skip
    assert "reward: r_label only" in out
    rows = read_metrics(tmp_path / "rl")
    assert [r["step"] for r in rows] == [0, 1]
    assert max(r["grad_norm"] for r in rows) > 0  # the model is updated on label rewards
    for r in rows:  # label-only: no step or consistency reward is reported as a number
        assert "reward/r_label" in r and "reward/r_step" not in r and "reward/r_cons" not in r
    metrics = json.loads((tmp_path / "rl" / "eval.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert "rule_adherence" not in metrics and "step_accuracy" not in metrics

    agrl("eval", "--model", tmp_path / "rl" / "model", "--data", evals,
         "--out", tmp_path / "eval.json")  # fmt: skip
    assert "rule_adherence" not in json.loads((tmp_path / "eval.json").read_text())

    exported = tmp_path / "served"
    agrl("export", "--run", tmp_path / "rl", "--step", "1", "--out", exported)
    card = json.loads((exported / "agrl_prompt.json").read_text())
    assert card["rule_book"] == "label_only" and card["response"].startswith("<L> </label>")

    out = agrl("score", "--model", exported, "--data", unlabelled, "--out", tmp_path / "s.jsonl")
    assert "tier" in out
    scored = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(scored) == 6
    assert {"id", "query", "item", "p1", "p4", "tier"} <= set(scored[0])

    served = AutoTokenizer.from_pretrained(str(exported), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    messages = [{"role": "user", "query": "red kettle", "item": "kettle red sale"}]
    text = served.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == render_prompt("red kettle", "kettle red sale")
    ids = torch.tensor([served.encode(text, add_special_tokens=False)])
    assert model.generation_config.eos_token_id == served.eos_token_id is not None
    gen = model.generate(ids, max_new_tokens=8, do_sample=False)
    new = gen[0, ids.shape[1] :].tolist()
    if served.eos_token_id in new:  # generation stops at eos: nothing after it
        assert new.index(served.eos_token_id) == len(new) - 1
