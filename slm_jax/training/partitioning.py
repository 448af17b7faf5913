"""Device mesh and logical-axis rules: how parameters, optimizer state and batches shard.

Mesh axes are ('data', 'fsdp', 'tensor'); their sizes come from gin (`MeshConfig`), one
of them may be -1 to take the remaining devices. Model code only names LOGICAL axes
(batch, length, embed, heads, ...); the rules below map them onto mesh axes.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
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


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh (gin: `MeshConfig.*`); every field is checked in `__post_init__`.

    Attributes:
      data: devices on the pure data-parallel axis (params replicated); int >= 1, or -1.
      fsdp: devices on the FSDP axis (batch AND weights' embed dim sharded); int >= 1, or -1.
      tensor: devices on the tensor-parallel axis (heads / mlp / vocab); int >= 1, or -1.
        At most one of data / fsdp / tensor may be -1: it takes the remaining devices.
        Their product must equal the number of devices (checked by `axis_sizes`).
      logical_axis_rules: sequence of (logical axis name: str, target) pairs, where target
        is None (not sharded), one mesh axis name or a sequence of them, each in
        ('data', 'fsdp', 'tensor'); the first rule for a name wins (flax semantics).

    Raises MeshError naming `MeshConfig.<field>` for a bad value.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    logical_axis_rules: tuple = DEFAULT_RULES

    def __post_init__(self):
        named = [(f"MeshConfig.{axis}={s!r}", s) for axis, s in zip(MESH_AXES, (self.data, self.fsdp, self.tensor))]
        bad = [key for key, s in named if not _is_int(s) or (s != -1 and s < 1)]
        fills = [key for key, s in named if _is_int(s) and s == -1]
        if bad or len(fills) > 1:
            why = ", ".join(bad) if bad else f"{', '.join(fills)}: more than one axis is -1"
            raise MeshError(f"{why}: each mesh axis size must be a positive int, and at most one may be -1 "
                            f"(fill the remaining devices)")
        self._check_rules()

    def _check_rules(self) -> None:
        rules = self.logical_axis_rules
        where = "MeshConfig.logical_axis_rules"
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
            raise MeshError(f"{where}={rules!r}: must be a sequence of (logical axis, mesh axes) pairs")
        for rule in rules:
            if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2 \
                    or not isinstance(rule[0], str):
                raise MeshError(f"{where}: rule {rule!r} must be a (logical axis name, mesh axes) pair")
            target = rule[1]
            axes = () if target is None else (target,) if isinstance(target, str) else target
            if not isinstance(axes, Sequence) or any(a not in MESH_AXES for a in axes):
                raise MeshError(f"{where}: rule {tuple(rule)!r} maps to {target!r}; expected None, a mesh "
                                f"axis or a sequence of mesh axes from {MESH_AXES}")

    def axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes for `num_devices` devices, the -1 axis filled in.

        Raises MeshError if the sizes do not multiply to `num_devices`.
        """
        sizes = [self.data, self.fsdp, self.tensor]
        fill = [i for i, s in enumerate(sizes) if s == -1]
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
    """A Mesh with axes ('data', 'fsdp', 'tensor') over `devices` (default: all of jax.devices()).

    Raises MeshError (via `MeshConfig.axis_sizes`) if the sizes do not fit the devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.axis_sizes(len(devices))
    try:  # physical-topology-aware placement on TPU/GPU
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except Exception:  # noqa: BLE001 - CPU and odd topologies: plain order is fine
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def mesh_axes_for(logical: str, rules) -> tuple[str, ...]:
    """Mesh axes a logical axis maps to under `rules` ('batch' -> ('data','fsdp')); () if unsharded."""
    for name, target in rules:
        if name == logical:
            if target is None:
                return ()
            return (target,) if isinstance(target, str) else tuple(target)
    return ()


def axis_product(mesh: Mesh, axes: Sequence[str]) -> int:
    """Number of devices spanned by mesh `axes` (1 for none); KeyError for an unknown axis."""
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_shardings(logical_specs, mesh: Mesh, rules):
    """A tree of logical PartitionSpecs -> a tree of NamedShardings on `mesh` (same structure)."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Sharding of a [batch, length] array: rows over the data-parallel axes, length per the rules."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy of the array on every device of `mesh` (any shape, any dtype)."""
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh, rules) -> int:
    """Number of ways the 'batch' logical axis is split (e.g. data x fsdp)."""
    return axis_product(mesh, mesh_axes_for("batch", rules))


def validate_batch_and_length(mesh: Mesh, rules, batch_size: int, sequence_length: int,
                              accumulation_steps: int = 1) -> None:
    """Global batch / sequence length must split evenly over the axes they shard on.

    `batch_size`: GLOBAL rows per step (DatasetConfig.batch_size); `sequence_length`: tokens
    per row (DatasetConfig.sequence_length); `accumulation_steps`: microbatches per step
    (TrainConfig.gradient_accumulation_steps). Raises MeshError naming the gin key otherwise.
    """
    dp = data_parallel_size(mesh, rules)
    if batch_size % (dp * accumulation_steps):
        raise MeshError(
            f"BATCH_SIZE={batch_size} (DatasetConfig.batch_size) is not divisible by the data-parallel "
            f"size {dp} (mesh data x fsdp) x TrainConfig.gradient_accumulation_steps={accumulation_steps}")
    if batch_size % jax.process_count():
        raise MeshError(f"BATCH_SIZE={batch_size} (DatasetConfig.batch_size) is not divisible by the "
                        f"{jax.process_count()} processes")
    lp = axis_product(mesh, mesh_axes_for("length", rules))
    if sequence_length % lp:
        raise MeshError(f"SEQUENCE_LENGTH={sequence_length} is not divisible by {lp}, the size of the mesh "
                        f"axes {mesh_axes_for('length', rules)} the 'length' logical axis is sharded over "
                        f"(DatasetConfig.sequence_length must be a multiple of {lp})")


def validate_param_shardings(abstract_params, shardings) -> None:
    """Every sharded dim must divide by its mesh axes; MeshError naming the parameter otherwise.

    `abstract_params`: a tree of arrays or ShapeDtypeStructs; `shardings`: a tree of
    NamedShardings with the same leaves (as from `logical_to_shardings`).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
        for dim, axes in zip(leaf.shape, sharding.spec):
            axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
            n = axis_product(sharding.mesh, axes)
            if dim % n:
                raise MeshError(f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape}: dim {dim} is "
                                f"sharded over mesh axes {axes} of size {n}, which does not divide it; change "
                                f"MeshConfig or MeshConfig.logical_axis_rules")
