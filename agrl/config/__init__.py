"""The configuration tree (SPEC 1-9): schema, TOML / `a.b=c` io, method presets.

    from agrl.config import build_config
    cfg = build_config("run.toml", ["train.method=grpo", "optim.lr=3e-4"])

Every section is a frozen, validated dataclass (hashable: a valid static jit argument).
"""

from agrl.config.base import ConfigError
from agrl.config.io import (
    apply_overrides,
    build_config,
    build_section,
    config_from_dict,
    config_to_dict,
    load_config,
    load_toml,
    merge_dicts,
    with_method,
)
from agrl.config.presets import METHOD_PRESETS, method_preset
from agrl.config.rl import AdvantageConfig, GuidanceConfig, LossConfig, RewardConfig
from agrl.config.schema import (
    Config,
    DPOConfig,
    MemoryConfig,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    SamplingConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "AdvantageConfig",
    "Config",
    "ConfigError",
    "DPOConfig",
    "GuidanceConfig",
    "LossConfig",
    "MemoryConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "PathsConfig",
    "RewardConfig",
    "SFTConfig",
    "SamplingConfig",
    "TaskConfig",
    "TrainConfig",
    "METHOD_PRESETS",
    "apply_overrides",
    "build_config",
    "build_section",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_toml",
    "merge_dicts",
    "method_preset",
    "with_method",
]
