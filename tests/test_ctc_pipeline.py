"""Character-CTC targets through the data pipeline: SLMFeatureConverter packs `ctc_targets`
next to `targets`, `ctc_targets_from_packed` recovers each segment's characters, nothing is
trimmed silently, tasks without transcripts are unchanged, and the spoken demo CTC task."""
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax.data import corpus
from slm_jax.data.preprocessors.ctc_targets import add_ctc_targets, sentinel_id
from slm_jax.data.feature_converter import SLMFeatureConverter
from slm_jax.data.pipeline import (
    ACCOUNTING_KEYS,
    BATCH_KEYS,
    CTC_KEYS,
    EXTRA_KEYS,
    DatasetConfig,
    get_dataset,
)
from slm_jax.data.tokenizers.chars import CharVocabulary
from slm_jax.models.ctc import ctc_targets_from_packed

CHARS = CharVocabulary("abc '")
SENT = sentinel_id(CHARS)  # 6
# (id, targets, transcript); the empty transcript sits in the middle, where a missing
# sentinel would shift the numbering of the later ctc segments.
EXAMPLES = [("x1", [5, 6, 7, 1], "ab c"), ("x2", [8, 9, 1], ""), ("x3", [4, 1], "c'a")]


def _ds(examples=EXAMPLES, sentinel=True):
    ds = tf.data.Dataset.from_tensor_slices({
        "id": [e[0] for e in examples],
        "text": [e[2] for e in examples],
    })
    targets = tf.ragged.constant([e[1] for e in examples], dtype=tf.int32)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(targets))).map(
        lambda ex, t: {**ex, "targets": t})
    return add_ctc_targets(ds, CHARS, packing_sentinel=sentinel)


