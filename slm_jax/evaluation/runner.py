"""A model and its parameters, optionally on a device mesh: what every evaluation runs on.

With a mesh (`ModelRunner.from_trainer`) parameters keep the Trainer's shardings, batches
are split by rows over the data-parallel axes (the rules' `batch` axes), activations follow
the model's logical constraints, and outputs come back replicated, so the same code runs
on one CPU, 8 fake CPU devices or a pod slice. Without a mesh everything is plain jit.

The jitted evaluation functions live at module level with the (hashable) flax module as a
static argument, so repeated evaluations of one model (in-training eval) reuse compiles.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from slm_jax.models import interface


@dataclasses.dataclass
class ModelRunner:
    """`model`: a registered family's module (`slm_jax.models.interface`); `params` its
    parameters; `mesh` / `rules` as the Trainer's, or None / () for plain jit."""

    model: nn.Module
    params: Any
    mesh: Mesh | None = None
    rules: tuple = ()

    @classmethod
    def from_trainer(cls, trainer, params) -> "ModelRunner":
        """The Trainer's model, mesh and rules; `params` placed in the Trainer's shardings."""
        params = jax.device_put(params, trainer.state_shardings["params"])
        return cls(trainer.model, params, trainer.mesh, trainer.rules)

    @property
    def config(self):
        """The model's own config (`DecoderConfig`, `LSTConfig`, ...)."""
        return self.model.config

    @property
    def family(self) -> interface.ModelFamily:
        """The model's family (how to run it); TypeError for an unregistered module."""
        return interface.family_of(self.model)

    @property
    def dense_config(self):
        """The `DecoderConfig` with the vocabulary and widths (`ModelFamily.dense_config`)."""
        return self.family.dense_config()

    @contextlib.contextmanager
    def context(self):
        """Mesh + logical rules while tracing, so the model's constraints bind (as in training)."""
        if self.mesh is None:
            yield
            return
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    @property
    def row_multiple(self) -> int:
        """Batches need a row count divisible by this (the data-parallel size)."""
        if self.mesh is None:
            return 1
        from slm_jax.training.partitioning import data_parallel_size
        return data_parallel_size(self.mesh, self.rules)

    def padded_rows(self, rows: int) -> int:
        m = self.row_multiple
        return max(m, math.ceil(rows / m) * m)

    def rows_for(self, n: int, max_rows: int) -> int:
        """Rows of a batch holding n sequences: the smallest power-of-two multiple of the
        data-parallel size that holds them, at most `max_rows` (little padding, few shapes)."""
        rows = self.row_multiple
        while rows < n:
            rows *= 2
        return min(rows, max_rows)

    def _row_sharding(self, ndim: int) -> NamedSharding:
        from slm_jax.training.partitioning import mesh_axes_for
        axes = mesh_axes_for("batch", self.rules) or None
        return NamedSharding(self.mesh, P(axes, *([None] * (ndim - 1))))

    def put_rows(self, array: np.ndarray) -> jax.Array:
        """A host array whose leading axis is rows -> a global array split by rows.

        Every process passes the same full array (evaluation inputs are read by all of them)."""
        array = np.asarray(array)
        if self.mesh is None:
            return jax.numpy.asarray(array)
        return jax.make_array_from_callback(array.shape, self._row_sharding(array.ndim), lambda idx: array[idx])

    @property
    def on_mesh(self) -> bool:
        return self.mesh is not None


def replicated(tree, on_mesh: bool):
    """Inside a jitted function: outputs replicated on the context mesh, so every process can
    read them whole (a no-op without a mesh)."""
    return jax.lax.with_sharding_constraint(tree, P()) if on_mesh else tree


def bucket_length(n: int, minimum: int = 16) -> int:
    """Padded length for n tokens: the next of 16, 24, 32, 48, 64, 96, ... (2^k and 1.5 * 2^k).

    Two compiled shapes per octave: padding stays under a third (compiles of a large
    model cost far more than the padded tokens of a benchmark)."""
    size = minimum
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4
    return size
