"""Train state, sharded initialisation and the jitted train / eval steps.

The state is a plain dict {'step', 'params', 'opt_state'} so Orbax, `slm-jax inspect`
and export code see ordinary pytrees. Its shardings come from the params' logical axis
names through the mesh rules; the optimizer's param-shaped leaves (Adam mu/nu) follow
their params, the rest is replicated.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from slm_jax import contract
from slm_jax.models import interface
from slm_jax.training import partitioning
from slm_jax.training.losses import LossSums, cross_entropy_sums, per_modality_sums
from slm_jax.training.optimizer import OptimizerConfig, make_optimizer


def build_model(model_cfg) -> nn.Module:
    """The flax module of a registered model config (`slm_jax.models.interface`). Raises
    TypeError for an unregistered config type."""
    return interface.family(model_cfg).build()


def batch_keys(model_cfg, train_cfg=None) -> tuple[str, ...]:
    """The `slm_jax.contract` features a train batch of this model (and run) carries."""
    ctc = train_cfg is not None and train_cfg.ctc_weight > 0
    return interface.family(model_cfg).batch_features(ctc=ctc)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loss and step options (gin: `TrainConfig.*`), validated in `__post_init__` (ValueError
    naming the key).

    gradient_accumulation_steps: micro-batches per optimizer step, >= 1 (row r goes to
      micro-batch r % steps; gradients and loss sums are added, then normalised once).
    z_loss: weight of the PaLM z-loss `logsumexp(logits)^2` per target token, >= 0.
    ctc_weight: weight of the mSLAM auxiliary CTC loss, >= 0 (0: off). Batches then need the
      decoder_ctc_* features and the model a CTC head (DecoderConfig.ctc_num_classes > 0):
      loss = LM loss per token + ctc_weight * CTC loss per transcript segment.
    ctc_max_segments: packed segments per row that can carry a transcript, >= 1.
    ctc_max_chars: characters per transcript, >= 1 (longer ones fail in the data pipeline).
    """

    gradient_accumulation_steps: int = 1
    z_loss: float = 1e-4
    ctc_weight: float = 0.0
    ctc_max_segments: int = 16
    ctc_max_chars: int = 256

    def __post_init__(self):
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"TrainConfig.gradient_accumulation_steps={self.gradient_accumulation_steps} "
                             "must be >= 1")
        if not self.z_loss >= 0:
            raise ValueError(f"TrainConfig.z_loss={self.z_loss} must be >= 0")
        if not self.ctc_weight >= 0:
            raise ValueError(f"TrainConfig.ctc_weight={self.ctc_weight} must be >= 0")
        for name in ("ctc_max_segments", "ctc_max_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")


