"""SeqIO preprocessors for unit corpora: pure TF graph ops only.

Why pure TF: the tf.data iterator position is saved with `tf.train.Checkpoint` for
exact resume, which fails on `tf.py_function` / `from_generator` ("PyFunc is
stateful"). Anything Python-only belongs in corpus preparation, not here.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from slm_jax.data.vocab import UnitVocabulary

# Feature description for unit TFRecords (see demo_corpus.py for the schema).
UNIT_FEATURE_DESCRIPTION = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "lang": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "units": tf.io.RaggedFeature(tf.int64),
}


def unit_feature_description(units_key: str = "units") -> dict:
    """Parse spec for `tf.train.Example` unit records (`id`, `lang`, units)."""
    desc = dict(UNIT_FEATURE_DESCRIPTION)
    if units_key != "units":
        desc[units_key] = desc.pop("units")
    return desc


def parse_units(serialized: tf.Tensor, units_key: str = "units") -> dict:
    """Parses one serialized unit record (used outside SeqIO, e.g. by validators)."""
    return tf.io.parse_single_example(serialized, unit_feature_description(units_key))


def run_length_dedup(x: tf.Tensor) -> tf.Tensor:
    """Collapses consecutive duplicates of a 1-D tensor: [5,5,3,3,3,5] -> [5,3,5]."""
    keep = tf.concat([tf.ones_like(x[:1], dtype=tf.bool), tf.not_equal(x[1:], x[:-1])], 0)
    return tf.boolean_mask(x, keep)


@seqio.map_over_dataset
def dedup_units(ex: Mapping[str, tf.Tensor], key: str = "units") -> dict:
    """Run-length collapses `ex[key]` (units at frame rate -> deduplicated units)."""
    ex = dict(ex)
    ex[key] = run_length_dedup(ex[key])
    return ex


def filter_lang(dataset: tf.data.Dataset, lang: str, key: str = "lang") -> tf.data.Dataset:
    """Keeps records whose `lang` equals `lang` (for corpora that mix languages)."""
    return dataset.filter(lambda ex: tf.equal(ex[key], lang))


def units_to_targets(
    dataset: tf.data.Dataset,
    vocabulary: UnitVocabulary,
    units_key: str = "units",
    output_key: str = "targets",
    append_eos: bool = True,
) -> tf.data.Dataset:
    """Maps `units_key` units to token ids in `output_key` (int32), appending EOS.

    The units feature is removed; other features (`id`, `lang`) pass through. An
    out-of-range unit fails the pipeline with the offending values (vocab assert).
    """

    def fn(ex):
        ex = dict(ex)
        ids = vocabulary.unit_ids_to_tokens(ex.pop(units_key))
        if append_eos:
            ids = tf.concat([ids, tf.constant([vocabulary.eos_id], tf.int32)], 0)
        ex[output_key] = ids
        return ex

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _chunk_row_lengths(n: tf.Tensor, length: int) -> tf.Tensor:
    """Row lengths [L, L, ..., r] covering n tokens exactly (r = n % L, if non-zero)."""
    n = tf.cast(n, tf.int64)
    full = tf.fill([n // length], tf.constant(length, tf.int64))
    rem = n % length
    return tf.concat([full, tf.reshape(rem, [1])[: tf.cast(rem > 0, tf.int32)]], 0)


# Per-token features that travel with `targets` and must be cut at the same places.
ALIGNED_FEATURES = ("targets", "modality", "loss_mask", "patch_ids")


def split_to_length(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]] = None,
    feature_key: str = "targets",
    aligned_keys: Sequence[str] = ALIGNED_FEATURES,
) -> tf.data.Dataset:
    """Splits `feature_key` into consecutive chunks of at most `sequence_length[key]`.

    Unlike truncation nothing is dropped: a 10-token example with L=4 becomes three
    examples of 4, 4 and 2 tokens. Per-token features named in `aligned_keys`
    (modality, loss mask, patch ids) are cut at the same places; other features are
    copied onto every chunk. With no length configured (None), the dataset passes
    through unchanged.
    """
    length = (sequence_length or {}).get(feature_key)
    if length is None:
        return dataset
    length = int(length)
    if length <= 0:
        raise ValueError(f"split_to_length: sequence_length[{feature_key!r}] must be > 0, got {length}")

    def to_chunks(ex):
        row_lengths = _chunk_row_lengths(tf.size(ex[feature_key]), length)
        keys = [k for k in ex if k == feature_key or k in aligned_keys]
        chunked = {k: tf.RaggedTensor.from_row_lengths(ex[k], row_lengths) for k in keys}
        others = {k: v for k, v in ex.items() if k not in chunked}
        chunks = tf.data.Dataset.from_tensor_slices(chunked)
        rest = tf.data.Dataset.from_tensors(others).repeat(tf.size(row_lengths, out_type=tf.int64))
        return tf.data.Dataset.zip((chunks, rest)).map(lambda chunk, other: {**other, **chunk})

    return dataset.flat_map(to_chunks)
