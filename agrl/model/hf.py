"""Hugging Face import/export, offline (SPEC 9).

A model directory is a Hugging Face checkpoint: config.json, model.safetensors (or
model-0000i-of-0000n.safetensors + model.safetensors.index.json) and, side by side, the
tokenizer files.  `load_pretrained(dir) -> (params, cfg)`; `save_pretrained(params, cfg, dir,
tokenizer=None)` writes a directory that `transformers.AutoModelForCausalLM.from_pretrained`
loads.  Torch Linear weights are [out, in]; agrl stores x @ W weights, so they are transposed
and split into heads on import (and back on export).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from agrl.config import ModelConfig
from agrl.model.params import Params, param_shapes

ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
INDEX = "model.safetensors.index.json"
REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
SUPPORTED_ACTS = ("silu",)  # SwiGLU: silu(x W_gate) * x W_up


class CheckpointError(ValueError):
    """A checkpoint that agrl cannot read; the message names the file, tensor or field."""


def config_from_hf(src: str | Path | dict[str, Any]) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json (a directory, the file, or its dict)."""
    if isinstance(src, dict):
        c, where = src, "config.json"
    else:
        path = Path(src)
        if path.is_dir() and not (path / "config.json").exists() and (path / "model").is_dir():
            raise CheckpointError(
                f"{path}: no config.json; this looks like a run directory, its model is "
                f"{path / 'model'}"
            )
        path = path / "config.json" if path.is_dir() else path
        where = str(path)
        try:
            c = json.loads(path.read_text())
        except FileNotFoundError:
            msg = f"{path}: not found (a model directory holds config.json)"
            raise CheckpointError(msg) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(c, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(c).__name__}")
    archs = c.get("architectures") or []
    arch = ARCHS.get(archs[0]) if archs else c.get("model_type")
    if arch not in ARCHS.values():
        raise CheckpointError(
            f"{where}: unsupported architecture {archs or c.get('model_type')!r}; "
            f"supported: {sorted(ARCHS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in c]
    if missing:
        raise CheckpointError(f"{where}: missing field {missing[0]!r}")
    act = c.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTS:
        raise CheckpointError(
            f"{where}: hidden_act={act!r} is not supported (supported: {list(SUPPORTED_ACTS)})"
        )
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"config.json: rope type {rope_type!r} is not supported")
    if c.get("use_sliding_window"):
        raise CheckpointError("config.json: use_sliding_window=true is not supported")
    if c.get("mlp_bias"):
        raise CheckpointError("config.json: mlp_bias=true is not supported")
    if arch == "llama" and c.get("attention_bias"):
        # Llama's attention_bias also adds an o_proj bias, which this decoder does not have.
        raise CheckpointError("config.json: llama attention_bias=true is not supported")
    heads = c["num_attention_heads"]
    dtype = c.get("dtype") or c.get("torch_dtype") or "float32"
    dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    return ModelConfig(
        arch=arch,
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
        param_dtype=dtype,
        compute_dtype=dtype,
    )


def _hf_names(cfg: ModelConfig) -> dict[str, str]:
    """agrl layer key -> HF name template (with {i} for the layer)."""
    a, m = "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."
    names = {
        "attn_norm": "model.layers.{i}.input_layernorm.weight",
        "wq": a + "q_proj.weight",
        "wk": a + "k_proj.weight",
        "wv": a + "v_proj.weight",
        "wo": a + "o_proj.weight",
        "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
        "w_gate": m + "gate_proj.weight",
        "w_up": m + "up_proj.weight",
        "w_down": m + "down_proj.weight",
    }
    if cfg.qkv_bias:
        names |= {"bq": a + "q_proj.bias", "bk": a + "k_proj.bias", "bv": a + "v_proj.bias"}
    if cfg.qk_norm:
        names |= {"q_norm": a + "q_norm.weight", "k_norm": a + "k_norm.weight"}
    return names


