"""Every bad input is a one-line named error with exit status 2 (no traceback), before any
training: a table of broken model directories, data files and flags, run through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import pytest

from agrl.cli import main
from agrl.config import ModelConfig
from agrl.model.hf import CheckpointError, hf_config_dict, save_pretrained
from agrl.model.params import init_params
from agrl.task.tokenizer import build_tokenizer

CFG = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=1, head_dim=8)  # fmt: skip
RECORD = {"id": "r0", "query": "red kettle", "item": "kettle red steel", "label": 4}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid model directory (config.json, model.safetensors, tokenizer) and data file."""
    d = tmp_path_factory.mktemp("good")
    tok = build_tokenizer(["query item red kettle steel <label> </label> <think> </think>"],
                          d / "tok")  # fmt: skip
    save_pretrained(init_params(CFG, jax.random.key(0)), CFG, d / "model", tokenizer=tok)
    (d / "data.jsonl").write_text(json.dumps(RECORD) + "\n")
    return d


def _broken_model(good: Path, tmp: Path, how: str) -> Path:
    d = tmp / "model"
    shutil.copytree(good / "model", d)
    cfg = json.loads((d / "config.json").read_text())
    st = d / "model.safetensors"
    if how == "config not json":
        (d / "config.json").write_text("{not json")
    elif how == "config is a list":
        (d / "config.json").write_text("[1, 2]")
    elif how == "config lacks a key":
        del cfg["hidden_size"]
        (d / "config.json").write_text(json.dumps(cfg))
    elif how == "unsupported activation":
        (d / "config.json").write_text(json.dumps(cfg | {"hidden_act": "gelu"}))
    elif how == "unsupported architecture":
        (d / "config.json").write_text(json.dumps(cfg | {"architectures": ["GPT2LMHeadModel"]}))
    elif how == "truncated safetensors":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif how == "garbage safetensors":
        st.write_bytes(b"\x00garbage" * 100)
    elif how == "no weights":
        st.unlink()
    elif how == "no tokenizer files":
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (d / f).unlink(missing_ok=True)
    elif how == "a run directory":
        run = tmp / "run"
        run.mkdir()
        shutil.move(str(d), str(run / "model"))
        return run
    return d


@pytest.mark.parametrize(
    "how,message",
    [
        ("config not json", "not valid JSON"),
        ("config is a list", "expected a JSON object, got list"),
        ("config lacks a key", "missing field 'hidden_size'"),
        ("unsupported activation", "hidden_act='gelu' is not supported"),
        ("unsupported architecture", "unsupported architecture"),
        ("truncated safetensors", "safetensors"),
        ("garbage safetensors", "not a readable safetensors file"),
        ("no weights", "no model.safetensors"),
        ("no tokenizer files", "no tokenizer files"),
        ("a run directory", "looks like a run directory, its model is"),
    ],
)
def test_broken_model_directory(good, tmp_path, capsys, how, message):
    model = _broken_model(good, tmp_path, how)
    code = main(["score", "--model", str(model), "--data", str(good / "data.jsonl"),
                 "--out", str(tmp_path / "s.jsonl")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("beta", ["0", "1.5", "x"])
def test_cumpt_beta_is_checked_before_any_work(good, tmp_path, capsys, beta):
    with pytest.raises(SystemExit) as e:
        main(["score", "--model", str(good / "model"), "--data", str(good / "data.jsonl"),
              "--out", str(tmp_path / "s.jsonl"), "--beta", beta])  # fmt: skip
    assert e.value.code == 2 and "--beta" in capsys.readouterr().err


def test_lone_surrogate_is_a_named_data_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "query": "q\\ud800", "item": "i", "label": 3}\n')
    assert main(["validate", str(bad)]) == 2
    assert "bad.jsonl:1: field 'query': not valid text" in capsys.readouterr().err


def test_exported_model_names_its_special_tokens(good):
    cfg = json.loads((good / "model" / "config.json").read_text())
    gen = json.loads((good / "model" / "generation_config.json").read_text())
    assert (cfg["eos_token_id"], cfg["bos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 0


@pytest.mark.parametrize(
    "flags", [dict(arch="qwen3", qk_norm=False), dict(arch="llama", qkv_bias=True),
              dict(arch="qwen2", qkv_bias=False), dict(arch="llama", qk_norm=True)],
)  # fmt: skip
def test_export_refuses_every_flag_combination_without_an_hf_twin(flags):
    with pytest.raises(CheckpointError, match="has no Hugging Face equivalent"):
        hf_config_dict(ModelConfig(**flags))
