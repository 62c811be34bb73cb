"""Per-device memory of the real jitted training steps, read from XLA's compiled executable.

`compiled_step_memory(model_cfg, mesh, ...)` lowers and compiles agrl.train.steps' RL (or
SFT) step for `model_cfg` on `mesh` with abstract inputs only (jax.ShapeDtypeStruct with
the rules table's shardings: no weight is ever materialised), and returns the executable's
memory analysis per device: arguments (params, optimizer state, batch), outputs (aliased
with the donated state), and XLA's temporary buffers (activations, gradients, the
optimizer update). With fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count)
this gives a pod's per-device figures on a laptop: the partitioned program is the same, only
the backend's buffer assignment differs (a CPU executable can schedule differently from a
TPU/GPU one, so the comparison with agrl.experiments.capacity is within a stated factor).
scripts/compiled_memory.py prints the table of docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from agrl.config import GuidanceConfig, LossConfig, MemoryConfig, ModelConfig, OptimConfig
from agrl.parallel.sharding import batch_sharding
from agrl.rl.types import RLBatch
from agrl.train.steps import (
    abstract_train_state,
    make_optimizer,
    make_rl_step,
    make_sft_step,
)

GB = 1e9


@dataclass(frozen=True)
class CompiledMemory:
    """Bytes per device of one compiled step (XLA's CompiledMemoryStats)."""

    argument: int
    output: int
    alias: int  # output bytes that reuse donated argument buffers
    temp: int
    generated_code: int

    @property
    def peak(self) -> int:
        """Arguments + non-aliased outputs + temporaries: what must fit in HBM at once."""
        return self.argument + self.output - self.alias + self.temp

    def gb(self) -> dict[str, float]:
        return {
            "arguments": self.argument / GB,
            "outputs (not aliased)": (self.output - self.alias) / GB,
            "temporaries": self.temp / GB,
            "peak": self.peak / GB,
        }


def _rows(shape: tuple[int, ...], dtype, mesh: Mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_sharding(mesh, 1))


def abstract_rl_batch(
    rows: int, prompt_len: int, new_tokens: int, mesh: Mesh, mu: int = 1
) -> RLBatch:
    """ShapeDtypeStructs of an RLBatch of `rows` sequences, split on rows over the mesh."""
    P, T = prompt_len, new_tokens
    return RLBatch(
        prompt_ids=_rows((rows, P), jnp.int32, mesh),
        prompt_mask=_rows((rows, P), bool, mesh),
        completion_ids=_rows((rows, T), jnp.int32, mesh),
        completion_mask=_rows((rows, T), bool, mesh),
        forced_mask=_rows((rows, T), bool, mesh),
        advantages=_rows((rows,), jnp.float32, mesh),
        ref_logps=_rows((rows, T), jnp.float32, mesh),
        old_logps=None if mu == 1 else _rows((rows, T), jnp.float32, mesh),
    )


def _stats(compiled) -> CompiledMemory:
    m = compiled.memory_analysis()
    if m is None:  # some backends do not report
        raise RuntimeError("this backend's compiled executable has no memory analysis")
    return CompiledMemory(
        int(m.argument_size_in_bytes),
        int(m.output_size_in_bytes),
        int(m.alias_size_in_bytes),
        int(m.temp_size_in_bytes),
        int(m.generated_code_size_in_bytes),
    )


def compiled_step_memory(
    model_cfg: ModelConfig,
    mesh: Mesh,
    *,
    step: str = "rl",
    rows: int,
    prompt_len: int,
    new_tokens: int,
    memory: MemoryConfig = MemoryConfig(),  # noqa: B008  frozen, hashable
    mu: int = 1,
    optimizer: optax.GradientTransformation | None = None,
) -> CompiledMemory:
    """Compile one RL (or SFT) update for `rows` sequences of prompt_len + new_tokens tokens
    on `mesh` from abstract inputs; its per-device memory (module docstring)."""
    opt = optimizer or make_optimizer(OptimConfig(), 100)
    state = abstract_train_state(model_cfg, opt, mesh)
    if step == "rl":
        fn = make_rl_step(
            model_cfg, LossConfig(mu=mu), GuidanceConfig(), opt, mesh=mesh, memory=memory
        )
        batch = abstract_rl_batch(rows, prompt_len, new_tokens, mesh, mu)
    elif step == "sft":
        fn = make_sft_step(model_cfg, opt, mesh=mesh, memory=memory)
        P, T = prompt_len, new_tokens
        batch = {
            "prompt_ids": _rows((rows, P), jnp.int32, mesh),
            "prompt_mask": _rows((rows, P), bool, mesh),
            "completion_ids": _rows((rows, T), jnp.int32, mesh),
            "completion_mask": _rows((rows, T), bool, mesh),
        }
    else:
        raise ValueError(f"step={step!r}: rl or sft")
    return _stats(fn.lower(state, batch).compile())
