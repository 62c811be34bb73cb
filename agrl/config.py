"""The configuration tree: nested frozen dataclasses, validated on construction.

Frozen means hashable, so any section can be a static argument of jax.jit. Every numerical
choice that reference implementations disagree on is an explicit field (SPEC 4-6).
`load_config(path, overrides)` reads a TOML file and applies `section.key=value` overrides;
errors name the field and the bad value.
"""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


def _check(cond: bool, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r}: {why}")


@dataclass(frozen=True)
class ModelConfig:
    """Decoder hyper-parameters (Llama / Qwen2 / Qwen3 family). SPEC 9."""

    arch: Literal["llama", "qwen2", "qwen3"] = "qwen3"
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qkv_bias: bool | None = None  # None: True for qwen2, else False
    qk_norm: bool | None = None  # None: True for qwen3, else False
    max_position_embeddings: int = 512
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
        ):
            _check(getattr(self, name) > 0, f"model.{name}", getattr(self, name), "must be > 0")
        # The architecture decides the defaults of its two switches (frozen: set once here).
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.arch == "qwen2")
        if self.qk_norm is None:
            object.__setattr__(self, "qk_norm", self.arch == "qwen3")
        _check(
            self.num_heads % self.num_kv_heads == 0,
            "model.num_kv_heads",
            self.num_kv_heads,
            f"must divide num_heads={self.num_heads}",
        )


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes over axes (data, fsdp, tensor); -1 fills with the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        _check(sizes.count(-1) <= 1, "mesh", sizes, "at most one axis may be -1")
        for name, s in zip(("data", "fsdp", "tensor"), sizes, strict=True):
            _check(s == -1 or s >= 1, f"mesh.{name}", s, "must be >= 1 or -1")


@dataclass(frozen=True)
class SamplingConfig:
    """Rollout sampling (SPEC 1, PAPER 'RL settings')."""

    group_size: int = 8  # G completions per prompt
    temperature: float = 0.99
    top_k: int = 100  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    max_new_tokens: int = 64
    prompt_buckets: tuple[int, ...] = (32, 48, 64, 96, 128)

    def __post_init__(self):
        _check(
            self.group_size >= 2,
            "sampling.group_size",
            self.group_size,
            "GRPO needs G >= 2 (a group of one has no baseline)",
        )
        _check(self.temperature >= 0, "sampling.temperature", self.temperature, "must be >= 0")
        _check(self.top_k >= 0, "sampling.top_k", self.top_k, "must be >= 0")
        _check(0 < self.top_p <= 1, "sampling.top_p", self.top_p, "must be in (0, 1]")
        _check(
            self.max_new_tokens >= 1, "sampling.max_new_tokens", self.max_new_tokens, "must be >= 1"
        )
        _check(
            len(self.prompt_buckets) > 0
            and list(self.prompt_buckets) == sorted(set(self.prompt_buckets)),
            "sampling.prompt_buckets",
            self.prompt_buckets,
            "must be a non-empty strictly increasing tuple",
        )


@dataclass(frozen=True)
class RewardConfig:
    """Rule-aware reward shaping, RRS (SPEC 4); implemented by agrl/rewards.py.

    R = gate * (w_label * r_label + w_step * r_step), and format_fail where the response
    does not parse. `fn` names a reward function registered with
    agrl.rewards.register_reward_fn; "rrs" is the built-in one.
    """

    fn: str = "rrs"
    w_label: float = 1.0
    w_step: float = 0.5
    gate: Literal["consistency", "label", "none"] = "consistency"
    format_fail: float = -1.0
    ordinal: bool = False  # replace r_label by 1 - |pred - gold| / 3

    def __post_init__(self):
        _check(self.w_label >= 0, "reward.w_label", self.w_label, "must be >= 0")
        _check(self.w_step >= 0, "reward.w_step", self.w_step, "must be >= 0")
        _check(
            self.w_label + self.w_step > 0,
            "reward.w_step",
            self.w_step,
            f"w_label + w_step must be > 0 (w_label={self.w_label}): every reward would be 0",
        )
        _check(
            self.format_fail <= 0,
            "reward.format_fail",
            self.format_fail,
            "must be <= 0 (an unparseable response must not out-earn a wrong one)",
        )
        if self.gate == "label" and self.w_step == 0:
            warnings.warn(
                "reward.gate='label' with w_step=0: the label gate only gates step credit "
                "and silently does nothing",
                stacklevel=2,
            )
        if self.ordinal and self.w_label == 0:
            warnings.warn(
                "reward.ordinal=True with w_label=0: ordinal credit silently does nothing",
                stacklevel=2,
            )


