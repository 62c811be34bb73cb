"""The configuration tree: nested frozen dataclasses, validated on construction.

Frozen means hashable, so any section can be a static argument of jax.jit. Every numerical
choice that reference implementations disagree on is an explicit field (SPEC 4-6).
`load_config(path, overrides)` reads a TOML file and applies `section.key=value` overrides;
errors name the field and the bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agrl.config.base import check
from agrl.config.rl import AdvantageConfig, GuidanceConfig, LossConfig, RewardConfig


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
            check(getattr(self, name) > 0, f"model.{name}", getattr(self, name), "must be > 0")
        # The architecture decides the defaults of its two switches (frozen: set once here).
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.arch == "qwen2")
        if self.qk_norm is None:
            object.__setattr__(self, "qk_norm", self.arch == "qwen3")
        check(
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
        check(sizes.count(-1) <= 1, "mesh", sizes, "at most one axis may be -1")
        for name, s in zip(("data", "fsdp", "tensor"), sizes, strict=True):
            check(s == -1 or s >= 1, f"mesh.{name}", s, "must be >= 1 or -1")


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
        check(
            self.group_size >= 2,
            "sampling.group_size",
            self.group_size,
            "GRPO needs G >= 2 (a group of one has no baseline)",
        )
        check(self.temperature >= 0, "sampling.temperature", self.temperature, "must be >= 0")
        check(self.top_k >= 0, "sampling.top_k", self.top_k, "must be >= 0")
        check(0 < self.top_p <= 1, "sampling.top_p", self.top_p, "must be in (0, 1]")
        check(
            self.max_new_tokens >= 1, "sampling.max_new_tokens", self.max_new_tokens, "must be >= 1"
        )
        check(
            len(self.prompt_buckets) > 0
            and list(self.prompt_buckets) == sorted(set(self.prompt_buckets)),
            "sampling.prompt_buckets",
            self.prompt_buckets,
            "must be a non-empty strictly increasing tuple",
        )


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
        check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        check(0 <= self.warmup_frac < 1, "optim.warmup_frac", self.warmup_frac, "must be in [0, 1)")
        check(self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop: steps, batch, evaluation, checkpoints."""

    method: Literal["grpo", "grpo_pr", "agrl", "rrs_only", "agr_only", "agrl_hint"] = "agrl"
    seed: int = 0
    steps: int = 100
    prompts_per_step: int = 8
    eval_every: int = 10
    eval_size: int = 128  # records of paths.eval_data in the final evaluation (the first N)
    # records in the periodic RL evaluations (the learning curves); 0: eval_size
    eval_curve_size: int = 0
    ckpt_every: int = 10
    max_nonfinite: int = 5  # consecutive non-finite steps before the run stops
    response_order: Literal["label_first", "think_first"] = "label_first"
    # RL: warn once (stderr) after this many consecutive steps in which every group had zero
    # reward variance (no gradient); 0 disables
    zero_variance_warn_steps: int = 20

    def __post_init__(self):
        check(self.steps >= 0, "train.steps", self.steps, "must be >= 0")
        check(
            self.zero_variance_warn_steps >= 0,
            "train.zero_variance_warn_steps",
            self.zero_variance_warn_steps,
            "must be >= 0 (0 disables the warning)",
        )
        check(
            self.prompts_per_step >= 1,
            "train.prompts_per_step",
            self.prompts_per_step,
            "must be >= 1",
        )
        check(
            self.eval_curve_size >= 0, "train.eval_curve_size", self.eval_curve_size, "must be >= 0"
        )
        check(self.max_nonfinite >= 1, "train.max_nonfinite", self.max_nonfinite, "must be >= 1")


BUILTIN_RULE_BOOKS = ("world", "label_only")  # agrl/task/rulebooks/<name>.toml


