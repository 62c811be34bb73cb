"""Sharding on 8 fake CPU devices: table-predicted shardings, sharded == single device, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from agrl.config import MeshConfig
from agrl.model import completion_logps, forward, init_params, param_logical_axes, preset
from agrl.model.params import place_params
from agrl.parallel.sharding import (
    LOGICAL_AXIS_RULES,
    batch_sharding,
    constrain,
    make_mesh,
)
from tests.tolerance import f32_tol

CFG = dataclasses.replace(preset("tiny"), num_layers=2, vocab_size=512, tie_embeddings=False)


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == 8, "conftest sets 8 fake devices"
    return make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))


def test_mesh_fill():
    assert dict(make_mesh(MeshConfig()).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2)).shape)["fsdp"] == 2
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(MeshConfig(data=3, fsdp=2, tensor=2))


def test_every_parameter_follows_the_table(mesh):
    params = init_params(CFG, jax.random.key(0))
    axes = param_logical_axes(CFG)
    sharded = place_params(params, CFG, mesh)
    flat = jax.tree_util.tree_leaves_with_path(sharded)
    axes_flat = jax.tree_util.tree_structure(params).flatten_up_to(axes)
    assert len(flat) == len(axes_flat) >= 12
    for (path, p), ax in zip(flat, axes_flat, strict=True):
        expected = PartitionSpec(*(LOGICAL_AXIS_RULES[a] for a in ax))
        assert p.sharding.spec == expected, jax.tree_util.keystr(path)
        # Really split: each device holds 1/(product of the mapped mesh sizes) of the tensor.
        n = 1
        for entry in expected:
            for name in (entry,) if isinstance(entry, str) else entry or ():
                n *= mesh.shape[name]
        shard = p.addressable_shards[0].data
        assert shard.size * n == p.size, jax.tree_util.keystr(path)
    per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(sharded))
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    assert per_device <= total / 4 * 1.01  # fsdp * tensor = 4; norms are the only replicas


def test_sharded_forward_equals_single_device(mesh):
    params = init_params(CFG, jax.random.key(1), init_std=0.1)
    sharded = place_params(params, CFG, mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, (8, 10)).astype(np.int32)
    mask = np.ones((8, 10), bool)
    mask[3, :4] = False
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ref = np.asarray(forward(params, CFG, ids, pos, mask))
    put = lambda a: jax.device_put(a, batch_sharding(mesh, a.ndim))  # noqa: E731
    f = jax.jit(lambda p, i, q, m: forward(p, CFG, i, q, m, mesh=mesh))
    got = f(sharded, put(ids), put(pos), put(mask))
    tol = f32_tol(np.abs(ref).max(), CFG.intermediate_size, depth=CFG.num_layers + 1)
    assert np.abs(np.asarray(got) - ref).max() <= tol
    lp = jax.jit(
        lambda p: completion_logps(p, CFG, ids[:, :6], mask[:, :6], ids[:, 6:], mask[:, 6:],
                                   mesh=mesh)
    )  # fmt: skip
    ref_lp = completion_logps(params, CFG, ids[:, :6], mask[:, :6], ids[:, 6:], mask[:, 6:])
    ref_lp = np.asarray(ref_lp)
    tol = f32_tol(np.abs(ref_lp).max(), CFG.intermediate_size, depth=CFG.num_layers + 1)
    assert np.abs(np.asarray(lp(sharded)) - ref_lp).max() <= tol


def test_indivisible_dimension_names_the_tensor():
    cfg = dataclasses.replace(CFG, num_kv_heads=1, num_heads=4)  # kv_heads=1 over tensor=2
    mesh = make_mesh(MeshConfig(data=4, fsdp=1, tensor=2))
    with pytest.raises(ValueError, match=r"\['layers'\]\['wk'\]: dim 2 \(kv_heads=1\)"):
        place_params(init_params(cfg, jax.random.key(0)), cfg, mesh)


def test_constrain(mesh):
    x = jnp.ones((8, 4, 16))
    y = jax.jit(lambda x: constrain(x, ("batch", "length", "act_embed"), mesh))(x)
    assert y.sharding.is_equivalent_to(batch_sharding(mesh, 3), 3)
    assert constrain(x, ("batch",), None) is x
    with pytest.raises(ValueError, match="activation: dim 0"):
        constrain(jnp.ones((3, 4)), ("batch", "length"), mesh)
