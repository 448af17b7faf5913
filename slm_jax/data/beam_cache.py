"""`slm-jax data cache TASK`: SeqIO's offline cache of registered tasks as an Apache Beam pipeline.

Needs the `beam` extra (`pip install -e ".[beam]"`); the DirectRunner runs it locally, Dataflow /
Flink / Spark at scale by `--runner` and Beam's pipeline options (remote workers need slm_jax and
the task's module installed, and the corpus on shared storage such as gs://).

It is seqio's `cache_tasks_main` pipeline with one difference: ORDER. seqio reshuffles the examples
globally and writes at least 64 shards, so a cached run sees another (equally valid) example order
than the live task. Here each source file is preprocessed by one worker, in order, with seqio's
own per-shard code and seed rule (`seqio.beam_utils.PreprocessTask`), and written to its own cache
shard with the same index (`<split>.tfrecord-SSSSS-of-NNNNN`, N = the number of source files).
seqio reads a cache with the same file shuffle and interleave as the source, so with
deterministic pre-cache preprocessors a cached run gets the live task's batches exactly (same
seed, after packing), and resumes exactly. Info, stats and COMPLETED are written as seqio does
(`GetInfo`, `GetStats`, `WriteJson`), so `seqio.Task.get_dataset(use_cached=True)` reads it, and a
cache from `seqio_cache_tasks` is read the same way (in its own order).

Parallelism is per source file: a split with few large files caches on few workers.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import seqio
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from seqio import beam_utils

from slm_jax.data.task_cache import COMPLETED, default_cache_dir, task_cache_path


def cache_shard_path(output_dir: str, split: str, index: int, num_shards: int) -> str:
    """`<output_dir>/<split>.tfrecord-SSSSS-of-NNNNN`: the names seqio's cached source globs."""
    return f"{seqio.utils.get_cached_tfrecord_prefix(output_dir, split)}-{index:05d}-of-{num_shards:05d}"


class _CacheShardInOrder(beam.DoFn):
    """(index, source file) -> the file's pre-cache examples, written in order to cache shard `index`
    (a temp file renamed into place, so a retried bundle leaves no partial shard); yields them for
    the info and stats."""

    def __init__(self, task: seqio.Task, split: str, output_dir: str, num_shards: int,
                 modules: Sequence[str], base_seed: Optional[int]):
        self._preprocess = beam_utils.PreprocessTask(task, split, modules_to_import=list(modules),
                                                     preprocessors_seed=base_seed)
        self._split, self._output_dir, self._num_shards = split, output_dir, num_shards

    def process(self, shard):
        index, _ = shard
        final = cache_shard_path(self._output_dir, self._split, index, self._num_shards)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        with tf.io.TFRecordWriter(tmp) as writer:
            # seqio's per-shard reading, pre-cache preprocessing and seed (shard name + base seed)
            for ex in self._preprocess._emit_examples(shard):  # noqa: SLF001
                ex = {k: v.numpy() if isinstance(v, tf.Tensor) else v for k, v in ex.items()}
                writer.write(seqio.dict_to_tfexample(ex).SerializeToString())
                yield ex
        tf.io.gfile.rename(tmp, final, overwrite=True)


