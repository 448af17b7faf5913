"""One interface to every model family: a registry keyed by config type, `ModelOutput`, and
`ModelFamily`, the protocol the trainer, the likelihood scorer, generation / sampling and
the alignment probe call instead of asking which model they hold.

A family module (`slm_jax.models.decoder`, `slm_jax.models.lst`) defines its config, its flax
module (whose `__call__` returns a `ModelOutput`) and a `ModelFamily` subclass decorated with
`@register`. Adding a family means one new module that registers itself; nothing else
branches on model types. Callers look a family up with `family(config)` or
`family_of(module)`; the family's module must have been imported (it is, whenever one of its
configs exists).

Batch features are the `slm_jax.contract` model features: int32 `[batch, length]` arrays
keyed by `DECODER_*` names (the CTC stream `[batch, ctc_length]`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import flax.linen as nn
import flax.struct
import jax

from slm_jax import contract

if TYPE_CHECKING:
    from slm_jax.models.decoder import DecoderConfig


@flax.struct.dataclass
class ModelOutput:
    """What a model's forward pass returns, in every mode; a field is None when not requested
    (or, for `covered`, when the model covers every target).

    logits:       fp32 [b, t, vocab], log-probabilities up to a constant, of the target at t.
    hidden:       [b, t, d] final normed states (compute dtype), the states the heads read.
    layer_hidden: [layers + 1, b, t, d] the embeddings and every block's output (probing).
    ctc_logits:   fp32 [b, t, ctc_num_classes] of the mSLAM CTC head (class 0 = blank).
    covered:      bool [b, t]: False where the model has no prediction for the target (an LST
                  row out of global slots); such targets get no loss and are counted.
    cache:        the new KV cache in decode mode (`ModelFamily.init_cache`'s structure).
    """

    logits: jax.Array | None = None
    hidden: jax.Array | None = None
    layer_hidden: jax.Array | None = None
    ctc_logits: jax.Array | None = None
    covered: jax.Array | None = None
    cache: Any = None


class ModelFamily:
    """How callers drive one model family; one instance per config (hashable, so it can be a
    static jit argument). Subclasses set `config_type` and `module_type`, override what differs
    and are decorated with `@register`.

    Capabilities (class attributes):
      has_coverage:      forward returns `covered` (targets it cannot predict).
      needs_modality:    forward needs `decoder_modality` (the TARGET token's `MODALITY_*`), so
                         scoring / sampling must know each id's modality.
      has_layer_hidden:  forward can return `layer_hidden`.
      supports_kv_cache: `init_cache` / `decode` work (else generation re-runs the window).
    """

    config_type: ClassVar[type]
    module_type: ClassVar[type]
    has_coverage: ClassVar[bool] = False
    needs_modality: ClassVar[bool] = False
    has_layer_hidden: ClassVar[bool] = False
    supports_kv_cache: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.config == other.config

    def __hash__(self) -> int:
        return hash((type(self), self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    @property
    def name(self) -> str:
        return self.module_type.__name__

    # -- construction ---------------------------------------------------------------------
    def build(self) -> nn.Module:
        """The flax module for this config (its `__call__` returns a `ModelOutput`)."""
        return self.module_type(self.config)

    def dense_config(self) -> "DecoderConfig":
        """The `DecoderConfig` holding the vocabulary, numerics and CTC head size (and, for the
        dense decoder, every layer's shape)."""
        raise NotImplementedError(f"{type(self).__name__}.dense_config")

    def batch_features(self, ctc: bool = False) -> tuple[str, ...]:
        """Feature names (`slm_jax.contract`) a train / eval batch must carry; `ctc`: the run
        trains the CTC head (adds `CTC_MODEL_FEATURES`)."""
        keys = contract.TRAIN_FEATURES
        return (*keys, *contract.CTC_MODEL_FEATURES) if ctc else keys

    # -- forward --------------------------------------------------------------------------
    def forward(self, module: nn.Module, params, features: Mapping[str, jax.Array], *, step=None,
                logits: bool = True, hidden: bool = False, layer_hidden: bool = False,
                ctc_logits: bool = False) -> ModelOutput:
        """Runs `module` on a batch: `features` holds `DECODER_INPUT_TOKENS` and optionally
        `DECODER_SEGMENT_IDS` / `DECODER_POSITIONS` (default: one segment per row, positions
        0..t-1), `DECODER_MODALITY` and `DECODER_PATCH_IDS` (read by families that need them),
        all int32 [b, t]. `step` (int32 scalar train step, None outside training) drives
        step-dependent behaviour. The flags choose the `ModelOutput` fields. Raises ValueError
        for an output the family cannot produce (`layer_hidden` without `has_layer_hidden`,
        `ctc_logits` without a CTC head)."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def target_weights(self, output: ModelOutput, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The loss terms' per-target weights: (`weights` [b, t] zeroed where `output.covered` is
        False, fp32 scalar sum of the weights removed so). Without coverage: (weights, 0)."""
        import jax.numpy as jnp
        if output.covered is None:
            return weights, jnp.zeros((), jnp.float32)
        uncovered = jnp.sum(jnp.where(output.covered, 0, weights)).astype(jnp.float32)
        return jnp.where(output.covered, weights, 0), uncovered

    # -- generation -----------------------------------------------------------------------
    def init_cache(self, batch: int, slots: int):
        """An empty KV cache for `decode`: `batch` rows of `slots` positions. Raises ValueError
        without `supports_kv_cache`."""
        raise ValueError(f"{self.name} has no KV cache (ModelFamily.supports_kv_cache is False)")

    def decode(self, module: nn.Module, params, tokens: jax.Array, segment_ids: jax.Array,
               positions: jax.Array, cache) -> ModelOutput:
        """Writes int32 [b, n] `tokens` (with their segment ids and RoPE positions) at the cache's
        next free slots: `ModelOutput(logits=[b, n, vocab], cache=new cache)`. Raises ValueError
        without `supports_kv_cache`."""
        raise ValueError(f"{self.name} has no KV cache (ModelFamily.supports_kv_cache is False)")

    def restrict_next_token(self, logits: jax.Array, segment_ids: jax.Array, target_modality: jax.Array, n,
                            modality_of_id: jax.Array) -> jax.Array:
        """Sampling hook (`slm_jax.models.sampling`): fp32 logits [b, vocab] for the token after
        position n of rows with int32 [b, length] segment ids and target modalities (the target at
        n assumed speech), -inf on ids the model cannot emit there; `modality_of_id` int32 [vocab].
        Default: unchanged."""
        return logits


_FAMILIES: dict[type, type[ModelFamily]] = {}


def register(family_cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: makes `family_cls` the family of `family_cls.config_type`. Raises
    ValueError if another family already holds that config type."""
    key = family_cls.config_type
    held = _FAMILIES.get(key)
    if held is not None and held.__qualname__ != family_cls.__qualname__:
        raise ValueError(f"{key.__name__} is already registered to {held.__name__}")
    _FAMILIES[key] = family_cls
    return family_cls


def family(config) -> ModelFamily:
    """The registered family of a model config. Raises TypeError for an unregistered type."""
    for cls in type(config).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls](config)
    known = " or ".join(sorted(c.__name__ for c in _FAMILIES)) or "a registered model config"
    raise TypeError(f"a model config (train.model) must be a {known}, got {type(config).__name__}")


def family_of(module: nn.Module) -> ModelFamily:
    """The family of a built module (looked up by its `config`). Raises TypeError for a module
    without a registered config."""
    config = getattr(module, "config", None)
    if config is None:
        raise TypeError(f"{type(module).__name__} is not a registered slm_jax model (it has no config)")
    return family(config)
