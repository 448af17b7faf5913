"""From a SeqIO task/mixture name to per-process batches, with a checkpointable iterator.

`DatasetConfig` is the gin-configurable description of one input stream (t5x style:
`train.train_dataset = @DatasetConfig()` with `DatasetConfig.batch_size = 8`).
`get_dataset` builds the tf.data pipeline for one process (one `seqio.ShardInfo`),
and `DataIterator` hands out numpy batches and saves/restores its exact position
with `tf.train.Checkpoint`, so a resumed run sees the same batches as an
uninterrupted one.

Batches are dicts of int32 arrays `[batch_size // num_shards, sequence_length]`:
`decoder_input_tokens, decoder_target_tokens, decoder_loss_weights,
decoder_segment_ids, decoder_positions` (always all five, packed or not), plus
`EXTRA_KEYS` (`decoder_modality, decoder_patch_ids`, same shape) and `ACCOUNTING_KEYS`
(`decoder_task_ids`, same shape: which member of `task_names(cfg)` each token came from,
1-based, 0 on padding; for token accounting, never fed to a model). A task with a
`ctc_targets` feature (mSLAM CTC, `slm_jax.data.preprocessors.ctc_targets`) and `DatasetConfig.ctc_length`
set also gets `CTC_KEYS` (`decoder_ctc_targets, decoder_ctc_segment_ids,
decoder_ctc_positions`, int32 `[batch_size // num_shards, ctc_length]`; see
`slm_jax.data.feature_converter`).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from slm_jax import contract
from slm_jax.data import task_cache
from slm_jax.data.feature_converter import CTC_KEY, SLMFeatureConverter
from slm_jax.gin_utils import ConfigError

# The input pipeline runs on host CPUs; TF must never take accelerator memory from JAX.
tf.config.set_visible_devices([], "GPU")

# The batch layout is slm_jax.contract's: seqio's decoder features, then per-token modality
# (0 pad, 1 text, 2 speech, 3 marker) and latent-patch ids (per-modality losses, LST), then
# the packed character-CTC stream (own length, `DatasetConfig.ctc_length`) for tasks that
# write `ctc_targets`. These names stay importable from here.
BATCH_KEYS = contract.CORE_MODEL_FEATURES
EXTRA_KEYS = contract.EXTRA_MODEL_FEATURES
CTC_KEYS = contract.CTC_MODEL_FEATURES
ACCOUNTING_KEYS = contract.ACCOUNTING_FEATURES


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One input stream (gin: `DatasetConfig.*`); every field is checked in `__post_init__`.

    Attributes:
      mixture_or_task_name: a registered SeqIO task or mixture; non-empty str (that it is
        registered is checked by `get_dataset`).
      sequence_length: tokens per (packed) row; int >= 1.
      batch_size: GLOBAL rows per step (summed over data shards); int >= 1. It must also
        divide by the number of data shards (`get_dataset`) and the mesh's data-parallel size.
      split: the split to read, e.g. 'train'; non-empty str (that the task has it is
        checked by `get_dataset`).
      seed: shuffle / preprocessing seed; int, or None for a nondeterministic order.
      shuffle: shuffle examples; bool.
      pack: pack several examples into one row; bool.
      use_cached: read each task's SeqIO offline cache instead of running its pre-cache
        preprocessors (built by `slm-jax data cache TASK`, `slm_jax.data.beam_cache`, or
        seqio's `seqio_cache_tasks`); bool. A missing cache is a MissingCacheError naming the
        task, the cache dir and the command that builds it (`task_cache.use_task_caches`).
      cache_dir: where the caches are (`<cache_dir>/<task>/`); str, or None for
        `$SLM_JAX_DATA_DIR/seqio_cache` (`task_cache.default_cache_dir`). Read only with use_cached.
      num_epochs: passes over the data; int >= 1, or None to repeat forever.
      ctc_length: packed length (characters + separators) of the `ctc_targets` stream, for
        tasks with transcripts (mSLAM's CTC), passed as task_feature_lengths["ctc_targets"];
        int >= 1, or None for no CTC stream.

    Raises ConfigError (a ValueError) naming `DatasetConfig.<field>` for a bad value.
    """

    mixture_or_task_name: str
    sequence_length: int
    batch_size: int
    split: str = "train"
    seed: Optional[int] = 0
    shuffle: bool = True
    pack: bool = True
    use_cached: bool = False
    cache_dir: Optional[str] = None
    num_epochs: Optional[int] = None
    ctc_length: Optional[int] = None

    def __post_init__(self):
        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def check(field: str, ok: bool, rule: str):
            if not ok:
                raise ConfigError(f"DatasetConfig.{field} must be {rule}, got {getattr(self, field)!r}")

        check("mixture_or_task_name", isinstance(self.mixture_or_task_name, str) and self.mixture_or_task_name,
              "a non-empty str (a registered SeqIO task or mixture)")
        check("sequence_length", is_int(self.sequence_length) and self.sequence_length > 0, "a positive int")
        check("batch_size", is_int(self.batch_size) and self.batch_size > 0, "a positive int")
        check("split", isinstance(self.split, str) and self.split, "a non-empty str")
        check("seed", self.seed is None or is_int(self.seed), "None or an int")
        for flag in ("shuffle", "pack", "use_cached"):
            check(flag, isinstance(getattr(self, flag), bool), "a bool")
        check("cache_dir", self.cache_dir is None or (isinstance(self.cache_dir, str) and self.cache_dir),
              "None (the default cache dir) or a non-empty str")
        check("num_epochs", self.num_epochs is None or (is_int(self.num_epochs) and self.num_epochs > 0),
              "None (repeat forever) or a positive int")
        check("ctc_length", self.ctc_length is None or (is_int(self.ctc_length) and self.ctc_length > 0),
              "None or a positive int")


