"""SLMFeatureConverter: identical to seqio's decoder converter on shared keys, exact extra keys."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax.data.feature_converter import CTC_MODEL_FEATURES, SLMFeatureConverter

SHARED = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)

EXAMPLES = [
    {"targets": [5, 6, 7, 1], "modality": [3, 2, 2, 3], "loss_mask": [0, 1, 1, 1], "patch_ids": [0, 0, 1, 1]},
    {"targets": [8, 9, 1], "modality": [3, 1, 3], "loss_mask": [0, 0, 1], "patch_ids": [-1, 0, 0]},
    {"targets": [4, 1], "modality": [2, 3], "loss_mask": [1, 1], "patch_ids": [0, 1]},
]


def _ds(keys=("targets", "modality", "loss_mask", "patch_ids"), examples=EXAMPLES):
    ds = None
    for ex in examples:
        one = tf.data.Dataset.from_tensors(
            {k: tf.constant(ex[k], tf.int32) for k in keys} | {"id": tf.constant("x")}
        )
        ds = one if ds is None else ds.concatenate(one)
    return ds


def _rows(ds):
    return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("pack,length", [(True, 10), (True, 6), (False, 4)])
@pytest.mark.parametrize("with_optional", [False, True])
def test_shared_keys_identical_to_seqio(pack, length, with_optional):
    keys = (
        ("targets", "modality", "patch_ids") if with_optional else ("targets",)
    )  # loss_mask missing -> ones
    ours = _rows(SLMFeatureConverter(pack=pack)(_ds(keys), {"targets": length}))
    ref = _rows(seqio.DecoderFeatureConverter(pack=pack)(_ds(("targets",)), {"targets": length}))
    assert len(ours) == len(ref) == (1 if length == 10 else 2 if length == 6 else 3)
    for o, r in zip(ours, ref):
        assert set(r) == set(SHARED[:3] if not pack else SHARED)
        assert set(o) == set(r) | {"decoder_modality", "decoder_patch_ids"}
        for k in r:
            assert o[k] == r[k], k


def test_packed_one_row_exact():
    (row,) = _rows(SLMFeatureConverter(pack=True)(_ds(), {"targets": 10}))
    assert row == {
        "decoder_target_tokens": [5, 6, 7, 1, 8, 9, 1, 4, 1, 0],
        "decoder_input_tokens": [0, 5, 6, 7, 0, 8, 9, 0, 4, 0],
        "decoder_loss_weights": [0, 1, 1, 1, 0, 0, 1, 1, 1, 0],  # zeros inside loss_mask kept in place
        "decoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 3, 3, 0],
        "decoder_positions": [0, 1, 2, 3, 0, 1, 2, 0, 1, 0],
        "decoder_modality": [3, 2, 2, 3, 3, 1, 3, 2, 3, 0],
        "decoder_patch_ids": [0, 0, 1, 1, -1, 0, 0, 0, 1, -1],
    }


def test_packed_two_rows_exact():
    rows = _rows(SLMFeatureConverter(pack=True)(_ds(), {"targets": 6}))
    # 4 + 3 > 6: the second example opens row 2, the third (2 tokens) joins it.
    assert [r["decoder_target_tokens"] for r in rows] == [[5, 6, 7, 1, 0, 0], [8, 9, 1, 4, 1, 0]]
    assert [r["decoder_segment_ids"] for r in rows] == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 2, 2, 0]]
    assert [r["decoder_loss_weights"] for r in rows] == [[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]]
    assert [r["decoder_modality"] for r in rows] == [[3, 2, 2, 3, 0, 0], [3, 1, 3, 2, 3, 0]]
    assert [r["decoder_patch_ids"] for r in rows] == [[0, 0, 1, 1, -1, -1], [-1, 0, 0, 0, 1, -1]]


def test_unpacked_exact():
    rows = _rows(SLMFeatureConverter(pack=False)(_ds(), {"targets": 4}))
    assert [r["decoder_target_tokens"] for r in rows] == [[5, 6, 7, 1], [8, 9, 1, 0], [4, 1, 0, 0]]
    assert [r["decoder_loss_weights"] for r in rows] == [[0, 1, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0]]
    assert [r["decoder_modality"] for r in rows] == [[3, 2, 2, 3], [3, 1, 3, 0], [2, 3, 0, 0]]
    assert [r["decoder_patch_ids"] for r in rows] == [[0, 0, 1, 1], [-1, 0, 0, -1], [0, 1, -1, -1]]


def test_missing_optional_defaults_and_vocab_modality():
    (row,) = _rows(SLMFeatureConverter(pack=True)(_ds(("targets",)), {"targets": 10}))
    assert row["decoder_modality"] == [0] * 10 and row["decoder_patch_ids"] == [-1] * 10
    assert row["decoder_loss_weights"] == [1] * 9 + [0]

    class Vocab:  # stands in for SpeechTextVocabulary.modality_ids_tf
        def modality_ids_tf(self, ids):
            return tf.where(tf.equal(ids, 1), 3, 2)

    (row,) = _rows(SLMFeatureConverter(pack=True, vocabulary=Vocab())(_ds(("targets",)), {"targets": 10}))
    assert row["decoder_modality"] == [2, 2, 2, 3, 2, 2, 3, 2, 3, 0]


@pytest.mark.slow
def test_lengths_and_errors():
    conv = SLMFeatureConverter(pack=True)
    assert conv.get_model_feature_lengths({"targets": 8}) == {
        k: 8 for k in SHARED + ("decoder_modality", "decoder_patch_ids")
    }
    assert set(SLMFeatureConverter(pack=False).get_model_feature_lengths({"targets": 8})) == set(
        SHARED[:3]
    ) | {"decoder_modality", "decoder_patch_ids"}
    with pytest.raises(ValueError, match="needs 'targets'"):
        conv(_ds(), {"modality": 8})
    with pytest.raises(ValueError, match="unknown task feature 'inputs'"):
        conv(_ds(), {"targets": 8, "inputs": 8})
    with pytest.raises(ValueError, match="differs from"):
        conv(_ds(), {"targets": 8, "modality": 4})
    bad = [{"targets": [5, 1], "modality": [2], "loss_mask": [1, 1], "patch_ids": [0, 0]}]
    with pytest.raises(tf.errors.InvalidArgumentError, match="modality.* must have the length"):
        _rows(conv(_ds(examples=bad), {"targets": 8}))
    bad = [{"targets": [5, 1], "modality": [2, 3], "loss_mask": [1, 1], "patch_ids": [0, -2]}]
    with pytest.raises(tf.errors.InvalidArgumentError, match="patch_ids.* must have the length"):
        _rows(conv(_ds(examples=bad), {"targets": 8}))


@pytest.mark.slow
def test_long_optional_features_trimmed_with_targets():
    """A task trims `targets` (its output feature) but maybe not the others: they are trimmed too."""
    long = [{"targets": [5, 6, 1], "modality": [3, 2, 3, 3, 3], "loss_mask": [1] * 5, "patch_ids": [0] * 5}]
    (row,) = _rows(SLMFeatureConverter(pack=True)(_ds(examples=long), {"targets": 3}))
    assert row["decoder_modality"] == [3, 2, 3] and row["decoder_patch_ids"] == [0, 0, 0]
    np.testing.assert_array_equal(row["decoder_loss_weights"], [1, 1, 1])


@pytest.mark.slow
def test_ctc_targets_own_length_and_no_state_between_calls():
    """`ctc_targets` is the one task feature with its own length; the three decoder_ctc_*
    model features appear only for datasets that have it (tests/test_ctc_pipeline.py has more)."""
    conv = SLMFeatureConverter(pack=True)
    per_token = {k: 8 for k in SHARED + ("decoder_modality", "decoder_patch_ids")}
    assert conv.get_model_feature_lengths({"targets": 8, "ctc_targets": 5}) == {
        **per_token, **{k: 5 for k in CTC_MODEL_FEATURES}}
    with_ctc = _ds().map(lambda ex: {**ex, "ctc_targets": ex["targets"][:2] + 20})
    (row,) = _rows(conv(with_ctc, {"targets": 10, "ctc_targets": 7}))
    assert row["decoder_ctc_targets"] == [25, 26, 28, 29, 24, 21, 0]
    assert row["decoder_ctc_segment_ids"] == [1, 1, 2, 2, 3, 3, 0]
    assert row["decoder_ctc_positions"] == [0, 1, 0, 1, 0, 1, 0]
    (plain,) = _rows(conv(_ds(), {"targets": 10}))  # same instance, dataset without ctc_targets
    assert set(plain) == set(SHARED) | {"decoder_modality", "decoder_patch_ids"}
    with pytest.raises(ValueError, match="differs from"):
        conv(with_ctc, {"targets": 10, "modality": 4, "ctc_targets": 7})
