"""Multi-process runtime: `jax.distributed` start-up, global batches, sharded state and sampler.

One program runs in every process (SPMD, multi-controller JAX). The mesh (agrl.parallel.sharding)
spans the devices of all processes; every jitted step runs on all of them at once, so every
process must call the same jitted functions in the same order.

Division of work in an RL iteration (agrl.train.rollout):
  * device: sampling, log-probs and updates on global arrays sharded over (data, fsdp);
  * host: every process computes the same batch indices (same seed), gathers the sampled
    tokens (`to_host`), and parses and scores all N completions itself, so AGR slot choice,
    the replay table and the metrics are identical everywhere without extra communication;
  * each process places only its own rows of a global batch (`put_rows` ->
    `jax.make_array_from_process_local_data`), so no device ever receives another
    process's slice;
  * only process 0 writes files (metrics, config, plots, the exported model); orbax
    checkpoints are written by all processes (each its own shards), committed by process 0.

Start-up (`init_distributed`): flags, else environment (AGRL_COORDINATOR=host:port,
AGRL_NUM_PROCESSES, AGRL_PROCESS_ID), else cluster auto-detection (AGRL_DISTRIBUTED=auto or
a multi-host TPU slice: `jax.distributed.initialize()` reads the TPU metadata, SLURM or
Open MPI), else a single process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from agrl.parallel.sharding import rows_sharding

ENV_COORDINATOR = "AGRL_COORDINATOR"
ENV_NUM_PROCESSES = "AGRL_NUM_PROCESSES"
ENV_PROCESS_ID = "AGRL_PROCESS_ID"
ENV_AUTO = "AGRL_DISTRIBUTED"  # "auto": let jax.distributed detect the cluster


# ---------------------------------------------------------------------------------------
# Start-up.


@dataclass(frozen=True)
class DistributedSpec:
    """How to join a multi-process run.  auto: `jax.distributed.initialize()` with no
    arguments (TPU pod slices, SLURM, Open MPI fill in the rest); otherwise all three of
    coordinator ("host:port" of process 0), num_processes and process_id are set."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    def __post_init__(self):
        if self.auto:
            return
        given = {
            "coordinator": self.coordinator,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
        }
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(
                f"distributed start-up needs coordinator, num_processes and process_id; "
                f"missing {missing} (flags --coordinator/--num-processes/--process-id or "
                f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})"
            )
        if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id={self.process_id} must be in [0, num_processes={self.num_processes})"
            )
        if ":" not in self.coordinator:
            raise ValueError(f"coordinator={self.coordinator!r}: expected host:port")


def _int_or_none(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: must be an integer") from None


def resolve_spec(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedSpec | None:
    """The start-up of this process: each field from its flag, else from the environment;
    None for a single-process run.  A multi-host TPU slice (TPU_WORKER_HOSTNAMES lists
    several hosts) or AGRL_DISTRIBUTED=auto asks for auto-detection."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_or_none(ENV_NUM_PROCESSES, env.get(ENV_NUM_PROCESSES))
    if process_id is None:
        process_id = _int_or_none(ENV_PROCESS_ID, env.get(ENV_PROCESS_ID))
    if coordinator is None and num_processes is None and process_id is None:
        tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
        if env.get(ENV_AUTO, "").lower() == "auto" or len(tpu_hosts) > 1:
            return DistributedSpec(auto=True)
        return None
    if num_processes == 1 and coordinator is None:
        return None
    return DistributedSpec(coordinator, num_processes, process_id)


def init_distributed(spec: DistributedSpec | None) -> bool:
    """Join the run described by spec (before any other jax call touches a device).
    Returns whether jax.distributed is now initialised.  CPU processes talk over gloo."""
    if spec is None:
        return False
    if jax.distributed.is_initialized():
        return True  # already joined (e.g. by a launcher script)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
        )
    return True


def is_main_process() -> bool:
    """Process 0 writes every file of a run (metrics, config, model, plots, markers)."""
    return jax.process_index() == 0


# ---------------------------------------------------------------------------------------
# Global arrays from host data, and back.


def host_local_rows(sharding: NamedSharding, n_rows: int) -> slice:
    """The rows [start, stop) of a [n_rows, ...] global array that this process's devices
    hold under `sharding` (all rows when the array is replicated)."""
    idx = sharding.addressable_devices_indices_map((n_rows,))
    starts = [s[0].indices(n_rows)[0] for s in idx.values()]
    stops = [s[0].indices(n_rows)[1] for s in idx.values()]
    lo, hi = min(starts), max(stops)
    covered = np.zeros(n_rows, bool)
    for a, b in zip(starts, stops, strict=True):
        covered[a:b] = True
    if not covered[lo:hi].all():
        raise ValueError(
            f"this process's rows of {sharding.spec} are not contiguous; build the mesh "
            "with agrl.parallel.sharding.make_mesh (process-major device order)"
        )
    return slice(lo, hi)


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from host data: this process contributes only the rows its devices
    hold (`jax.make_array_from_process_local_data`).  x: the global [B, ...] array (every
    process computes the same one); only x[host_local_rows] is read."""
    x = np.asarray(x)
    if x.ndim == 0 or sharding.is_fully_replicated:
        return jax.make_array_from_process_local_data(sharding, x, x.shape)
    rows = host_local_rows(sharding, x.shape[0])
    return jax.make_array_from_process_local_data(sharding, x[rows], x.shape)


def put_rows(x: Any, mesh: Mesh) -> jax.Array:
    """A batch-major host array [B, ...] as a global array split on B over (data, fsdp)
    (replicated when the data-parallel size does not divide B)."""
    x = np.asarray(x)
    return put_global(x, rows_sharding(mesh, x.shape))


def to_host(x: Any) -> np.ndarray:
    """The whole value of a (possibly multi-process) array as numpy, on every process.
    Gathering a sharded array across processes is a collective: every process must call it."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def tree_to_host(tree: Any) -> Any:
    """`to_host` of every leaf (e.g. params before a Hugging Face export on process 0)."""
    return jax.tree.map(to_host, tree)


def local_copy(tree: Any) -> Any:
    """Host arrays -> this process's first device (e.g. for evaluation: every process runs
    the whole model on one local device, with no cross-process collectives)."""
    return jax.device_put(tree, jax.local_devices()[0])


def load_on_host():
    """Context in which new arrays land on the host CPU device rather than on accelerator 0
    (a checkpoint read there never occupies one accelerator in full); see place_params."""
    try:
        cpu = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # no CPU backend in this jaxlib configuration
        return contextlib.nullcontext()
    return jax.default_device(cpu)


# ---------------------------------------------------------------------------------------
# Train state.


# ---------------------------------------------------------------------------------------
# The sampler under the mesh.
