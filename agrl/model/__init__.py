"""agrl.model: the decoder (pure functions over a params pytree), presets, HF import/export."""

from agrl.model.decoder import (
    KVCache,
    cached_hidden_states,
    completion_hidden,
    completion_logps,
    fork_cache,
    forward,
    fuse_params,
    hidden_states,
    init_cache,
    logits_from_hidden,
    positions_from_mask,
    token_logps,
)
from agrl.model.hf import CheckpointError, config_from_hf, load_pretrained, save_pretrained
from agrl.model.params import init_params, param_logical_axes, param_shapes
from agrl.model.presets import PRESETS, preset

from_hf = config_from_hf

__all__ = [
    "PRESETS",
    "CheckpointError",
    "KVCache",
    "cached_hidden_states",
    "completion_hidden",
    "completion_logps",
    "config_from_hf",
    "fork_cache",
    "forward",
    "from_hf",
    "fuse_params",
    "hidden_states",
    "init_cache",
    "init_params",
    "load_pretrained",
    "logits_from_hidden",
    "param_logical_axes",
    "param_shapes",
    "positions_from_mask",
    "preset",
    "save_pretrained",
    "token_logps",
]
