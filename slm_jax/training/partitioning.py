"""Device mesh and logical-axis rules: how parameters, optimizer state and batches shard.

Mesh axes are ('data', 'fsdp', 'tensor'); their sizes come from gin (`MeshConfig`), one
of them may be -1 to take the remaining devices. Model code only names LOGICAL axes
(batch, length, embed, heads, ...); the rules below map them onto mesh axes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# MaxText-style defaults: batch over data x fsdp, weights' embed dim over fsdp (ZeRO-3),
# heads / mlp / vocab over tensor. Activations reuse the names; flax skips a mesh axis
# that an earlier dim of the same array already uses (so activations' embed stays whole).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("patch", None),
)


class MeshError(ValueError):
    """A mesh that does not fit the devices, the batch, the sequence or a parameter."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    logical_axis_rules: tuple = DEFAULT_RULES

    def axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        fill = [i for i, s in enumerate(sizes) if s == -1]
        bad = [f"MeshConfig.{MESH_AXES[i]}={s}" for i, s in enumerate(sizes) if s != -1 and s < 1]
        if bad or len(fill) > 1:
            raise MeshError(f"{', '.join(bad) or 'more than one axis is -1'}: each mesh axis size must be "
                            f"a positive int, and at most one may be -1 (fill the remaining devices)")
        known = math.prod(s for s in sizes if s != -1)
        if fill:
            if num_devices % known:
                raise MeshError(f"MeshConfig {dict(zip(MESH_AXES, sizes))}: the fixed axes ({known}) do not "
                                f"divide the {num_devices} devices")
            sizes[fill[0]] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise MeshError(f"MeshConfig data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                            f"{math.prod(sizes)} devices, but {num_devices} are available; set the sizes "
                            f"so their product is {num_devices} (one may be -1)")
        return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.axis_sizes(len(devices))
    try:  # physical-topology-aware placement on TPU/GPU
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except Exception:  # noqa: BLE001 - CPU and odd topologies: plain order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def mesh_axes_for(logical: str, rules) -> tuple[str, ...]:
    """Mesh axes a logical axis maps to under `rules` ('batch' -> ('data','fsdp'))."""
    for name, target in rules:
        if name == logical:
            if target is None:
                return ()
            return (target,) if isinstance(target, str) else tuple(target)
    return ()


def axis_product(mesh: Mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_shardings(logical_specs, mesh: Mesh, rules):
    """A tree of logical PartitionSpecs -> a tree of NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Rows over the data-parallel axes, the length axis per the rules."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh, rules) -> int:
    return axis_product(mesh, mesh_axes_for("batch", rules))


def validate_batch_and_length(mesh: Mesh, rules, batch_size: int, sequence_length: int,
                              accumulation_steps: int = 1) -> None:
    """Global batch / sequence length must split evenly over the axes they shard on."""
    dp = data_parallel_size(mesh, rules)
    if batch_size % (dp * accumulation_steps):
        raise MeshError(
            f"BATCH_SIZE={batch_size} (DatasetConfig.batch_size) is not divisible by the data-parallel "
            f"size {dp} (mesh data x fsdp) x TrainConfig.gradient_accumulation_steps={accumulation_steps}")
    if batch_size % jax.process_count():
        raise MeshError(f"BATCH_SIZE={batch_size} is not divisible by the {jax.process_count()} processes")
    lp = axis_product(mesh, mesh_axes_for("length", rules))
    if sequence_length % lp:
        raise MeshError(f"SEQUENCE_LENGTH={sequence_length} is not divisible by {lp}, the size of the mesh "
                        f"axes {mesh_axes_for('length', rules)} the 'length' logical axis is sharded over")


def validate_param_shardings(abstract_params, shardings) -> None:
    """Every sharded dim must divide by its mesh axes; name the parameter otherwise."""
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
        for dim, axes in zip(leaf.shape, sharding.spec):
            axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
            n = axis_product(sharding.mesh, axes)
            if dim % n:
                raise MeshError(f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape}: dim {dim} is "
                                f"sharded over mesh axes {axes} of size {n}, which does not divide it; change "
                                f"MeshConfig or MeshConfig.logical_axis_rules")
