"""Device mesh (data, fsdp, tensor), the one logical-axis rules table, and sharding helpers.

Models name array dimensions logically (`agrl.model.param_logical_axes`: ("vocab", "embed"),
("layers", "embed", "heads", "head_dim"), ...; activations: ("batch", "length", "act_embed")).
LOGICAL_AXIS_RULES maps each logical name to mesh axes; a dimension whose size the mapped
mesh axes do not divide raises with the tensor's name instead of silently replicating.
SPEC 9; the MaxText / flax lm1b pattern.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agrl.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # activations: examples split over data-parallel devices
    "length": None,
    "act_embed": None,  # activations keep the hidden dim whole (weights are gathered)
    "vocab": "tensor",
    "embed": "fsdp",  # ZeRO-3 style: weights split on the hidden dim over fsdp
    "heads": "tensor",  # Megatron style: heads and mlp columns split over tensor
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "norm": None,
}


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes on n_devices; the one -1 size takes the remaining devices.
    Without a -1 the sizes are taken as given (at most n_devices in all)."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"mesh {tuple(sizes)}: {n_devices} devices not divisible")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) > n_devices:
        raise ValueError(f"mesh {tuple(sizes)} needs {math.prod(sizes)} devices, have {n_devices}")
    return sizes[0], sizes[1], sizes[2]


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """Mesh of shape (data, fsdp, tensor) over the devices of every process.

    Devices are laid out in `jax.devices()` order (process-major), so each process holds a
    contiguous block of the data-parallel rows. On TPU the physical topology decides the
    order (`mesh_utils.create_device_mesh`), so that tensor and fsdp collectives stay on the
    fastest interconnect links. A single-process mesh smaller than the device count (e.g.
    mesh.data=1) uses the first devices; a multi-process mesh must use them all.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(cfg, len(devices))
    if math.prod(sizes) < len(devices):
        if jax.process_count() > 1:
            raise ValueError(
                f"mesh {sizes} uses {math.prod(sizes)} of {len(devices)} devices; a "
                "multi-process mesh must span every device (set one size to -1)"
            )
        devices = devices[: math.prod(sizes)]
    if devices[0].platform == "tpu" and len(devices) == jax.device_count():
        from jax.experimental import mesh_utils

        return Mesh(mesh_utils.create_device_mesh(sizes, devices), MESH_AXES)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards: the product of the mesh axes that "batch" maps to."""
    return _mesh_size(mesh, LOGICAL_AXIS_RULES["batch"])


def logical_to_spec(logical_axes: tuple[str | None, ...]) -> PartitionSpec:
    """PartitionSpec of one array from its logical axis names (unknown names raise)."""
    out = []
    for name in logical_axes:
        if name is not None and name not in LOGICAL_AXIS_RULES:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
        out.append(None if name is None else LOGICAL_AXIS_RULES[name])
    return PartitionSpec(*out)


def _mesh_size(mesh: Mesh, entry: str | tuple[str, ...] | None) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[n] for n in names)


def sharding_for(
    name: str, shape: tuple[int, ...], logical_axes: tuple[str | None, ...], mesh: Mesh
) -> NamedSharding:
    """NamedSharding of the tensor `name`; raises if a mesh size does not divide its dim."""
    if len(shape) != len(logical_axes):
        raise ValueError(f"{name}: shape {shape} vs logical axes {logical_axes}")
    spec = logical_to_spec(logical_axes)
    for dim, (size, entry, logical) in enumerate(zip(shape, spec, logical_axes, strict=True)):
        n = _mesh_size(mesh, entry)
        if size % n:
            raise ValueError(
                f"{name}: dim {dim} ({logical}={size}) is not divisible by mesh axes "
                f"{entry} of size {n}"
            )
    return NamedSharding(mesh, spec)


def param_shardings(params: Any, axes: Any, mesh: Mesh) -> Any:
    """Pytree of NamedShardings matching params, from the parallel tree of logical axes."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    axes_flat = treedef.flatten_up_to(axes)
    return treedef.unflatten(
        [
            sharding_for(jax.tree_util.keystr(path), tuple(p.shape), ax, mesh)
            for (path, p), ax in zip(flat, axes_flat, strict=True)
        ]
    )


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...], mesh: Mesh | None) -> jax.Array:
    """with_sharding_constraint of an activation by logical names; identity without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(
        x, sharding_for("activation", tuple(x.shape), logical_axes, mesh)
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a batch-major input [B, ...]: B over the data-parallel axes."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, keys, small host-side tables)."""
    return NamedSharding(mesh, PartitionSpec())


def rows_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Sharding of a batch-major activation input [B, ...]: split on B over (data, fsdp) when
    the data-parallel size divides B, else replicated.

    Only activations may fall back to replication (correct, just not data-parallel, e.g. the
    few prompts of a prefill on a wide mesh); parameters never do (`sharding_for` raises).
    """
    if len(shape) == 0 or shape[0] % data_parallel_size(mesh):
        return replicated(mesh)
    return batch_sharding(mesh, len(shape))
