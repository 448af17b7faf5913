"""SeqIO's offline cache of slm_jax tasks (issue 16, item 3): a cached task gives the live task's
batches exactly (same seed, after packing), seqio's own cache job's output is read too, a missing
cache is refused naming task, dir and command, and a run on a cached task resumes exactly."""
import functools
import json
import os

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam", reason="Apache Beam is not installed (pip install -e '.[beam]'); "
                           "the task cache tests need it")

import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from slm_jax.data import beam_cache, corpus, pipeline, registration, task_cache  # noqa: E402
from slm_jax.data.preprocessors import interleave, word_interleave  # noqa: E402
from tests.test_interleave import vocab  # noqa: E402,F401 - fixture

BEAM = ["--direct_num_workers=1"]


def _batches(name, cache_dir, use_cached, n, **kw):
    cfg = pipeline.DatasetConfig(name, kw.pop("sequence_length", 64), kw.pop("batch_size", 8), seed=3,
                                 use_cached=use_cached, cache_dir=cache_dir, **kw)
    it = pipeline.DataIterator.from_config(cfg)
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"batch {i}, {k}")


@pytest.fixture(scope="module")
def unit_cache(demo_data_dir, tmp_path_factory):
    """The synthetic unit mixture's tasks cached through the CLI, as a user runs it."""
    from slm_jax import cli
    import slm_jax.testing.tasks  # noqa: F401 - registers demo_units_*

    cache_dir = str(tmp_path_factory.mktemp("cache"))
    assert cli.main(["data", "cache", "demo_units_mix", f"--cache_dir={cache_dir}",
                     "--module_import=slm_jax.testing.tasks", *BEAM]) == 0
    return cache_dir


def test_cache_layout_is_seqios(unit_cache):
    where = os.path.join(unit_cache, "demo_units_en")
    names = sorted(os.listdir(where))
    assert names == ["COMPLETED", "info.train.json", "info.validation.json", "stats.train.json",
                     "stats.validation.json", *[f"train.tfrecord-{i:05d}-of-00004" for i in range(4)],
                     "validation.tfrecord-00000-of-00001"]
    info = json.load(open(os.path.join(where, "info.train.json")))
    assert info["num_shards"] == 4 and info["features"]["targets"] == {"dtype": "int32", "shape": [None]}
    assert json.load(open(os.path.join(where, "stats.train.json")))["examples"] == 2000


@pytest.mark.parametrize("name", ["demo_units_en", "demo_units_mix"])
def test_cached_batches_equal_live_batches(unit_cache, name):
    """Shuffled, packed, past the end of the first epoch (~2200 rows of 64 tokens per epoch and task)."""
    n = 300 if name == "demo_units_en" else 120
    _assert_same(_batches(name, unit_cache, True, n), _batches(name, unit_cache, False, n))


def test_unshuffled_cached_examples_equal_live_examples(unit_cache):
    task = seqio.TaskRegistry.get("demo_units_fr")
    task_cache.use_task_caches([task], "train", unit_cache)
    kw = dict(sequence_length={"targets": 50}, split="train", shuffle=False, num_epochs=1)
    cached = list(task.get_dataset(use_cached=True, try_in_mem_cache=False, **kw).as_numpy_iterator())
    live = list(task.get_dataset(use_cached=False, **kw).as_numpy_iterator())
    assert len(cached) == len(live) > 2000  # split_to_length (after the cache point) ran on both
    for c, v in zip(cached, live):
        assert c["id"] == v["id"] and np.array_equal(c["targets"], v["targets"])


