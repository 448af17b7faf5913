"""Register SeqIO tasks and mixtures over corpus TFRecords in a few lines.

`register_corpus_task` is the general path: records in the corpus layout
(`slm_jax.data.corpus.schema`, written by `slm-jax prepare import`), any preprocessors of
`slm_jax.data.preprocessors`, a `SpeechTextVocabulary` (README "Your own data").

`register_unit_task` is the LEGACY unit-only path, kept because the synthetic test corpus
(`slm_jax.testing.unit_corpus`: `id`, `lang`, `units`) and existing unit-only runs use its
`UnitVocabulary` ids (pad 0, eos 1, unk 2, unit u -> 3 + u), which differ from
`SpeechTextVocabulary`'s; new tasks should use `register_corpus_task`. It yields `targets`
= unit token ids + EOS, split into chunks of the configured length.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from slm_jax.data.preprocessors import common as prep
from slm_jax.data.tokenizers.unit_vocab import UnitVocabulary

FilePatterns = Union[str, Iterable[str]]


class LazyRootFiles:
    """File listing for a `seqio.FileDataSource` whose patterns are relative to `self._root_fn()`
    (None: as given), resolved only when files are listed; no match raises ValueError."""

    def _resolved(self, split: str):
        pattern = self._split_to_filepattern[split]
        if self._root_fn is None:
            return pattern
        root = self._root_fn()
        if isinstance(pattern, str):
            return os.path.join(root, pattern)
        return [os.path.join(root, p) for p in pattern]

    def list_shards(self, split: str) -> Sequence[str]:
        files = seqio.utils.list_files(self._resolved(split))
        if not files:
            raise ValueError(
                f"No files match {self._resolved(split)!r} (split {split!r} of {type(self).__name__})."
            )
        return files


class TFExampleSource(LazyRootFiles, seqio.FileDataSource):
    """`tf.train.Example` records from TFRecord files, one parsed record per element
    (`batch_records=None`: `tf.io.parse_single_example`, as `seqio.TFExampleDataSource`) or
    ragged BATCHES of `batch_records` parsed records (one `tf.io.parse_example` per batch;
    features [B] or [B, (values)]).

    Batches are for tasks whose preprocessors all work on record batches
    (`register_corpus_task(batched=True)`): tf.data pays a fixed cost per element and per op,
    so parsing, interleaving and splitting a batch at a time, with a single unbatch at the
    end, costs a fraction of the per-record chain. Records keep file order within a batch;
    sharding by examples (fewer files than shards) deals out whole batches.

    File patterns are relative to `root_fn()` when it is given, resolved only when files
    are listed (`LazyRootFiles`), so registering and importing a task module does no I/O
    (the demo tasks pass `ensure_spoken_demo_corpus`, which builds the corpus on first
    use). Files are sharded and shuffled by `seqio.FileDataSource`.
    """

    def __init__(
        self,
        split_to_filepattern: Mapping[str, FilePatterns],
        feature_description,
        root_fn: Optional[Callable[[], str]] = None,
        batch_records: Optional[int] = None,
        **kwargs,
    ):
        if batch_records is not None:
            prep.check_batch_records(batch_records, type(self).__name__)
        self._root_fn = root_fn
        self.feature_description = dict(feature_description)
        self.batch_records = batch_records
        description = self.feature_description

        def read_file(path):
            records = tf.data.TFRecordDataset(path)
            if batch_records is not None:  # parsed per batch, in get_dataset
                return records
            return records.map(lambda pb: tf.io.parse_single_example(pb, description),
                               num_parallel_calls=tf.data.AUTOTUNE)

        super().__init__(read_file_fn=read_file, split_to_filepattern=split_to_filepattern, **kwargs)

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, **kwargs) -> tf.data.Dataset:
        records = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info, **kwargs)
        if self.batch_records is None:
            return records
        description = self.feature_description
        return records.batch(self.batch_records).map(
            lambda batch: tf.io.parse_example(batch, description), num_parallel_calls=tf.data.AUTOTUNE)


def _remove_if_registered(registry, name: str) -> None:
    """Makes registration idempotent: re-importing a task module must not crash."""
    if name in registry.names():
        registry.remove(name)


def register_unit_task(
    name: str,
    split_to_filepattern: Mapping[str, FilePatterns],
    num_units: int,
    dedup: bool = True,
    lang: Optional[str] = None,
    *,
    units_key: str = "units",
    vocabulary: Optional[UnitVocabulary] = None,
    root_fn: Optional[Callable[[], str]] = None,
    shuffle_buffer_size: Optional[int] = 1000,
    num_input_examples: Optional[Mapping[str, int]] = None,
) -> seqio.Task:
    """LEGACY (module docstring): registers (or re-registers) a SeqIO task reading unit-only
    records from TFRecords with `UnitVocabulary` ids; prefer `register_corpus_task`.

    Args:
      name: task name for `seqio.TaskRegistry`.
      split_to_filepattern: split -> file pattern(s) of `tf.train.Example` records.
        Patterns are relative to `root_fn()` when `root_fn` is given.
      num_units: size of the unit inventory (units must be in [0, num_units)).
      dedup: run-length collapse consecutive duplicate units (SpiritLM/GSLM style).
      lang: keep only records whose `lang` field equals this (None keeps all).
      units_key: feature holding the units in the records.
      vocabulary: token space; defaults to `UnitVocabulary(num_units)`.
      root_fn: resolves the directory the patterns live in, lazily (see `TFExampleSource`).
      shuffle_buffer_size: example shuffle buffer of the task.
      num_input_examples: optional split -> record count (informational).

    Returns:
      The registered `seqio.Task`.
    """
    vocabulary = vocabulary or UnitVocabulary(num_units)
    if vocabulary.num_units != num_units:
        raise ValueError(
            f"register_unit_task({name!r}): vocabulary has "
            f"{vocabulary.num_units} units but num_units={num_units}"
        )
    source = TFExampleSource(split_to_filepattern, prep.unit_feature_description(units_key), root_fn=root_fn,
                             num_input_examples=num_input_examples)
    preprocessors = []
    if lang is not None:
        preprocessors.append(functools.partial(prep.filter_lang, lang=lang))
    if dedup:
        preprocessors.append(functools.partial(prep.dedup_units, key=units_key))
    preprocessors += [
        functools.partial(prep.units_to_targets, vocabulary=vocabulary, units_key=units_key),
        seqio.CacheDatasetPlaceholder(),
        prep.split_to_length,  # needs sequence_length, so after the cache point
    ]
    # a record without units would be an EOS-only example: fail naming it (before any preprocessing)
    needed = {units_key: "units_to_targets"}
    preprocessors.insert(0, functools.partial(check_record_fields, task=name, needed=needed,
                                              description=source.feature_description))
    _remove_if_registered(seqio.TaskRegistry, name)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=preprocessors,
        output_features={"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)},
        metric_fns=[],
        shuffle_buffer_size=shuffle_buffer_size,
    )


def register_mixture(name: str, tasks, default_rate=1.0) -> seqio.Mixture:
    """Registers (or re-registers) a SeqIO mixture; idempotent like the tasks.

    `tasks` are names or (name, rate) pairs; bare names get `default_rate` (equal
    rates by default).
    """
    _remove_if_registered(seqio.MixtureRegistry, name)
    return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)


class LazyVocabulary(seqio.Vocabulary):
    """A vocabulary built on first use by `factory()`, compared by `key` until then.

    Tasks are registered at import time, but a vocabulary may need files that a
    corpus build creates later (the demo's SentencePiece model). Equality and hashing
    use `key`, so mixtures can check their tasks agree without building anything.
    """

    def __init__(self, key: str, factory: Callable[[], seqio.Vocabulary]):
        self._key, self._factory, self._real = key, factory, None
        super().__init__(extra_ids=0)

    @property
    def real(self) -> seqio.Vocabulary:
        if self._real is None:
            self._real = self._factory()
        return self._real

    def __getattr__(self, name):  # SLM-specific attributes (unit_offset, modality_ids_tf, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.real, name)

    @property
    def vocab_size(self) -> int:
        return self.real.vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.real._base_vocab_size  # noqa: SLF001

    @property
    def eos_id(self):
        return self.real.eos_id

    @property
    def pad_id(self):
        return self.real.pad_id

    @property
    def unk_id(self):
        return self.real.unk_id

    @property
    def bos_id(self):
        return self.real.bos_id

    def _encode(self, s):
        return self.real.encode(s)

    def _decode(self, ids):
        return self.real.decode(ids)

    def _encode_tf(self, s):
        return self.real.encode_tf(s)

    def _decode_tf(self, ids):
        return self.real.decode_tf(ids)

    def encode(self, s):
        return self.real.encode(s)

    def decode(self, ids):
        return self.real.decode(ids)

    def encode_tf(self, s):
        return self.real.encode_tf(s)

    def decode_tf(self, ids):
        return self.real.decode_tf(ids)

    def __eq__(self, other):
        return isinstance(other, LazyVocabulary) and other._key == self._key

    def __hash__(self):
        return hash(("LazyVocabulary", self._key))

    def __repr__(self):
        return f"LazyVocabulary({self._key!r})"


def slm_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """`targets` plus the per-token features the SLM converter packs.

    They must be output features: a SeqIO Mixture keeps only output features, so
    without them modality ids and loss masks would vanish in every mixture.
    """
    per_token = seqio.PassThroughVocabulary(size=0)
    return {
        "targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
        **{k: seqio.Feature(per_token, add_eos=False, required=False, dtype=tf.int32)
           for k in ("modality", "loss_mask", "patch_ids")},
    }


@seqio.map_over_dataset
def drop_token_modality(ex):
    """Drops `modality`: the converter recomputes it from the packed ids (it is a function of
    the id), and tasks that never emit it (task formats) then mix with ones that do."""
    return {k: v for k, v in ex.items() if k != "modality"}


# --- record fields the preprocessors need ------------------------------------------------------
ON_MISSING_FIELD = ("error", "skip")


def task_required_fields(name: str, preprocessors: Sequence[Callable], description: Mapping) -> dict[str, str]:
    """{field: preprocessor name} of the record fields `preprocessors` declare
    (`preprocessors.common.declare_fields`) that are fields of the record layout `description`.

    Raises ValueError naming the task, the preprocessor and the field when a declared field is
    a corpus field that `description` does not parse (`features=` left it out). Fields outside
    the corpus layouts are produced by an earlier preprocessor and are not checked here.
    """
    from slm_jax.data import corpus
    from slm_jax.data.preprocessors import interleave
    if not hasattr(interleave.expressive_merge, "required_fields"):  # declared here: its module has no declaration
        prep.declare_fields(interleave.expressive_merge, lambda a: ["units", "pitch", "style"])
    layout = {**corpus.TFRECORD_FEATURES, **corpus.PAIRED_TFRECORD_FEATURES}
    needed = {}
    for preprocessor in preprocessors:
        fields = prep.required_fields(preprocessor)
        who = getattr(getattr(preprocessor, "func", preprocessor), "__name__", repr(preprocessor))
        for field in fields or ():
            if field in description:
                needed.setdefault(field, who)
            elif field in layout:
                raise ValueError(f"register_corpus_task({name!r}): preprocessor {who} needs record field {field!r}, "
                                 f"which this task does not parse (features: {sorted(description)}); add it to "
                                 "`features`")
    return needed


def _present_tf(value, spec):
    """bool [] (one record) or [B] (a batch): the field holds a value, not its parse default."""
    if isinstance(spec, tf.io.FixedLenFeature):
        default = spec.default_value
        return tf.not_equal(value, tf.constant(default, value.dtype)) if default is not None else tf.ones_like(
            value, tf.bool)
    value = prep.as_ragged(value)
    if isinstance(value, tf.RaggedTensor):
        return value.row_lengths() > 0
    return tf.size(value) > 0


def _present_np(value, spec) -> bool:
    if isinstance(spec, tf.io.FixedLenFeature):
        default = spec.default_value
        return default is None or not (value == default or (isinstance(value, bytes) and value == b""))
    return len(value) > 0


# The words of the assertion below; `slm-jax` prints such a failure of a data read in one line.
MISSING_FIELD_MARK = "lacks field(s)"


def check_record_fields(dataset: tf.data.Dataset, task: str, needed: Mapping[str, str], description: Mapping,
                        on_missing_field: str = "error", batched: bool = False) -> tf.data.Dataset:
    """Records (or ragged record batches) whose fields `needed` ({field: preprocessor}) are all
    present: a field is missing when it holds its parse default (an empty list, "" or 0.0, as
    `slm_jax.data.corpus` parses an absent key). 'error': the read fails (InvalidArgumentError)
    naming the task, the field, the preprocessor and the first such record's id; 'skip': such
    records are dropped (`missing_field_report` counts them, and `slm-jax data stats` shows it).
    """
    fields = list(needed)

    def flags(ex):
        ids = ex["id"] if "id" in ex else None
        return {f: _present_tf(ex[f], description[f]) for f in fields}, ids

    def check(ex):
        present, ids = flags(ex)
        present = tf.reshape(tf.stack([present[f] for f in fields]), [len(fields), -1])  # [F, records]
        ok = tf.reduce_all(present, axis=0)
        first = tf.argmin(tf.cast(ok, tf.int32))  # the first record lacking a field
        ids = tf.constant(["<no id field parsed>"]) if ids is None else tf.reshape(ids, [-1])
        missing = tf.boolean_mask(tf.constant([f"{f!r} (needed by {needed[f]})" for f in fields]),
                                  tf.logical_not(present[:, first]))
        assert_ok = tf.debugging.Assert(tf.reduce_all(ok), [
            f"task {task!r}: record", ids[tf.minimum(first, tf.size(ids, out_type=tf.int64) - 1)],
            MISSING_FIELD_MARK, missing, "(an absent field parses as empty); import them, or register the task "
            "with on_missing_field='skip'"], summarize=len(fields))
        with tf.control_dependencies([assert_ok]):
            return {k: tf.identity(v) for k, v in ex.items()}

    def keep_mask(ex):
        present, _ = flags(ex)
        return tf.reduce_all(tf.stack([present[f] for f in fields]), axis=0)

    if not fields:
        return dataset
    if on_missing_field == "error":
        return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE)
    if not batched:
        return dataset.filter(keep_mask)

    def drop(ex):
        keep = keep_mask(ex)
        return {k: (tf.ragged.boolean_mask(prep.as_ragged(v), keep) if isinstance(prep.as_ragged(v), tf.RaggedTensor)
                    else tf.boolean_mask(v, keep)) for k, v in ex.items()}

    return dataset.map(drop, num_parallel_calls=tf.data.AUTOTUNE)


def source_records(task: seqio.Task, split: str = "train", max_records: Optional[int] = None):
    """The raw records (numpy dicts) of a `register_corpus_task` task's split, in file order, one at a time."""
    source = task.source
    files = source.list_shards(split)
    ds = tf.data.TFRecordDataset(files).map(lambda pb: tf.io.parse_single_example(pb, source.feature_description))
    if max_records is not None:
        ds = ds.take(max_records)
    yield from ds.as_numpy_iterator()


def missing_field_report(task: seqio.Task, split: str = "train", max_records: Optional[int] = None) -> dict:
    """{"records": records lacking a field, "fields": {field: {"records": count, "first": record id,
    "needed_by": preprocessor}}} over (up to `max_records` of) the task's raw records; {} when
    nothing is missing or nothing is declared. The Python-side twin of `check_record_fields`
    (for `slm-jax data stats`): the count of records a 'skip' task drops, and why."""
    needed = getattr(task, "required_record_fields", None) or {}
    if not needed:
        return {}
    description = task.source.feature_description
    fields, bad_records = {}, 0
    for record in source_records(task, split, max_records):
        lacking = [f for f in needed if not _present_np(record[f], description[f])]
        bad_records += bool(lacking)
        for field in lacking:
            rid = record.get("id", b"")
            entry = fields.setdefault(field, {"records": 0, "first": rid.decode() if isinstance(rid, bytes) else
                                              str(rid), "needed_by": needed[field]})
            entry["records"] += 1
    return {"records": bad_records, "fields": fields} if bad_records else {}


def register_corpus_task(
    name: str,
    split_to_filepattern: Mapping[str, str],
    preprocessors: Sequence[Callable],
    vocabulary: seqio.Vocabulary,
    *,
    feature_description: Optional[Mapping] = None,
    features: Optional[Sequence[str]] = None,
    root_fn: Optional[Callable[[], str]] = None,
    shuffle_buffer_size: Optional[int] = 1000,
    split_long_examples: bool = True,
    batched: bool = False,
    batch_records: int = prep.DEFAULT_BATCH_RECORDS,
    on_missing_field: str = "error",
    cacheable: bool = False,
) -> seqio.Task:
    """A task over corpus TFRecords (slm_jax.data.corpus layout) with SLM preprocessors.

    `preprocessors` turn parsed records into `targets` (+ `modality`, `loss_mask`,
    `patch_ids`); examples longer than the sequence length are then SPLIT (never
    truncated) with all per-token features cut at the same places; with
    `split_long_examples=False` an over-long example fails instead (`prep.require_unsplit`,
    for examples that carry whole-utterance features such as `ctc_targets`). `features`
    limits parsing to the record fields the preprocessors read.

    `batched=True`: the preprocessors take and return datasets of ragged record BATCHES
    (e.g. `word_interleave.word_interleave_batches`); records are read `batch_records` at
    a time (`TFExampleSource(batch_records=...)`), split in batches and unbatched once at the end.
    Same examples as the per-record chain, at a fraction of the cost. Such a task has no
    SeqIO cache point (its preprocessing runs on every read) unless `cacheable=True`: then the
    record batches are unbatched BEFORE a `seqio.CacheDatasetPlaceholder` and split per record
    after it (`split_to_length`, itself run on batches of 256), so `slm-jax data cache` can store
    the interleaved examples (`slm_jax.data.task_cache`). Same examples again; the graph differs
    from `cacheable=False`, so a data-iterator checkpoint of one does not restore into the other.
    Per-record tasks always have the cache point: after their preprocessors, before the split, or,
    when a preprocessor reads SeqIO's `sequence_length` (e.g. `span_corruption.denoise`), before the
    first such one (SeqIO runs length-dependent steps only after the cache point), which then runs on
    every read. A cacheable batched task cannot have one (ValueError naming it).

    Record fields: the fields the preprocessors declare (`preprocessors.common.declare_fields`)
    must be parsed (ValueError here otherwise, naming the field) and present in every record:
    a record lacking one (e.g. word interleaving over records without `words`, CTC without
    `text`) fails the first read that meets it, naming the task, the field and the record
    (`on_missing_field='error'`), or is dropped and counted (`'skip'`; `missing_field_report`,
    `slm-jax data stats`). The task keeps them as `task.required_record_fields`.
    """
    from slm_jax.data import corpus

    desc = dict(feature_description or corpus.TFRECORD_FEATURES)
    if features is not None:
        # Parse only what the preprocessors read: unused string lists cost real throughput.
        unknown = sorted(set(features) - set(desc))
        if unknown:
            raise ValueError(f"register_corpus_task({name!r}): features {unknown} are not in the corpus layout "
                             f"({sorted(desc)})")
        desc = {k: desc[k] for k in features}
    if on_missing_field not in ON_MISSING_FIELD:
        raise ValueError(f"register_corpus_task({name!r}): on_missing_field must be one of {ON_MISSING_FIELD}, got "
                         f"{on_missing_field!r}")
    needed = task_required_fields(name, preprocessors, desc)
    check = functools.partial(check_record_fields, task=name, needed=needed, description=desc,
                              on_missing_field=on_missing_field, batched=batched)
    source = TFExampleSource(split_to_filepattern, desc, root_fn=root_fn, batch_records=batch_records if batched
                             else None)
    split = prep.split_to_length if split_long_examples else prep.require_unsplit
    # SeqIO runs a preprocessor that reads the sequence length (e.g. span corruption) only after
    # the cache point; the cache point then goes before the first such preprocessor
    by_length = next((i for i, fn in enumerate(preprocessors) if reads_sequence_length(fn)), len(preprocessors))
    before, after = list(preprocessors[:by_length]), list(preprocessors[by_length:])
    if batched and not cacheable:
        steps = [*preprocessors, drop_token_modality,
                 functools.partial(_finish_batches, split_long_examples=split_long_examples)]
    elif batched:
        if after:
            raise ValueError(
                f"register_corpus_task({name!r}): {_name(after[0])} reads the sequence length, so SeqIO runs it only "
                "after the cache point, but a cacheable batched task caches after all its preprocessors; register it "
                "with cacheable=False (or batched=False, which caches before it)")
        steps = [*preprocessors, drop_token_modality, prep.unbatch_records, seqio.CacheDatasetPlaceholder(), split]
    else:
        steps = [*before, seqio.CacheDatasetPlaceholder(), *after, drop_token_modality, split] if after else \
            [*preprocessors, drop_token_modality, seqio.CacheDatasetPlaceholder(), split]
    _remove_if_registered(seqio.TaskRegistry, name)
    task = seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=[*([check] if needed else []), *steps],
        output_features=slm_output_features(vocabulary),
        metric_fns=[],
        shuffle_buffer_size=shuffle_buffer_size,
    )
    task.required_record_fields = dict(needed)
    task.on_missing_field = on_missing_field
    return task


def reads_sequence_length(preprocessor: Callable) -> bool:
    """Whether a (possibly `functools.partial`) preprocessor takes SeqIO's `sequence_length` argument
    without having it bound already."""
    fn, _, bound = prep.unwrap_partial(preprocessor)
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "sequence_length" in parameters and "sequence_length" not in bound


def _name(preprocessor: Callable) -> str:
    fn = prep.unwrap_partial(preprocessor)[0]
    return getattr(fn, "__qualname__", repr(fn))


def _finish_batches(batches: tf.data.Dataset, sequence_length=None, split_long_examples: bool = True):
    """The end of a batched task: split (or check) to the sequence length, then one record per element."""
    if split_long_examples:
        return prep.unbatch_records(prep.split_batches_to_length(batches, sequence_length))
    return prep.require_unsplit(prep.unbatch_records(batches), sequence_length)
