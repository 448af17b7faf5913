"""Autoregressive generation: KV-cache decoding for the dense Decoder, few-shot ASR / TTS.

`generate(runner, prompts, max_new_tokens, ...)` continues a batch of prompts of different
lengths. Prompts are token ids as a task's targets write them (no BOS: the run's BOS,
`slm_jax.data.feature_converter.run_bos_id`, is put in front, as in training inputs; 0 for
runs from scratch, the checkpoint's own first token for an imported model). A model family with a KV cache (`ModelFamily.supports_kv_cache`,
the dense `Decoder`) prefills the cache with the padded
prompts in one call, then decodes one token per step inside a single compiled
`lax.while_loop` (stopping early once every row has emitted a stop id). Rows are left- or
right-padded; each row keeps its own RoPE positions and padding slots are never attended,
so the result is the same as generating each prompt alone (tested against
`slm_jax.models.sampling.sample`, the no-cache path, which the LST model keeps).

Sampling: greedy (`temperature <= 0`), temperature, top-k, top-p; `banned_ids` are never
emitted, nor, when a vocabulary is given, the ids never trained as targets (PAD and the
embedding rows beyond the vocabulary) and, unless `allow_sentinels`, the span-corruption
sentinels (a denoising-trained model emits them only inside denoising targets). Modality forcing (`forced_modality_prompts`) appends the output
modality's marker and bans the other modality's ids (SpiritLM); `fewshot_asr` /
`fewshot_tts` build SpiritLM few-shot prompts (`slm_jax.data.preprocessors.task_formats.fewshot_prompt`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.contract import SPEECH, TEXT
from slm_jax.evaluation.runner import ModelRunner, bucket_length, replicated
from slm_jax.evaluation.sequences import modality_of_ids, real_vocabulary, run_bos, sentinel_mask
from slm_jax.models import interface, sampling

PADDINGS = ("left", "right")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # <= 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0

    def __post_init__(self):
        sampling.check_sampling_args(self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class Generation:
    tokens: list[np.ndarray]  # per prompt: the generated ids, stop id excluded
    stopped: list[bool]  # True where a stop id ended the row (else max_new_tokens did)


def generate(runner: ModelRunner, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
             sampling_config: SamplingConfig = SamplingConfig(), stop_ids: Sequence[int] = (),
             banned_ids: Sequence[int] = (), vocabulary=None, padding: str = "left",
             bos_id: int | None = None, allow_sentinels: bool = False) -> Generation:
    """Continues every prompt (int token ids) by up to `max_new_tokens` ids (see the module
    docstring); `bos_id` is the first input of every row (None: the run's BOS). Raises
    ValueError on no prompts, `max_new_tokens < 1`, an unknown `padding`, prompt ids or a BOS
    outside the vocabulary, or a model without a KV cache given no `vocabulary`; TypeError on
    an unregistered model."""
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    _check_generate_args(runner, prompts, max_new_tokens, padding)
    bos_id = run_bos(bos_id)
    if bos_id >= runner.dense_config.vocab_size:
        raise ValueError(f"generate: BOS id {bos_id} is outside the model's [0, {runner.dense_config.vocab_size})")
    vocab_size = runner.dense_config.vocab_size
    banned = banned_mask(vocab_size, banned_ids, vocabulary, allow_sentinels)
    if runner.family.supports_kv_cache:
        out = _generate_with_cache(runner, prompts, max_new_tokens, sampling_config, stop_ids, banned, padding,
                                   bos_id)
    else:
        out = _generate_without_cache(runner, prompts, max_new_tokens, sampling_config, banned, vocabulary, bos_id)
    return _cut_at_stop(out, stop_ids)


def _check_generate_args(runner, prompts, max_new_tokens, padding):
    if not prompts:
        raise ValueError("generate: no prompts")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
    if padding not in PADDINGS:
        raise ValueError(f"generate: padding={padding!r}: expected one of {PADDINGS}")
    vocab_size = runner.dense_config.vocab_size  # TypeError for an unregistered model
    bad = [i for i, p in enumerate(prompts) if ((p < 0) | (p >= vocab_size)).any()]
    if bad:
        raise ValueError(f"generate: prompt {bad[0]} has ids outside the model's [0, {vocab_size})")


def banned_mask(vocab_size: int, banned_ids: Sequence[int] = (), vocabulary=None,
                allow_sentinels: bool = False) -> np.ndarray:
    """bool [vocab_size]: `banned_ids` and, with a vocabulary, the ids never trained as targets:
    PAD and the ids the vocabulary does not define (embedding rows beyond it), and its
    span-corruption sentinels unless `allow_sentinels`."""
    mask = np.zeros(vocab_size, bool)
    mask[np.asarray(list(banned_ids), np.int64)] = True
    if vocabulary is not None:
        vocabulary = real_vocabulary(vocabulary)
        mask[vocabulary.vocab_size:] = True
        mask[getattr(vocabulary, "pad_id", 0)] = True
        if not allow_sentinels:
            mask |= sentinel_mask(vocabulary, vocab_size)
    return mask


def _cut_at_stop(out: np.ndarray, stop_ids: Sequence[int]) -> Generation:
    tokens, stopped = [], []
    for row in out:
        hits = np.flatnonzero(np.isin(row, list(stop_ids))) if len(stop_ids) else []
        end = int(hits[0]) if len(hits) else len(row)
        tokens.append(row[:end].copy())
        stopped.append(bool(len(hits)))
    return Generation(tokens, stopped)


# --- dense decoder: KV cache --------------------------------------------------------------
def _layout(prompts, rows: int, padding: str, bos_id: int):
    """Padded [rows, P] tokens / segment ids / positions, each row's last prompt index and its
    next position. Spare rows (to fill the data-parallel size) hold a lone BOS."""
    inputs = [np.concatenate([[bos_id], p]).astype(np.int32) for p in prompts]
    inputs += [np.asarray([bos_id], np.int32)] * (rows - len(inputs))
    width = bucket_length(max(len(x) for x in inputs))
    tokens, segment_ids, positions = (np.zeros((rows, width), np.int32) for _ in range(3))
    last, next_pos = np.zeros(rows, np.int32), np.zeros(rows, np.int32)
    for r, x in enumerate(inputs):
        start = width - len(x) if padding == "left" else 0
        tokens[r, start:start + len(x)] = x
        segment_ids[r, start:start + len(x)] = 1
        positions[r, start:start + len(x)] = np.arange(len(x))
        last[r], next_pos[r] = start + len(x) - 1, len(x)
    return tokens, segment_ids, positions, last, next_pos


def _generate_with_cache(runner, prompts, max_new_tokens, cfg: SamplingConfig, stop_ids, banned, padding, bos_id):
    rows = runner.padded_rows(len(prompts))
    layout = _layout(prompts, rows, padding, bos_id)
    stops = np.asarray(list(stop_ids) or [-1], np.int32)
    with runner.context():
        out = decode_loop(runner.model, max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, runner.on_mesh,
                          runner.params, *(runner.put_rows(x) for x in layout), stops, banned,
                          jax.random.key(cfg.seed))
    return np.asarray(out)[:len(prompts)]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def decode_loop(model, max_new_tokens: int, temperature: float, top_k: int, top_p: float, on_mesh: bool, params,
                tokens, segment_ids, positions, last, next_pos, stop_ids, banned, rng):
    """Prefill the cache with the prompts, then pick / feed one token per step: [b, max_new_tokens]."""
    b = tokens.shape[0]
    family = interface.family_of(model)
    prefill = family.decode(model, params, tokens, segment_ids, positions,
                            family.init_cache(b, tokens.shape[1] + max_new_tokens))
    cache, logits = prefill.cache, prefill.logits[jnp.arange(b), last]

    def body(state):
        i, cache, logits, out, done, rng = state
        rng, key = jax.random.split(rng)
        token = sampling.pick_next_token(logits, key, temperature, top_k, top_p, banned)
        token = jnp.where(done, 0, token)  # rows that stopped: ignored filler
        done = done | jnp.isin(token, stop_ids)
        step = family.decode(model, params, token[:, None], jnp.ones((b, 1), jnp.int32), (next_pos + i)[:, None],
                             cache)
        return i + 1, step.cache, step.logits[:, 0], out.at[:, i].set(token), done, rng

    def not_finished(state):
        return (state[0] < max_new_tokens) & ~jnp.all(state[4])

    out = jnp.zeros((b, max_new_tokens), jnp.int32)
    state = (jnp.zeros((), jnp.int32), cache, logits, out, jnp.zeros((b,), bool), rng)
    return replicated(jax.lax.while_loop(not_finished, body, state)[3], on_mesh)


# --- no KV cache (LST): sampling.sample, one call per prompt length ----------------------
def _generate_without_cache(runner, prompts, max_new_tokens, cfg: SamplingConfig, banned, vocabulary, bos_id):
    if vocabulary is None:
        raise ValueError(f"generate: {runner.family.name} (no KV cache) needs the vocabulary (the sampler reads "
                         "token modalities, e.g. LST patches follow them)")
    kinds = modality_of_ids(vocabulary, runner.dense_config.vocab_size)
    out = np.zeros((len(prompts), max_new_tokens), np.int32)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for members in by_length.values():
        batch = np.stack([np.concatenate([[bos_id], prompts[i]]) for i in members])
        with runner.context():
            out[members] = sampling.sample(runner.model, runner.params, batch, max_new_tokens, modality_of_id=kinds,
                                           rng=jax.random.key(cfg.seed), temperature=cfg.temperature,
                                           top_k=cfg.top_k, top_p=cfg.top_p, banned_ids=np.flatnonzero(banned))
    return out


# --- modality forcing and few-shot prompts -------------------------------------------------
def forced_modality_prompts(prompts: Sequence[Sequence[int]], modality: str, vocabulary):
    """(prompts continuing in `modality`, ids to ban): SpiritLM's output forcing. A prompt whose
    last marker is not `modality`'s gets that marker appended (markers appear only where the
    modality changes, so a speech prompt continued as speech gets none)."""
    from slm_jax.data.preprocessors.task_formats import banned_ids_for
    vocabulary = real_vocabulary(vocabulary)
    if modality not in (SPEECH, TEXT):
        raise ValueError(f"modality={modality!r}: expected {SPEECH!r} or {TEXT!r}")
    marker = vocabulary.speech_marker_id if modality == SPEECH else vocabulary.text_marker_id
    markers = {vocabulary.speech_marker_id, vocabulary.text_marker_id}
    forced = []
    for p in prompts:
        last_marker = next((int(i) for i in reversed(list(p)) if int(i) in markers), None)
        forced.append(list(p) if last_marker == marker else [*p, marker])
    return forced, banned_ids_for(modality, vocabulary)


def fewshot_stop_ids(vocabulary) -> list[int]:
    """EOS and, when it is one id, the newline that separates few-shot examples."""
    newline = vocabulary.newline_ids()
    return sorted({vocabulary.eos_id, *(newline if len(newline) == 1 else [])})


def fewshot_asr(runner: ModelRunner, vocabulary, shots: Sequence[tuple[Sequence[int], str]],
                queries: Sequence[Sequence[int]], max_new_tokens: int = 64,
                sampling_config: SamplingConfig = SamplingConfig()) -> list[str]:
    """Transcripts of `queries` (frame-level units) after `shots` (units, transcript) examples."""
    from slm_jax.data.preprocessors.task_formats import fewshot_prompt
    vocabulary = real_vocabulary(vocabulary)
    vocabulary.require_text_model("fewshot_asr")
    prompts = [fewshot_prompt(shots, q, SPEECH, TEXT, vocabulary) for q in queries]
    prompts, banned = forced_modality_prompts(prompts, TEXT, vocabulary)
    out = generate(runner, prompts, max_new_tokens, sampling_config=sampling_config,
                   stop_ids=fewshot_stop_ids(vocabulary), banned_ids=banned, vocabulary=vocabulary)
    return [vocabulary.decode(ids.tolist()).strip() for ids in out.tokens]


def fewshot_tts(runner: ModelRunner, vocabulary, shots: Sequence[tuple[str, Sequence[int]]],
                queries: Sequence[str], max_new_tokens: int = 256,
                sampling_config: SamplingConfig = SamplingConfig()) -> list[np.ndarray]:
    """Deduplicated units of `queries` (text) after `shots` (text, units) examples."""
    from slm_jax.data.preprocessors.task_formats import fewshot_prompt
    vocabulary = real_vocabulary(vocabulary)
    vocabulary.require_text_model("fewshot_tts")
    prompts = [fewshot_prompt(shots, q, TEXT, SPEECH, vocabulary) for q in queries]
    prompts, banned = forced_modality_prompts(prompts, SPEECH, vocabulary)
    out = generate(runner, prompts, max_new_tokens, sampling_config=sampling_config,
                   stop_ids=fewshot_stop_ids(vocabulary), banned_ids=banned, vocabulary=vocabulary)
    return [units_of(ids, vocabulary) for ids in out.tokens]


def units_of(ids: np.ndarray, vocabulary) -> np.ndarray:
    """The unit values among `ids` (pitch, style and other ids dropped)."""
    vocabulary = real_vocabulary(vocabulary)
    ids = np.asarray(ids)
    if hasattr(vocabulary, "unit_offset"):
        keep = (ids >= vocabulary.unit_offset) & (ids < vocabulary.pitch_offset)
        return (ids[keep] - vocabulary.unit_offset).astype(np.int32)
    keep = (ids >= 3) & (ids < vocabulary.vocab_size)  # UnitVocabulary: unit u is 3 + u
    return (ids[keep] - 3).astype(np.int32)
