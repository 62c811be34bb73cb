"""Memory and throughput model of one RL step per device, for a model and a mesh (issue 7).

Everything here is arithmetic on shapes (no arrays, no devices): `plan(model, mesh, ...)`
returns per-device bytes of each resident and transient buffer and a roofline time of each
phase; `plan_table` renders it as markdown.  scripts/plan.py prints it and docs/scaling.md
quotes it (a test checks the doc against this module).

Per device, with N = prompts * G sequences, S = P + T tokens, dp = data * fsdp, tp = tensor:
  params, reference, Adam mu and nu, gradients: each leaf's bytes / the mesh axes the rules
    table (agrl.parallel.sharding.LOGICAL_AXIS_RULES) splits it over; optax keeps mu and nu in the
    parameter dtype and agrl keeps no f32 master copy;
  sampler: KV cache 2 * L * (N/dp) * (K/tp) * S * Hd * bytes, plus the fused per-layer
    weight copy the decode loop builds (agrl.model.decoder.fuse_params, ~1x the layer weights);
  update activations (memory.remat = none): per layer and row, the residual-stream tensors
    4 * S * D, q/k/v/o (2H + 2K) * Hd / tp * S, SwiGLU 3 * S * F / tp (compute dtype) and
    the attention scores H / tp * S^2 (5 f32 copies + the compute-dtype probabilities);
    plus the completion logits 5 * T * V / tp f32.  With remat = layer only each layer's
    input S * D is kept per layer (plus one layer's intermediates); dots also keeps the
    matmul outputs.  Rows per pass = micro_batch (memory.micro_batch_rows; default all
    N / dp rows at once); micro-batches add an f32 gradient accumulator and the f32 mean
    gradient (8 bytes per parameter); the optimizer update holds two more parameter-sized
    buffers (clipped gradients, updates) and, with fsdp > 1, the all-gathered embedding and
    its full-size gradient (2 * V * D / tp, compute dtype).
  These counts were checked against XLA's compiled memory analysis of the real jitted step
  (agrl.experiments.compiled_memory, scripts/compiled_memory.py; docs/scaling.md).
Time (roofline): matmul FLOPs 2 * active params per token (6 for forward + backward) plus
attention 2 * 2 * L * H * Hd * S_q * S_k (causal: half), divided by devices * peak * mfu;
decoding takes T steps of max(FLOPs / (peak * mfu), bytes read / (HBM bandwidth * bw_eff))
where the bytes are the device's weights plus its KV cache.  These are estimates from stated
assumptions, not measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agrl.config import MeshConfig, ModelConfig
from agrl.model.params import param_logical_axes, param_shapes
from agrl.model.presets import preset
from agrl.parallel.sharding import LOGICAL_AXIS_RULES, mesh_shape

GB = 1e9


@dataclass(frozen=True)
class Device:
    """Accelerator figures (bf16 dense peak, HBM) from the vendors' data sheets."""

    name: str
    peak_tflops: float
    hbm_gb: float
    hbm_gbps: float


DEVICES = {
    "tpu-v5p": Device("TPU v5p chip", 459.0, 95.0, 2765.0),
    "tpu-v6e": Device("TPU v6e chip", 918.0, 32.0, 1640.0),
    "h100": Device("H100 SXM", 989.0, 80.0, 3350.0),
    "h200": Device("H200 SXM", 989.0, 141.0, 4800.0),
}


@dataclass(frozen=True)
class MoE:
    """A mixture-of-experts MLP in place of the dense one (planning only: agrl's decoder is
    dense).  Experts are split like the dense MLP (embed over fsdp, expert hidden over
    tensor); the router is replicated."""

    num_experts: int
    experts_per_token: int
    expert_intermediate: int


@dataclass(frozen=True)
class PlanModel:
    name: str
    cfg: ModelConfig
    moe: MoE | None = None


# A Qwen3-30B-A3B-class MoE (figures of that checkpoint's config.json): 48 layers, hidden
# 2048, 32 heads, 4 kv heads, 128 experts of width 768, 8 active per token.
MOE_30B_A3B = PlanModel(
    "30b-a3b-class",
    ModelConfig(
        arch="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=768,
        num_layers=48, num_heads=32, num_kv_heads=4, head_dim=128, tie_embeddings=False,
        qk_norm=True, param_dtype="bfloat16", compute_dtype="bfloat16",
    ),
    MoE(num_experts=128, experts_per_token=8, expert_intermediate=768),
)  # fmt: skip


