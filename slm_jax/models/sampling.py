"""Sampling continuations from a dense `Decoder` or an `LSTModel` (one sequence per row).

Each step re-runs the model over a fixed-length window (one compiled program, no KV
cache): simple and exact, meant for evaluation-sized generation, not serving.

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

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.models import lst


def _pick(logits, rng, temperature: float):
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)


def sample(model, params, prompt: np.ndarray, num_tokens: int, *, modality_of_id: np.ndarray, rng=None,
           temperature: float = 1.0, eos_id: int | None = None) -> np.ndarray:
    """Continues each row of `prompt` ([b, n] int, all rows the same length n >= 1, starting
    with the BOS id 0 as in training inputs) by `num_tokens` tokens; returns [b, num_tokens].

    `modality_of_id`: int [vocab] (0 pad, 1 text, 2 speech, 3 marker), e.g.
    `SpeechTextVocabulary.modality_ids(np.arange(vocab_size))`; LST needs it to lay out
    patches. After `eos_id` a row keeps emitting `eos_id`. `temperature <= 0` is greedy.
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"sample: prompt must be [batch, n >= 1] token ids, got shape {prompt.shape}")
    if num_tokens < 1:
        raise ValueError(f"sample: num_tokens must be >= 1, got {num_tokens}")
    b, n0 = prompt.shape
    length = n0 + num_tokens + 1  # room for the dummy look-ahead slot of the last step
    modality_of = jnp.asarray(modality_of_id, jnp.int32)
    is_lst = isinstance(model, lst.LSTModel)
    rng = jax.random.key(0) if rng is None else rng
    speech_ids = modality_of == lst.MODALITY_SPEECH

    def logits_at(tokens, n, next_modality):
        """Logits predicting token n+1 given tokens[: n+1]; the target at n is assumed to have
        `next_modality` (only LST's slot layout reads it)."""
        t = jnp.arange(length)
        seg = (t <= n + 1).astype(jnp.int32)[None].repeat(b, 0)
        pos = jnp.broadcast_to(t, (b, length))
        target_mod = jnp.take(modality_of, jnp.roll(tokens, -1, axis=1))
        target_mod = jnp.where(t[None] == n, next_modality, target_mod)
        if is_lst:
            out = model.apply({"params": params}, tokens, seg, pos, modality=target_mod)
        else:
            out = model.apply({"params": params}, tokens, seg, pos)
        return out[:, n], target_mod, seg

    def step(i, carry):
        tokens, rng, done = carry
        n = n0 - 1 + i
        rng, key = jax.random.split(rng)
        logits, target_mod, seg = logits_at(tokens, n, lst.MODALITY_SPEECH)
        if is_lst:
            cfg = model.config
            slots = lst.patch_slots(seg, target_mod, "static", cfg.patch_size)
            continues = slots[:, n + 1] == slots[:, n]  # next unit would stay in this patch
            logits = jnp.where(continues[:, None] & ~speech_ids[None], -jnp.inf, logits)
        nxt = _pick(logits, key, temperature)
        if eos_id is not None:
            nxt = jnp.where(done, eos_id, nxt)
            done = done | (nxt == eos_id)
        return tokens.at[:, n + 1].set(nxt), rng, done

    @jax.jit
    def run(tokens, rng):
        done = jnp.zeros((b,), bool)
        tokens, _, _ = jax.lax.fori_loop(0, num_tokens, step, (tokens, rng, done))
        return tokens

    tokens = jnp.zeros((b, length), jnp.int32).at[:, :n0].set(prompt)
    return np.asarray(run(tokens, rng))[:, n0 : n0 + num_tokens]
