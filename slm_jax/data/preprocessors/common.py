"""SeqIO preprocessors for unit corpora: pure TF graph ops only.

Why pure TF: the tf.data iterator position is saved with `tf.train.Checkpoint` for
exact resume, which fails on `tf.py_function` / `from_generator` ("PyFunc is
stateful"). Anything Python-only belongs in corpus preparation, not here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from slm_jax.data.tokenizers.unit_vocab import UnitVocabulary

# Feature description for unit TFRecords (see slm_jax.testing.unit_corpus for the schema).
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


def dedup_rows(values: tf.Tensor, row_ids: tf.Tensor | None = None) -> tf.Tensor:
    """bool [n]: run-length dedup's keep-mask of a 1-D tensor: a value is kept when it is first,
    differs from the previous value, or starts a new row of `row_ids` [n] (rows are separate
    recordings or spans: a run never crosses a row boundary). The TF twin of
    `slm_jax.speech.units.run_starts_mask`."""
    differs = tf.not_equal(values[1:], values[:-1])
    if row_ids is not None:
        differs = tf.logical_or(differs, tf.not_equal(row_ids[1:], row_ids[:-1]))
    return tf.concat([tf.ones_like(values[:1], tf.bool), differs], 0)


def run_length_dedup(x: tf.Tensor) -> tf.Tensor:
    """Collapses consecutive duplicates of a 1-D tensor: [5,5,3,3,3,5] -> [5,3,5]."""
    return tf.boolean_mask(x, dedup_rows(x))


def unit_token_ids(units, vocabulary, dedup: bool = True) -> tf.Tensor:
    """int32 [n'] ids (`vocabulary.units_to_ids_tf`) of one record's units (dense or sparse, any
    shape, flattened), run-length deduplicated when `dedup`."""
    if isinstance(units, tf.SparseTensor):
        units = tf.sparse.to_dense(units)
    units = tf.reshape(units, [-1])
    return tf.cast(vocabulary.units_to_ids_tf(run_length_dedup(units) if dedup else units), tf.int32)


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


# --- time ranges -> frame ranges: THE rule for words, sentences and patches ---------------------
# Alignment times are float32 seconds: a time within FRAME_SNAP frames of a frame boundary
# snaps to it (0.28 s * 25 Hz is frame 7, not 8).
FRAME_SNAP = 1e-2


def frame_bounds(start_s, end_s, rate_hz, num_frames) -> tuple[tf.Tensor, tf.Tensor]:
    """int32 [lo, hi) of the frames whose START time lies in [start_s, end_s) (the base rule).

    Frame f of a stream at rate r covers [f/r, (f+1)/r); it belongs to [start, end) when f/r
    does: f in [ceil(start*r - FRAME_SNAP), ceil(end*r - FRAME_SNAP)). Contiguous ranges share no
    frame and lose none. Clipped to [0, num_frames] and to hi >= lo, so a range shorter than a
    frame, reversed or past the last unit yields NO frames: `word_frames` repairs those.
    """
    rate = tf.cast(rate_hz, tf.float64)
    n = tf.cast(num_frames, tf.int32)

    def to_frame(t):
        f = tf.math.ceil(tf.cast(t, tf.float64) * rate - FRAME_SNAP)
        return tf.clip_by_value(tf.cast(f, tf.int32), 0, n)

    lo = to_frame(start_s)
    return lo, tf.maximum(to_frame(end_s), lo)


def word_frames(start_s, end_s, rate_hz, num_frames) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Frames of time ranges (words, sentences), never empty: (lo, hi, repaired), int32/int32/bool.

    Shapes: any, broadcast together (seconds, Hz, frame counts). Rule:
      1. a range takes the frames whose start lies in it (`frame_bounds`);
      2. a range that covers no frame start (a word shorter than a frame between two frame
         starts, a zero-length word, a word in the encoder's missing last frame or past the
         last unit) lies within one frame interval, or after the last one: it takes THAT frame,
         floor(start*r + FRAME_SNAP) clipped to [0, num_frames - 1], and is flagged `repaired`.
    So every range gets >= 1 frame when num_frames > 0 (with no units nothing can be given:
    lo == hi, not flagged). A repaired range's frame may also belong to its neighbour (a word
    0.41-0.43 s at 25 Hz takes frame 10, 0.40-0.44 s, which also holds the word before it if
    that word started there). Why not slamkit's rule: slamkit (slp-rl/slamkit
    slamkit/tokeniser/interleaving_tokeniser.py, `_create_interleaved_text`) keeps the
    deduplicated units whose END time lies in [start, end] (`bisect_left`/`bisect_right` over
    cumsum(durations) / rate), which also gives a short word no unit (an empty `<speech>` span)
    and shifts every span by up to one unit; here a span's units depend only on its own frames.
    `word_frames_np` is the numpy twin (Python-side counts, evaluation).
    """
    lo, hi = frame_bounds(start_s, end_s, rate_hz, num_frames)
    n = tf.cast(num_frames, tf.int32)
    repaired = tf.logical_and(hi <= lo, n > 0)
    within = tf.math.floor(tf.cast(start_s, tf.float64) * tf.cast(rate_hz, tf.float64) + FRAME_SNAP)
    k = tf.clip_by_value(tf.cast(within, tf.int32), 0, tf.maximum(n - 1, 0))
    return tf.where(repaired, k, lo), tf.where(repaired, k + 1, hi), repaired


def word_frames_np(start_s, end_s, rate_hz, num_frames):
    """`word_frames` in numpy (same rule, float64): (lo, hi, repaired) arrays."""
    start = np.asarray(start_s, np.float64)
    end = np.asarray(end_s, np.float64)
    rate = np.float64(rate_hz)
    n = int(num_frames)
    lo = np.clip(np.ceil(start * rate - FRAME_SNAP), 0, n).astype(np.int64)
    hi = np.maximum(np.clip(np.ceil(end * rate - FRAME_SNAP), 0, n).astype(np.int64), lo)
    repaired = (hi <= lo) & (n > 0)
    k = np.clip(np.floor(start * rate + FRAME_SNAP), 0, max(n - 1, 0)).astype(np.int64)
    return np.where(repaired, k, lo), np.where(repaired, k + 1, hi), repaired


# Per-token features that travel with `targets` and must be cut at the same places.
ALIGNED_FEATURES = ("targets", "modality", "loss_mask", "patch_ids")


def as_ragged(x):
    """A batched feature as a RaggedTensor: `ragged_batch` gives a dense [B, n] tensor when every
    record of the batch has n values, and a SparseTensor for a `VarLenFeature` (scalars and
    ragged tensors pass through)."""
    if isinstance(x, tf.SparseTensor):
        return tf.RaggedTensor.from_sparse(x)
    if isinstance(x, tf.RaggedTensor) or x.shape.rank != 2:
        return x
    return tf.RaggedTensor.from_tensor(x)


def _plain_tensors(ex):
    # unbatching a ragged row yields a ragged_rank-0 spec; a map turns it into a tf.Tensor spec
    return {k: tf.identity(v) for k, v in ex.items()}


def check_batch_records(batch_records, who: str) -> None:
    """Records per batched step must be a positive int (an error naming `who` otherwise)."""
    if not isinstance(batch_records, int) or isinstance(batch_records, bool) or batch_records < 1:
        raise ValueError(f"{who}: batch_records must be an int >= 1, got {batch_records!r}")


def vectorized(
    dataset: tf.data.Dataset, apply: Callable[[tf.data.Dataset], tf.data.Dataset], batch_records: int
) -> tf.data.Dataset:
    """Runs a per-record step `batch_records` records at a time: `apply` maps a dataset of
    `ragged_batch`es (features [B, ...], ragged where lengths differ) to a dataset of batches
    of output records (any number per input batch); the result is unbatched again, in order.

    Why: tf.data pays a fixed overhead per op per element (~5-10 us on one core); a
    preprocessor of ~50 small ops on a ~200-token record spends most of its time there. On
    batches, the same ops serve `batch_records` records (measured in bench/data_pipeline.py).
    """
    check_batch_records(batch_records, "vectorized")
    return unbatch_records(apply(dataset.ragged_batch(batch_records)))


# Records per vectorised step: a step's cost is mostly its fixed per-op overhead (bench/
# data_pipeline.py: 64 -> 256 records per step gave word interleaving ~2-3x per record),
# while a batch of demo-sized records stays about a MiB.
DEFAULT_BATCH_RECORDS = 256


def split_to_length(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    feature_key: str = "targets",
    aligned_keys: Sequence[str] = ALIGNED_FEATURES,
    batch_records: int = DEFAULT_BATCH_RECORDS,
) -> tf.data.Dataset:
    """Splits `feature_key` into consecutive chunks of at most `sequence_length[key]`.

    Unlike truncation nothing is dropped: a 10-token example with L=4 becomes three
    examples of 4, 4 and 2 tokens. Per-token features named in `aligned_keys`
    (modality, loss mask, patch ids) are cut at the same places; other features are
    copied onto every chunk. With no length configured (None), the dataset passes
    through unchanged. Runs `vectorized` over `batch_records` records at a time.
    """
    if (sequence_length or {}).get(feature_key) is None:
        return dataset
    return vectorized(
        dataset, lambda batches: split_batches_to_length(batches, sequence_length, feature_key, aligned_keys),
        batch_records)


def split_batches_to_length(
    batches: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None = None,
    feature_key: str = "targets",
    aligned_keys: Sequence[str] = ALIGNED_FEATURES,
) -> tf.data.Dataset:
    """`split_to_length` on a dataset of ragged record batches: each batch becomes the batch of
    its records' chunks, in order."""
    length = (sequence_length or {}).get(feature_key)
    if length is None:
        return batches
    length = int(length)
    if length <= 0:
        raise ValueError(f"split_to_length: sequence_length[{feature_key!r}] must be > 0, got {length}")

    def to_chunks(batch):
        batch = {k: as_ragged(v) for k, v in batch.items()}
        sizes = batch[feature_key].row_lengths()
        chunks_per_row = (sizes + length - 1) // length
        chunk_row = tf.repeat(tf.range(tf.size(sizes, out_type=tf.int64)), chunks_per_row)
        first_chunk = tf.cumsum(chunks_per_row, exclusive=True)
        index_in_row = tf.range(tf.reduce_sum(chunks_per_row)) - tf.gather(first_chunk, chunk_row)
        chunk_lengths = tf.minimum(tf.cast(length, tf.int64), tf.gather(sizes, chunk_row) - index_in_row * length)
        out = {}
        for k, v in batch.items():
            if k == feature_key or k in aligned_keys:
                out[k] = tf.RaggedTensor.from_row_lengths(v.flat_values, chunk_lengths)
            else:
                out[k] = tf.gather(v, chunk_row)
        return out

    return batches.map(to_chunks, num_parallel_calls=tf.data.AUTOTUNE)


def unbatch_records(batches: tf.data.Dataset) -> tf.data.Dataset:
    """Ragged record batches -> one record per element (plain tensors), in order."""
    return batches.unbatch().map(_plain_tensors)


def require_unsplit(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None = None,
                    feature_key: str = "targets") -> tf.data.Dataset:
    """`split_to_length`'s alternative for examples that must stay whole (e.g. one carrying a
    CTC transcript of the whole utterance): fails naming the record when `feature_key` is
    longer than its sequence length, instead of cutting it."""
    length = (sequence_length or {}).get(feature_key)
    if length is None:
        return dataset

    def fn(ex):
        size = tf.size(ex[feature_key])
        check = tf.debugging.Assert(
            size <= length,
            ["record", ex.get("id", ""), "has", size, f"tokens > sequence length {length} in {feature_key!r}; an "
             "example that cannot be split must fit (raise DatasetConfig.sequence_length)"])
        with tf.control_dependencies([check]):
            return {k: tf.identity(v) for k, v in ex.items()}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# --- record fields each preprocessor needs (checked by registration.register_corpus_task) ------
def declare_fields(preprocessor: Callable, fields_fn: Callable[[Mapping], Sequence[str]]) -> Callable:
    """Declares the record fields `preprocessor` reads: `fields_fn(arguments)` gets its bound
    arguments (defaults applied) and returns the field names, e.g.
    `declare_fields(format_asr, lambda a: [a["units_key"], a["text_key"]])`. Returns it."""
    preprocessor.required_fields = fields_fn
    return preprocessor


def unwrap_partial(preprocessor: Callable) -> tuple[Callable, tuple, dict]:
    """(function, bound positional args, bound keyword args) of a possibly nested `functools.partial`."""
    fn, args, kwargs = preprocessor, (), {}
    while isinstance(fn, functools.partial):
        args, kwargs, fn = fn.args + args, {**fn.keywords, **kwargs}, fn.func
    return fn, args, kwargs


def required_fields(preprocessor: Callable) -> tuple[str, ...] | None:
    """The record fields a (possibly `functools.partial`) preprocessor declared (`declare_fields`),
    for its arguments; None when it declared none."""
    fn, args, kwargs = unwrap_partial(preprocessor)
    fields_fn = getattr(fn, "required_fields", None)
    if fields_fn is None:
        return None
    bound = inspect.signature(fn).bind_partial(None, *args, **kwargs)  # the dataset comes first
    bound.apply_defaults()
    return tuple(fields_fn(bound.arguments))


def _units_key(a):
    return [a["units_key"]]


declare_fields(units_to_targets, _units_key)