def add_task_cache(pipeline, task: seqio.Task, cache_dir: str, splits: Optional[Sequence[str]] = None,
                   modules: Sequence[str] = (), base_seed: Optional[int] = None) -> str:
    """Adds the steps that cache `task` (all its splits, or `splits`) under `cache_dir` to `pipeline`;
    returns the task's cache dir. COMPLETED is written after every split's shards, info and stats."""
    output_dir = task_cache_path(cache_dir, task.name)
    done = []
    for split in splits or sorted(task.splits):
        label = f"{task.name}_{split}"
        files = list(enumerate(task.source.list_shards(split)))
        examples = (pipeline | f"{label}_files" >> beam.Create(files)
                    | f"{label}_reshuffle_files" >> beam.Reshuffle()  # spread files over workers
                    | f"{label}_cache_in_order" >> beam.ParDo(
                        _CacheShardInOrder(task, split, output_dir, len(files), modules, base_seed)))
        done.append(examples | f"{label}_info" >> beam_utils.GetInfo(len(files))
                    | f"{label}_write_info" >> beam_utils.WriteJson(seqio.utils.get_cached_info_path(output_dir, split)))
        done.append(examples | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                    | f"{label}_write_stats" >> beam_utils.WriteJson(
                        seqio.utils.get_cached_stats_path(output_dir, split)))
    _ = (done | f"{task.name}_all_splits" >> beam.Flatten()
         | f"{task.name}_nothing" >> beam.Filter(lambda _: False)
         | f"{task.name}_completed" >> beam.io.textio.WriteToText(
             os.path.join(output_dir, COMPLETED), num_shards=1, shard_name_template="", append_trailing_newlines=False))
    return output_dir


def leaf_tasks(names: Iterable[str]) -> list[seqio.Task]:
    """The registered tasks named, a mixture standing for its leaf tasks; sorted, without repeats.
    Raises ValueError naming an unregistered name."""
    tasks = {}
    for name in names:
        if name in seqio.TaskRegistry.names():
            tasks[name] = seqio.TaskRegistry.get(name)
        elif name in seqio.MixtureRegistry.names():
            tasks.update((t.name, t) for t in seqio.MixtureRegistry.get(name).tasks)
        else:
            raise ValueError(f"{name!r} is not a registered SeqIO task or mixture; import the module that "
                             "registers it with --module_import=<module>")
    return [tasks[n] for n in sorted(tasks)]


def run_task_cache(names: Iterable[str], cache_dir: Optional[str] = None, *, runner: str = "DirectRunner",
                   pipeline_args: Sequence[str] = (), modules: Sequence[str] = (), splits: Optional[Sequence[str]] = None,
                   overwrite: bool = False, base_seed: Optional[int] = None) -> dict:
    """Caches the tasks `names` (mixtures: their tasks) under `cache_dir` (None: `default_cache_dir()`)
    in one Beam pipeline on `runner` (`pipeline_args`: more Beam options). `modules` are imported on
    the workers (the task registrations).

    A task whose cache is COMPLETE is skipped unless `overwrite` (then its dir is removed first); an
    unfinished one (no COMPLETED) is rebuilt. Returns {"cache_dir", "cached": {task: {split: stats}},
    "skipped": [tasks already cached]}. Raises ValueError for an unregistered name or a task without
    a cache point (naming it).
    """
    cache_dir = cache_dir or default_cache_dir()
    tasks = leaf_tasks(names)
    lacking = [t.name for t in tasks if not t.supports_caching]
    if lacking:
        raise ValueError(f"tasks {lacking} have no cache point (seqio.CacheDatasetPlaceholder): a batched corpus "
                         "task needs register_corpus_task(..., cacheable=True)")
    todo, skipped = [], []
    for task in tasks:
        where = task_cache_path(cache_dir, task.name)
        if tf.io.gfile.exists(os.path.join(where, COMPLETED)) and not overwrite:
            skipped.append(task.name)
            continue
        if tf.io.gfile.exists(where):
            tf.io.gfile.rmtree(where)
        todo.append(task)
    if todo:
        tf.io.gfile.makedirs(cache_dir)
        options = PipelineOptions([f"--runner={runner}", *pipeline_args])
        with beam.Pipeline(options=options) as pipeline:
            for task in todo:
                add_task_cache(pipeline, task, cache_dir, splits, modules, base_seed)
    cached = {}
    for task in todo:
        where = task_cache_path(cache_dir, task.name)
        cached[task.name] = {}
        for split in splits or sorted(task.splits):
            with tf.io.gfile.GFile(seqio.utils.get_cached_stats_path(where, split)) as f:
                cached[task.name][split] = json.load(f)
    return {"cache_dir": cache_dir, "cached": cached, "skipped": skipped}
