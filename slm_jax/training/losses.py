"""Next-token cross-entropy over packed rows, with an optional z-loss (PaLM), and `LossSums`,
the named sums a train / eval step accumulates."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from slm_jax.contract import MODALITY_SPEECH, MODALITY_TEXT


@flax.struct.dataclass
class LossSums:
    """Weighted SUMS (not means) of one batch, every field a fp32 scalar, so gradient
    accumulation adds them (`+`) and the step normalises once at the end.

    ce_sum:        cross-entropy of the weighted targets, nats.
    z_sum:         z-loss (`z_loss * logsumexp(logits)^2`) of the weighted targets.
    weight:        sum of the target weights (= target tokens with 0/1 weights).
    text_ce, text_weight:     ce_sum / weight over targets of modality MODALITY_TEXT.
    speech_ce, speech_weight: the same over MODALITY_SPEECH targets.
    uncovered:     weight removed because the model had no prediction (LST out of slots).
    ctc_sum:       CTC loss summed over transcript segments, nats.
    ctc_segments:  segments that carried a transcript.
    ctc_dropped:   transcript characters that did not fit the CTC target buffer.
    """

    ce_sum: jax.Array
    z_sum: jax.Array
    weight: jax.Array
    text_ce: jax.Array
    text_weight: jax.Array
    speech_ce: jax.Array
    speech_weight: jax.Array
    uncovered: jax.Array
    ctc_sum: jax.Array
    ctc_segments: jax.Array
    ctc_dropped: jax.Array

    @classmethod
    def zeros(cls) -> "LossSums":
        return cls(**{f: jnp.zeros((), jnp.float32) for f in cls.__dataclass_fields__})

    def __add__(self, other: "LossSums") -> "LossSums":
        return jax.tree.map(jnp.add, self, other)


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0):
    """Weighted SUMS (not means) so gradient accumulation can normalise once at the end.

    logits [b, t, vocab] (any float dtype, computed in fp32), targets int [b, t], weights
    [b, t]. Returns fp32 scalars (loss_sum incl. z-loss, cross-entropy sum, z-loss sum,
    weight sum). z-loss = z_loss * logsumexp(logits)^2 keeps the softmax normaliser near 1
    (bf16 safety).
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = (log_z - target_logit) * weights
    zl = z_loss * jnp.square(log_z) * weights
    ce_sum, z_sum = jnp.sum(ce), jnp.sum(zl)
    return ce_sum + z_sum, ce_sum, z_sum, jnp.sum(weights)


def per_modality_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, modality: jax.Array):
    """fp32 [4] = [ce_text, tokens_text, ce_speech, tokens_speech]: cross-entropy sums by target
    modality (`modality` int [b, t], `slm_jax.contract.MODALITY_*`; other shapes as
    `cross_entropy_sums`).

    Lets a speech-text run see whether text or speech drives the loss; tokens of unknown
    modality (0) count in neither.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = (log_z - target_logit) * weights
    out = []
    for kind in (MODALITY_TEXT, MODALITY_SPEECH):
        mask = (modality == kind).astype(jnp.float32)
        out += [jnp.sum(ce * mask), jnp.sum(weights * mask)]
    return jnp.stack(out)