@dataclass(frozen=True)
class TaskConfig:
    """The task definition: which rule book is in force (docs/rulebook.md).

    rule_book: "world" (the relevance world's six verdict dimensions), "label_only" (no
    verdicts: the response is the label alone) or a path to a TOML rule book; the file is
    read when a run starts (agrl.task.rules.load_rule_book), so this check stays cheap.
    """

    rule_book: str = "world"

    def __post_init__(self):
        check(
            self.rule_book in BUILTIN_RULE_BOOKS or self.rule_book.endswith(".toml"),
            "task.rule_book",
            self.rule_book,
            f"must be one of {BUILTIN_RULE_BOOKS} or a path to a .toml rule book",
        )


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on the responses of a JSONL split (token cross-entropy)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup_frac: float = 0.05
    # AdamW decoupled weight decay of SFT; None: optim.weight_decay (docs/results.md has
    # the calibration behind the reproduce default)
    weight_decay: float | None = None
    # loss weight of the label token (the first response token, label-first order only)
    # relative to every other response token; 1: the plain token mean
    label_weight: float = 1.0
    # probability that the label token fed as input to the rest of the response is another
    # label's token (label-first only; the label's own target is unchanged), so that the
    # rationale's verdicts are learned from the prompt rather than copied from the label
    label_noise: float = 0.0
    # weight of an auxiliary loss at the label position (label-first only): each verdict the
    # target response states is predicted from the hidden state that predicts the label,
    # through a fixed random linear readout, and its cross-entropy counts like this many
    # response tokens; 0: off (docs/training.md)
    verdict_weight: float = 0.0
    # evaluate on the first train.eval_curve_size eval records every N steps (the SFT
    # learning curve in evals.json, as RL's train.eval_every); 0: only at the end
    eval_every: int = 0
    # checkpoint every N SFT steps; 0: train.ckpt_every (each save of the 2-layer reproduce
    # model costs about 0.13 s, about two SFT steps)
    ckpt_every: int = 0

    def __post_init__(self):
        check(self.steps >= 0, "sft.steps", self.steps, "must be >= 0")
        check(self.ckpt_every >= 0, "sft.ckpt_every", self.ckpt_every, "must be >= 0")
        check(self.eval_every >= 0, "sft.eval_every", self.eval_every, "must be >= 0")
        check(self.label_weight > 0, "sft.label_weight", self.label_weight, "must be > 0")
        check(0 <= self.label_noise < 1, "sft.label_noise", self.label_noise, "must be in [0, 1)")
        check(self.verdict_weight >= 0, "sft.verdict_weight", self.verdict_weight, "must be >= 0")
        check(
            self.weight_decay is None or self.weight_decay >= 0,
            "sft.weight_decay",
            self.weight_decay,
            "must be >= 0 (or unset: optim.weight_decay)",
        )
        check(self.batch_size >= 1, "sft.batch_size", self.batch_size, "must be >= 1")
        check(self.lr > 0, "sft.lr", self.lr, "must be > 0")


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
        check(self.steps >= 0, "dpo.steps", self.steps, "must be >= 0")
        check(self.batch_size >= 1, "dpo.batch_size", self.batch_size, "must be >= 1")
        check(self.lr > 0, "dpo.lr", self.lr, "must be > 0")
        check(self.pass_n >= 2, "dpo.pass_n", self.pass_n, "must be >= 2")
        check(self.mine_prompts >= 0, "dpo.mine_prompts", self.mine_prompts, "must be >= 0")


@dataclass(frozen=True)
class MemoryConfig:
    """How a training step trades compute for memory (docs/scaling.md). Neither changes
    the mathematics: a micro-batched step equals the whole-batch step within f32 rounding.

    micro_batch_rows: rows per device in one forward/backward of an update (SFT, DPO, RL):
        the step scans over ceil-free micro-batches of this many rows per device and sums
        the gradients (0: the whole batch at once). The rows per device must be a multiple.
    remat: what each layer keeps for the backward pass.
        none    every activation (fastest, most memory)
        layer   only the layer's input (jax.checkpoint per layer: one extra forward)
        dots    the matmul outputs (jax.checkpoint_policies.dots_with_no_batch_dims_saveable:
                norms, activations and attention softmax recomputed)
    """

    micro_batch_rows: int = 0
    remat: Literal["none", "layer", "dots"] = "none"

    def __post_init__(self):
        check(
            self.micro_batch_rows >= 0,
            "memory.micro_batch_rows",
            self.micro_batch_rows,
            "must be >= 0 (0: the whole batch)",
        )
        check(
            self.remat in ("none", "layer", "dots"),
            "memory.remat",
            self.remat,
            "must be none, layer or dots",
        )


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
    task: TaskConfig = field(default_factory=TaskConfig)
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
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


# ---------------------------------------------------------------------------------------
# Building a config from a TOML file and `section.key=value` overrides.
