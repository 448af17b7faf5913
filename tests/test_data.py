"""The minimal data layer: vocab, preprocessors, demo corpus, tasks, batches, resume."""

import dataclasses
import filecmp
import importlib
import os

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import slm_jax.testing.tasks
from slm_jax.testing import unit_corpus as demo_corpus
from slm_jax.data.preprocessors import common as prep
from slm_jax.data.pipeline import ACCOUNTING_KEYS, BATCH_KEYS, EXTRA_KEYS, DataIterator, DatasetConfig, get_dataset
from slm_jax.data.tokenizers.unit_vocab import UnitVocabulary

pytestmark = pytest.mark.usefixtures("demo_data_dir")


def _ds(*examples):
    """A dataset of the given feature dicts (each its own element, varying lengths)."""
    ds = tf.data.Dataset.from_tensors(examples[0])
    for ex in examples[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(ex))
    return ds


def _to_lists(ds):
    return [{k: (v.numpy().tolist() if v.shape.rank else v.numpy()) for k, v in ex.items()} for ex in ds]


# --- vocab --------------------------------------------------------------------------
def test_vocab_layout_and_python_roundtrip():
    v = UnitVocabulary(100)
    assert (v.pad_id, v.eos_id, v.unk_id, v.vocab_size) == (0, 1, 2, 103)
    assert UnitVocabulary(100, extra_ids=5).vocab_size == 108
    assert v.encode("3 7 7 12") == [6, 10, 10, 15]
    assert v.encode([0, 99]) == [3, 102]
    assert v.decode([6, 10, 10, 15]) == "3 7 7 12"
    assert v.decode([6, 0, 10, 1, 15]) == "3 7"  # PAD skipped, stops at EOS
    assert v.decode([2, 6, 500]) == "<unk> 3 <unk>"  # UNK and out-of-vocab ids
    np.testing.assert_array_equal(v.unit_ids_to_tokens(np.array([0, 5, 99])), [3, 8, 102])
    np.testing.assert_array_equal(v.tokens_to_unit_ids([3, 8, 102]), [0, 5, 99])
    assert v == UnitVocabulary(100) and v != UnitVocabulary(101)
    assert v != UnitVocabulary(100, extra_ids=1) and hash(v) == hash(UnitVocabulary(100))


def test_vocab_tf_roundtrip():
    v = UnitVocabulary(100)
    ids = v.encode_tf(tf.constant("3 7 7 12"))
    assert ids.dtype == tf.int32 and ids.numpy().tolist() == [6, 10, 10, 15]
    assert v.unit_ids_to_tokens(tf.constant([0, 99], tf.int64)).numpy().tolist() == [3, 102]
    assert v.decode_tf(tf.constant([6, 10, 10, 15])).numpy() == b"3 7 7 12"
    batch = v.decode_tf(tf.constant([[6, 10, 1, 15], [3, 0, 0, 0]]))
    assert batch.numpy().tolist() == [b"3 7", b"0"]


def test_vocab_out_of_range_errors():
    v = UnitVocabulary(100)
    with pytest.raises(ValueError, match="unit 100 is out of range"):
        v.unit_ids_to_tokens([1, 100])
    with pytest.raises(ValueError, match="unit -1 is out of range"):
        v.encode("3 -1")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"out of range(.|\n)*100, 123"):
        v.unit_ids_to_tokens(tf.constant([1, 100, 5, 123]))
    # Inside a tf.data graph too (what a corrupt record would hit).
    ds = tf.data.Dataset.from_tensors({"units": tf.constant([4, 250], tf.int64)})
    with pytest.raises(tf.errors.InvalidArgumentError, match="250"):
        list(prep.units_to_targets(ds, v))


# --- preprocessors ------------------------------------------------------------------
def test_dedup_units_exact():
    ds = _ds(
        {"units": tf.constant([5, 5, 3, 3, 3, 5, 7, 7], tf.int64), "id": "a"},
        {"units": tf.constant([9], tf.int64), "id": "b"},
        {"units": tf.constant([], tf.int64), "id": "c"},
    )
    out = _to_lists(prep.dedup_units(ds))
    assert [o["units"] for o in out] == [[5, 3, 5, 7], [9], []]
    assert [o["id"] for o in out] == [b"a", b"b", b"c"]


def test_units_to_targets_appends_eos():
    ds = _ds({"units": tf.constant([0, 1, 99], tf.int64), "id": "a"})
    (out,) = _to_lists(prep.units_to_targets(ds, UnitVocabulary(100)))
    assert out == {"targets": [3, 4, 102, 1], "id": b"a"}


