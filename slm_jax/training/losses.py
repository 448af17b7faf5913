"""Next-token cross-entropy over packed rows, with an optional z-loss (PaLM)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float = 0.0):
    """Weighted SUMS (not means) so gradient accumulation can normalise once at the end.

    Returns (loss_sum incl. z-loss, cross-entropy sum, z-loss sum, weight sum).
    z-loss = z_loss * logsumexp(logits)^2 keeps the softmax normaliser near 1 (bf16 safety).
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = (log_z - target_logit) * weights
    zl = z_loss * jnp.square(log_z) * weights
    ce_sum, z_sum = jnp.sum(ce), jnp.sum(zl)
    return ce_sum + z_sum, ce_sum, z_sum, jnp.sum(weights)


# Modality ids of target tokens (slm_jax.data.token_space): loss is also reported per kind.
MODALITY_TEXT, MODALITY_SPEECH = 1, 2


def per_modality_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, modality: jax.Array):
    """[ce_text, tokens_text, ce_speech, tokens_speech]: cross-entropy sums by target modality.

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