def plan_model(name: str) -> PlanModel:
    """An agrl.model.presets preset by name, or the MoE class config "30b-a3b-class"."""

    if name == MOE_30B_A3B.name:
        return MOE_30B_A3B
    return PlanModel(name, preset(name))


def _leaves(m: PlanModel) -> list[tuple[str, tuple[int, ...], tuple]]:
    """(name, shape, logical axes) of every parameter; MoE experts replace the dense MLP."""
    shapes, axes = param_shapes(m.cfg), param_logical_axes(m.cfg)
    out = [
        ("embed", shapes["embed"], axes["embed"]),
        ("final_norm", (m.cfg.hidden_size,), ("norm",)),
    ]
    if "lm_head" in shapes:
        out.append(("lm_head", shapes["lm_head"], axes["lm_head"]))
    for k, shape in shapes["layers"].items():
        if m.moe is not None and k in ("w_gate", "w_up", "w_down"):
            continue
        out.append((f"layers/{k}", shape, axes["layers"][k]))
    if m.moe is not None:
        L, D, E, Fe = (
            m.cfg.num_layers,
            m.cfg.hidden_size,
            m.moe.num_experts,
            m.moe.expert_intermediate,
        )
        out += [
            ("layers/router", (L, D, E), ("layers", None, None)),
            ("layers/experts_gate", (L, E, D, Fe), ("layers", None, "embed", "mlp")),
            ("layers/experts_up", (L, E, D, Fe), ("layers", None, "embed", "mlp")),
            ("layers/experts_down", (L, E, Fe, D), ("layers", None, "mlp", "embed")),
        ]
    return out


def _split(name: str, shape, axes, sizes: dict[str, int]) -> int:
    """How many ways the rules table splits one tensor on this mesh (raises if indivisible)."""
    n = 1
    for dim, (size, logical) in enumerate(zip(shape, axes, strict=True)):
        entry = None if logical is None else LOGICAL_AXIS_RULES[logical]
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        k = math.prod(sizes[a] for a in names)
        if size % k:
            raise ValueError(f"{name}: dim {dim} ({logical}={size}) not divisible by {names}={k}")
        n *= k
    return n


def param_counts(m: PlanModel) -> tuple[int, int]:
    """(total parameters, parameters active per token in matmuls: no embedding lookup,
    only experts_per_token experts)."""
    total = sum(math.prod(s) for _, s, _ in _leaves(m))
    c = m.cfg
    active = total - c.vocab_size * c.hidden_size  # the input embedding is a lookup
    if c.tie_embeddings:
        active += c.vocab_size * c.hidden_size  # ... but tied, it is also the unembedding
    if m.moe is not None:
        per_expert = 3 * c.hidden_size * m.moe.expert_intermediate * c.num_layers
        active -= per_expert * (m.moe.num_experts - m.moe.experts_per_token)
    return total, active


@dataclass(frozen=True)
class Workload:
    prompts: int = 64  # B prompts per RL step
    group: int = 16  # G samples per prompt
    prompt_len: int = 512  # P tokens (bucket)
    new_tokens: int = 256  # T completion tokens
    mu: int = 1  # updates per batch (mu > 1 adds one old-logps forward)
    micro_batch: int | None = None  # rows per device per pass; None: all (agrl today)
    remat: str = "none"  # memory.remat in the update: none, layer or dots


@dataclass(frozen=True)
class Assumptions:
    mfu: float = 0.4  # fraction of peak on prefill / log-prob / update matmuls
    bw_eff: float = 0.6  # fraction of HBM bandwidth a decode step reaches


@dataclass
class CapacityPlan:
    model: str
    mesh: tuple[int, int, int]
    device: Device
    params_total: int
    params_active: int
    gb: dict[str, float] = field(default_factory=dict)  # per-device GB by buffer
    seconds: dict[str, float] = field(default_factory=dict)  # per-step time by phase

    @property
    def resident_gb(self) -> float:
        return sum(self.gb[k] for k in ("policy", "reference", "adam"))

    @property
    def update_gb(self) -> float:
        """The update step alone (what scripts/compiled_memory.py compiles): the policy and
        its optimizer state, gradients (plus the f32 accumulator of micro-batches) and
        activations; the reference and the sampler's buffers are not live in it."""
        keys = ("policy", "adam", "gradients", "optimizer_update", "activations")
        return sum(self.gb[k] for k in keys)

    @property
    def peak_gb(self) -> float:
        sample = self.gb["kv_cache"] + self.gb["sampler_weights"]
        update = self.gb["gradients"] + self.gb["optimizer_update"] + self.gb["activations"]
        return self.resident_gb + max(sample, update)