def test_split_to_length_exact_chunks_nothing_dropped():
    ds = _ds(
        {"targets": tf.range(10, dtype=tf.int32), "id": "a"},
        {"targets": tf.range(100, 108, dtype=tf.int32), "id": "b"},
        {"targets": tf.constant([7], tf.int32), "id": "c"},
    )
    out = _to_lists(prep.split_to_length(ds, {"targets": 4}))
    assert [(o["id"], o["targets"]) for o in out] == [
        (b"a", [0, 1, 2, 3]),
        (b"a", [4, 5, 6, 7]),
        (b"a", [8, 9]),  # remainder chunk
        (b"b", [100, 101, 102, 103]),
        (b"b", [104, 105, 106, 107]),  # exact: no empty chunk
        (b"c", [7]),
    ]
    # No length configured: unchanged.
    assert len(_to_lists(prep.split_to_length(ds, None))) == 3


# --- demo corpus --------------------------------------------------------------------
def test_demo_corpus_deterministic_and_schema(tmp_path):
    a = demo_corpus.ensure_demo_corpus(str(tmp_path / "a"))
    b = demo_corpus.ensure_demo_corpus(str(tmp_path / "b"))
    files = sorted(os.listdir(a))
    assert files == sorted(os.listdir(b))
    assert "train-en-00000-of-00004.tfrecord" in files
    assert "validation-fr-00000-of-00001.tfrecord" in files
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    # Cached: a second call does not rewrite anything.
    mtime = os.path.getmtime(os.path.join(a, files[0]))
    assert demo_corpus.ensure_demo_corpus(str(tmp_path / "a")) == a
    assert os.path.getmtime(os.path.join(a, files[0])) == mtime
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".")]  # no temp left

    ids = set()
    for split, per_lang in [("train", 2000), ("validation", 100)]:
        for lang in ("en", "fr"):
            files = sorted(tf.io.gfile.glob(os.path.join(a, demo_corpus.file_pattern(split, lang))))
            recs = [
                tf.train.Example.FromString(r).features.feature
                for r in tf.data.TFRecordDataset(files).as_numpy_iterator()
            ]
            assert len(recs) == per_lang
            for r in recs:
                assert set(r) == {"id", "lang", "units", "unit_rate_hz"}
                assert r["lang"].bytes_list.value == [lang.encode()]
                assert r["unit_rate_hz"].float_list.value == [50.0]
                u = np.array(r["units"].int64_list.value)
                assert 0 <= u.min() and u.max() < 100
                assert (u[1:] == u[:-1]).any()  # frame durations > 1: dedup has work to do
                ids.add(r["id"].bytes_list.value[0])
    assert len(ids) == 2 * 2100  # unique ids


def test_demo_corpus_concurrent_and_stale(tmp_path):
    import threading

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(demo_corpus.ensure_demo_corpus(str(tmp_path))))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 2
    assert sorted(os.listdir(tmp_path)) == [demo_corpus.CORPUS_SUBDIR]  # no temp dirs left
    # A marker from other parameters means stale: regenerated, not trusted.
    marker = os.path.join(results[0], demo_corpus.MARKER_FILE)
    with open(marker, "w") as f:
        f.write('{"generator_version": 0}')
    demo_corpus.ensure_demo_corpus(str(tmp_path))
    assert demo_corpus._is_complete(results[0])
    assert sorted(os.listdir(tmp_path)) == [demo_corpus.CORPUS_SUBDIR]


