"""Supervised and unsupervised tasks as token sequences (DMLM / SpiritLM), as SeqIO preprocessors.

One decoder learns many tasks when each is written as one sequence in the shared token
space of `SpeechTextVocabulary` (SEEDS.md sections 2 and 5):

    ASR           [Speech]<units>[Text]<transcript>EOS
    TTS           [Text]<text>[Speech]<units>EOS
    S2TT          [Speech]<units, language A>[Text][LANG_B]<text in B>EOS
    continuation  [Speech]<units>EOS   or   [Text]<text>EOS

Every preprocessor emits `targets` (int32 ids, ending with EOS) and `loss_mask` (int32,
same length, 1 where the loss counts). With `loss_on_targets_only=True` the loss covers
only the output part (`<transcript>EOS` in ASR): the input and the markers that announce
the output are given at inference, so predicting them teaches nothing about the task.
Continuation is plain language modelling: the loss covers every token.

The consumed features (units, text, target language) are removed; every other feature
(`id`, `lang`, ...) passes through. Units are run-length collapsed when `dedup=True`
(SpiritLM's HuBERT units are deduplicated). All of it is pure TF graph ops, so a
pipeline using these stays checkpointable. In a SeqIO task use
`functools.partial(format_asr, vocabulary=vocab)` or leave `vocabulary` out: SeqIO then
passes `output_features` and the `targets` feature's vocabulary is used.

`fewshot_prompt` and `banned_ids_for` build SpiritLM few-shot prompts (python, for
generation): the output modality is forced by appending its marker and banning the other
modality's ids.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from slm_jax.data.preprocessors.common import declare_fields, unit_token_ids
from slm_jax.contract import MODALITIES, MODALITY_SPEECH, MODALITY_TEXT, SPEECH, TEXT
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from slm_jax.speech.units import run_length_dedup as run_length_dedup_np


# --- helpers ----------------------------------------------------------------------------
def _vocab(vocabulary, output_features, who: str) -> SpeechTextVocabulary:
    """The vocabulary argument, or the `targets` output feature's (how SeqIO passes it)."""
    if vocabulary is None and output_features is not None and "targets" in output_features:
        vocabulary = output_features["targets"].vocabulary
    vocabulary = getattr(vocabulary, "real", vocabulary)  # registration.LazyVocabulary: build it now
    if not isinstance(vocabulary, SpeechTextVocabulary):
        raise ValueError(
            f"{who}: vocabulary must be a SpeechTextVocabulary (argument `vocabulary` or "
            f"output_features['targets'].vocabulary), got {type(vocabulary).__name__}"
        )
    return vocabulary


def _check_modality(modality: str, who: str, arg: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"{who}: {arg} must be one of {MODALITIES}, got {modality!r}")
    return modality


def _get(ex: Mapping[str, tf.Tensor], key: str, who: str) -> tf.Tensor:
    if key not in ex:
        raise ValueError(f"{who}: example has no feature {key!r}; features: {sorted(ex)}")
    return ex[key]


def _marker(i: int) -> tf.Tensor:
    return tf.constant([i], tf.int32)


def _text_ids(vocab: SpeechTextVocabulary, text: tf.Tensor) -> tf.Tensor:
    return tf.reshape(vocab.encode_text_tf(tf.reshape(text, [])), [-1])


def _assemble(
    prompt: Sequence[tf.Tensor], output: Sequence[tf.Tensor], eos_id: int, loss_on_targets_only: bool
):
    """targets = prompt + output + EOS; loss_mask = 0 on the prompt when loss_on_targets_only."""
    output = list(output) + [_marker(eos_id)]
    prompt_ids = tf.concat(list(prompt), 0) if prompt else tf.zeros([0], tf.int32)
    output_ids = tf.concat(output, 0)
    prompt_mask = tf.zeros_like(prompt_ids) if loss_on_targets_only else tf.ones_like(prompt_ids)
    return tf.concat([prompt_ids, output_ids], 0), tf.concat([prompt_mask, tf.ones_like(output_ids)], 0)


def _finish(ex: Mapping[str, tf.Tensor], consumed: Sequence[str], targets, loss_mask) -> dict:
    out = {k: v for k, v in ex.items() if k not in consumed}
    out["targets"] = targets
    out["loss_mask"] = loss_mask
    return out


