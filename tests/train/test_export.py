"""`agrl export`: any checkpoint of a run as a Hugging Face directory that transformers
loads with agrl's logits, the chat template and prompt card, eos honoured, named errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agrl.cli import main
from agrl.config import load_config
from agrl.model import forward, positions_from_mask
from agrl.task.data import encode_prompts, load_records
from agrl.train.checkpoint import CheckpointManager
from agrl.train.stages import run_sft
from agrl.world.config import WorldConfig
from agrl.world.splits import write_world
from tests.tolerance import f32_tol

TINY = [
    "model.vocab_size=384", "model.hidden_size=32", "model.intermediate_size=64",
    "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16",
    "sampling.max_new_tokens=40", "train.ckpt_every=1", "mesh.data=1", "sft.lr=1e-2",
    "sft.steps=4", "sft.batch_size=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run stopped after 2 of 4 SFT steps: checkpoints 1 and 2, no final model."""
    world, out = tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("run")
    write_world(WorldConfig(n_sft=16, n_rl=8, n_b_eval=8, n_w_eval=8), world)
    run_sft(load_config(None, TINY + [f"paths.world={world}", f"paths.out={out}"]), stop_after=2)
    return out, world


def test_export_of_an_intermediate_step_reloads_in_transformers(run, tmp_path, capsys):
    out, world = run
    assert main(["export", "--run", str(out), "--step", "1", "--out", str(tmp_path / "m")]) == 0
    assert "exported step 1" in capsys.readouterr().out
    with CheckpointManager(out / "checkpoints") as mgr:
        assert mgr.all_steps() == [1, 2]
        params = mgr.restore_part(1, ("train", "params"))
        later = mgr.restore_part(2, ("train", "params"))
    assert np.abs(params["embed"] - later["embed"]).max() > 0  # step 1 is not the latest
    cfg = load_config(None, TINY).model
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    prompts = encode_prompts(tok, load_records(world / "b_eval.jsonl")[:3])
    L = max(map(len, prompts))
    ids = np.asarray([[0] * (L - len(p)) + p for p in prompts])
    mask = np.asarray([[False] * (L - len(p)) + [True] * len(p) for p in prompts])
    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    ref = np.asarray(forward(jax_tree(params), cfg, jids, positions_from_mask(jmask), jmask))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.float32).eval()
    with torch.no_grad():
        pos = torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0))
        got = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(int)),
                    position_ids=pos).logits  # fmt: skip
    tol = f32_tol(np.abs(ref).max(), cfg.intermediate_size, depth=cfg.num_layers + 1)
    assert np.abs(got.numpy() - ref)[mask].max() <= tol

    card = json.loads((tmp_path / "m" / "agrl_prompt.json").read_text())
    assert (
        card["order"] == "label_first" and card["prompt"] == "query: {query} item: {item} <label>"
    )
    assert card["label_token_ids"] == {"1": [4], "2": [5], "3": [6], "4": [7]}
    msg = [{"role": "user", "query": "red kettle", "item": "steel kettle"}]
    assert tok.apply_chat_template(msg, add_generation_prompt=True, tokenize=False) == (
        "<bos>query: red kettle item: steel kettle <label>"
    )


def jax_tree(params):
    import jax

    return jax.tree.map(jnp.asarray, params)


def test_generate_stops_at_the_exported_eos(run, tmp_path):
    out, _ = run
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "m")]) == 0
    d = tmp_path / "m"
    cfg, gen = (json.loads((d / f).read_text()) for f in ("config.json", "generation_config.json"))
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    assert gen["eos_token_id"] == tok.eos_token_id == cfg["eos_token_id"]
    assert None not in (cfg["bos_token_id"], cfg["pad_token_id"], gen["pad_token_id"])
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    msg = [{"role": "user", "query": "red kettle", "item": "steel kettle"}]
    inputs = tok.apply_chat_template(msg, add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)  # fmt: skip
    with torch.no_grad():  # make eos the greedy first token: its row beats the argmax row
        z = model(**inputs).logits[0, -1]
        top = int(z.argmax())
        w = model.get_output_embeddings().weight
        w[tok.eos_token_id] = w[top] * (2.0 if z[top] > 0 else 0.5)
        new = model.generate(**inputs, max_new_tokens=6, do_sample=False)[
            0, inputs["input_ids"].shape[1] :
        ]
        free = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert new.tolist() == [tok.eos_token_id]  # stopped by generation_config.json's eos
    assert free.shape[1] - inputs["input_ids"].shape[1] == 6  # without eos it runs on


def test_export_errors_are_named(run, tmp_path, capsys):
    out, _ = run

    def err(*argv):
        assert main(["export", *argv]) == 2
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1 and "Traceback" not in e
        return e

    (tmp_path / "empty").mkdir()
    assert "not a run directory with checkpoints" in err("--run", str(tmp_path / "empty"),
                                                          "--out", str(tmp_path / "x"))  # fmt: skip
    assert "available steps: [1, 2]" in err("--run", str(out), "--step", "7",
                                            "--out", str(tmp_path / "x"))  # fmt: skip
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "m")]) == 0
    assert "already holds a model" in err("--run", str(out), "--out", str(tmp_path / "m"))
    assert main(["export", "--run", str(out), "--step", "1", "--out", str(tmp_path / "m"),
                 "--force"]) == 0  # fmt: skip
    assert "is not found; give it with --tokenizer" in err(
        "--run", str(out), "--out", str(tmp_path / "y"), "--tokenizer", str(tmp_path / "nope")
    )


def test_an_f32_master_copy_is_exported_in_the_compute_dtype(tmp_path):
    """model.param_dtype=float32 over bf16 compute (the default with --init of a bf16
    checkpoint): the export is the bf16 model the policy computed with."""
    import dataclasses

    import jax

    from agrl.model import init_params, load_pretrained
    from agrl.task.tokenizer import build_tokenizer
    from agrl.train.export import export_model

    cfg = load_config(None, TINY + ["model.compute_dtype=bfloat16"])
    assert cfg.model.param_dtype == "float32"
    params = init_params(cfg.model, jax.random.key(0))
    tok = build_tokenizer(["query: a item: b <label> 1 2 3 4 </label>"], tmp_path / "tok")
    export_model(params, cfg, tok, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    got, got_cfg = load_pretrained(tmp_path / "m")
    assert got_cfg == dataclasses.replace(cfg.model, param_dtype="bfloat16")
    want = np.asarray(params["embed"].astype(jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(got["embed"], np.float32), want)