def plan(
    m: PlanModel,
    mesh: MeshConfig,
    n_devices: int,
    device: Device,
    work: Workload = Workload(),
    assume: Assumptions = Assumptions(),
) -> CapacityPlan:
    """Per-device memory and per-step time of one RL step (module docstring)."""

    data, fsdp, tp = mesh_shape(mesh, n_devices)
    n_dev = data * fsdp * tp
    sizes = {"data": data, "fsdp": fsdp, "tensor": tp}
    c = m.cfg
    pbytes = 2 if c.param_dtype == "bfloat16" else 4
    abytes = 2 if c.compute_dtype == "bfloat16" else 4
    dev_params = sum(math.prod(s) / _split(n, s, a, sizes) for n, s, a in _leaves(m))
    layer_params = sum(
        math.prod(s) / _split(n, s, a, sizes) for n, s, a in _leaves(m) if n.startswith("layers")
    )
    total, active = param_counts(m)

    N, S, T, P = (
        work.prompts * work.group,
        work.prompt_len + work.new_tokens,
        work.new_tokens,
        work.prompt_len,
    )
    dp = data * fsdp
    if N % dp:
        raise ValueError(f"{N} sequences do not split over data*fsdp={dp}")
    for name, v in (("num_kv_heads", c.num_kv_heads), ("num_heads", c.num_heads)):
        if v % tp:
            raise ValueError(f"model.{name}={v} not divisible by tensor={tp}")
    rows = N // dp
    mb = rows if work.micro_batch is None else min(work.micro_batch, rows)
    L, D, H, K, Hd, V = (
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size,
    )
    F = (
        c.intermediate_size
        if m.moe is None
        else m.moe.expert_intermediate * m.moe.experts_per_token
    )

    kv = 2 * L * rows * (K // tp) * S * Hd * abytes
    # Attention scores are f32 (agrl.model.attention): the scaled and the masked scores,
    # softmax's shifted exponentials and probabilities, and the probabilities' cotangent
    # (5 f32 copies), plus the compute-dtype probabilities the PV matmul reads.
    per_layer_row = (4 * S * D + (2 * H + 2 * K) * Hd // tp * S + 3 * S * F // tp) * abytes + (
        H // tp
    ) * S * S * (5 * 4 + abytes)
    # Completion logits in f32: the logits, the log-softmax, its exponential (the entropy and
    # the gradient) and two cotangents.
    logits = 5 * T * (V // tp) * 4
    if work.remat == "none":
        act_row = L * per_layer_row + logits
    else:
        # Each layer keeps its input; "dots" also keeps its matmul outputs (q|k|v, o,
        # gate|up, down); one layer's intermediates are live during its recomputation.
        saved = S * D + (
            S * ((H + 2 * K) * Hd + 2 * F) // tp + 2 * S * D if work.remat == "dots" else 0
        )
        act_row = L * saved * abytes + per_layer_row + logits
    gb = {
        "policy": dev_params * pbytes / GB,
        "reference": dev_params * pbytes / GB,
        "adam": 2 * dev_params * pbytes / GB,
        # Micro-batches add an f32 accumulator of the gradient and the f32 mean gradient
        # (sum / denominator) beside each pass's own gradient.
        "gradients": dev_params * (pbytes + (8 if mb < rows else 0)) / GB,
        # The optimizer's transients: the clipped gradients and the updates; with FSDP the
        # update also holds the all-gathered embedding (V x D / tp, compute dtype) and its
        # full-size gradient before the reduce-scatter (layers are gathered one at a time).
        "optimizer_update": (
            2 * dev_params * pbytes + (2 * V * D // tp * abytes if fsdp > 1 else 0)
        )
        / GB,
        "kv_cache": kv / GB,
        "sampler_weights": layer_params * abytes / GB,
        "activations": mb * act_row / GB,
    }

    # FLOPs (whole step, all devices), then per device at mfu.
    attn = lambda q, k: 2 * 2 * L * H * Hd * q * k  # noqa: E731  QK^T and PV
    prefill = 2 * active * work.prompts * P + attn(P, P) / 2 * work.prompts
    forward = 2 * active * N * S + attn(S, S) / 2 * N
    rate = n_dev * device.peak_tflops * 1e12 * assume.mfu
    decode_flops = 2 * active * N + attn(1, P + T / 2) * N  # one step, all rows
    decode_bytes = dev_params * abytes + kv  # per device and step: its weights and cache
    step_s = max(decode_flops / rate, decode_bytes / (device.hbm_gbps * 1e9 * assume.bw_eff))
    n_fwd = 1 + (1 if work.mu > 1 else 0)  # reference (+ old) log-probs
    seconds = {
        "sample": prefill / rate + T * step_s,
        "logps": n_fwd * forward / rate,
        "update": work.mu * 3 * forward / rate,
    }
    seconds["total"] = sum(seconds.values())
    return CapacityPlan(m.name, (data, fsdp, tp), device, total, active, gb, seconds)


def plan_table(plans: list[CapacityPlan]) -> str:
    """Markdown table, one column per plan (GB per device; seconds per RL step)."""
    head = [f"{p.model} {p.mesh[0]}x{p.mesh[1]}x{p.mesh[2]} {p.device.name}" for p in plans]
    rows = [
        (
            "parameters (total / active)",
            [f"{p.params_total / 1e9:.2f}B / {p.params_active / 1e9:.2f}B" for p in plans],
        ),
    ]
    names = {
        "policy": "policy params", "reference": "reference params", "adam": "Adam mu + nu",
        "gradients": "gradients (update)", "optimizer_update": "optimizer transients (update)",
        "kv_cache": "KV cache (sampling)",
        "sampler_weights": "sampler weight copy", "activations": "activations (update)",
    }  # fmt: skip
    for k, label in names.items():
        rows.append((f"{label}, GB/device", [f"{p.gb[k]:.2f}" for p in plans]))
    rows.append(("peak, GB/device", [f"{p.peak_gb:.2f}" for p in plans]))
    rows.append(("HBM, GB/device", [f"{p.device.hbm_gb:.0f}" for p in plans]))
    for k in ("sample", "logps", "update", "total"):
        rows.append((f"{k}, s/step", [f"{p.seconds[k]:.2f}" for p in plans]))
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(plans)]
    lines += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in rows]
    return "\n".join(lines)


# The configurations docs/scaling.md discusses: (model, mesh, devices, device).
DOC_CONFIGS = [
    ("qwen3-0.6b", MeshConfig(8, 1, 1), 8, "tpu-v6e"),
    ("qwen3-0.6b", MeshConfig(8, 1, 1), 8, "h100"),
    ("qwen3-8b", MeshConfig(4, 8, 1), 32, "tpu-v5p"),
    ("qwen3-8b", MeshConfig(2, 8, 1), 16, "h100"),
    ("30b-a3b-class", MeshConfig(2, 8, 2), 32, "tpu-v5p"),
    ("30b-a3b-class", MeshConfig(1, 8, 2), 16, "h200"),
]
DOC_WORKLOADS = [
    (
        "memory.micro_batch_rows=0, memory.remat=none (the defaults: all N/dp rows in one pass)",
        Workload(),
    ),
    (
        "memory.micro_batch_rows=4, memory.remat=layer (micro-batches of 4 rows per device, "
        "per-layer remat)",
        Workload(micro_batch=4, remat="layer"),
    ),
]


def doc_tables() -> str:
    """The tables of docs/scaling.md: every DOC_CONFIGS column under each DOC_WORKLOADS."""
    out = []
    for title, work in DOC_WORKLOADS:
        plans = [plan(plan_model(n), mesh, k, DEVICES[d], work) for n, mesh, k, d in DOC_CONFIGS]
        w = work
        out.append(
            f"**{title}** (B={w.prompts} prompts x G={w.group}, P={w.prompt_len}, "
            f"T={w.new_tokens}, mu={w.mu})\n\n{plan_table(plans)}"
        )
    return "\n\n".join(out)