def _rows(ds):
    return [{k: np.asarray(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


# --- (a) packed rows -> per-segment character ids -------------------------------------------------
@pytest.mark.slow
def test_packed_ctc_targets_recovered_per_segment():
    (row,) = _rows(SLMFeatureConverter(pack=True)(_ds(), {"targets": 10, "ctc_targets": 12}))
    assert row["decoder_target_tokens"].tolist() == [5, 6, 7, 1, 8, 9, 1, 4, 1, 0]
    assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 3, 3, 0]
    # [sentinel a b ' ' c] [sentinel] [sentinel c ' a]
    assert row["decoder_ctc_targets"].tolist() == [SENT, 1, 2, 4, 3, SENT, SENT, 3, 5, 1, 0, 0]
    assert row["decoder_ctc_segment_ids"].tolist() == [1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 0, 0]
    assert row["decoder_ctc_positions"].tolist() == [0, 1, 2, 3, 4, 0, 0, 1, 2, 3, 0, 0]

    batch = {k: v[None] for k, v in row.items()}
    targets, lengths = ctc_targets_from_packed(
        batch["decoder_ctc_targets"], batch["decoder_ctc_segment_ids"], batch["decoder_ctc_positions"],
        num_segments=4, max_length=6, leading_sentinel=True)
    targets, lengths = np.asarray(targets), np.asarray(lengths)
    assert lengths.tolist() == [[4, 0, 3, 0]]
    for s, (_, tokens, text) in enumerate(EXAMPLES, start=1):
        # segment s of the token stream <-> row s-1 of the CTC targets
        assert row["decoder_target_tokens"][row["decoder_segment_ids"] == s].tolist() == tokens
        assert targets[0, s - 1, :lengths[0, s - 1]].tolist() == CHARS.encode(text)
        assert CHARS.decode(targets[0, s - 1, :lengths[0, s - 1]]) == text
    assert not targets[0, 3].any()


def test_ctc_stream_closes_rows_too():
    """A row closes when EITHER stream is full, so segments stay aligned across rows."""
    rows = _rows(SLMFeatureConverter(pack=True)(_ds(), {"targets": 10, "ctc_targets": 6}))
    assert [r["decoder_segment_ids"].tolist() for r in rows] == [
        [1, 1, 1, 1, 2, 2, 2, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert [r["decoder_ctc_segment_ids"].tolist() for r in rows] == [[1, 1, 1, 1, 1, 2], [1, 1, 1, 1, 0, 0]]
    for r in rows:
        batch = {k: v[None] for k, v in r.items()}
        t, n = ctc_targets_from_packed(batch["decoder_ctc_targets"], batch["decoder_ctc_segment_ids"],
                                       batch["decoder_ctc_positions"], 2, leading_sentinel=True)
        r["texts"] = [CHARS.decode(np.asarray(t)[0, s, :int(n[0, s])]) for s in range(2)]
    assert rows[0]["texts"] == ["ab c", ""] and rows[1]["texts"] == ["c'a", ""]


def test_unpacked_ctc_rows():
    rows = _rows(SLMFeatureConverter(pack=False)(_ds(), {"targets": 4, "ctc_targets": 6}))
    assert [r["decoder_ctc_targets"].tolist() for r in rows] == [
        [SENT, 1, 2, 4, 3, 0], [SENT, 0, 0, 0, 0, 0], [SENT, 3, 5, 1, 0, 0]]
    assert [r["decoder_ctc_segment_ids"].tolist() for r in rows] == [
        [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert [r["decoder_ctc_positions"].tolist() for r in rows] == [
        [0, 1, 2, 3, 4, 0], [0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 0]]
    assert "decoder_segment_ids" not in rows[0]  # unpacked: like seqio (pipeline adds them)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    t, n = ctc_targets_from_packed(batch["decoder_ctc_targets"], batch["decoder_ctc_segment_ids"],
                                   batch["decoder_ctc_positions"], 1, leading_sentinel=True)
    assert [CHARS.decode(np.asarray(t)[i, 0, :int(n[i, 0])]) for i in range(3)] == [e[2] for e in EXAMPLES]


# --- (b) errors: no silent truncation, no silent misalignment -------------------------------------
@pytest.mark.parametrize("pack", [True, False])
def test_overlong_ctc_targets_fail_naming_the_example(pack):
    conv = SLMFeatureConverter(pack=pack)
    # x1 has 5 ctc tokens (sentinel + "ab c") > 4
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"example\] \[#0 \(id x1\)\] \[has\] \[5\]"):
        _rows(conv(_ds(), {"targets": 10, "ctc_targets": 4}))


@pytest.mark.slow
def test_ctc_length_and_values_errors():
    conv = SLMFeatureConverter(pack=True)
    with pytest.raises(ValueError, match="has a 'ctc_targets' feature but task_feature_lengths has no 'ctc_targets'"):
        conv(_ds(), {"targets": 10})
    plain = _ds().map(lambda ex: {"targets": ex["targets"]})
    with pytest.raises(ValueError, match="dataset has no 'ctc_targets' feature"):
        conv(plain, {"targets": 10, "ctc_targets": 8})
    with pytest.raises(ValueError, match="must be a positive int"):
        conv(_ds(), {"targets": 10, "ctc_targets": 0})
    # Packing an empty ctc_targets (no sentinel) would misalign the later segments.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"#1 \(id x2\)\] \[has an empty ctc_targets"):
        _rows(conv(_ds(sentinel=False), {"targets": 10, "ctc_targets": 12}))
    # ... while unpacked rows are independent: fine.
    rows = _rows(SLMFeatureConverter(pack=False)(_ds(sentinel=False), {"targets": 4, "ctc_targets": 6}))
    assert rows[1]["decoder_ctc_segment_ids"].tolist() == [0] * 6
    zero = _ds().map(lambda ex: {**ex, "ctc_targets": tf.concat([ex["ctc_targets"], [0]], 0)})
    with pytest.raises(tf.errors.InvalidArgumentError, match="values <= 0"):
        _rows(conv(zero, {"targets": 10, "ctc_targets": 12}))


# --- (c) get_dataset: unchanged without ctc_targets, CTC_KEYS with them ----------------------------
def _register(name, with_ctc):
    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        ds = _ds(EXAMPLES * 3)
        return ds if with_ctc else ds.map(lambda ex: {"id": ex["id"], "targets": ex["targets"]})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocab = seqio.PassThroughVocabulary(size=16)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]), preprocessors=[],
        output_features={"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)}, metric_fns=[])
    return name


def _batches(ds):
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


@pytest.mark.parametrize("pack", [True, False])
def test_task_without_ctc_gives_the_same_batches(pack):
    name = _register("ctc_pipeline_plain", with_ctc=False)
    cfg = DatasetConfig(name, sequence_length=10, batch_size=2, shuffle=False, num_epochs=1, pack=pack)
    ours = _batches(get_dataset(cfg))
    # The pipeline as it was before CTC_KEYS: seqio.get_dataset, then BATCH_KEYS + EXTRA_KEYS.
    from slm_jax.data.pipeline import _add_unpacked_segments
    ref = seqio.get_dataset(name, {"targets": 10}, SLMFeatureConverter(pack=pack), dataset_split="train",
                            shuffle=False, num_epochs=1, seed=0, verbose=False)
    if not pack:
        ref = ref.map(_add_unpacked_segments)
    ref = _batches(ref.map(lambda ex: {k: ex[k] for k in BATCH_KEYS + EXTRA_KEYS}).batch(2, drop_remainder=True))
    assert len(ours) == len(ref) > 0
    for o, r in zip(ours, ref):
        assert set(o) == set(BATCH_KEYS + EXTRA_KEYS + ACCOUNTING_KEYS) and set(r) == set(BATCH_KEYS + EXTRA_KEYS)
        for k in r:
            np.testing.assert_array_equal(o[k], r[k], err_msg=k)
    with pytest.raises(ValueError, match="dataset has no 'ctc_targets' feature"):
        get_dataset(DatasetConfig(name, sequence_length=10, batch_size=2, ctc_length=8))


@pytest.mark.slow
def test_get_dataset_passes_ctc_keys_for_tasks_and_mixtures():
    name = _register("ctc_pipeline_paired", with_ctc=True)
    from slm_jax.data.registration import register_mixture
    mix = register_mixture("ctc_pipeline_paired_mix", [name]).name
    for provider in (name, mix):
        cfg = DatasetConfig(provider, sequence_length=10, batch_size=2, shuffle=False, num_epochs=1, ctc_length=12)
        (b,) = _batches(get_dataset(cfg))[:1]
        assert set(b) == set(BATCH_KEYS + EXTRA_KEYS + ACCOUNTING_KEYS + CTC_KEYS)
        assert CTC_KEYS == ("decoder_ctc_targets", "decoder_ctc_segment_ids", "decoder_ctc_positions")
        for k in CTC_KEYS:
            assert b[k].shape == (2, 12) and b[k].dtype == np.int32, k
        t, n = ctc_targets_from_packed(b["decoder_ctc_targets"], b["decoder_ctc_segment_ids"],
                                       b["decoder_ctc_positions"], 3, leading_sentinel=True)
        assert [CHARS.decode(np.asarray(t)[0, s, :int(n[0, s])]) for s in range(3)] == [e[2] for e in EXAMPLES]
    with pytest.raises(ValueError, match="task_feature_lengths has no 'ctc_targets'"):
        get_dataset(DatasetConfig(name, sequence_length=10, batch_size=2))
    with pytest.raises(ValueError, match="ctc_length must be None or a positive int"):
        get_dataset(DatasetConfig(name, sequence_length=10, batch_size=2, ctc_length=0))


# --- the spoken demo CTC task on a tiny hand-written corpus --------------------------------------
TINY = [("s0", [3, 3, 7, 7, 7, 9, 1], "Le chat dort."), ("s1", [4, 5, 5, 6], "An owl, à côté."),
        ("s2", [8, 8, 2], ""), ("s3", [0, 1, 2, 3, 4, 5, 6, 7], "Ça va - l'œuf!")]


@pytest.fixture
def tiny_corpus(tmp_path, monkeypatch):
    from slm_jax.data.registration import LazyRootFiles
    utts = [corpus.Utterance(id=i, lang="en", units=u, unit_rate_hz=25.0, text=t) for i, u, t in TINY]
    corpus.write_tfrecord_shards(str(tmp_path / "speech"), "train-en", utts, num_shards=1)
    monkeypatch.setattr(LazyRootFiles, "_resolved",
                        lambda self, split: os.path.join(str(tmp_path), self._split_to_filepattern[split]))
    return tmp_path


def test_spoken_demo_ctc_task_end_to_end(tiny_corpus):
    import slm_jax_demo.tasks as spoken
    from slm_jax.data.preprocessors import interleave

    chars = spoken.CTC_CHARS
    assert chars is spoken.ctc_chars() and chars.lowercase_only
    vocab = spoken.SPEECH_VOCAB
    cfg = DatasetConfig("spoken_demo_speech_ctc_en", sequence_length=32, batch_size=1, shuffle=False,
                        num_epochs=1, ctc_length=48)
    (b,) = _batches(get_dataset(cfg))
    assert set(b) == set(BATCH_KEYS + EXTRA_KEYS + ACCOUNTING_KEYS + CTC_KEYS) and b["decoder_ctc_targets"].shape == (1, 48)
    t, n = ctc_targets_from_packed(b["decoder_ctc_targets"], b["decoder_ctc_segment_ids"],
                                   b["decoder_ctc_positions"], 4, leading_sentinel=True)
    # Same targets as interleave.speech_only (the plain speech task), segment by segment.
    records = tf.data.Dataset.from_tensor_slices({"id": [r[0] for r in TINY],
                                                  "units": tf.ragged.constant([r[1] for r in TINY], tf.int64)})
    plain = [ex["targets"].tolist() for ex in interleave.speech_only(records, vocab).as_numpy_iterator()]
    seg = b["decoder_segment_ids"][0]
    for s, (_, _, text) in enumerate(TINY, start=1):
        assert b["decoder_target_tokens"][0][seg == s].tolist() == plain[s - 1]
        assert np.asarray(t)[0, s - 1, :int(n[0, s - 1])].tolist() == chars.encode(text)
        assert chars.decode(np.asarray(t)[0, s - 1, :int(n[0, s - 1])]) == text.lower()
    assert (b["decoder_modality"][0][seg > 0] > 0).all() and (b["decoder_modality"][0][seg == 0] == 0).all()


def test_spoken_demo_ctc_task_never_splits_or_trims(tiny_corpus):
    import slm_jax_demo.tasks  # noqa: F401  (registers the task)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"record\] \[s3\] \[has\] \[10\] \[tokens"):
        _batches(get_dataset(DatasetConfig("spoken_demo_speech_ctc_en", sequence_length=8, batch_size=1,
                                           shuffle=False, num_epochs=1, ctc_length=48)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(id s1\)\] \[has\] \[16\] \[ctc_targets"):
        _batches(get_dataset(DatasetConfig("spoken_demo_speech_ctc_en", sequence_length=32, batch_size=1,
                                           shuffle=False, num_epochs=1, ctc_length=15)))


def test_ctc_alphabet_covers_the_story_grammar():
    import slm_jax_demo.tasks as spoken
    from slm_jax_demo import stories

    chars = set()
    for story in stories.generate_stories(300, seed=0):
        for lang in ("en", "fr"):
            for sentence in [*story.sentences(lang), story.wrong_ending(lang), story.topic_ending(lang)]:
                chars.update(sentence.lower())
    assert chars <= set(spoken.CTC_ALPHABET), sorted(chars - set(spoken.CTC_ALPHABET))
    assert len(spoken.CTC_CHARS.encode(" ".join(story.sentences("fr")))) <= spoken.CTC_MAX_CHARS