def test_missing_cache_names_task_dir_and_command(unit_cache, tmp_path):
    empty = str(tmp_path / "nothing")
    with pytest.raises(task_cache.MissingCacheError) as e:
        _batches("demo_units_mix", empty, True, 1)
    msg = str(e.value)
    assert "'demo_units_en'" in msg and os.path.join(empty, "demo_units_en") in msg
    assert f"slm-jax data cache demo_units_en --cache_dir={empty}" in msg
    # every member of the mixture at once, and a one-line ConfigError for the CLI
    assert "'demo_units_fr'" in msg and os.path.join(empty, "demo_units_fr") in msg
    from slm_jax.gin_utils import ConfigError
    assert isinstance(e.value, ConfigError)
    os.makedirs(os.path.join(empty, "demo_units_en"))
    with pytest.raises(task_cache.MissingCacheError, match="an unfinished cache .no COMPLETED file."):
        _batches("demo_units_en", empty, True, 1)
    with pytest.raises(task_cache.MissingCacheError, match="has no split 'test'"):
        task_cache.use_task_caches([seqio.TaskRegistry.get("demo_units_en")], "test", unit_cache)


def test_cli_skips_complete_caches_and_refuses_unknown_names(unit_cache, capsys):
    from slm_jax import cli
    assert cli.main(["data", "cache", "demo_units_en", f"--cache_dir={unit_cache}", *BEAM]) == 0
    assert "demo_units_en: already cached" in capsys.readouterr().out
    assert cli.main(["data", "cache", "no_such_task", f"--cache_dir={unit_cache}", *BEAM]) == 2
    assert "'no_such_task' is not a registered SeqIO task or mixture" in capsys.readouterr().err


def test_seqio_cache_tasks_main_output_is_read_too(unit_cache, tmp_path):
    """seqio's own job (global reshuffle, >= 64 shards): the same examples, in another order."""
    from absl import flags
    from seqio.scripts import cache_tasks_main

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    out = str(tmp_path / "seqio_job")
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner", *BEAM])) as p:
        cache_tasks_main.run_pipeline(p, ["demo_units_en"], out, ignore_other_caches=True)
    assert len(tf.io.gfile.glob(os.path.join(out, "demo_units_en", "train.tfrecord-*"))) == 64
    task = seqio.TaskRegistry.get("demo_units_en")

    def examples(cache_dir):
        task_cache.use_task_caches([task], "validation", cache_dir)
        ds = task.get_dataset(None, split="validation", use_cached=True, shuffle=False, num_epochs=1)
        return sorted((ex["id"], ex["targets"].tolist()) for ex in ds.as_numpy_iterator())

    assert examples(out) == examples(unit_cache) and len(examples(out)) == 100


# --- corpus tasks: batched ones opt in with cacheable=True --------------------------------------
def _corpus(tmp_path, shards=3):
    utts = []
    for i in range(30):
        n = 20 + 7 * i % 50
        words = [("w%d" % j, 0.4 * j, 0.4 * j + 0.4) for j in range(int(n / 25 / 0.4))]
        utts.append(corpus.Utterance(id=f"u{i:03d}", lang="en", units=[(5 * f + i) % 10 for f in range(n)],
                                     unit_rate_hz=25.0, text=" ".join(w for w, _, _ in words), words=words))
    corpus.write_tfrecord_shards(str(tmp_path / "corpus"), "train", utts, shards)
    return {"train": str(tmp_path / "corpus" / "train-*.tfrecord")}


def test_batched_corpus_task_needs_cacheable(vocab, tmp_path):
    files = _corpus(tmp_path)
    speech = functools.partial(interleave.speech_only_batches, vocabulary=vocab)
    plain = registration.register_corpus_task("cache_speech_plain", files, [speech], vocab, batched=True)
    assert not plain.supports_caching
    with pytest.raises(ValueError, match=r"cache_speech_plain.*cacheable=True"):
        beam_cache.run_task_cache(["cache_speech_plain"], str(tmp_path / "c"), pipeline_args=BEAM)
    with pytest.raises(task_cache.MissingCacheError, match=r"'cache_speech_plain' has no cache point"):
        _batches("cache_speech_plain", str(tmp_path / "c"), True, 1)

    cacheable = registration.register_corpus_task("cache_speech", files, [speech], vocab, batched=True,
                                                  cacheable=True)
    beam_cache.run_task_cache(["cache_speech"], str(tmp_path / "c"), pipeline_args=BEAM)
    kw = dict(sequence_length=32, batch_size=4)
    live = _batches("cache_speech", None, False, 40, **kw)
    _assert_same(_batches("cache_speech", str(tmp_path / "c"), True, 40, **kw), live)
    _assert_same(_batches("cache_speech_plain", None, False, 40, **kw), live)  # same examples as not cacheable
    assert cacheable.supports_caching


