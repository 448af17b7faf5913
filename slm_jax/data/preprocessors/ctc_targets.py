"""SeqIO preprocessors writing character CTC targets (mSLAM's auxiliary CTC, `slm_jax.models.ctc`).

Pure TF graph ops (a `tf.lookup.StaticHashTable` over the characters of
`tf.strings.unicode_split`), so the tf.data iterator stays checkpointable. Run them
BEFORE a task formatter that consumes the transcript (`format_asr` removes `text`).

Errors are `tf.debugging.Assert`s: the pipeline fails (InvalidArgumentError) with a
message naming the record id, the offending characters and the text. Nothing is
truncated silently; `max_chars` is a check, not a trim.

Packing caveat: seqio's packer numbers each feature's segments by the examples that have
tokens in it, so an empty `ctc_targets` misaligns later segments against
`decoder_segment_ids`, and it trims a feature longer than its packed length. For packed
training use `packing_sentinel=True` (every example starts with a non-zero sentinel id,
`sentinel_id(vocab)`; examples without a transcript get just the sentinel via
`add_empty_ctc_targets`), give `ctc_targets` a packed length that holds S segments of
`max_chars + 1`, and rebuild [B, S, L] targets with
`slm_jax.models.ctc.ctc_targets_from_packed(..., leading_sentinel=True)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from slm_jax import contract
from slm_jax.data.preprocessors.common import declare_fields
from slm_jax.data.tokenizers.chars import CharVocabulary
from slm_jax.data.tokenizers.token_space import normalize_text_tf

CTC_TARGETS_KEY = contract.CTC_TARGETS


def sentinel_id(char_vocabulary: CharVocabulary) -> int:
    """Segment-start sentinel for packing: the first id past the CTC classes (never a label)."""
    return char_vocabulary.size


def char_lookup_table(char_vocabulary: CharVocabulary) -> tf.lookup.StaticHashTable:
    """characters (tf.string, one code point each) -> ids; -1 for unknown (or the unk id)."""
    chars = list(char_vocabulary.alphabet)
    ids = [char_vocabulary.char_to_id[c] for c in chars]
    default = char_vocabulary.unk_id if char_vocabulary.unk else -1
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(chars, tf.string), tf.constant(ids, tf.int32))
    return tf.lookup.StaticHashTable(init, default_value=default)


def _record_id(ex: Mapping[str, tf.Tensor], id_key: str) -> tf.Tensor:
    if id_key in ex and ex[id_key].dtype == tf.string:
        return tf.reshape(ex[id_key], [])
    if id_key in ex:
        return tf.strings.as_string(tf.reshape(ex[id_key], []))
    return tf.constant("<no id>")


def add_ctc_targets(
    dataset: tf.data.Dataset,
    char_vocabulary: CharVocabulary,
    text_key: str = "text",
    max_chars: int | None = None,
    output_key: str = CTC_TARGETS_KEY,
    id_key: str = "id",
    packing_sentinel: bool = False,
) -> tf.data.Dataset:
    """Adds `output_key`: int32 char ids of `ex[text_key]` (a scalar UTF-8 string).

    The text is normalised (`normalize_text_tf`: NFKC + whitespace collapse, as
    `CharVocabulary.encode`), then lowercased (`tf.strings.lower`, utf-8) when the vocabulary is
    lowercase-only. Characters outside the vocabulary (without `unk`), invalid UTF-8, or
    more than `max_chars` characters fail the pipeline naming the record (`ex[id_key]`).
    Other features pass through; `text_key` is kept. With `packing_sentinel`, the ids
    are prefixed with `sentinel_id(char_vocabulary)` (see the module docstring).
    """
    table = char_lookup_table(char_vocabulary)
    lower = char_vocabulary.lowercase_only
    prefix = [sentinel_id(char_vocabulary)] if packing_sentinel else []

    def fn(ex):
        ex = dict(ex)
        if text_key not in ex:
            raise KeyError(f"add_ctc_targets: no feature {text_key!r}; features are {sorted(ex)}")
        rid = _record_id(ex, id_key)
        text = normalize_text_tf(tf.reshape(ex[text_key], []))
        if lower:
            text = tf.strings.lower(text, encoding="utf-8")
        chars = tf.strings.unicode_split(text, "UTF-8", errors="strict")
        ids = table.lookup(chars)
        bad = ids < 0
        checks = [tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            ["add_ctc_targets: record", rid, "has characters outside the CTC vocabulary:",
             tf.boolean_mask(chars, bad), "text:", text],
            summarize=64,
        )]
        if max_chars is not None:
            checks.append(tf.debugging.Assert(
                tf.size(ids) <= max_chars,
                ["add_ctc_targets: record", rid, "transcript has", tf.size(ids), "characters > max_chars",
                 max_chars, "(no truncation is done); text:", text],
                summarize=64,
            ))
        with tf.control_dependencies(checks):
            ids = tf.identity(ids)
        if prefix:
            ids = tf.concat([tf.constant(prefix, tf.int32), ids], 0)
        ex[output_key] = ids
        return ex

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def add_empty_ctc_targets(
    dataset: tf.data.Dataset,
    char_vocabulary: CharVocabulary | None = None,
    output_key: str = CTC_TARGETS_KEY,
    packing_sentinel: bool = False,
) -> tf.data.Dataset:
    """Adds an empty `output_key` (just the sentinel with `packing_sentinel`), for tasks
    without transcripts mixed with paired ones (a seqio Mixture needs the same features)."""
    if packing_sentinel and char_vocabulary is None:
        raise ValueError("add_empty_ctc_targets: packing_sentinel=True needs the char_vocabulary")
    value = [sentinel_id(char_vocabulary)] if packing_sentinel else []

    def fn(ex):
        ex = dict(ex)
        ex[output_key] = tf.constant(value, tf.int32, shape=[len(value)])
        return ex

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# A task registered with add_ctc_targets checks every record has a transcript
# (registration.register_corpus_task); the function itself still accepts an empty one.
declare_fields(add_ctc_targets, lambda a: [a["text_key"]])
