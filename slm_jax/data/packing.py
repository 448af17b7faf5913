"""Vectorised greedy packing: the rows `seqio.utils.trim_and_pack_dataset` builds, computed
on a whole group of examples at once.

seqio's TF packer appends examples to the open row one at a time in a `tf.while_loop`
(a dozen small ops per example per feature) and closes the row when the next example
does not fit in every feature. The rule is next-fit in input order, so the row starts
follow from prefix sums alone:

    next_start(i) = the first j > i with sum(len_k[i..j]) > L_k for some feature k
                  = min_k searchsorted(cumsum(len_k), cumsum_before_i(len_k) + L_k, 'right')

Row starts are the orbit 0, next_start(0), next_start(next_start(0)), ... computed for
every step count at once by binary lifting (log2(group) gathers); every token is then
placed with one scatter. Output rows equal seqio's exactly, including where seqio
flushes the open row: at the end of each group of `max(feature_lengths)` examples.

Inputs are ragged batches (`Dataset.ragged_batch`) of 1-D int32 features whose values
are all non-zero (seqio's packer measures a feature by its non-zero values; a zero
inside a feature is rejected here instead of silently cutting the example short).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import tensorflow as tf

from slm_jax.data.preprocessors.common import as_ragged


def group_size(feature_lengths: Mapping[str, int]) -> int:
    """Examples per packing group: seqio's packer batches `max(feature_lengths)` examples, which
    guarantees one group fills at least one row."""
    return max(feature_lengths.values())


def _row_starts(lengths: Mapping[str, tf.Tensor], feature_lengths: Mapping[str, int], max_group: int):
    """Index of the first example of each packed row, [rows] int64 (see the module docstring)."""
    count = tf.size(next(iter(lengths.values())), out_type=tf.int64)
    next_start = None
    for key, size in lengths.items():
        inclusive = tf.cumsum(size)
        exclusive = inclusive - size
        first_overflow = tf.searchsorted(inclusive, exclusive + feature_lengths[key], side="right",
                                         out_type=tf.int64)
        next_start = first_overflow if next_start is None else tf.minimum(next_start, first_overflow)
    # jump[m][i] = next_start applied 2**m times; index `count` is the absorbing end.
    jump = tf.concat([next_start, [count]], 0)
    steps = tf.range(count)
    position = tf.zeros_like(steps)
    for bit in range(max(1, math.ceil(math.log2(max_group + 1)))):
        taken = tf.not_equal(tf.bitwise.bitwise_and(steps, 1 << bit), 0)
        position = tf.where(taken, tf.gather(jump, position), position)
        jump = tf.gather(jump, jump)
    return tf.boolean_mask(position, position < count)  # strictly increasing until the end


def pack_group(batch: Mapping[str, tf.RaggedTensor], feature_lengths: Mapping[str, int],
               max_group: int) -> dict[str, tf.Tensor]:
    """One ragged group of examples -> packed rows, as seqio's packer makes them.

    Returns, for each key in `feature_lengths`, `key`, `key_segment_ids` and `key_positions`,
    each int32 [rows, feature_lengths[key]] (0 on padding). Examples longer than a length
    are trimmed to it, as seqio's packer does (callers that must not trim check first).
    """
    trimmed = {k: batch[k][:, :length] for k, length in feature_lengths.items()}
    lengths = {k: v.row_lengths() for k, v in trimmed.items()}
    starts = _row_starts(lengths, feature_lengths, max_group)
    examples = tf.size(next(iter(lengths.values())), out_type=tf.int64)
    row_of_example = tf.searchsorted(starts, tf.range(examples), side="right", out_type=tf.int64) - 1
    num_rows = tf.size(starts, out_type=tf.int64)
    out = {}
    for key, values in trimmed.items():
        length, size = feature_lengths[key], lengths[key]
        before = tf.cumsum(size, exclusive=True)
        offset_in_row = before - tf.gather(before, tf.gather(starts, row_of_example))
        # segment number = non-empty examples from the row's start up to this one (seqio
        # numbers a row's examples by their first tokens, so empty ones take no number)
        nonempty = tf.cumsum(tf.cast(size > 0, tf.int64))
        segment = nonempty - tf.gather(nonempty - tf.cast(size > 0, tf.int64), tf.gather(starts, row_of_example))
        example = values.value_rowids()
        position = tf.range(tf.size(values.flat_values, out_type=tf.int64)) - tf.gather(values.row_starts(), example)
        index = tf.stack([tf.gather(row_of_example, example), tf.gather(offset_in_row, example) + position], 1)
        shape = tf.stack([num_rows, tf.constant(length, tf.int64)])
        out[key] = tf.scatter_nd(index, tf.cast(values.flat_values, tf.int32), shape)
        out[key + "_positions"] = tf.scatter_nd(index, tf.cast(position, tf.int32), shape)
        out[key + "_segment_ids"] = tf.scatter_nd(index, tf.cast(tf.gather(segment, example), tf.int32), shape)
    return out


def check_nonzero(batch: Mapping[str, tf.RaggedTensor], keys) -> list[tf.Operation]:
    """Asserts every value of the packed features is non-zero (0 is padding to the packer)."""
    return [
        tf.debugging.Assert(
            tf.reduce_all(tf.not_equal(batch[k].flat_values, 0)),
            [f"packing: feature {k!r} holds a 0 inside an example; 0 is padding (the packer would cut the "
             "example there). First rows:", batch[k].to_tensor()[:4]],
            summarize=32,
        )
        for k in keys
    ]


def pack_dataset(dataset: tf.data.Dataset, feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """`seqio.utils.trim_and_pack_dataset(dataset, feature_lengths)`, vectorised per group.

    Features not in `feature_lengths` are dropped, as in seqio. Yields one packed row per
    element: each key plus `_segment_ids` and `_positions`, int32 [length].
    """
    for key in feature_lengths:
        if key not in dataset.element_spec:
            raise ValueError(f"packing: feature {key!r} not in the dataset (features: {sorted(dataset.element_spec)})")
        if dataset.element_spec[key].shape.rank != 1:
            raise ValueError(f"packing: feature {key!r} must be 1-D, got shape {dataset.element_spec[key].shape}")
    return pack_groups(dataset, feature_lengths).unbatch()


def pack_groups(dataset: tf.data.Dataset, feature_lengths: Mapping[str, int], convert=None) -> tf.data.Dataset:
    """Packed rows in groups: each element is [rows, length] per feature (`pack_group`),
    optionally mapped by `convert` on the whole group before it is unbatched."""
    keys = tuple(feature_lengths)
    max_group = group_size(feature_lengths)

    def pack(batch):
        batch = {k: as_ragged(batch[k]) for k in keys}
        with tf.control_dependencies(check_nonzero(batch, keys)):
            rows = pack_group(batch, feature_lengths, max_group)
        return convert(rows) if convert else rows

    # The whole element is batched (a per-example map selecting the keys would cost more).
    return dataset.ragged_batch(max_group).map(pack, num_parallel_calls=tf.data.AUTOTUNE)