class Trainer:
    """Owns the model, optimizer, mesh and the compiled steps of one run.

    `model_cfg` is any registered model config (`slm_jax.models.interface`); the family it
    maps to builds the module, names the batch features and runs the forward pass. Raises
    TypeError for an unregistered config, `partitioning.MeshError` when batch / length / params
    do not fit the mesh, ValueError when `TrainConfig.ctc_weight > 0` and the model has no CTC head.
    """

    def __init__(self, model_cfg, opt_cfg: OptimizerConfig, train_cfg: TrainConfig, mesh: Mesh,
                 rules, total_steps: int, batch_size: int, sequence_length: int):
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.mesh, self.rules = mesh, tuple(rules)
        self.batch_size, self.sequence_length = batch_size, sequence_length
        partitioning.validate_batch_and_length(mesh, self.rules, batch_size, sequence_length,
                                               train_cfg.gradient_accumulation_steps)
        self.family = interface.family(model_cfg)
        self.model = self.family.build()
        self.batch_keys = self.family.batch_features(ctc=train_cfg.ctc_weight > 0)
        if train_cfg.ctc_weight > 0 and self.family.dense_config().ctc_num_classes < 1:
            raise ValueError(f"TrainConfig.ctc_weight={train_cfg.ctc_weight} needs a CTC head: set "
                             "DecoderConfig.ctc_num_classes to the size of the run's CharVocabulary")
        self.tx, self.schedule = make_optimizer(opt_cfg, total_steps)

        abstract_key = jax.eval_shape(lambda: jax.random.key(0))
        with self.context():
            boxed = jax.eval_shape(self._init_boxed_params, abstract_key)
        param_specs = nn.get_partition_spec(boxed)
        abstract_params = nn.meta.unbox(boxed)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        opt_specs = optax.tree_map_params(self.tx, lambda _, spec: spec, abstract_opt, param_specs,
                                          transform_non_params=lambda _: P(),
                                          is_leaf=lambda x: isinstance(x, P))
        specs = {"step": P(), "params": param_specs, "opt_state": opt_specs}
        self.state_shardings = partitioning.logical_to_shardings(specs, mesh, self.rules)
        partitioning.validate_param_shardings(abstract_params, self.state_shardings["params"])
        abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params, "opt_state": abstract_opt}
        self.abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                           abstract, self.state_shardings)
        self.batch_sharding = partitioning.batch_sharding(mesh, self.rules)
        self.batch_shardings = {k: self.batch_sharding for k in self.batch_keys}
        replicated = partitioning.replicated(mesh)

        self._jit_init = jax.jit(self._init_state, out_shardings=self.state_shardings)
        self._jit_train = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_shardings),
                                  out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
        self._jit_eval = jax.jit(self._eval_step, in_shardings=(self.state_shardings["params"], self.batch_shardings),
                                 out_shardings=replicated)

    # -- context -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def context(self):
        """Mesh + logical rules active while tracing, so activation constraints bind."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    # -- initialisation -------------------------------------------------------------------
    def _init_boxed_params(self, rng):
        tokens = jnp.zeros((1, self.sequence_length), jnp.int32)
        return self.model.init(rng, tokens)["params"]

    def _init_state(self, rng):
        params = nn.meta.unbox(self._init_boxed_params(rng))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

    def init_state(self, seed: int):
        """Fresh state, created directly in its shards (never whole on one device)."""
        with self.context():
            return self._jit_init(jax.random.key(seed))

    # -- steps ----------------------------------------------------------------------------
    def _loss_sums(self, params, batch, step=None) -> tuple[jax.Array, LossSums]:
        """(fp32 scalar loss to differentiate: summed LM loss + z-loss + scaled CTC, `LossSums`)."""
        targets = batch[contract.DECODER_TARGET_TOKENS]
        use_ctc = self.train_cfg.ctc_weight > 0
        out = self.family.forward(self.model, params, batch, step=step, ctc_logits=use_ctc)
        # targets the model cannot predict (LST past its global slots) get no loss, and are counted
        weights, uncovered = self.family.target_weights(out, batch[contract.DECODER_LOSS_WEIGHTS])
        total, ce, z, weight = cross_entropy_sums(out.logits, targets, weights, self.train_cfg.z_loss)
        text_ce, text_weight, speech_ce, speech_weight = per_modality_sums(
            out.logits, targets, weights, batch[contract.DECODER_MODALITY])
        ctc_sum = ctc_segments = ctc_dropped = jnp.zeros((), jnp.float32)
        if use_ctc:
            ctc_sum, ctc_segments, ctc_dropped = self._ctc_sums(out.ctc_logits, batch)
            # The step divides the summed loss by the token count, so the per-segment CTC mean
            # enters scaled by it: total / tokens = LM mean + ctc_weight * CTC mean.
            scale = jax.lax.stop_gradient(weight) / jnp.maximum(ctc_segments, 1.0)
            total = total + self.train_cfg.ctc_weight * ctc_sum * scale
        return total, LossSums(ce_sum=ce, z_sum=z, weight=weight, text_ce=text_ce, text_weight=text_weight,
                               speech_ce=speech_ce, speech_weight=speech_weight, uncovered=uncovered,
                               ctc_sum=ctc_sum, ctc_segments=ctc_segments, ctc_dropped=ctc_dropped)

    def _ctc_sums(self, ctc_logits, batch):
        from slm_jax.models import ctc
        cfg = self.train_cfg
        ctc_targets, lengths = ctc.ctc_targets_from_packed(
            batch[contract.DECODER_CTC_TARGETS], batch[contract.DECODER_CTC_SEGMENT_IDS],
            batch[contract.DECODER_CTC_POSITIONS],
            cfg.ctc_max_segments, cfg.ctc_max_chars, leading_sentinel=True)
        loss_sum, num = ctc.ctc_loss_from_batch(
            ctc_logits, {**batch, "ctc_targets": ctc_targets, "ctc_target_lengths": lengths})
        # transcript characters that do not fit [ctc_max_segments, ctc_max_chars] (never silent:
        # train.py stops on them)
        chars = (batch[contract.DECODER_CTC_SEGMENT_IDS] > 0) & (batch[contract.DECODER_CTC_POSITIONS] > 0)
        dropped = jnp.sum(chars) - jnp.sum(lengths)
        return loss_sum.astype(jnp.float32), num.astype(jnp.float32), dropped.astype(jnp.float32)

    def _train_step(self, state, batch):
        params = state["params"]
        grad_fn = jax.value_and_grad(lambda p, b: self._loss_sums(p, b, state["step"]), has_aux=True)
        accum = self.train_cfg.gradient_accumulation_steps
        if accum == 1:
            (_, sums), grads = grad_fn(params, batch)
        else:
            # Row r goes to micro-batch r % accum, so every device keeps its local rows.
            micro = jax.tree.map(lambda x: x.reshape(-1, accum, *x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, mb):
                g_acc, s_acc = carry
                mb = nn.with_logical_constraint(mb, {k: (contract.AXIS_BATCH, contract.AXIS_LENGTH) for k in mb})
                (_, s), g = grad_fn(params, mb)
                return (jax.tree.map(jnp.add, g_acc, g), s_acc + s), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, sums), _ = jax.lax.scan(body, (zeros, LossSums.zeros()), micro)
        denom = jnp.maximum(sums.weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        # param_norm is also the guard that keeps a blown-up update out of checkpoints.
        metrics = {"loss": sums.ce_sum / denom, "z_loss": sums.z_sum / denom, "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(new_params),
                   "loss_text": _ratio(sums.text_ce, sums.text_weight),
                   "loss_speech": _ratio(sums.speech_ce, sums.speech_weight),
                   "learning_rate": self.schedule(state["step"]), "target_tokens": sums.weight}
        if self.family.has_coverage:
            metrics["uncovered_tokens"] = sums.uncovered
        if self.train_cfg.ctc_weight > 0:
            metrics["ctc_loss"] = _ratio(sums.ctc_sum, sums.ctc_segments)
            metrics["ctc_segments"] = sums.ctc_segments
            metrics["ctc_dropped_chars"] = sums.ctc_dropped
        return new_state, metrics

    def _eval_step(self, params, batch):
        _, sums = self._loss_sums(params, batch)
        return {"loss_sum": sums.ce_sum, "target_tokens": sums.weight}

    def train_step(self, state, batch):
        """One optimizer step on a `global_batch`: (new state, metrics) where metrics maps names to
        fp32 scalars: loss / z_loss (nats per target token), grad_norm, param_norm, loss_text /
        loss_speech (NaN without such targets), learning_rate, target_tokens, and
        uncovered_tokens (families with coverage) and ctc_loss / ctc_segments /
        ctc_dropped_chars (TrainConfig.ctc_weight > 0). The input state is donated."""
        with self.context():
            return self._jit_train(state, batch)

    def eval_step(self, params, batch):
        """{'loss_sum': cross-entropy summed over the weighted targets (nats), 'target_tokens':
        the weight sum}, fp32 scalars, replicated."""
        with self.context():
            return self._jit_eval(params, batch)

    # -- batches --------------------------------------------------------------------------
    def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows (int [local rows, length] per `slm_jax.contract` feature) -> one global
        int32 jax.Array per `batch_keys` entry (multi-host safe). Missing `decoder_modality` /
        `decoder_patch_ids` are filled with MODALITY_PAD / -1; other missing features raise KeyError."""
        fills = {contract.DECODER_MODALITY: contract.MODALITY_PAD, contract.DECODER_PATCH_IDS: -1}
        if contract.DECODER_CTC_TARGETS in self.batch_keys and contract.DECODER_CTC_TARGETS not in local_batch:
            raise KeyError("TrainConfig.ctc_weight > 0 but the batch has no decoder_ctc_* features: use a task "
                           "with ctc_targets (slm_jax.data.preprocessors.ctc_targets) and DatasetConfig.ctc_length")
        for key, fill in fills.items():
            if key in self.batch_keys and key not in local_batch:
                local_batch = {**local_batch,
                               key: np.full_like(np.asarray(local_batch[contract.DECODER_TARGET_TOKENS]), fill)}
        missing = [k for k in self.batch_keys if k not in local_batch]
        if missing:
            raise KeyError(f"batch lacks features {missing}; a DecoderFeatureConverter batch has "
                           f"{contract.TRAIN_FEATURES}")
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_batch[k], np.int32))
                for k in self.batch_keys}

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """`global_batch`'s shapes: int32 [batch, length], the CTC stream [batch, ctc_length]."""
        shape = (self.batch_size, self.sequence_length)
        # the packed CTC stream holds up to ctc_max_segments transcripts, each after a sentinel
        ctc_shape = (self.batch_size, self.train_cfg.ctc_max_segments * (self.train_cfg.ctc_max_chars + 1))
        return {k: jax.ShapeDtypeStruct(ctc_shape if k in contract.CTC_MODEL_FEATURES else shape, jnp.int32,
                                        sharding=self.batch_sharding) for k in self.batch_keys}

    def lower_train_step(self):
        """Lower the train step on abstract inputs (AOT compile; no arrays allocated)."""
        with self.context():
            return self._jit_train.trace(self.abstract_state, self.abstract_batch()).lower()


def _ratio(total, count):
    """Mean per token, NaN where there are no such tokens (logged as null)."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def shard_bytes_per_device(abstract_tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    return total


def describe(state_or_abstract) -> dict[str, Any]:
    params = state_or_abstract["params"]
    return {"num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))}