@dataclass(frozen=True)
class AdvantageConfig:
    """Group advantages (SPEC 6); implemented by agrl/advantages.py.

    `estimator` is "zscore", "no_std" (Dr.GRPO), "rloo", or a name registered with
    agrl.advantages.register_advantage_fn. ddof and eps are used by "zscore" only.
    """

    estimator: str = "zscore"
    ddof: int = 1
    eps: float = 1e-6
    clip: float | None = 2.0

    def __post_init__(self):
        _check(bool(self.estimator), "advantage.estimator", self.estimator, "must be non-empty")
        _check(self.ddof in (0, 1), "advantage.ddof", self.ddof, "must be 0 or 1")
        _check(self.eps >= 0, "advantage.eps", self.eps, "must be >= 0")
        _check(self.clip is None or self.clip > 0, "advantage.clip", self.clip, "must be > 0")


@dataclass(frozen=True)
class GuidanceConfig:
    """Adaptive guided replay, AGR (SPEC 5); implemented by agrl/guidance.py."""

    enabled: bool = True
    tau: float = 0.25  # trigger: group label accuracy <= tau
    slots_per_batch: int = 8  # fixed number of guided rollout slots per batch
    max_level: int = 3  # 0: label only; 1..max_level: level/max_level of the rationale
    level_up_streak: int = 2  # failures in a row before the level rises
    ema_decay: float = 0.7  # EMA of unguided accuracy per prompt
    p_replay: float = 0.25  # chance an unsolved hard prompt re-enters a batch
    loss_mode: Literal["include", "mask", "mask_if_negative", "offpolicy"] = "mask_if_negative"
    offpolicy_gamma: float = 0.1  # LUFFY weight p / (p + gamma)

    def __post_init__(self):
        _check(0.0 <= self.tau <= 1.0, "guidance.tau", self.tau, "must be in [0, 1]")
        _check(
            self.slots_per_batch >= 0,
            "guidance.slots_per_batch",
            self.slots_per_batch,
            "must be >= 0",
        )
        _check(self.max_level >= 0, "guidance.max_level", self.max_level, "must be >= 0")
        _check(
            self.level_up_streak >= 1,
            "guidance.level_up_streak",
            self.level_up_streak,
            "must be >= 1",
        )
        _check(
            0.0 <= self.ema_decay < 1.0, "guidance.ema_decay", self.ema_decay, "must be in [0, 1)"
        )
        _check(0.0 <= self.p_replay <= 1.0, "guidance.p_replay", self.p_replay, "must be in [0, 1]")
        _check(
            self.offpolicy_gamma > 0,
            "guidance.offpolicy_gamma",
            self.offpolicy_gamma,
            "must be > 0",
        )
        if self.enabled and self.slots_per_batch == 0:
            warnings.warn(
                "guidance.enabled=True with slots_per_batch=0: AGR does nothing", stacklevel=2
            )


