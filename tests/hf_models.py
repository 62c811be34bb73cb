"""Tiny random Hugging Face Llama / Qwen2 / Qwen3 models saved to a directory (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    initializer_range=0.2,  # peaked logits: greedy ties are unlikely
)


def make_hf_model(arch: str, out_dir: Path, *, tie: bool = True, seed: int = 0, **overrides):
    """Build a random f32 model of `arch` (llama, qwen2, qwen3), save it to out_dir, return it.

    Biases and norm weights are randomised too (HF initialises them to 0 / 1), so a wrong
    mapping of either shows up in the logits.
    """
    torch.manual_seed(seed)
    kw = TINY | dict(tie_word_embeddings=tie, rope_theta=5000.0) | overrides
    cfg = AutoConfig.for_model(arch, **kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir)
    return model
