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

from slm_jax.models.decoder import Decoder, DecoderConfig
from slm_jax.models.lst import LSTConfig, LSTModel
from slm_jax.training import partitioning
from slm_jax.training.losses import cross_entropy_sums, per_modality_sums
from slm_jax.training.optimizer import OptimizerConfig, make_optimizer

# decoder_modality (0 unknown, 1 text, 2 speech, 3 marker) only splits the reported loss;
# batches without it (synthetic benchmarks) get zeros.
BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_modality",
              "decoder_segment_ids", "decoder_positions")
# Read by models that need them (LST with word-aligned patches); -1 ("no patch") if missing.
PATCH_KEY = "decoder_patch_ids"
CTC_KEYS = ("decoder_ctc_targets", "decoder_ctc_segment_ids", "decoder_ctc_positions")
NUM_SUMS = 11  # ce, z, weight, text/speech ce + weight, uncovered targets, ctc sum, ctc segments, ctc dropped


def build_model(model_cfg) -> nn.Module:
    """The flax module for a model config: the dense `Decoder` or the latent-patching `LSTModel`."""
    if isinstance(model_cfg, LSTConfig):
        return LSTModel(model_cfg)
    if isinstance(model_cfg, DecoderConfig):
        return Decoder(model_cfg)
    raise TypeError(f"train.model must be a DecoderConfig or LSTConfig, got {type(model_cfg).__name__}")


def _global_cfg(model_cfg) -> DecoderConfig:
    return model_cfg.global_model if isinstance(model_cfg, LSTConfig) else model_cfg


def batch_keys(model_cfg, train_cfg=None) -> tuple[str, ...]:
    keys = BATCH_KEYS
    if isinstance(model_cfg, LSTConfig) and model_cfg.needs_patch_ids:
        keys = (*keys, PATCH_KEY)
    if train_cfg is not None and train_cfg.ctc_weight > 0:
        keys = (*keys, *CTC_KEYS)
    return keys


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    gradient_accumulation_steps: int = 1
    z_loss: float = 1e-4
    # mSLAM auxiliary CTC on speech positions against each packed segment's transcript
    # characters (batches need the decoder_ctc_* features, model ctc_num_classes > 0):
    # loss = LM loss per token + ctc_weight * CTC loss per segment.
    ctc_weight: float = 0.0
    ctc_max_segments: int = 16  # packed segments per row that can carry a transcript
    ctc_max_chars: int = 256  # characters per transcript (longer ones fail in the data pipeline)

    def __post_init__(self):
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"TrainConfig.gradient_accumulation_steps={self.gradient_accumulation_steps} "
                             "must be >= 1")
        if self.ctc_weight < 0:
            raise ValueError(f"TrainConfig.ctc_weight={self.ctc_weight} must be >= 0")