def _map(ds: tf.data.Dataset, fn) -> tf.data.Dataset:
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# --- task formats -------------------------------------------------------------------------
def format_asr(
    ds: tf.data.Dataset,
    vocabulary: Optional[SpeechTextVocabulary] = None,
    units_key: str = "units",
    text_key: str = "text",
    dedup: bool = True,
    loss_on_targets_only: bool = True,
    *,
    output_features=None,
) -> tf.data.Dataset:
    """ASR: `[Speech]<units>[Text]<transcript>EOS` (loss on `<transcript>EOS` when configured)."""
    vocab = _vocab(vocabulary, output_features, "format_asr")
    vocab.require_text_model("format_asr")

    def fn(ex):
        units = unit_token_ids(_get(ex, units_key, "format_asr"), vocab, dedup)
        text = _text_ids(vocab, _get(ex, text_key, "format_asr"))
        prompt = [_marker(vocab.speech_marker_id), units, _marker(vocab.text_marker_id)]
        targets, mask = _assemble(prompt, [text], vocab.eos_id, loss_on_targets_only)
        return _finish(ex, (units_key, text_key), targets, mask)

    return _map(ds, fn)


def format_tts(
    ds: tf.data.Dataset,
    vocabulary: Optional[SpeechTextVocabulary] = None,
    units_key: str = "units",
    text_key: str = "text",
    dedup: bool = True,
    loss_on_targets_only: bool = True,
    *,
    output_features=None,
) -> tf.data.Dataset:
    """TTS: `[Text]<text>[Speech]<units>EOS` (loss on `<units>EOS` when configured)."""
    vocab = _vocab(vocabulary, output_features, "format_tts")
    vocab.require_text_model("format_tts")

    def fn(ex):
        units = unit_token_ids(_get(ex, units_key, "format_tts"), vocab, dedup)
        text = _text_ids(vocab, _get(ex, text_key, "format_tts"))
        prompt = [_marker(vocab.text_marker_id), text, _marker(vocab.speech_marker_id)]
        targets, mask = _assemble(prompt, [units], vocab.eos_id, loss_on_targets_only)
        return _finish(ex, (units_key, text_key), targets, mask)

    return _map(ds, fn)


def format_s2tt(
    ds: tf.data.Dataset,
    vocabulary: Optional[SpeechTextVocabulary] = None,
    speech_key: str = "units",
    text_key: str = "text",
    target_lang_key: Optional[str] = None,
    target_lang: Optional[str] = None,
    dedup: bool = True,
    loss_on_targets_only: bool = True,
    *,
    output_features=None,
) -> tf.data.Dataset:
    """S2TT: `[Speech]<units in A>[Text][LANG_B]<text in B>EOS` (loss on `<text in B>EOS`).

    The target-language tag comes from the per-example string feature `target_lang_key`
    or the fixed `target_lang`. A vocabulary with langs needs one of them (the model
    must be told which language to produce); one without langs accepts neither. The tag
    belongs to the prompt: it is given at inference, not predicted.
    """
    who = "format_s2tt"
    vocab = _vocab(vocabulary, output_features, who)
    vocab.require_text_model(who)
    if target_lang_key is not None and target_lang is not None:
        raise ValueError(
            f"{who}: give target_lang_key={target_lang_key!r} or target_lang={target_lang!r}, not both"
        )
    use_tag = target_lang_key is not None or target_lang is not None
    if vocab.langs and not use_tag:
        raise ValueError(
            f"{who}: the vocabulary has langs {list(vocab.langs)}, so a target-language tag is expected; "
            "set target_lang_key (per-example feature) or target_lang"
        )
    if use_tag and not vocab.langs:
        raise ValueError(
            f"{who}: target_lang_key={target_lang_key!r} / target_lang={target_lang!r} given but the "
            "vocabulary has no langs (no language tags)"
        )
    fixed_tag = vocab.lang_tag_id(target_lang) if target_lang is not None else None

    def fn(ex):
        units = unit_token_ids(_get(ex, speech_key, who), vocab, dedup)
        text = _text_ids(vocab, _get(ex, text_key, who))
        prompt = [_marker(vocab.speech_marker_id), units, _marker(vocab.text_marker_id)]
        if fixed_tag is not None:
            prompt.append(_marker(fixed_tag))
        elif target_lang_key is not None:
            prompt.append(
                tf.reshape(vocab.lang_tag_id_tf(tf.reshape(_get(ex, target_lang_key, who), [])), [1])
            )
        targets, mask = _assemble(prompt, [text], vocab.eos_id, loss_on_targets_only)
        consumed = (speech_key, text_key) + ((target_lang_key,) if target_lang_key else ())
        return _finish(ex, consumed, targets, mask)

    return _map(ds, fn)


def format_continuation(
    ds: tf.data.Dataset,
    vocabulary: Optional[SpeechTextVocabulary] = None,
    modality: str = SPEECH,
    units_key: str = "units",
    text_key: str = "text",
    dedup: bool = True,
    *,
    output_features=None,
) -> tf.data.Dataset:
    """Unsupervised data: `[Speech]<units>EOS` or `[Text]<text>EOS`; the loss covers every token."""
    who = "format_continuation"
    _check_modality(modality, who, "modality")
    vocab = _vocab(vocabulary, output_features, who)
    if modality == TEXT:
        vocab.require_text_model(who)

    def fn(ex):
        if modality == SPEECH:
            body, marker, key = (
                unit_token_ids(_get(ex, units_key, who), vocab, dedup),
                vocab.speech_marker_id,
                units_key,
            )
        else:
            body, marker, key = _text_ids(vocab, _get(ex, text_key, who)), vocab.text_marker_id, text_key
        targets, mask = _assemble([], [_marker(marker), body], vocab.eos_id, loss_on_targets_only=True)
        return _finish(ex, (key,), targets, mask)

    return _map(ds, fn)


