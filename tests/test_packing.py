"""Vectorised packing (slm_jax.data.packing) gives exactly seqio's packed rows."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax.data.packing import pack_dataset


def _random_examples(rng, count, lengths, empty_fraction=0.1):
    examples = []
    for _ in range(count):
        ex = {}
        for key, length in lengths.items():
            size = 0 if rng.random() < empty_fraction else int(rng.integers(1, int(length * 1.3) + 1))
            ex[key] = rng.integers(1, 50, size).astype(np.int32)  # some longer than the length: trimmed
        examples.append(ex)
    return examples


def _dataset(examples, keys):
    signature = {k: tf.TensorSpec([None], tf.int32) for k in keys}
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


@pytest.mark.parametrize("lengths,count", [
    ({"targets": 10}, 37),              # several groups of 10 examples: rows flushed at group ends
    ({"targets": 5}, 13),
    ({"targets": 16, "ctc": 7}, 100),   # two streams: a row closes when either is full
    ({"a": 64, "b": 64}, 300),
])
def test_rows_equal_seqio_packer(lengths, count):
    examples = _random_examples(np.random.default_rng(count), count, lengths)
    ref = list(seqio.utils.trim_and_pack_dataset(_dataset(examples, lengths), lengths).as_numpy_iterator())
    ours = list(pack_dataset(_dataset(examples, lengths), lengths).as_numpy_iterator())
    assert len(ours) == len(ref) > 1
    for row_ours, row_ref in zip(ours, ref):
        assert sorted(row_ours) == sorted(row_ref)
        for key in row_ref:
            np.testing.assert_array_equal(row_ours[key], row_ref[key], err_msg=key)


def test_exact_rows_by_hand():
    examples = [{"t": np.array(v, np.int32)} for v in ([5, 6, 7], [8, 9], [], [4, 4, 4, 4], [3])]
    rows = list(pack_dataset(_dataset(examples, ("t",)), {"t": 6}).as_numpy_iterator())
    assert [r["t"].tolist() for r in rows] == [[5, 6, 7, 8, 9, 0], [4, 4, 4, 4, 3, 0]]
    assert [r["t_segment_ids"].tolist() for r in rows] == [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 2, 0]]
    assert [r["t_positions"].tolist() for r in rows] == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]


def test_zero_inside_an_example_fails_naming_the_feature():
    examples = [{"t": np.array([5, 0, 7], np.int32)}]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"feature .{1,3}t.{1,3} holds a 0 inside an example"):
        list(pack_dataset(_dataset(examples, ("t",)), {"t": 6}).as_numpy_iterator())


def test_bad_feature_names_fail_before_reading():
    examples = [{"t": np.array([5], np.int32)}]
    with pytest.raises(ValueError, match="feature 'x' not in the dataset"):
        pack_dataset(_dataset(examples, ("t",)), {"x": 6})