class Trainer:
    """Owns the model, optimizer, mesh and the compiled steps of one run."""

    def __init__(self, model_cfg: DecoderConfig | LSTConfig, opt_cfg: OptimizerConfig, train_cfg: TrainConfig, mesh: Mesh,
                 rules, total_steps: int, batch_size: int, sequence_length: int):
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.mesh, self.rules = mesh, tuple(rules)
        self.batch_size, self.sequence_length = batch_size, sequence_length
        partitioning.validate_batch_and_length(mesh, self.rules, batch_size, sequence_length,
                                               train_cfg.gradient_accumulation_steps)
        self.model = build_model(model_cfg)
        self.batch_keys = batch_keys(model_cfg, train_cfg)
        if train_cfg.ctc_weight > 0 and _global_cfg(model_cfg).ctc_num_classes < 1:
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
    def _loss_sums(self, params, batch, step=None):
        inputs = (batch["decoder_input_tokens"], batch["decoder_segment_ids"], batch["decoder_positions"])
        targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        use_ctc = self.train_cfg.ctc_weight > 0
        uncovered = jnp.zeros((), jnp.float32)
        if isinstance(self.model, LSTModel):
            out = self.model.apply({"params": params}, *inputs, modality=batch["decoder_modality"],
                                   patch_ids=batch.get(PATCH_KEY), return_coverage=True, return_ctc_logits=use_ctc,
                                   step=step)
            logits, covered = out[0], out[1]
            # targets past the row's global slots get no loss, and are counted (never silent)
            uncovered = jnp.sum(jnp.where(covered, 0, weights)).astype(jnp.float32)
            weights = jnp.where(covered, weights, 0)
        else:
            out = self.model.apply({"params": params}, *inputs, return_ctc_logits=use_ctc)
            logits = out[0] if use_ctc else out
        total, ce, z, weight = cross_entropy_sums(logits, targets, weights, self.train_cfg.z_loss)
        by_modality = per_modality_sums(logits, targets, weights, batch["decoder_modality"])
        ctc_sum = ctc_segments = ctc_dropped = jnp.zeros((), jnp.float32)
        if use_ctc:
            ctc_sum, ctc_segments, ctc_dropped = self._ctc_sums(out[-1], batch)
            # The step divides the summed loss by the token count, so the per-segment CTC mean
            # enters scaled by it: total / tokens = LM mean + ctc_weight * CTC mean.
            scale = jax.lax.stop_gradient(weight) / jnp.maximum(ctc_segments, 1.0)
            total = total + self.train_cfg.ctc_weight * ctc_sum * scale
        return total, jnp.concatenate([jnp.stack([ce, z, weight]), by_modality, uncovered[None],
                                       jnp.stack([ctc_sum, ctc_segments, ctc_dropped])])

    def _ctc_sums(self, ctc_logits, batch):
        from slm_jax.models import ctc
        cfg = self.train_cfg
        ctc_targets, lengths = ctc.ctc_targets_from_packed(
            batch["decoder_ctc_targets"], batch["decoder_ctc_segment_ids"], batch["decoder_ctc_positions"],
            cfg.ctc_max_segments, cfg.ctc_max_chars, leading_sentinel=True)
        loss_sum, num = ctc.ctc_loss_from_batch(
            ctc_logits, {**batch, "ctc_targets": ctc_targets, "ctc_target_lengths": lengths})
        # transcript characters that do not fit [ctc_max_segments, ctc_max_chars] (never silent:
        # train.py stops on them)
        chars = (batch["decoder_ctc_segment_ids"] > 0) & (batch["decoder_ctc_positions"] > 0)
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
                mb = nn.with_logical_constraint(mb, {k: ("batch", "length") for k in mb})
                (_, s), g = grad_fn(params, mb)
                return (jax.tree.map(jnp.add, g_acc, g), s_acc + s), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, sums), _ = jax.lax.scan(body, (zeros, jnp.zeros(NUM_SUMS, jnp.float32)), micro)
        ce, z, weight = sums[0], sums[1], sums[2]
        denom = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        # param_norm is also the guard that keeps a blown-up update out of checkpoints.
        metrics = {"loss": ce / denom, "z_loss": z / denom, "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(new_params),
                   "loss_text": _ratio(sums[3], sums[4]), "loss_speech": _ratio(sums[5], sums[6]),
                   "learning_rate": self.schedule(state["step"]), "target_tokens": weight}
        if isinstance(self.model, LSTModel):
            metrics["uncovered_tokens"] = sums[7]
        if self.train_cfg.ctc_weight > 0:
            metrics["ctc_loss"] = _ratio(sums[8], sums[9])
            metrics["ctc_segments"] = sums[9]
            metrics["ctc_dropped_chars"] = sums[10]
        return new_state, metrics

    def _eval_step(self, params, batch):
        _, sums = self._loss_sums(params, batch)
        return {"loss_sum": sums[0], "target_tokens": sums[2]}

    def train_step(self, state, batch):
        with self.context():
            return self._jit_train(state, batch)

    def eval_step(self, params, batch):
        with self.context():
            return self._jit_eval(params, batch)

    # -- batches --------------------------------------------------------------------------
    def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> one global jax.Array per key (multi-host safe)."""
        fills = {"decoder_modality": 0, PATCH_KEY: -1}
        if "decoder_ctc_targets" in self.batch_keys and "decoder_ctc_targets" not in local_batch:
            raise KeyError("TrainConfig.ctc_weight > 0 but the batch has no decoder_ctc_* features: use a task "
                           "with ctc_targets (slm_jax.data.ctc_targets) and DatasetConfig.ctc_length")
        for key, fill in fills.items():
            if key in self.batch_keys and key not in local_batch:
                local_batch = {**local_batch,
                               key: np.full_like(np.asarray(local_batch["decoder_target_tokens"]), fill)}
        missing = [k for k in self.batch_keys if k not in local_batch]
        if missing:
            raise KeyError(f"batch lacks features {missing}; a DecoderFeatureConverter batch has {BATCH_KEYS}")
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_batch[k], np.int32))
                for k in self.batch_keys}

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        shape = (self.batch_size, self.sequence_length)
        # the packed CTC stream holds up to ctc_max_segments transcripts, each after a sentinel
        ctc_shape = (self.batch_size, self.train_cfg.ctc_max_segments * (self.train_cfg.ctc_max_chars + 1))
        return {k: jax.ShapeDtypeStruct(ctc_shape if k in CTC_KEYS else shape, jnp.int32,
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
