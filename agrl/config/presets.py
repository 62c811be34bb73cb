"""Method presets (SPEC 4, 8) as data: the fields that turn the defaults (AGRL = RRS + AGR)
into each method of the comparison."""

from __future__ import annotations

from typing import Any

from agrl.config.base import ConfigError

# Overrides that turn the defaults (AGRL = RRS + AGR) into each method of SPEC 4 / 8.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # outcome reward only: r_label, format-gated (format failure still scores format_fail)
    "grpo": {"reward.w_step": 0.0, "reward.gate": "none", "guidance.enabled": False},
    # process reward: r_label + w_step * r_step, no consistency gate
    "grpo_pr": {"reward.w_step": 0.5, "reward.gate": "none", "guidance.enabled": False},
    "agrl": {},
    "rrs_only": {"guidance.enabled": False},
    "agr_only": {"reward.w_step": 0.0, "reward.gate": "none", "guidance.enabled": True},
    # AGRL with guidance as a hint in the prompt instead of a forced prefix (docs/algorithm.md)
    "agrl_hint": {"guidance.form": "hint"},
}


def method_preset(name: str) -> dict[str, Any]:
    """`section.key -> value` overrides for a method of TrainConfig.method (SPEC 4, 8).

    `agrl.config.build_config` applies them below the user's file and overrides;
    `agrl.config.with_method` forces them on top of a finished config (a comparison).
    """
    if name not in METHOD_PRESETS:
        raise ConfigError(f"train.method={name!r}: must be one of {sorted(METHOD_PRESETS)}")
    return dict(METHOD_PRESETS[name])
