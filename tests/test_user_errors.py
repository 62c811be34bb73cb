"""Every bad input is a one-line named error with exit status 2 (no traceback), before any
training: a table of broken model directories, data files and flags, run through the CLI."""

from __future__ import annotations

import json
import re
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


# ---------------------------------------------------------------------------------------
# Training runs: pre-flight checks and --init surprises, all caught before any compile.


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _train(capsys, stage: str, *args: str) -> tuple[int, str, str]:
    code = main(["train", stage, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sft_data(good) -> Path:
    short = RECORD | {"response": "4 kettle", "gold_response": "4 kettle"}
    long = short | {"id": "long", "item": " ".join(["kettle red steel"] * 60)}
    _write(good / "long.jsonl", [short, long])  # the long record is on line 2
    return _write(good / "sft.jsonl", [short])


@pytest.mark.parametrize(
    "stage,flags,message",
    [
        ("sft", ["paths.eval_data={d}/long.jsonl"],
         "{d}/long.jsonl:2: record 'long': prompt has <n> tokens > the largest bucket "
         "sampling.prompt_buckets[-1]=128; add a larger bucket"),
        ("sft", ["paths.train_data={d}/long.jsonl", "model.max_position_embeddings=64"],
         "{d}/long.jsonl:2: record 'long': prompt + response have <n> + 3 = <n> tokens > "
         "model.max_position_embeddings=64"),
        ("sft", ["paths.eval_data={d}/sft.jsonl", "model.max_position_embeddings=40"],
         "{d}/sft.jsonl:1: record 'r0': prompt + sampling.max_new_tokens = <n> + 64 = <n> "
         "positions > model.max_position_embeddings=40"),
        ("dpo", ["paths.train_data={d}/long.jsonl", "dpo.mine_prompts=0"],
         "{d}/long.jsonl:2: record 'long': prompt has <n> tokens > the largest bucket"),
        ("rl", ["paths.train_data={d}/long.jsonl"],
         "{d}/long.jsonl:2: record 'long': prompt has <n> tokens > the largest bucket"),
    ],
    ids=["eval prompt > bucket", "sft prompt+response > positions",
         "eval prompt+new tokens > positions", "dpo mining prompt > bucket",
         "rl prompt > bucket"],
)  # fmt: skip
def test_too_long_records_are_named_at_start_up(good, sft_data, tmp_path, capsys, stage,
                                                flags, message):  # fmt: skip
    d = str(good)
    flags = [f.format(d=d) for f in flags]
    if stage == "sft" and not any(f.startswith("paths.train_data") for f in flags):
        flags.append(f"paths.train_data={sft_data}")
    code, _, err = _train(capsys, stage, "--init", f"{d}/model", "--out", str(tmp_path), *flags)
    # <n>: a token count (it depends on the prompt template, agrl.task.format)
    pattern = re.escape(message.format(d=d)).replace("<n>", r"\d+")
    assert code == 2 and re.search(pattern, err), err
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


@pytest.mark.parametrize("field,value", [("hidden_size", 32), ("num_layers", 3),
                                         ("vocab_size", 128), ("arch", "llama")])  # fmt: skip
def test_architecture_overrides_contradicting_init_are_refused(good, sft_data, tmp_path,
                                                               capsys, field, value):  # fmt: skip
    code, _, err = _train(capsys, "sft", "--init", str(good / "model"), "--out", str(tmp_path),
                          f"paths.train_data={sft_data}", f"model.{field}={value}")  # fmt: skip
    ckpt_value = getattr(CFG, field)
    assert code == 2, err
    assert f"model.{field}={value!r} (the checkpoint has {ckpt_value!r})" in err
    assert "contradicts the architecture of --init" in err and len(err.splitlines()) == 1


def test_runtime_overrides_apply_with_init(good):
    from agrl.config import build_config
    from agrl.train.loop import init_model_config, load_policy, resolve_model

    cfg = build_config(overrides=[f"paths.init={good / 'model'}", "model.param_dtype=bfloat16",
                                  "model.compute_dtype=bfloat16"])  # fmt: skip
    params, resolved = load_policy(cfg, jax.random.key(0))
    assert resolved.model == CFG.__class__(**{**CFG.__dict__, "param_dtype": "bfloat16",
                                              "compute_dtype": "bfloat16"})  # fmt: skip
    assert params["embed"].dtype == "bfloat16"
    assert resolve_model(resolved) == resolved  # idempotent
    # given by the CLI: an explicit float32 over a bfloat16 checkpoint is applied too
    ckpt = resolved.model
    assert init_model_config(CFG, ckpt, "m", given={"compute_dtype"}).compute_dtype == "float32"
    assert init_model_config(ModelConfig(), ckpt, "m").compute_dtype == "bfloat16"  # not given
    # not given: training keeps an f32 master copy of a bf16 checkpoint (mixed precision)
    assert init_model_config(ModelConfig(), ckpt, "m").param_dtype == "float32"


def test_sft_without_init_warns_about_a_random_model(good, sft_data, tmp_path, capsys):
    code, out, err = _train(
        capsys,
        "sft",
        "--out",
        str(tmp_path),
        "model.vocab_size=16",
        f"paths.tokenizer={good / 'tok'}",
        f"paths.train_data={sft_data}",
    )
    assert code == 2 and "model.vocab_size=16 is smaller than" in err  # stops before training
    warning = err.splitlines()[0]
    assert "warning: no --init: training a randomly initialised qwen3 model of" in warning
    assert "M parameters (4 layers, hidden 256, vocab 16)" in warning
    assert "pass --init HF_DIR" in warning
    assert f"tokenizer: {good / 'tok'} (paths.tokenizer)" in out


def test_init_directory_tokenizer_is_the_default(good, sft_data, tmp_path, capsys):
    from agrl.config import build_config
    from agrl.train.loop import resolve_paths

    world = tmp_path / "world"  # a world with a tokenizer of its own: --init's still wins
    shutil.copytree(good / "tok", world / "tokenizer")
    shutil.copy(sft_data, world / "sft.jsonl")
    shutil.copy(sft_data, world / "b_eval.jsonl")
    cfg = build_config(overrides=[f"paths.init={good / 'model'}", f"paths.world={world}",
                                  f"paths.out={tmp_path / 'run'}"])  # fmt: skip
    assert resolve_paths(cfg, "sft").paths.tokenizer == str(good / "model")
    assert f"tokenizer: {good / 'model'} (the --init model's)" in capsys.readouterr().out
    cfg = build_config(overrides=[f"paths.world={world}", f"paths.out={tmp_path / 'run'}"])
    assert resolve_paths(cfg, "sft").paths.tokenizer == str(world / "tokenizer")


def test_model_directory_without_tokenizer_is_a_named_error(good, sft_data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(good / "model", model)
    (model / "tokenizer.json").unlink()
    code, _, err = _train(capsys, "sft", "--init", str(model), "--out", str(tmp_path / "run"),
                          f"paths.train_data={sft_data}")  # fmt: skip
    assert code == 2 and f"the --init model {model} has no tokenizer files" in err, err
    code = main(["eval", "--model", str(model), "--data", str(sft_data)])
    err = capsys.readouterr().err
    assert code == 2 and f"{model}: no tokenizer files (none of tokenizer.json" in err, err
    assert len(err.splitlines()) == 1
