"""Running an opaque kernel (a Pallas custom call) per device shard under a sharded jit.

The SPMD partitioner cannot split a custom call, so it would gather and replicate its
inputs; `shard_map_logical` instead runs the kernel on each device's block, with the
blocks given by LOGICAL axis names under the active flax rules (MaxText's pattern for
splash attention). Without an active mesh, or when every named axis is unsharded, it is a
plain call.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec as P


def mesh_axes_of(logical_axes: Sequence[str | None]) -> tuple:
    """The mesh axes (None, a name or a tuple of names per dim) that the active rules give
    `logical_axes`, or all None without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return tuple(None for _ in logical_axes)
    return tuple(nn.logical_to_mesh_axes(tuple(logical_axes)))


def shards_of(mesh_axes) -> int:
    """How many blocks one dim with these mesh axes is split into."""
    mesh = jax.sharding.get_abstract_mesh()
    names = tuple(jax.tree.leaves(mesh_axes))
    return int(np.prod([mesh.shape[a] for a in names])) if names else 1


def shard_map_logical(fn: Callable, args: Sequence[jax.Array], arg_axes: Sequence[Sequence[str | None]],
                      out_axes: Sequence[str | None]):
    """`fn(*args)` run per device block: `jax.shard_map` with in/out specs from the logical
    axes of each arg (`arg_axes[i]` names every dim of `args[i]`) and of the output.

    Falls back to the plain call when no mesh is active, when nothing is sharded, or when a
    sharded dim does not divide (e.g. the 1-row batch of parameter init): the kernel then sees
    whole arrays, which is what it computes anyway.
    """
    specs = [mesh_axes_of(axes) for axes in arg_axes]
    out_spec = mesh_axes_of(out_axes)
    divisible = all(a.shape[d] % shards_of(s[d]) == 0 for a, s in zip(args, specs) for d in range(a.ndim))
    if not divisible or all(shards_of(ax) == 1 for s in specs for ax in s):
        return fn(*args)
    mesh = jax.sharding.get_abstract_mesh()
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(P(*s) for s in specs), out_specs=P(*out_spec),
                         check_vma=False)(*args)
