"""SeqIO's offline cache of slm_jax tasks, the reading side (no Apache Beam needed here).

A task with a `seqio.CacheDatasetPlaceholder` can be preprocessed once, offline, up to that
point (`slm-jax data cache TASK`, `slm_jax.data.beam_cache`; or seqio's own `seqio_cache_tasks`)
and a run then reads the cache (`DatasetConfig.use_cached=True`): the preprocessors before the
placeholder never run again, those after it run on every read. The layout is seqio's
(`seqio.utils.get_cached_*`), per task, under `<cache_dir>/<task name, ':' as '/'>/`:

    info.<split>.json        feature names, dtypes, shapes; num_shards
    stats.<split>.json       examples, <feature>_tokens, <feature>_max_tokens
    <split>.tfrecord-SSSSS-of-NNNNN   the examples (`seqio.dict_to_tfexample`)
    COMPLETED                written last: a cache without it is ignored (seqio's rule)

Which slm_jax preprocessors sit before the cache point (registration.py):
- `register_unit_task`: lang filter, run-length dedup, unit -> token ids (deterministic);
  `split_to_length` after it (it needs the run's sequence length).
- `register_corpus_task`: every preprocessor the task names (interleaving, expressive merge,
  task formats, patch ids) and `drop_token_modality` before it; `split_to_length` /
  `require_unsplit` after it. A batched task has a cache point only when registered with
  `cacheable=True` (its record batches are unbatched before the point).
- Seeded preprocessors (word / cross-lingual interleaving draw spans and sides from
  `seqio.map_over_dataset(num_seeds=1)` seeds) also run before the point: the cache fixes ONE
  draw (seqio's per-shard seed rule, `--base_seed`), and every epoch of a cached run re-reads
  it, while a live run draws per run seed and position. Deterministic pre-cache steps give
  the live examples exactly (tests/test_task_cache.py).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import seqio
import tensorflow as tf

from slm_jax.gin_utils import ConfigError

CACHE_SUBDIR = "seqio_cache"
DATA_DIR_ENV = "SLM_JAX_DATA_DIR"
COMPLETED = "COMPLETED"


class MissingCacheError(ConfigError):
    """`use_cached=True` for a task that has no cache point, or no complete cache in the cache dir."""


def default_cache_dir() -> str:
    """`$SLM_JAX_DATA_DIR/seqio_cache` (default `~/.cache/slm_jax/data/seqio_cache`), read at call time."""
    data_dir = os.environ.get(DATA_DIR_ENV) or os.path.join("~", ".cache", "slm_jax", "data")
    return os.path.join(os.path.expanduser(data_dir), CACHE_SUBDIR)


def task_cache_path(cache_dir: str, task_name: str) -> str:
    """Where the cache of `task_name` lives under `cache_dir` (seqio's layout)."""
    return os.path.join(cache_dir, seqio.get_task_dir_from_name(task_name))


def build_command(task_name: str, cache_dir: str, modules: Iterable[str] = ()) -> str:
    """The command that builds the cache of `task_name` in `cache_dir`."""
    imports = "".join(f" --module_import={m}" for m in modules)
    return f"slm-jax data cache {task_name} --cache_dir={cache_dir}{imports}"


def use_task_caches(tasks: Iterable[seqio.Task], split: str, cache_dir: Optional[str] = None) -> str:
    """Points each of `tasks` at its complete cache under `cache_dir` (None: `default_cache_dir()`)
    for `split`; returns the cache dir used.

    seqio searches its global cache dirs once per Task object and keeps the first hit; this sets
    each task's cache dir to the one of THIS run, so two runs (or tests) with different cache dirs
    in one process never read each other's cache. Raises MissingCacheError (a ConfigError: one line
    from the CLI) naming every such task, the cache dir and the command that builds it when a task
    has no cache point, no COMPLETED cache there, or no `split` in it.
    """
    cache_dir = cache_dir or default_cache_dir()
    seqio.add_global_cache_dirs([cache_dir])
    problems = []
    tasks = list(tasks)
    for task in tasks:
        where = task_cache_path(cache_dir, task.name)
        if not task.supports_caching:
            problems.append(
                f"DatasetConfig.use_cached=True: task {task.name!r} has no cache point (no "
                "seqio.CacheDatasetPlaceholder among its preprocessors); register a batched task with "
                "register_corpus_task(..., cacheable=True), or set DatasetConfig.use_cached=False")
        elif not tf.io.gfile.exists(os.path.join(where, COMPLETED)):
            state = "an unfinished cache (no COMPLETED file)" if tf.io.gfile.exists(where) else "no cache"
            problems.append(
                f"DatasetConfig.use_cached=True: task {task.name!r} has {state} at {where} "
                f"(DatasetConfig.cache_dir={cache_dir!r}); build it with `{build_command(task.name, cache_dir)}` "
                "(add the --module_import that registers the task), or set DatasetConfig.use_cached=False")
        elif not tf.io.gfile.exists(seqio.utils.get_cached_info_path(where, split)):
            problems.append(
                f"DatasetConfig.use_cached=True: the cache of task {task.name!r} at {where} has no split "
                f"{split!r} ({seqio.utils.get_cached_info_path(where, split)} is missing); rebuild it with "
                f"`{build_command(task.name, cache_dir)} --overwrite`")
    if problems:  # every task's problem at once: a mixture's members are fixed in one pass
        raise MissingCacheError(" | ".join(problems))
    for task in tasks:
        task._cache_dir = task_cache_path(cache_dir, task.name)  # noqa: SLF001 - seqio memoizes its first hit
        task._stats = {}  # noqa: SLF001 - and its stats, read from that dir
    return cache_dir