class EmptyDataError(ConfigError):
    """An input stream that yields no batch: a task or mixture member with 0 examples after
    preprocessing (on every process, or on some processes' shards), or a finite stream
    (`DatasetConfig.num_epochs`) that runs out before the last step."""


def _registered_names() -> list[str]:
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def _validate(cfg: DatasetConfig, shard_info: seqio.ShardInfo):
    """Checks `cfg` against the shards and the SeqIO registry before any I/O; returns the
    task or mixture. (The config's own fields are checked by `DatasetConfig.__post_init__`.)"""
    if not 0 <= shard_info.index < shard_info.num_shards:
        raise ValueError(
            f"ShardInfo index {shard_info.index} is not in [0, num_shards={shard_info.num_shards})"
        )
    if cfg.batch_size % shard_info.num_shards:
        raise ValueError(
            f"DatasetConfig.batch_size={cfg.batch_size} (global) is not divisible by the "
            f"number of data shards ({shard_info.num_shards}); each process needs an equal "
            f"per-process batch. Use a multiple of {shard_info.num_shards}."
        )
    name = cfg.mixture_or_task_name
    names = _registered_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"DatasetConfig.mixture_or_task_name={name!r} is not a registered SeqIO task or "
            f"mixture ({len(names)} registered).{hint} Import the module that registers it "
            f"with --module_import=<module> (e.g. --module_import=slm_jax.testing.tasks)."
        )
    provider = seqio.get_mixture_or_task(name)
    if cfg.split not in provider.splits:
        raise ValueError(
            f"DatasetConfig.split={cfg.split!r} is not a split of {name!r} "
            f"(splits: {sorted(provider.splits)})"
        )
    # seqio.Mixture.get_dataset skips a member without the split with only a log line,
    # which silently changes the mixture the user asked for.
    lacking = [t.name for t, _ in active_members(provider) if cfg.split not in t.splits]
    if lacking:
        raise ValueError(
            f"DatasetConfig.split={cfg.split!r}: members {lacking} of mixture {name!r} have no such split "
            f"(seqio would skip them and change the mixture); give them the split or set their rate to 0"
        )
    if cfg.use_cached:  # seqio would fall back to live preprocessing with a log line; refuse instead
        task_cache.use_task_caches([t for t, _ in active_members(provider)], cfg.split, cfg.cache_dir)
    return provider


def active_members(provider) -> list[tuple[seqio.Task, float]]:
    """(task, rate) for every task a stream can draw from: a task alone (rate 1.0), or each
    leaf task of a mixture (nested mixtures flattened, `Mixture.get_rate`) with rate > 0."""
    if not isinstance(provider, seqio.Mixture):
        return [(provider, 1.0)]
    members = [(task, float(provider.get_rate(task))) for task in provider.tasks]
    return [(task, rate) for task, rate in members if rate > 0]


