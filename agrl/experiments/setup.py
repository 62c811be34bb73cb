"""What `agrl reproduce` runs: the methods and table rows, the CPU-sized defaults, and the
ReproducePlan built from them, a TOML file and overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from agrl.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_config,
    build_section,
    load_toml,
    merge_dicts,
    with_method,
)
from agrl.world.config import WorldConfig

METHODS: tuple[str, ...] = ("grpo", "grpo_pr", "agrl", "rrs_only", "agr_only", "agrl_hint")


METHOD_NAMES = {
    "grpo": "GRPO",
    "grpo_pr": "GRPO-PR",
    "agrl": "AGRL",
    "rrs_only": "RRS only",
    "agr_only": "AGR only",
    "agrl_hint": "AGRL (hint)",
}


ROW_NAMES = {"oracle": "Oracle SFT (gold)", "sft": "SFT", "dpo": "DPO", **METHOD_NAMES}


def fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


ROWS: tuple[str, ...] = ("oracle", "sft", "dpo", *METHODS)


# CPU-sized defaults (docs/results.md has the measured times behind them).
DEFAULTS: dict[str, Any] = {
    "world": {
        "n_sft": 10000,
        "n_rl": 1000,
        "n_b_eval": 1000,
        "n_w_eval": 1000,
    },
    "model": {
        "vocab_size": 384,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_layers": 3,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 128,
    },
    "sampling": {
        "max_new_tokens": 40,
        "prompt_buckets": "16,32",
        "group_size": 8,
    },
    # the SFT recipe calibrated on 1000 b_eval records (docs/results.md): 10000 records,
    # 3 layers, AdamW weight decay 1.0, the auxiliary verdict loss at weight 1 and 12000
    # steps (oracle 93.0 / 93.7 / 93.0 on seeds 0 / 1 / 2; 2 layers: 89.9 / 91.1 / 89.1,
    # the negation check near chance on two seeds; 3 layers x 8000: 80.1 / 85.3 / 94.7)
    "sft": {
        "steps": 12000,
        "batch_size": 32,
        "weight_decay": 1.0,
        "verdict_weight": 1.0,
        # a checkpoint every 20 steps (train.ckpt_every) cost 600 saves, about 8% of a
        # 12000-step stage; every 1000 loses at most about 70 s of work on a crash
        "ckpt_every": 1000,
    },
    "dpo": {
        "steps": 40,
        "batch_size": 16,
        "lr": 5e-5,
        "mine_prompts": 256,
        "pass_n": 8,
    },
    "optim": {
        "lr": 3e-4,
    },
    "train": {
        "steps": 100,
        "prompts_per_step": 32,
        "eval_every": 20,
        "eval_size": 1000,
        "eval_curve_size": 256,
        "ckpt_every": 20,
    },
    "guidance": {
        "slots_per_batch": 64,
    },
    "diag": {
        "prompts": 256,
    },
}


# --quick: the whole pipeline in a few minutes (a smoke test, not a result).
QUICK: dict[str, Any] = {
    "world": {
        "n_sft": 400,
        "n_rl": 64,
        "n_b_eval": 32,
        "n_w_eval": 32,
    },
    "model": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_layers": 1,
        "head_dim": 16,
    },
    "sampling": {
        "group_size": 4,
    },
    "sft": {
        "steps": 30,
        "batch_size": 16,
    },
    "dpo": {
        "steps": 4,
        "batch_size": 4,
        "mine_prompts": 16,
        "pass_n": 4,
    },
    "train": {
        "steps": 3,
        "prompts_per_step": 2,
        "eval_every": 2,
        "eval_size": 32,
        "ckpt_every": 2,
    },
    "guidance": {
        "slots_per_batch": 4,
    },
    "diag": {
        "prompts": 16,
    },
}


@dataclasses.dataclass(frozen=True)
class ReproducePlan:
    """Everything a reproduction run needs: configs, seeds, output directory."""

    cfg: Config  # shared by all stages (paths and seed are filled per stage)
    world: Any  # agrl.world.config.WorldConfig
    diag_prompts: int
    seeds: tuple[int, ...]
    out: Path
    quick: bool
    # stages run side by side in pinned worker processes (agrl.experiments.schedule);
    # 0: 2 on a CPU with at least 2 cores (1 with --quick), else 1
    workers: int = 0


def build_plan(
    *,
    quick: bool = False,
    seeds: int = 1,
    out: str | Path = "runs/reproduce",
    config: str | Path | None = None,
    overrides: list[str] = (),
    workers: int = 0,
) -> ReproducePlan:
    """Layer DEFAULTS, QUICK, the TOML file and the overrides into a validated ReproducePlan."""
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds}: must be >= 1")
    if workers < 0:
        raise ConfigError(f"--workers={workers}: must be >= 1 (or 0: automatic)")
    user = apply_overrides(load_toml(config) if config is not None else {}, list(overrides))
    taken = [f"paths.{k}" for k in user.get("paths", {})]
    taken += [f"train.{k}" for k in ("method", "seed") if k in user.get("train", {})]
    if taken:
        raise ConfigError(f"{taken[0]}: set by `agrl reproduce` itself (use --out / --seeds)")
    data = merge_dicts(merge_dicts(DEFAULTS, QUICK) if quick else DEFAULTS, user)
    world_d, diag_d = data.pop("world", {}), data.pop("diag", {})
    unknown = set(diag_d) - {"prompts"}
    if unknown:
        raise ConfigError(f"diag.{sorted(unknown)[0]}: unknown field (known: ['prompts'])")
    cfg = build_config(base=data)
    for m in METHODS:  # every method preset must validate with the user's overrides
        with_method(cfg, m)
    try:
        diag_prompts = int(diag_d.get("prompts", 0))
    except ValueError:
        raise ConfigError(f"diag.prompts={diag_d['prompts']!r}: must be an int") from None
    world = build_section(WorldConfig, world_d, "world.")
    return ReproducePlan(cfg, world, diag_prompts, tuple(range(seeds)), Path(out), quick, workers)


def with_run(cfg: Config, *, seed: int, **paths: str) -> Config:
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, seed=seed),
        paths=dataclasses.replace(cfg.paths, **paths),
    )
