"""Building a Config: TOML files, `section.key=value` overrides, typed coercion; errors name
the field and the bad value."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from agrl.config.base import ConfigError, check
from agrl.config.presets import method_preset
from agrl.config.schema import Config

# Fields that moved to the section that consumes them: old name -> new name.
MOVED: dict[str, str] = {
    "guidance.loss_mode": "loss.forced_tokens",
    "guidance.offpolicy_gamma": "loss.offpolicy_gamma",
    "loss.difficulty_filter": "advantage.difficulty_filter",
}


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Turn a TOML value or an override string into the field's declared type."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        check(value in args, name, value, f"must be one of {list(args)}")
        return value
    if origin in (tuple,) and args:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        check(isinstance(value, (list, tuple)), name, value, "must be a list")
        return tuple(_coerce(v, args[0], f"{name}[]") for v in value)
    if args and type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is bool:
        if isinstance(value, str):
            check(
                value.lower() in ("true", "false", "1", "0"), name, value, "must be true or false"
            )
            return value.lower() in ("true", "1")
        check(isinstance(value, bool), name, value, "must be true or false")
        return value
    if hint in (int, float):
        try:
            out = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: must be a {hint.__name__}") from None
        if hint is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{name}={value!r}: must be an int")
        return out
    if hint is str:
        return str(value)
    return value


def build_section(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if name in MOVED:
            raise ConfigError(f"{name}: moved to {MOVED[name]} (the section that uses it)")
        if key not in known:
            raise ConfigError(f"{name}: unknown field (known: {sorted(known)})")
        hint = hints[key]
        if is_dataclass(hint):
            check(isinstance(value, dict), name, value, "must be a table")
            kwargs[key] = build_section(hint, value, f"{name}.")
        else:
            kwargs[key] = _coerce(value, hint, name)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return build_section(Config, data, "")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge `a.b=c` strings into a nested dict (strings are coerced later, by type)."""
    out = copy.deepcopy(dict(data))  # never write into the caller's (e.g. DEFAULTS) tables
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as a nested dict; a missing or malformed file raises ConfigError."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def merge_dicts(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested merge; values of `top` win."""
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def build_config(
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """The one way a Config is built (CLI, `agrl reproduce`, notebooks, scripts, the API).

    Layers, lowest first: the method preset (`train.method` as the layers above name it,
    default "agrl"; agrl.config.presets), `base` (a nested dict, e.g. reproduce's CPU-sized
    defaults), the TOML `file`, then `section.key=value` overrides. So
    `build_config(overrides=["train.method=grpo"])` is GRPO wherever it is called.
    """
    data = merge_dicts(dict(base or {}), load_toml(file) if file is not None else {})
    data = apply_overrides(data, list(overrides))
    method = data.get("train", {}).get("method", "agrl")
    preset = apply_overrides({}, [f"{k}={v}" for k, v in method_preset(method).items()])
    return config_from_dict(merge_dicts(preset, data))


def with_method(cfg: Config, method: str) -> Config:
    """cfg turned into `method`: its preset's fields forced on top, every other field kept
    (a comparison of methods that share one base config, as `agrl reproduce` runs)."""
    data = config_to_dict(cfg)
    data["train"]["method"] = method
    return config_from_dict(
        apply_overrides(data, [f"{k}={v}" for k, v in method_preset(method).items()])
    )


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """`build_config(path, overrides)`: the method preset of train.method is applied."""
    return build_config(path, overrides)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