@pytest.mark.slow  # three Beam pipelines
def test_seeded_pre_cache_draws_are_fixed_at_cache_time(vocab, tmp_path):
    """Word interleaving before the cache point: the cache holds one draw per shard (seqio's seed rule,
    `--base_seed`); the same base seed rebuilds the same cache, another one draws again."""
    files = _corpus(tmp_path)
    registration.register_corpus_task(
        "cache_words", files, [functools.partial(word_interleave.word_interleave_batches, vocabulary=vocab,
                                                 speech_ratio=0.5, mean_span_words=1.0)],
        vocab, batched=True, cacheable=True)

    def shards(base_seed, name):
        beam_cache.run_task_cache(["cache_words"], str(tmp_path / name), pipeline_args=BEAM, base_seed=base_seed)
        pattern = os.path.join(str(tmp_path / name), "cache_words", "train.tfrecord-*")
        return [list(tf.data.TFRecordDataset(p).as_numpy_iterator()) for p in sorted(tf.io.gfile.glob(pattern))]

    a, b, c = shards(1, "a"), shards(1, "b"), shards(2, "c")
    assert len(a) == 3 and sum(map(len, a)) == 30
    assert a == b and a != c


# --- training on a cached task ----------------------------------------------------------------
@pytest.mark.slow
def test_training_on_a_cached_task_equals_live_and_resumes_exactly(unit_cache, tmp_path):
    """The same run live and cached gives bit-identical parameters; a cached run resumed from its
    step-4 checkpoint ends bit-identical to the uninterrupted cached run, with the same losses."""
    import shutil

    from slm_jax import gin_utils
    from slm_jax.training import checkpoints, run_dir
    from slm_jax.training.train import TrainRun, run_training

    def run(model_dir, cached):
        gin_utils.parse_gin(["gin/runs/test_cpu.gin"], [
            "TRAIN_STEPS = 8", "CHECKPOINT_PERIOD = 4", "SEQUENCE_LENGTH = 64", "train.eval_period = 0",
            "train.log_period = 1", "train.keep_checkpoints = None", f"MODEL_DIR = '{model_dir}'",
            f"train/DatasetConfig.use_cached = {cached}", f"train/DatasetConfig.cache_dir = '{unit_cache}'"])
        run_training(TrainRun())
        ckpt = os.path.join(model_dir, "checkpoints")
        losses = {m["step"]: m["loss"] for m in map(json.loads, open(os.path.join(model_dir, "metrics.jsonl")))}
        return checkpoints.params_sha256(checkpoints.restore_params_to_host(ckpt)[1]), losses

    cached_sha, cached_losses = run(str(tmp_path / "cached"), True)
    live_sha, live_losses = run(str(tmp_path / "live"), False)
    assert cached_sha == live_sha and cached_losses == live_losses

    resumed = str(tmp_path / "resumed")
    shutil.copytree(str(tmp_path / "cached"), resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "8"))
    assert checkpoints.list_complete_steps(os.path.join(resumed, "checkpoints")) == [4]
    resumed_sha, resumed_losses = run(resumed, True)
    assert [launch["start_step"] for launch in run_dir.read_launches(resumed)] == [0, 4]  # it did resume
    assert resumed_sha == cached_sha
    assert {s: resumed_losses[s] for s in range(5, 9)} == {s: cached_losses[s] for s in range(5, 9)}