@dataclass(frozen=True)
class LossConfig:
    """GRPO objective, SFT and DPO (SPEC 6); implemented by agrl/loss.py.

    `fn` names a policy loss registered with agrl.loss.register_loss_fn; "grpo" is the
    built-in clipped surrogate.
    """

    fn: str = "grpo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None  # c > 1: bound the loss of negative advantages by c * A
    kl_beta: float = 0.02
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_clamp: float | None = 10.0  # clamp of log(pi/pi_ref) before the estimator
    aggregation: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "constant-normalised"
    ] = "seq-mean-token-mean"
    constant_norm: int | None = None  # divisor for constant-normalised; None: padded length T
    mu: int = 1  # updates per batch
    difficulty_filter: float | None = None  # drop groups with accuracy >= this (e.g. 0.9)
    entropy: bool = False  # compute the policy entropy for metrics
    dpo_beta: float = 0.1

    def __post_init__(self):
        _check(bool(self.fn), "loss.fn", self.fn, "must be non-empty")
        _check(self.eps_low >= 0, "loss.eps_low", self.eps_low, "must be >= 0")
        _check(self.eps_low < 1, "loss.eps_low", self.eps_low, "must be < 1 (ratio floor > 0)")
        _check(
            self.eps_high >= self.eps_low,
            "loss.eps_high",
            self.eps_high,
            f"must be >= eps_low={self.eps_low}",
        )
        _check(
            self.dual_clip is None or self.dual_clip > 1,
            "loss.dual_clip",
            self.dual_clip,
            "must be > 1 or None",
        )
        _check(self.kl_beta >= 0, "loss.kl_beta", self.kl_beta, "must be >= 0")
        _check(
            self.kl_clamp is None or self.kl_clamp > 0,
            "loss.kl_clamp",
            self.kl_clamp,
            "must be > 0 or None",
        )
        _check(
            self.constant_norm is None or self.constant_norm >= 1,
            "loss.constant_norm",
            self.constant_norm,
            "must be >= 1 or None",
        )
        _check(self.mu >= 1, "loss.mu", self.mu, "must be >= 1")
        _check(
            self.difficulty_filter is None or 0 < self.difficulty_filter <= 1,
            "loss.difficulty_filter",
            self.difficulty_filter,
            "must be in (0, 1] or None",
        )
        _check(self.dpo_beta > 0, "loss.dpo_beta", self.dpo_beta, "must be > 0")
        if self.kl_estimator == "k1" and self.kl_beta > 0 and self.mu == 1:
            warnings.warn(
                "loss.kl_estimator='k1' with mu=1: the k1 KL term has zero expected "
                "gradient on on-policy samples and silently does nothing",
                stacklevel=2,
            )
        if self.constant_norm is not None and self.aggregation != "constant-normalised":
            warnings.warn(
                f"loss.constant_norm={self.constant_norm} with aggregation="
                f"{self.aggregation!r}: constant_norm silently does nothing",
                stacklevel=2,
            )


# Overrides that turn the defaults (AGRL = RRS + AGR) into each method of SPEC 4 / 8.
_METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # outcome reward only: r_label, format-gated (format failure still scores format_fail)
    "grpo": {"reward.w_step": 0.0, "reward.gate": "none", "guidance.enabled": False},
    # process reward: r_label + w_step * r_step, no consistency gate
    "grpo_pr": {"reward.w_step": 0.5, "reward.gate": "none", "guidance.enabled": False},
    "agrl": {},
    "rrs_only": {"guidance.enabled": False},
    "agr_only": {"reward.w_step": 0.0, "reward.gate": "none", "guidance.enabled": True},
}


