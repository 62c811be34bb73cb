"""What `agrl reproduce` runs: the methods and table rows, the CPU-sized defaults, and the
ReproducePlan built from them, a TOML file and overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from agrl.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_section,
    config_from_dict,
    config_to_dict,
    method_preset,
)

METHODS: tuple[str, ...] = ("grpo", "grpo_pr", "agrl", "rrs_only", "agr_only")


METHOD_NAMES = {
    "grpo": "GRPO",
    "grpo_pr": "GRPO-PR",
    "agrl": "AGRL",
    "rrs_only": "RRS only",
    "agr_only": "AGR only",
}


ROW_NAMES = {"oracle": "Oracle SFT (gold)", "sft": "SFT", "dpo": "DPO", **METHOD_NAMES}


def fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


ROWS: tuple[str, ...] = ("oracle", "sft", "dpo", *METHODS)


# CPU-sized defaults (docs/results.md has the measured times behind them).
DEFAULTS: dict[str, Any] = {
    "world.n_sft": 3000,
    "world.n_rl": 1000,
    "world.n_b_eval": 256,
    "world.n_w_eval": 256,
    "model.vocab_size": 384,
    "model.hidden_size": 128,
    "model.intermediate_size": 384,
    "model.num_layers": 4,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "model.head_dim": 32,
    "model.max_position_embeddings": 128,
    "sampling.max_new_tokens": 40,
    "sampling.prompt_buckets": "16,32",
    "sampling.group_size": 8,
    "sft.steps": 2000,
    "sft.batch_size": 32,
    "dpo.steps": 40,
    "dpo.batch_size": 16,
    "dpo.lr": 5e-5,
    "dpo.mine_prompts": 256,
    "dpo.pass_n": 8,
    "optim.lr": 3e-4,
    "train.steps": 100,
    "train.prompts_per_step": 32,
    "train.eval_every": 20,
    "train.eval_size": 256,
    "train.ckpt_every": 20,
    "guidance.slots_per_batch": 64,
    "diag.prompts": 256,
}


# --quick: the whole pipeline in a few minutes (a smoke test, not a result).
QUICK: dict[str, Any] = {
    "world.n_sft": 400,
    "world.n_rl": 64,
    "world.n_b_eval": 32,
    "world.n_w_eval": 32,
    "model.hidden_size": 64,
    "model.intermediate_size": 128,
    "model.num_layers": 1,
    "model.head_dim": 16,
    "sampling.group_size": 4,
    "sft.steps": 30,
    "sft.batch_size": 16,
    "dpo.steps": 4,
    "dpo.batch_size": 4,
    "dpo.mine_prompts": 16,
    "dpo.pass_n": 4,
    "train.steps": 3,
    "train.prompts_per_step": 2,
    "train.eval_every": 2,
    "train.eval_size": 32,
    "train.ckpt_every": 2,
    "guidance.slots_per_batch": 4,
    "diag.prompts": 16,
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


def _split_overrides(flat: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(world table, diag table, Config overrides as strings) from flat `a.b=v` pairs."""
    world: dict[str, Any] = {}
    diag: dict[str, Any] = {}
    rest: dict[str, str] = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if head == "world":
            node = world
            *parents, last = tail.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        elif head == "diag":
            diag[tail] = value
        else:
            rest[key] = str(value)
    return world, diag, rest


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = ",".join(map(str, v)) if isinstance(v, list) else v
    return out


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def build_plan(
    *,
    quick: bool = False,
    seeds: int = 1,
    out: str | Path = "runs/reproduce",
    config: str | Path | None = None,
    overrides: list[str] = (),
) -> ReproducePlan:
    """Layer DEFAULTS, QUICK, the TOML file and the overrides into a validated ReproducePlan."""
    from agrl.world.config import WorldConfig

    if seeds < 1:
        raise ConfigError(f"--seeds={seeds}: must be >= 1")
    flat: dict[str, Any] = dict(DEFAULTS)
    if quick:
        flat |= QUICK
    if config is not None:
        try:
            flat |= _flatten(tomllib.loads(Path(config).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"{config}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{config}: invalid TOML: {e}") from None
    flat |= _parse_overrides(list(overrides))
    world_d, diag_d, rest = _split_overrides(flat)
    unknown = set(diag_d) - {"prompts"}
    if unknown:
        raise ConfigError(f"diag.{sorted(unknown)[0]}: unknown field (known: ['prompts'])")
    for bad in ("paths", "train.method", "train.seed"):
        hit = [k for k in rest if k == bad or k.startswith(bad + ".")]
        if hit:
            raise ConfigError(f"{hit[0]}: set by `agrl reproduce` itself (use --out / --seeds)")
    cfg = config_from_dict(apply_overrides({}, [f"{k}={v}" for k, v in rest.items()]))
    for m in METHODS:  # every method preset must validate with the user's overrides
        method_config(cfg, m)
    try:
        diag_prompts = int(diag_d.get("prompts", 0))
    except ValueError:
        raise ConfigError(f"diag.prompts={diag_d['prompts']!r}: must be an int") from None
    world = build_section(WorldConfig, world_d, "world.")
    return ReproducePlan(cfg, world, diag_prompts, tuple(range(seeds)), Path(out), quick)


def method_config(cfg: Config, method: str) -> Config:
    """cfg with the method's preset applied (SPEC 4 / 8), keeping every other field."""
    data = config_to_dict(cfg)
    data["train"]["method"] = method
    data = apply_overrides(data, [f"{k}={v}" for k, v in method_preset(method).items()])
    return config_from_dict(data)


def with_run(cfg: Config, *, seed: int, **paths: str) -> Config:
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, seed=seed),
        paths=dataclasses.replace(cfg.paths, **paths),
    )