def test_importing_tasks_does_no_io(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_JAX_DATA_DIR", str(tmp_path / "nothing_here"))
    importlib.reload(slm_jax.testing.tasks)  # also checks re-registration does not crash
    assert not (tmp_path / "nothing_here").exists()
    for name in ("demo_units_en", "demo_units_fr", "demo_units_mix"):
        assert seqio.get_mixture_or_task(name).name == name


def test_register_unit_task_lang_filter_and_no_dedup():
    from slm_jax.data.registration import register_unit_task

    root = demo_corpus.ensure_demo_corpus()
    task = register_unit_task(
        "test_units_fr_raw",
        {"validation": os.path.join(root, "validation-*.tfrecord")},
        num_units=100,
        dedup=False,
        lang="fr",
    )
    out = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    assert len(out) == 100 and {ex["lang"] for ex in out} == {b"fr"}
    raw = [
        tf.train.Example.FromString(r).features.feature["units"].int64_list.value
        for r in tf.data.TFRecordDataset(
            os.path.join(root, "validation-fr-00000-of-00001.tfrecord")
        ).as_numpy_iterator()
    ]
    assert out[0]["targets"].tolist() == [u + 3 for u in raw[0]] + [1]  # not deduplicated
    # Re-registering the same name replaces it instead of failing.
    register_unit_task("test_units_fr_raw", {"validation": "x"}, num_units=100)
    seqio.TaskRegistry.remove("test_units_fr_raw")


# --- batches ------------------------------------------------------------------------
def _cfg(**kw):
    kw = {"mixture_or_task_name": "demo_units_mix", "sequence_length": 64, "batch_size": 4, **kw}
    return DatasetConfig(**kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.slow
def test_batches_keys_dtypes_and_determinism():
    it1 = DataIterator.from_config(_cfg())
    it2 = DataIterator.from_config(_cfg())
    b1, b2 = _take(it1, 3), _take(it2, 3)
    assert set(b1[0]) == set(BATCH_KEYS + EXTRA_KEYS + ACCOUNTING_KEYS)
    for k, v in b1[0].items():
        assert v.dtype == np.int32 and v.shape == (4, 64), k
    assert it1.shapes["decoder_target_tokens"] == ((4, 64), np.dtype(np.int32))
    _assert_batches_equal(b1, b2)
    b = b1[0]
    # Packing puts several segments in some row.
    assert max(x["decoder_segment_ids"].max() for x in b1) >= 2
    np.testing.assert_array_equal(b["decoder_loss_weights"], b["decoder_target_tokens"] > 0)
    # Another seed gives other data.
    other = next(DataIterator.from_config(_cfg(seed=1)))
    assert not np.array_equal(other["decoder_target_tokens"], b["decoder_target_tokens"])


def test_unpacked_batches_have_all_keys():
    b = next(DataIterator.from_config(_cfg(pack=False, mixture_or_task_name="demo_units_en")))
    assert set(b) == set(BATCH_KEYS + EXTRA_KEYS + ACCOUNTING_KEYS)
    tok = (b["decoder_target_tokens"] != 0).astype(np.int32)
    np.testing.assert_array_equal(b["decoder_task_ids"], tok)  # a task alone is member 1
    np.testing.assert_array_equal(b["decoder_segment_ids"], tok)
    np.testing.assert_array_equal(b["decoder_positions"], np.arange(64)[None] * tok)
    # Shifted right with 0 as BOS.
    np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
    assert (b["decoder_input_tokens"][:, 0] == 0).all()


def _ids(task, split, shard):
    ds = seqio.get_mixture_or_task(task).get_dataset(
        {"targets": 64}, split=split, shuffle=False, num_epochs=1, shard_info=shard
    )
    return [ex["id"].numpy() for ex in ds]


@pytest.mark.parametrize("split,expected", [("train", 2000), ("validation", 100)])
def test_shards_are_disjoint(split, expected):
    # train: 4 files -> file-level sharding; validation: 1 file -> example-level.
    a = _ids("demo_units_en", split, seqio.ShardInfo(0, 2))
    b = _ids("demo_units_en", split, seqio.ShardInfo(1, 2))
    assert a and b and not set(a) & set(b)
    assert len(set(a) | set(b)) == expected


@pytest.mark.slow
def test_sharded_batches_differ_and_are_per_process():
    b0 = next(DataIterator.from_config(_cfg(batch_size=8), seqio.ShardInfo(0, 2)))
    b1 = next(DataIterator.from_config(_cfg(batch_size=8), seqio.ShardInfo(1, 2)))
    assert b0["decoder_target_tokens"].shape == (4, 64)
    assert not np.array_equal(b0["decoder_target_tokens"], b1["decoder_target_tokens"])


def test_iterator_save_restore_exact(tmp_path):
    cfg = _cfg(shuffle=True, pack=True)
    it = DataIterator.from_config(cfg)
    first = _take(it, 3)
    prefix = it.save(str(tmp_path / "data_iter" / "process_0"))
    expected = _take(it, 4)  # the uninterrupted run
    # A restore that silently started over would replay `first`, not `expected`.
    assert not np.array_equal(first[0]["decoder_target_tokens"], expected[0]["decoder_target_tokens"])

    fresh = DataIterator.from_config(cfg)
    fresh.restore(str(tmp_path / "data_iter" / "process_0"))
    assert prefix.endswith("process_0")
    _assert_batches_equal(_take(fresh, 4), expected)

    with pytest.raises(FileNotFoundError, match="No data iterator checkpoint"):
        fresh.restore(str(tmp_path / "missing"))


# --- config errors and gin ----------------------------------------------------------
def test_bad_batch_size_error():
    with pytest.raises(ValueError, match=r"DatasetConfig\.batch_size=6 .*not divisible.* 4"):
        get_dataset(_cfg(batch_size=6), seqio.ShardInfo(0, 4))


def test_unknown_task_error():
    with pytest.raises(
        ValueError,
        match=r"'demo_unit_en' is not a registered(.|\n)*"
        r"demo_units_en(.|\n)*--module_import",
    ):
        get_dataset(_cfg(mixture_or_task_name="demo_unit_en"))
    with pytest.raises(ValueError, match=r"DatasetConfig\.split='test'"):
        get_dataset(_cfg(split="test"))


@gin.configurable("fake_train", module="tests.test_data")
def _fake_train(train_dataset=gin.REQUIRED):
    return train_dataset


def test_dataset_config_gin_bindings():
    try:
        gin.parse_config("""
        DatasetConfig.mixture_or_task_name = 'demo_units_mix'
        DatasetConfig.sequence_length = 128
        DatasetConfig.batch_size = 8
        DatasetConfig.pack = False
        fake_train.train_dataset = @DatasetConfig()
    """)
        cfg = _fake_train()
        assert cfg == DatasetConfig("demo_units_mix", 128, 8, pack=False)
        assert cfg.split == "train" and cfg.seed == 0 and cfg.num_epochs is None
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.batch_size = 4
    finally:
        gin.clear_config()