def method_preset(name: str) -> dict[str, Any]:
    """`section.key -> value` overrides for a method of TrainConfig.method (SPEC 4, 8).

    Apply them before the user's own overrides, e.g.
    `apply_overrides(data, [f"{k}={v}" for k, v in method_preset(m).items()] + user)`.
    """
    if name not in _METHOD_PRESETS:
        raise ConfigError(f"train.method={name!r}: must be one of {sorted(_METHOD_PRESETS)}")
    return dict(_METHOD_PRESETS[name])


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, global-norm clipping."""

    lr: float = 1e-5
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float = 1.0

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(
            0 <= self.warmup_frac < 1, "optim.warmup_frac", self.warmup_frac, "must be in [0, 1)"
        )
        _check(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop: steps, batch, evaluation, checkpoints."""

    method: Literal["grpo", "grpo_pr", "agrl", "rrs_only", "agr_only"] = "agrl"
    seed: int = 0
    steps: int = 100
    prompts_per_step: int = 8
    eval_every: int = 10
    eval_size: int = 128
    ckpt_every: int = 10
    max_nonfinite: int = 5  # consecutive non-finite steps before the run stops
    response_order: Literal["label_first", "think_first"] = "label_first"

    def __post_init__(self):
        _check(self.steps >= 0, "train.steps", self.steps, "must be >= 0")
        _check(
            self.prompts_per_step >= 1,
            "train.prompts_per_step",
            self.prompts_per_step,
            "must be >= 1",
        )
        _check(self.max_nonfinite >= 1, "train.max_nonfinite", self.max_nonfinite, "must be >= 1")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on the responses of a JSONL split (token cross-entropy)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup_frac: float = 0.05

    def __post_init__(self):
        _check(self.steps >= 0, "sft.steps", self.steps, "must be >= 0")
        _check(self.batch_size >= 1, "sft.batch_size", self.batch_size, "must be >= 1")
        _check(self.lr > 0, "sft.lr", self.lr, "must be > 0")


@dataclass(frozen=True)
class DPOConfig:
    """DPO on pass@N pairs mined from the SFT policy (SPEC 6)."""

    steps: int = 150
    batch_size: int = 16
    lr: float = 2e-4
    warmup_frac: float = 0.05
    pass_n: int = 8  # samples per prompt when mining pairs
    mine_prompts: int = 600  # prompts of the pool used for mining (0: all)
    temperature: float = 1.0

    def __post_init__(self):
        _check(self.steps >= 0, "dpo.steps", self.steps, "must be >= 0")
        _check(self.batch_size >= 1, "dpo.batch_size", self.batch_size, "must be >= 1")
        _check(self.lr > 0, "dpo.lr", self.lr, "must be > 0")
        _check(self.pass_n >= 2, "dpo.pass_n", self.pass_n, "must be >= 2")
        _check(self.mine_prompts >= 0, "dpo.mine_prompts", self.mine_prompts, "must be >= 0")


@dataclass(frozen=True)
class PathsConfig:
    """Where a training command reads and writes ("" = not set; the CLI flags fill them)."""

    world: str = ""  # a directory written by `agrl world` (splits + tokenizer/)
    tokenizer: str = ""  # default: <world>/tokenizer
    train_data: str = ""  # default: <world>/sft.jsonl (sft, dpo) or <world>/rl.jsonl (rl)
    eval_data: str = ""  # default: <world>/b_eval.jsonl
    init: str = ""  # model directory to start from ("" for sft: random init)
    ref: str = ""  # reference model directory (default: init)
    out: str = ""  # run directory


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


# ---------------------------------------------------------------------------------------
# Building a config from a TOML file and `section.key=value` overrides.


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Turn a TOML value or an override string into the field's declared type."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        _check(value in args, name, value, f"must be one of {list(args)}")
        return value
    if origin in (tuple,) and args:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        _check(isinstance(value, (list, tuple)), name, value, "must be a list")
        return tuple(_coerce(v, args[0], f"{name}[]") for v in value)
    if args and type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is bool:
        if isinstance(value, str):
            _check(
                value.lower() in ("true", "false", "1", "0"), name, value, "must be true or false"
            )
            return value.lower() in ("true", "1")
        _check(isinstance(value, bool), name, value, "must be true or false")
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


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{name}: unknown field (known: {sorted(known)})")
        hint = hints[key]
        if is_dataclass(hint):
            _check(isinstance(value, dict), name, value, "must be a table")
            kwargs[key] = _build(hint, value, f"{name}.")
        else:
            kwargs[key] = _coerce(value, hint, name)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge `a.b=c` strings into a nested dict (strings are coerced later, by type)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
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


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data = load_toml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides)))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = [
    "AdvantageConfig",
    "Config",
    "ConfigError",
    "GuidanceConfig",
    "LossConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "SamplingConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "method_preset",
    "replace",
]