def _to_agrl(key: str, t: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> agrl layout of one layer (shape excludes the [L] axis)."""
    if key in ("wq", "wk", "wv", "w_gate", "w_up", "w_down"):
        t = t.T  # [out, in] -> [in, out]
    elif key == "wo":
        t = t.T  # [D, H*Hd] -> [H*Hd, D]
    return t.reshape(shape)


def _to_hf(key: str, t: np.ndarray) -> np.ndarray:
    """agrl layer tensor (no [L] axis) -> HF layout."""
    if key in ("wq", "wk", "wv"):
        return t.reshape(t.shape[0], -1).T
    if key == "wo":
        return t.reshape(-1, t.shape[-1]).T
    if key in ("w_gate", "w_up", "w_down"):
        return t.T
    if key in ("bq", "bk", "bv"):
        return t.reshape(-1)
    return t


def _hf_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return _to_hf(key, np.zeros(shape, np.int8)).shape


@contextlib.contextmanager
def _open(path: Path):
    """safe_open with a named error for a file that is not a safetensors file."""
    try:
        f = safe_open(path, framework="flax")
    except Exception as e:  # safetensors raises its own SafetensorError for garbage
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    with f:
        yield f


class _Reader:
    """Lazy access to the tensors of a single or sharded safetensors checkpoint."""

    def __init__(self, d: Path):
        if (d / INDEX).exists():
            try:
                wmap = json.loads((d / INDEX).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{d / INDEX}: not a safetensors index ({e})") from None
            self.where = {k: d / f for k, f in wmap.items()}
        elif (d / "model.safetensors").exists():
            with _open(d / "model.safetensors") as f:
                self.where = {k: d / "model.safetensors" for k in f.keys()}  # noqa: SIM118
        else:
            raise CheckpointError(f"{d}: no model.safetensors or {INDEX}")
        self.dir = d
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.where:
            raise CheckpointError(f"{self.dir}: missing tensor {name!r}")
        self.used.add(name)
        with _open(self.where[name]) as f:
            if name not in f.keys():  # noqa: SIM118
                raise CheckpointError(f"{self.where[name]}: missing tensor {name!r}")
            try:
                t = f.get_tensor(name)
            except Exception as e:  # a truncated file fails only when the tensor is read
                msg = f"{self.where[name]}: tensor {name!r} unreadable: {e}"
                raise CheckpointError(msg) from None

        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.dir}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}"
            )
        return np.asarray(t)


def load_pretrained(model_dir: str | Path, param_dtype: str | None = None):
    """(params, cfg) from a Hugging Face directory; param_dtype overrides config.json's."""
    d = Path(model_dir)
    cfg = config_from_hf(d)
    if param_dtype is not None:
        cfg = dataclasses.replace(cfg, param_dtype=param_dtype, compute_dtype=param_dtype)
    shapes = param_shapes(cfg)
    r = _Reader(d)
    dt = jnp.dtype(cfg.param_dtype)
    load = lambda name, shape: jnp.asarray(r.get(name, shape), dt)  # noqa: E731
    layers = {}
    for key, tmpl in _hf_names(cfg).items():
        shape = shapes["layers"][key][1:]
        per = [
            _to_agrl(key, r.get(tmpl.format(i=i), _hf_shape(key, shape)), shape)
            for i in range(cfg.num_layers)
        ]
        layers[key] = jnp.asarray(np.stack(per), dt)
    params = {
        "embed": load("model.embed_tokens.weight", shapes["embed"]),
        "layers": layers,
        "final_norm": load("model.norm.weight", shapes["final_norm"]),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = jnp.asarray(r.get("lm_head.weight", shapes["lm_head"][::-1]).T, dt)
    unused = sorted(set(r.where) - r.used - {"lm_head.weight"})
    if unused:
        raise CheckpointError(f"{d}: unexpected tensor {unused[0]!r} ({len(unused)} unused)")
    return params, cfg


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """config.json contents for `cfg`, built by the transformers config class of its arch."""
    from transformers import AutoConfig

    kw = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        dtype=cfg.param_dtype,
    )
    if cfg.qkv_bias != (cfg.arch == "qwen2") or cfg.qk_norm != (cfg.arch == "qwen3"):
        raise CheckpointError(
            f"arch={cfg.arch!r} with qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm} has no "
            "Hugging Face equivalent"
        )
    hf = AutoConfig.for_model(cfg.arch, **kw)
    hf.architectures = [k for k, v in ARCHS.items() if v == cfg.arch]
    return hf.to_dict()


def save_pretrained(
    params: Params,
    cfg: ModelConfig,
    out_dir: str | Path,
    tokenizer: Any = None,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Write config.json + safetensors (sharded with an index above max_shard_bytes) and, if
    given, the tokenizer (anything with `save_pretrained(dir)`) into out_dir."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    host = jax.tree.map(np.asarray, jax.device_get(params))
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": host["embed"]}
    for key, tmpl in _hf_names(cfg).items():
        for i in range(cfg.num_layers):
            tensors[tmpl.format(i=i)] = _to_hf(key, host["layers"][key][i])
    tensors["model.norm.weight"] = host["final_norm"]
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = host["lm_head"].T
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        if shards[-1] and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], d / "model.safetensors", metadata=meta)
    else:
        wmap = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, d / name, metadata=meta)
            wmap |= {k: name for k in shard}
        total = sum(v.nbytes for v in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": wmap}
        (d / INDEX).write_text(json.dumps(index, indent=2))
    hf_cfg = hf_config_dict(cfg)
    if tokenizer is not None:
        # Serving stops at eos only if config.json and generation_config.json name it.
        ids = special_token_ids(tokenizer)
        hf_cfg |= ids
        gen = {k: v for k, v in ids.items() if v is not None} | {"_from_model_config": True}
        (d / "generation_config.json").write_text(json.dumps(gen, indent=2))
        tokenizer.save_pretrained(str(d))
    (d / "config.json").write_text(json.dumps(hf_cfg, indent=2, default=str))
    return d


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """{bos_token_id, eos_token_id, pad_token_id} of a tokenizer (None where it has none)."""
    return {
        name: (None if getattr(tokenizer, name, None) is None else int(getattr(tokenizer, name)))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
