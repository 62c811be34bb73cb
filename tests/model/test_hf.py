"""HF import/export: logits parity with transformers on a left-padded batch, round trip, errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from agrl.model import (
    CheckpointError,
    config_from_hf,
    forward,
    load_pretrained,
    positions_from_mask,
    save_pretrained,
)
from agrl.model.presets import PRESETS
from tests.hf_models import make_hf_model
from tests.tolerance import f32_tol

CASES = [("llama", False), ("qwen2", True), ("qwen3", True), ("qwen3", False)]


def left_padded_batch(vocab: int, seed: int = 0):
    """[3, 12] ids with 0, 4 and 9 padding tokens on the left."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(3, 12))
    mask = np.ones((3, 12), bool)
    for row, pad in enumerate((0, 4, 9)):
        mask[row, :pad] = False
        ids[row, :pad] = 0
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(pos),
        )
    return out.logits.float().numpy()


def agrl_logits(params, cfg, ids, mask) -> np.ndarray:
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    return np.asarray(forward(params, cfg, ids, positions_from_mask(mask), mask))


@pytest.mark.parametrize("arch,tie", CASES)
def test_logits_match_transformers_left_padded(tmp_path, arch, tie):
    model = make_hf_model(arch, tmp_path, tie=tie)
    params, cfg = load_pretrained(tmp_path)
    assert cfg.arch == arch and cfg.tie_embeddings == tie
    assert cfg.qkv_bias == (arch == "qwen2") and cfg.qk_norm == (arch == "qwen3")
    ids, mask = left_padded_batch(cfg.vocab_size)
    ref, got = torch_logits(model, ids, mask), agrl_logits(params, cfg, ids, mask)
    tol = f32_tol(np.abs(ref).max(), cfg.intermediate_size, depth=cfg.num_layers + 1)
    assert np.abs(ref - got)[mask].max() <= tol
    assert np.abs(ref).max() > 0.5  # the logits are not trivially near zero


@pytest.mark.parametrize("arch,tie", CASES)
def test_export_reloads_in_transformers(tmp_path, arch, tie):
    make_hf_model(arch, tmp_path / "src", tie=tie)
    params, cfg = load_pretrained(tmp_path / "src")
    # A tiny shard limit forces the sharded-index layout on export.
    save_pretrained(params, cfg, tmp_path / "out", max_shard_bytes=20_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids, mask = left_padded_batch(cfg.vocab_size, seed=1)
    ref = agrl_logits(params, cfg, ids, mask)
    tol = f32_tol(np.abs(ref).max(), cfg.intermediate_size, depth=cfg.num_layers + 1)
    assert np.abs(torch_logits(reloaded, ids, mask) - ref)[mask].max() <= tol
    params2, cfg2 = load_pretrained(tmp_path / "out")  # the sharded index loads back too
    assert cfg2 == cfg
    assert np.abs(agrl_logits(params2, cfg2, ids, mask) - ref)[mask].max() == 0.0


def test_bf16_round_trip(tmp_path):
    make_hf_model("qwen3", tmp_path / "src")
    params, cfg = load_pretrained(tmp_path / "src", param_dtype="bfloat16")
    assert params["embed"].dtype == jnp.bfloat16
    save_pretrained(params, cfg, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    params2, _ = load_pretrained(tmp_path / "out")
    assert params2["embed"].dtype == jnp.bfloat16
    assert bool(jnp.all(params2["embed"] == params["embed"]))


def _rewrite(d, fn):
    tensors = load_file(d / "model.safetensors")
    fn(tensors)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    make_hf_model("qwen3", tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj"):
        load_pretrained(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    make_hf_model("qwen2", tmp_path)
    name = "model.layers.0.self_attn.k_proj.bias"
    _rewrite(tmp_path, lambda t: t.__setitem__(name, np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"k_proj\.bias'.*shape \(3,\), expected \(32,\)"):
        load_pretrained(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    make_hf_model("llama", tmp_path)
    name = "model.layers.0.self_attn.o_proj.bias"
    _rewrite(tmp_path, lambda t: t.__setitem__(name, np.zeros(64, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn"):
        load_pretrained(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel"):
        config_from_hf(tmp_path)


def test_presets_round_trip_through_hf_config():
    for name, cfg in PRESETS.items():
        from agrl.model.hf import hf_config_dict

        back = config_from_hf(hf_config_dict(cfg))
        assert back == cfg, name