# --- few-shot prompts (python, for generation) ---------------------------------------------
def _content_ids(value, modality: str, vocab: SpeechTextVocabulary, dedup: bool, where: str) -> list[int]:
    """Marker + ids of one speech (unit ints) or text (str) value."""
    if modality == SPEECH:
        if isinstance(value, (str, bytes)):
            raise ValueError(
                f"fewshot_prompt: {where} should be speech units (ints), got a string {value!r:.60}"
            )
        units = np.asarray(value).reshape(-1)
        units = run_length_dedup_np(units) if dedup else units
        return [vocab.speech_marker_id] + vocab.units_to_ids(units).tolist()
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"fewshot_prompt: {where} should be text (str), got {type(value).__name__}")
    return [vocab.text_marker_id] + vocab.encode_text(value)


def fewshot_prompt(
    examples: Sequence[tuple],
    query: Union[str, Sequence[int]],
    input_modality: str,
    output_modality: str,
    vocabulary: SpeechTextVocabulary,
    dedup: bool = True,
) -> list[int]:
    """SpiritLM few-shot prompt ids.

    `examples` are (input, output) pairs, speech as unit ints and text as strings; each
    becomes `<in marker><input><out marker><output>`, pairs are joined by the newline ids
    (`vocabulary.newline_ids()`: the SentencePiece "\\n" or, when the model has none, EOS),
    and the prompt ends with a newline, `<in marker><query>` and the output marker, so
    generation continues in the output modality (ban the other one: `banned_ids_for`).
    E.g. ASR: `[Speech]<u1>[Text]<t1>\\n[Speech]<u2>[Text]<t2>\\n[Speech]<uq>[Text]`.
    """
    _check_modality(input_modality, "fewshot_prompt", "input_modality")
    _check_modality(output_modality, "fewshot_prompt", "output_modality")
    if not isinstance(vocabulary, SpeechTextVocabulary):
        raise ValueError(
            f"fewshot_prompt: vocabulary must be a SpeechTextVocabulary, got {type(vocabulary).__name__}"
        )
    newline = vocabulary.newline_ids()
    out_marker = vocabulary.speech_marker_id if output_modality == SPEECH else vocabulary.text_marker_id
    ids: list[int] = []
    for n, pair in enumerate(examples):
        if len(pair) != 2:
            raise ValueError(
                f"fewshot_prompt: examples[{n}] must be an (input, output) pair, got {len(pair)} items"
            )
        ids += _content_ids(pair[0], input_modality, vocabulary, dedup, f"examples[{n}] input")
        ids += _content_ids(pair[1], output_modality, vocabulary, dedup, f"examples[{n}] output")
        ids += newline
    ids += _content_ids(query, input_modality, vocabulary, dedup, "query")
    return ids + [out_marker]


def banned_ids_for(modality: str, vocabulary: SpeechTextVocabulary) -> np.ndarray:
    """Ids to mask out when generating `modality` (sorted int32).

    Generating text bans every speech id (units, pitch, style) and [Speech]; generating
    speech bans every text id (the text block minus PAD and EOS), [Text] and the language
    tags. EOS stays allowed in both, so generation can stop.
    """
    _check_modality(modality, "banned_ids_for", "modality")
    all_ids = np.arange(vocabulary.vocab_size)
    kinds = vocabulary.modality_ids(all_ids)
    if modality == TEXT:
        banned = all_ids[kinds == MODALITY_SPEECH].tolist() + [vocabulary.speech_marker_id]
    else:
        lang_ids = list(range(vocabulary.lang_offset, vocabulary.lang_offset + len(vocabulary.langs)))
        banned = all_ids[kinds == MODALITY_TEXT].tolist() + [vocabulary.text_marker_id] + lang_ids
    return np.array(sorted(banned), dtype=np.int32)


# --- the record fields each format reads (registration checks them) ---------------------------
declare_fields(format_asr, lambda a: [a["units_key"], a["text_key"]])
declare_fields(format_tts, lambda a: [a["units_key"], a["text_key"]])
declare_fields(format_s2tt, lambda a: [a["speech_key"], a["text_key"]] + ([a["target_lang_key"]] if a["target_lang_key"]
                                                                           else []))
declare_fields(format_continuation, lambda a: [a["units_key"] if a["modality"] == SPEECH else a["text_key"]])
