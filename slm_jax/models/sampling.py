"""Sampling continuations from a dense `Decoder` or an `LSTModel` (one sequence per row).

Each step re-runs the model over a fixed-length window (one compiled program, no KV
cache): simple and exact, meant for evaluation-sized generation, not serving. The dense
decoder's KV-cache generation (batches of prompts of different lengths, stop tokens,
modality forcing) is `slm_jax.evaluation.generate`; this module is its reference and the
LST path. `pick_next_token` (greedy / temperature / top-k / top-p / banned ids) is shared.

LST specifics (patch by patch units, token by token text): a target is predicted from
the context of its own slot (`slm_jax.models.lst` docstring), and whether the next token
starts a new slot depends on the token itself. Generation therefore completes speech
patches: inside a patch that is not yet full (static patching, `patch_size` units) the
next token is a unit of the same patch, sampled among speech ids from the patch's
context; at a patch boundary the model's prediction covers every token (a unit opening
the next patch, a marker, text, EOS). Word-aligned patches need an aligner, so
generation always uses static patches of the config's `patch_size` (as LST does).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax import contract
from slm_jax.models import interface


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0: no top-k filter)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (1: no nucleus filter)")
    if not np.isfinite(temperature):
        raise ValueError(f"temperature={temperature} must be finite (<= 0: greedy)")


def pick_next_token(logits, rng, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    banned=None) -> jax.Array:
    """int32 [b] from logits [b, vocab]: argmax when `temperature <= 0`, else a sample of
    softmax(logits / temperature) restricted to the `top_k` largest logits and to the smallest
    set of top logits whose probability reaches `top_p`. `banned` (bool [vocab] or [b, vocab])
    ids are never picked."""
    logits = logits.astype(jnp.float32)
    if banned is not None:
        logits = jnp.where(banned, -jnp.inf, logits)
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        logits = _nucleus(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _nucleus(logits, top_p: float):
    """Keeps the largest logits while the probability mass BEFORE them is < top_p (so the
    most likely token always stays)."""
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample(model, params, prompt: np.ndarray, num_tokens: int, *, modality_of_id: np.ndarray, rng=None,
           temperature: float = 1.0, eos_id: int | None = None, top_k: int = 0, top_p: float = 1.0,
           banned_ids=None) -> np.ndarray:
    """Continues each row of `prompt` ([b, n] int, all rows the same length n >= 1, starting
    with the run's BOS id as in training inputs: `slm_jax.evaluation.generate` puts it there)
    by `num_tokens` tokens; returns [b, num_tokens].

    `modality_of_id`: int [vocab] (0 pad, 1 text, 2 speech, 3 marker), e.g.
    `SpeechTextVocabulary.modality_ids(np.arange(vocab_size))`; LST needs it to lay out
    patches. After `eos_id` a row keeps emitting `eos_id`. `temperature <= 0` is greedy;
    `top_k`, `top_p` and `banned_ids` (ids never emitted) as in `pick_next_token`. `model`:
    a registered family's module (`slm_jax.models.interface`). Raises ValueError on a bad
    prompt shape, `num_tokens < 1` or bad sampling arguments, TypeError on an unregistered model.
    """
    check_sampling_args(temperature, top_k, top_p)
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"sample: prompt must be [batch, n >= 1] token ids, got shape {prompt.shape}")
    if num_tokens < 1:
        raise ValueError(f"sample: num_tokens must be >= 1, got {num_tokens}")
    b, n0 = prompt.shape
    length = n0 + num_tokens + 1  # room for the dummy look-ahead slot of the last step
    banned = np.zeros((interface.family_of(model).dense_config().vocab_size,), bool)
    if banned_ids is not None and len(banned_ids):
        banned[np.asarray(banned_ids, np.int64)] = True
    tokens = np.zeros((b, length), np.int32)
    tokens[:, :n0] = prompt
    rng = jax.random.key(0) if rng is None else rng
    out = _sample_loop(model, n0, num_tokens, float(temperature), int(top_k), float(top_p), eos_id, params,
                       jnp.asarray(tokens), jnp.asarray(modality_of_id, jnp.int32), jnp.asarray(banned), rng)
    return np.asarray(out)[:, n0 : n0 + num_tokens]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _sample_loop(model, n0: int, num_tokens: int, temperature: float, top_k: int, top_p: float, eos_id, params,
                 tokens, modality_of, banned, rng):
    """The whole loop in one program (module level: repeated calls reuse the compile)."""
    b, length = tokens.shape
    family = interface.family_of(model)

    def logits_at(tokens, n, next_modality):
        """Logits predicting token n+1 given tokens[: n+1]; the target at n is assumed to have
        `next_modality` (only families that need modalities read it)."""
        t = jnp.arange(length)
        seg = (t <= n + 1).astype(jnp.int32)[None].repeat(b, 0)
        pos = jnp.broadcast_to(t, (b, length))
        target_mod = jnp.take(modality_of, jnp.roll(tokens, -1, axis=1))
        target_mod = jnp.where(t[None] == n, next_modality, target_mod)
        features = {contract.DECODER_INPUT_TOKENS: tokens, contract.DECODER_SEGMENT_IDS: seg,
                    contract.DECODER_POSITIONS: pos, contract.DECODER_MODALITY: target_mod}
        return family.forward(model, params, features).logits[:, n], target_mod, seg

    def step(i, carry):
        tokens, rng, done = carry
        n = n0 - 1 + i
        rng, key = jax.random.split(rng)
        logits, target_mod, seg = logits_at(tokens, n, contract.MODALITY_SPEECH)
        logits = family.restrict_next_token(logits, seg, target_mod, n, modality_of)
        nxt = pick_next_token(logits, key, temperature, top_k, top_p, banned)
        if eos_id is not None:
            nxt = jnp.where(done, eos_id, nxt)
            done = done | (nxt == eos_id)
        return tokens.at[:, n + 1].set(nxt), rng, done

    done = jnp.zeros((b,), bool)
    return jax.lax.fori_loop(0, num_tokens, step, (tokens, rng, done))[0]
