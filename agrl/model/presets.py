"""Model presets (SPEC 9): the tiny CPU model of the shared benchmark and exact HF configs.

The Qwen figures are copied from the config.json of each Hugging Face checkpoint.
"""

from __future__ import annotations

from agrl.config import ModelConfig

_QWEN3 = dict(
    arch="qwen3",
    vocab_size=151936,
    head_dim=128,
    num_kv_heads=8,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    qk_norm=True,
    max_position_embeddings=40960,
    param_dtype="bfloat16",
    compute_dtype="bfloat16",
)

PRESETS: dict[str, ModelConfig] = {
    # ../shared/bench/README.md: vocab 2048, hidden 256, 4 layers, 4 heads, 2 kv heads, f32.
    "tiny": ModelConfig(
        arch="qwen3",
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        qk_norm=True,
        max_position_embeddings=512,
    ),
    "qwen2.5-0.5b": ModelConfig(
        arch="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        qkv_bias=True,
        qk_norm=False,
        max_position_embeddings=32768,
        param_dtype="bfloat16",
        compute_dtype="bfloat16",
    ),
    "qwen3-0.6b": ModelConfig(
        **_QWEN3,
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        tie_embeddings=True,
    ),
    "qwen3-1.7b": ModelConfig(
        **_QWEN3,
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        tie_embeddings=True,
    ),
    "qwen3-8b": ModelConfig(
        **_QWEN3,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        tie_embeddings=False,
    ),
}


def preset(name: str) -> ModelConfig:
    """The named preset; unknown names raise listing the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
