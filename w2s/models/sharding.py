"""Parameter sharding by path rules over a ("data", "fsdp", "tp") mesh.

Each family lists (regex over the parameter path, mesh axis per dimension). A dimension that
the named axes do not divide evenly is replicated instead, so any mesh shape is valid.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tp")


def make_mesh(data: int = -1, fsdp: int = 1, tp: int = 1, devices=None) -> Mesh:
    """A 3-axis mesh; -1 in one axis takes the devices left over."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tp]
    known = math.prod(s for s in sizes if s != -1)
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} fsdp={sizes[1]} tp={sizes[2]} needs {math.prod(sizes)} devices, "
            f"found {len(devices)}"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def spec_for(path: tuple, shape: tuple[int, ...], rules, mesh: Mesh) -> PartitionSpec:
    """First matching rule wins; dims the mesh axis does not divide stay replicated."""
    name = path_str(path)
    for pattern, axes in rules:
        if re.fullmatch(pattern, name):
            if len(axes) != len(shape):
                raise ValueError(
                    f"sharding rule {pattern!r} has {len(axes)} axes, {name} has shape {shape}"
                )
            fitted = [
                ax if ax is not None and dim % mesh.shape[ax] == 0 else None
                for ax, dim in zip(axes, shape, strict=True)
            ]
            return PartitionSpec(*fitted)
    return PartitionSpec()


def named_sharding(path: tuple, shape: tuple[int, ...], rules, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, spec_for(path, shape, rules, mesh))


def shard_state(state, rules, mesh: Mesh):
    """Place every array of an NNX state on the mesh by the rules (others replicated)."""
    from flax import nnx

    flat = [
        (
            path,
            var.replace(
                jax.device_put(
                    var.get_value(), named_sharding(path, var.get_value().shape, rules, mesh)
                )
            ),
        )
        for path, var in nnx.to_flat_state(state)
    ]
    return nnx.from_flat_state(flat)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Examples split over the data and fsdp axes (after ``leading`` unsplit axes, e.g. seeds)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading), ("data", "fsdp")))


def on_mesh(x: jax.Array, mesh: Mesh) -> jax.Array:
    """``x`` unchanged if it already spans the mesh, else replicated over it."""
    if len(x.sharding.device_set) == mesh.size:
        return x
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