def member_has_examples(cfg: DatasetConfig, shard_info: Optional[seqio.ShardInfo] = None) -> dict[str, bool]:
    """task name -> whether the task yields at least one example on `shard_info`'s shard,
    for each member of `active_members` (built as `get_dataset` builds it, no shuffling,
    one epoch, `.take(1)`). Raises what `get_dataset` raises for a bad config."""
    shard_info = shard_info or seqio.ShardInfo(index=0, num_shards=1)
    provider = _validate(cfg, shard_info)
    out = {}
    for task, _ in active_members(provider):
        ds = task.get_dataset({"targets": cfg.sequence_length}, split=cfg.split, use_cached=cfg.use_cached,
                              shuffle=False, seed=cfg.seed, shard_info=shard_info, num_epochs=1,
                              try_in_mem_cache=_in_memory_cache(cfg))
        out[task.name] = any(True for _ in ds.take(1))
    return out


def check_not_empty(cfg: DatasetConfig, shard_info: Optional[seqio.ShardInfo] = None,
                    gather: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
    """Refuse a stream with a member that yields no example, the same way on every process.

    `gather(int32 [members]) -> int32 [processes, members]` collects every process's
    `member_has_examples` (pass `multihost_utils.process_allgather` in a multi-process job;
    None for one process). Raises EmptyDataError naming each task and split: "task X, split
    Y: 0 examples after preprocessing" when no process has an example, or the processes whose
    shard is empty otherwise (fewer files or examples than processes).
    """
    shard_info = shard_info or seqio.ShardInfo(index=0, num_shards=1)
    local = member_has_examples(cfg, shard_info)
    names = list(local)
    table = np.asarray([int(local[n]) for n in names], np.int32)[None]
    if gather is not None:
        table = np.asarray(gather(table[0])).reshape(-1, len(names))
    problems = []
    for j, name in enumerate(names):
        column = table[:, j]
        if not column.any():
            problems.append(f"task {name!r}, split {cfg.split!r}: 0 examples after preprocessing "
                            f"(sequence_length={cfg.sequence_length})")
        elif not column.all():
            empty = [int(i) for i in np.flatnonzero(column == 0)]
            problems.append(f"task {name!r}, split {cfg.split!r}: 0 examples on the data shards of processes "
                            f"{empty} of {len(column)} (fewer input files or examples than processes)")
    if problems:
        where = (f" (member of mixture {cfg.mixture_or_task_name!r})"
                 if names != [cfg.mixture_or_task_name] else "")
        raise EmptyDataError(
            "; ".join(problems) + f"{where}. Check the task's filters and records (e.g. a lang filter against "
            f"the lang the records were imported with; `slm-jax data stats {cfg.mixture_or_task_name} "
            f"--split={cfg.split}`), or give the member rate 0")


def exhausted_error(cfg: DatasetConfig, step: int) -> EmptyDataError:
    """The error for a stream that ran out before `step` (finite `num_epochs`)."""
    return EmptyDataError(
        f"{cfg.mixture_or_task_name!r}, split {cfg.split!r}: the input ran out before step {step} "
        f"(DatasetConfig.num_epochs={cfg.num_epochs}; a mixture stops when any member runs out); "
        f"use num_epochs=None (repeat) or fewer steps")


def _add_unpacked_segments(ex: dict) -> dict:
    """Gives unpacked rows the packed layout: one segment (1 on tokens), positions 0..n-1.

    Padding gets segment 0 and position 0, exactly as in a packed row, so downstream
    code (attention masks, position embeddings) never branches on `pack`.
    """
    ex = dict(ex)
    is_token = tf.cast(tf.not_equal(ex["decoder_target_tokens"], 0), tf.int32)
    ex["decoder_segment_ids"] = is_token
    ex["decoder_positions"] = tf.range(tf.shape(is_token)[-1], dtype=tf.int32) * is_token
    return ex


def _targets_vocabulary(cfg: DatasetConfig):
    """The task's token space, so the converter can derive modality ids after packing."""
    vocab = seqio.get_mixture_or_task(cfg.mixture_or_task_name).output_features["targets"].vocabulary
    return vocab if hasattr(vocab, "modality_ids_tf") else None


def _mixed_tasks(provider: seqio.Mixture, split: str) -> list[seqio.Task]:
    """The tasks `seqio.Mixture.get_dataset` samples from, in its order: `Mixture.tasks`
    (nested mixtures flattened, sorted by name) that have `split`, rate 0 included."""
    return [task for task in provider.tasks if split in task.splits]


def task_names(cfg: DatasetConfig) -> list[str]:
    """The members `decoder_task_ids` numbers: entry i is the task of id i + 1. A task alone:
    [its name]; a mixture: its leaf tasks with `cfg.split`, as seqio's Mixture samples them
    (members of rate 0 included: they never appear). Raises what `get_dataset` raises for a
    name that is not registered or a split a member lacks."""
    provider = _validate(cfg, seqio.ShardInfo(index=0, num_shards=1))
    if isinstance(provider, seqio.Mixture):
        return [task.name for task in _mixed_tasks(provider, cfg.split)]
    return [provider.name]


def _tagged_mixture(provider: seqio.Mixture, cfg: DatasetConfig, shard_info: seqio.ShardInfo,
                    passthrough: tuple[str, ...] = ()) -> tf.data.Dataset:
    """`provider.get_dataset(...)` as `seqio.get_dataset` calls it, with one more per-token
    feature: `task_ids` (int32, the shape of `targets`, the member's 1-based index in
    `task_names`). Every member is tagged BEFORE sampling, with seqio's own sampling (the
    mixture's `_sample_fn`, `_get_all_mixing_rates`, its seed rule), so every other feature
    is bit-identical to seqio's mixture and the tf.data iterator stays checkpointable.
    (Tagging after sampling is impossible: the sampler does not say which member it drew.)"""
    provider._check_compatible_features()  # noqa: SLF001 - seqio's own step, in its order
    tasks = _mixed_tasks(provider, cfg.split)
    keys = set(provider.output_features) | set(passthrough)

    def tag(index: int):
        def add(ex):
            return {**ex, contract.TASK_IDS: tf.fill(tf.shape(ex[contract.TARGETS]), tf.constant(index, tf.int32))}
        return add

    datasets = [
        provider.get_task_dataset(task, keys, {"targets": cfg.sequence_length}, cfg.split, cfg.use_cached,
                                  cfg.shuffle, cfg.seed, shard_info, cfg.num_epochs, True, _in_memory_cache(cfg))
        .map(tag(i + 1), num_parallel_calls=tf.data.AUTOTUNE)
        for i, task in enumerate(tasks)
    ]
    rates = provider._get_all_mixing_rates(tasks)  # noqa: SLF001
    # seqio.Mixture.get_dataset's seed rule
    sample_seed = cfg.seed if cfg.seed is not None else (None if cfg.shuffle else 42)
    return provider._sample_fn(datasets, rates, sample_seed)  # noqa: SLF001


def _task_dataset(provider, cfg: DatasetConfig, shard_info: seqio.ShardInfo, passthrough: tuple[str, ...] = (),
                  task_ids: bool = True) -> tf.data.Dataset:
    """Task features of `provider` as `seqio.get_dataset` reads them (a mixture: tagged with
    `task_ids` by `_tagged_mixture` unless `task_ids=False`; a task alone: untagged)."""
    if isinstance(provider, seqio.Mixture) and task_ids:
        return _tagged_mixture(provider, cfg, shard_info, passthrough)
    extra = {"passthrough_features": list(passthrough)} if passthrough and isinstance(provider, seqio.Mixture) else {}
    return provider.get_dataset({"targets": cfg.sequence_length}, split=cfg.split, use_cached=cfg.use_cached,
                                shuffle=cfg.shuffle, seed=cfg.seed, shard_info=shard_info,
                                num_epochs=cfg.num_epochs, trim_output_features=True,
                                try_in_mem_cache=_in_memory_cache(cfg), **extra)


def _in_memory_cache(cfg: DatasetConfig) -> bool:
    """seqio keeps a small cached split (< 10k examples per shard) in memory with `Dataset.cache()`
    before repeating: later epochs would replay the first epoch's file order (a live read
    reshuffles files each epoch), and an iterator checkpoint would hold the cached examples. So a
    cached read streams from its files, like a live one (seqio's default stays for live reads)."""
    return not cfg.use_cached


def _with_single_task_ids(ex: dict) -> dict:
    """`decoder_task_ids` of a task alone: 1 on every token, 0 on padding (no packing cost)."""
    return {**ex, contract.DECODER_TASK_IDS: tf.cast(tf.not_equal(ex[contract.DECODER_TARGET_TOKENS], 0), tf.int32)}


def get_dataset(cfg: DatasetConfig, shard_info: Optional[seqio.ShardInfo] = None,
                task_ids: bool = True) -> tf.data.Dataset:
    """Per-process batches of `cfg` for `shard_info` (default: the only shard).

    Each process reads a disjoint part of the data (file-level sharding when there
    are enough files, else example-level) and gets `batch_size // num_shards` rows;
    an incomplete last batch is dropped (only reachable with finite `num_epochs`).
    The rows are those of `seqio.get_dataset(name, ..., SLMFeatureConverter)` plus
    `decoder_task_ids` (module docstring). `task_ids=False` builds the pipeline as it was
    before token accounting (no `decoder_task_ids`): a tf.data iterator position saved by
    that pipeline restores only into the same graph.
    """
    shard_info = shard_info or seqio.ShardInfo(index=0, num_shards=1)
    provider = _validate(cfg, shard_info)
    converter = SLMFeatureConverter(pack=cfg.pack, vocabulary=_targets_vocabulary(cfg))
    if cfg.ctc_length is None:
        ds = converter(_task_dataset(provider, cfg, shard_info, task_ids=task_ids), {"targets": cfg.sequence_length})
    else:
        # What seqio.get_dataset does, except that the task only sees the targets' length:
        # seqio would trim a `ctc_targets` OUTPUT feature to sequence_length["ctc_targets"]
        # silently, while the converter fails on an over-long one. Mixtures keep only output
        # features, so `ctc_targets` is passed through explicitly.
        ds = _task_dataset(provider, cfg, shard_info, passthrough=(CTC_KEY,), task_ids=task_ids)
        ds = converter(ds, {"targets": cfg.sequence_length, CTC_KEY: cfg.ctc_length})
    if not cfg.pack:
        ds = ds.map(_add_unpacked_segments, num_parallel_calls=tf.data.AUTOTUNE)
    single = task_ids and contract.DECODER_TASK_IDS not in ds.element_spec
    keys = (BATCH_KEYS + EXTRA_KEYS + (ACCOUNTING_KEYS if task_ids else ())
            + tuple(k for k in CTC_KEYS if k in ds.element_spec))

    def select(ex):
        ex = _with_single_task_ids(ex) if single else ex
        return {k: tf.cast(ex[k], tf.int32) for k in keys}

    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(cfg.batch_size // shard_info.num_shards, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


class DataIterator:
    """Numpy batches from a tf.data pipeline, with a savable position.

    `save(path)` / `restore(path)` write/read a `tf.train.Checkpoint` with `path` as
    the prefix (`path.index`, `path.data-*`); local and gs:// paths work. Each process
    saves its own iterator (its own shard), e.g. under `<ckpt>/data/process_<i>`.
    """

    def __init__(self, dataset: tf.data.Dataset):
        self._dataset = dataset
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

    @classmethod
    def from_config(cls, cfg: DatasetConfig, shard_info: Optional[seqio.ShardInfo] = None,
                    task_ids: bool = True) -> "DataIterator":
        return cls(get_dataset(cfg, shard_info, task_ids))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._iterator)
        return {k: v.numpy() for k, v in batch.items()}

    @property
    def element_spec(self):
        return self._dataset.element_spec

    @property
    def shapes(self) -> dict:
        """key -> (shape tuple, numpy dtype) of one batch."""
        return {
            k: (tuple(s.shape), np.dtype(s.dtype.as_numpy_dtype))
            for k, s in self._dataset.element_spec.items()
        }

    def save(self, path: str) -> str:
        """Writes the iterator position under prefix `path`; returns the prefix."""
        return self._checkpoint.write(path)

    def restore(self, path: str) -> None:
        """Restores a position saved by `save` on an iterator over the same pipeline."""
        if not tf.io.gfile.exists(path + ".index"):
            raise FileNotFoundError(f"No data iterator checkpoint at {path!r} (expected {path + '.index'}).")
        self._checkpoint.read(path).assert_consumed()
