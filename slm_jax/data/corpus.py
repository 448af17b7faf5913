"""The speech corpus schema, its file formats (JSONL, TFRecord) and its validator.

Why a corpus layer of its own: the training pipeline must be pure TF graph ops over
file-backed TFRecords (exact resume; see DESIGN.md), so everything Python-only (format
conversion, validation, joining translations) happens here, once, when a corpus is
prepared. One `Utterance` describes one recording: its units BEFORE dedup at
`unit_rate_hz`, optional pitch/style streams, transcript, word and sentence alignments
and a `parallel_id` linking translations.

TFRecord layout (the contract with the SeqIO preprocessors). Every record has EVERY key;
absent optionals are written as empty lists, empty bytes or 0.0:

    id bytes            lang bytes           units int64[]        unit_rate_hz float
    pitch int64[]       pitch_rate_hz float  style int64[]        style_rate_hz float
    text bytes          word_text bytes[]    word_start float[]   word_end float[]
    sentence_text bytes[]  sentence_start float[]  sentence_end float[]  parallel_id bytes

`TFRECORD_FEATURES` parses it (`tf.io.parse_single_example` or
`seqio.TFExampleDataSource(feature_description=...)`). List features use
`tf.io.RaggedFeature`, a variable-length spec that parses to a DENSE 1-D tensor per
record (a `VarLenFeature` would give a `SparseTensor`, which the existing
preprocessors, e.g. `dedup_units`, cannot slice). Scalars are `FixedLenFeature`s with
defaults, so older records holding only `id`/`lang`/`units`/`unit_rate_hz` (the demo
corpus) parse too.

Cross-lingual pairs (`pair_parallel`) are precomputed into records of their own
(`PAIRED_TFRECORD_FEATURES`), because joining two records by `parallel_id` cannot be
done with TF ops inside a checkpointable pipeline.

Floats in TFRecords are float32. `from_example` restores each one as the shortest
decimal that maps to the same float32, so values written with at most 7 significant
digits (times like 1.25 or 0.1 s, rates like 50.0 or 12.5 Hz) come back exactly equal.

All paths go through `tf.io.gfile`, so `gs://` works. Errors name the file and the
record (line number or record index, and id) and say what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import message

logger = logging.getLogger(__name__)

OnBadRecord = str  # 'error' | 'skip'
ON_BAD_RECORD_CHOICES = ("error", "skip")
MAX_REASONS_LOGGED = 5  # how many skip reasons a warning quotes
SHARD_SUFFIX = ".tfrecord"
JSONL_SUFFIXES = (".jsonl", ".json")


class BadRecordError(ValueError):
    """A corpus record breaks the schema; the message names the file and the record id."""


# --- the schema ---------------------------------------------------------------------
@dataclasses.dataclass
class Utterance:
    """One recording of the corpus.

    `units` are at `unit_rate_hz` BEFORE dedup: timestamps of units, words and sentences
    must agree, and dedup (with durations) is a pipeline step, not a storage format.
    Words are `(word, start_s, end_s)`; sentences are `(start_s, end_s, text)`.
    `parallel_id` is shared by translations of the same content (EN/FR pairs).
    """

    id: str
    lang: str
    units: list[int]
    unit_rate_hz: float
    pitch: list[int] | None = None
    pitch_rate_hz: float | None = None
    style: list[int] | None = None
    style_rate_hz: float | None = None
    text: str | None = None
    words: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)
    sentences: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)
    parallel_id: str | None = None
    # Optional: SentencePiece ids of each word (as it reads in a space-joined span), and the
    # sha256 of that model. Word-level interleaving then needs no tokenizer at train time.
    word_token_ids: list[list[int]] | None = None
    word_token_model: str | None = None

    def __post_init__(self):
        # Normalise containers (not values) so equality does not depend on whether a
        # caller passed numpy arrays, tuples or JSON lists.
        self.units = _as_list(self.units)
        self.pitch = None if self.pitch is None else _as_list(self.pitch)
        self.style = None if self.style is None else _as_list(self.style)
        self.words = [tuple(w) for w in self.words]
        self.sentences = [tuple(s) for s in self.sentences]
        if self.word_token_ids is not None:
            self.word_token_ids = [_as_list(t) for t in self.word_token_ids]

    @property
    def duration_s(self) -> float:
        """Length of the recording implied by the units (len(units) / unit_rate_hz)."""
        return len(self.units) / self.unit_rate_hz

    def to_dict(self) -> dict:
        """The JSONL form: every field, words/sentences as lists."""
        d = dataclasses.asdict(self)
        d["words"] = [list(w) for w in self.words]
        d["sentences"] = [list(s) for s in self.sentences]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> Utterance:
        """Builds an Utterance from its JSONL form; unknown or mistyped fields are errors."""
        if not isinstance(d, dict):
            raise BadRecordError(f"{source}: expected a JSON object, got {type(d).__name__}")
        rid = d.get("id", "<no id>")
        unknown = sorted(set(d) - set(_FIELD_NAMES))
        if unknown:
            raise BadRecordError(
                f"{source}: record {rid!r}: unknown field(s) {unknown}; expected {_FIELD_NAMES}"
            )
        missing = [k for k in ("id", "lang", "units", "unit_rate_hz") if k not in d]
        if missing:
            raise BadRecordError(f"{source}: record {rid!r}: missing required field(s) {missing}")
        where = f"{source}: record {rid!r}"
        return cls(
            id=_str_field(d["id"], "id", where),
            lang=_str_field(d["lang"], "lang", where),
            units=_int_list(d["units"], "units", where),
            unit_rate_hz=_float_field(d["unit_rate_hz"], "unit_rate_hz", where),
            pitch=_opt(d.get("pitch"), lambda v: _int_list(v, "pitch", where)),
            pitch_rate_hz=_opt(d.get("pitch_rate_hz"), lambda v: _float_field(v, "pitch_rate_hz", where)),
            style=_opt(d.get("style"), lambda v: _int_list(v, "style", where)),
            style_rate_hz=_opt(d.get("style_rate_hz"), lambda v: _float_field(v, "style_rate_hz", where)),
            text=_opt(d.get("text"), lambda v: _str_field(v, "text", where)),
            words=[_word(w, i, where) for i, w in enumerate(d.get("words") or [])],
            sentences=[_sentence(s, i, where) for i, s in enumerate(d.get("sentences") or [])],
            parallel_id=_opt(d.get("parallel_id"), lambda v: _str_field(v, "parallel_id", where)),
            word_token_ids=_opt(d.get("word_token_ids"),
                                lambda v: [_int_list(t, f"word_token_ids[{i}]", where) for i, t in enumerate(v)]),
            word_token_model=_opt(d.get("word_token_model"), lambda v: _str_field(v, "word_token_model", where)),
        )


_FIELD_NAMES = [f.name for f in dataclasses.fields(Utterance)]


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _opt(value, convert):
    return None if value is None else convert(value)


def _str_field(value, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise BadRecordError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _float_field(value, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRecordError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _int_list(values, name: str, where: str) -> list[int]:
    if not isinstance(values, (list, tuple)):
        raise BadRecordError(f"{where}: {name} must be a list of integers, got {type(values).__name__}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadRecordError(f"{where}: {name}[{i}]={v!r} is not an integer")
    return list(values)


def _word(w, i: int, where: str) -> tuple[str, float, float]:
    if not isinstance(w, (list, tuple)) or len(w) != 3:
        raise BadRecordError(f"{where}: words[{i}]={w!r}; expected [word, start_s, end_s]")
    return (
        _str_field(w[0], f"words[{i}][0]", where),
        _float_field(w[1], f"words[{i}][1]", where),
        _float_field(w[2], f"words[{i}][2]", where),
    )


def _sentence(s, i: int, where: str) -> tuple[float, float, str]:
    if not isinstance(s, (list, tuple)) or len(s) != 3:
        raise BadRecordError(f"{where}: sentences[{i}]={s!r}; expected [start_s, end_s, text]")
    return (
        _float_field(s[0], f"sentences[{i}][0]", where),
        _float_field(s[1], f"sentences[{i}][1]", where),
        _str_field(s[2], f"sentences[{i}][2]", where),
    )


# --- TFRecord: feature specs ----------------------------------------------------------
def _ragged(dtype) -> tf.io.RaggedFeature:
    return tf.io.RaggedFeature(dtype)


def _scalar(dtype, default) -> tf.io.FixedLenFeature:
    return tf.io.FixedLenFeature([], dtype, default_value=default)


TFRECORD_FEATURES = {
    "id": _scalar(tf.string, b""),
    "lang": _scalar(tf.string, b""),
    "units": _ragged(tf.int64),
    "unit_rate_hz": _scalar(tf.float32, 0.0),
    "pitch": _ragged(tf.int64),
    "pitch_rate_hz": _scalar(tf.float32, 0.0),
    "style": _ragged(tf.int64),
    "style_rate_hz": _scalar(tf.float32, 0.0),
    "text": _scalar(tf.string, b""),
    "word_text": _ragged(tf.string),
    "word_start": _ragged(tf.float32),
    "word_end": _ragged(tf.float32),
    "sentence_text": _ragged(tf.string),
    "sentence_start": _ragged(tf.float32),
    "sentence_end": _ragged(tf.float32),
    "parallel_id": _scalar(tf.string, b""),
    "word_token_ids": _ragged(tf.int64),  # all words' ids, concatenated
    "word_token_lengths": _ragged(tf.int64),  # ids per word
    "word_token_model": _scalar(tf.string, b""),
}

PAIRED_TFRECORD_FEATURES = {
    "id": _scalar(tf.string, b""),
    "a_lang": _scalar(tf.string, b""),
    "a_units": _ragged(tf.int64),
    "a_sentence_start": _ragged(tf.float32),
    "a_sentence_end": _ragged(tf.float32),
    "b_lang": _scalar(tf.string, b""),
    "b_units": _ragged(tf.int64),
    "b_sentence_start": _ragged(tf.float32),
    "b_sentence_end": _ragged(tf.float32),
    "unit_rate_hz": _scalar(tf.float32, 0.0),
}

# Which proto list each key is written to ('bytes' | 'int64' | 'float').
_KIND = {
    tf.string: "bytes",
    tf.int64: "int64",
    tf.float32: "float",
}


def _kinds(features: dict) -> dict[str, str]:
    return {k: _KIND[spec.dtype] for k, spec in features.items()}


_UTT_KINDS = _kinds(TFRECORD_FEATURES)
_PAIRED_KINDS = _kinds(PAIRED_TFRECORD_FEATURES)


# --- TFRecord: encode / decode ----------------------------------------------------------
def _feature(kind: str, values: list) -> tf.train.Feature:
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values]))
    if kind == "int64":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _example(kinds: dict[str, str], values: dict[str, list]) -> tf.train.Example:
    feature = {k: _feature(kinds[k], values[k]) for k in kinds}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def to_example(utt: Utterance) -> tf.train.Example:
    """The TFRecord form of `utt` (every key of `TFRECORD_FEATURES` present)."""
    values = {
        "id": [utt.id],
        "lang": [utt.lang],
        "units": list(utt.units),
        "unit_rate_hz": [utt.unit_rate_hz],
        "pitch": list(utt.pitch or []),
        "pitch_rate_hz": [utt.pitch_rate_hz or 0.0],
        "style": list(utt.style or []),
        "style_rate_hz": [utt.style_rate_hz or 0.0],
        "text": [utt.text or ""],
        "word_text": [w[0] for w in utt.words],
        "word_start": [w[1] for w in utt.words],
        "word_end": [w[2] for w in utt.words],
        "sentence_text": [s[2] for s in utt.sentences],
        "sentence_start": [s[0] for s in utt.sentences],
        "sentence_end": [s[1] for s in utt.sentences],
        "parallel_id": [utt.parallel_id or ""],
        "word_token_ids": [i for ids in (utt.word_token_ids or []) for i in ids],
        "word_token_lengths": [len(ids) for ids in (utt.word_token_ids or [])],
        "word_token_model": [utt.word_token_model or ""],
    }
    return _example(_UTT_KINDS, values)


def _f32(x: float) -> float:
    """The shortest decimal with the same float32 value (float32 -> exact round trip)."""
    return float(str(np.float32(x)))


def _decode_values(ex: tf.train.Example, kinds: dict[str, str], where: str) -> dict[str, list]:
    """Every key of `kinds` as a Python list; missing keys are empty, wrong types are errors."""
    out = {}
    fmap = ex.features.feature
    for key, kind in kinds.items():
        if key not in fmap:
            out[key] = []
            continue
        feat = fmap[key]
        set_kind = feat.WhichOneof("kind")  # 'bytes_list' | 'int64_list' | 'float_list' | None
        values = list(getattr(feat, set_kind).value) if set_kind else []
        if values and set_kind != f"{kind}_list":
            raise BadRecordError(f"{where}: feature {key!r} is a {set_kind}; expected a {kind}_list")
        if kind == "bytes":
            values = [v.decode("utf-8") for v in values]
        elif kind == "float":
            values = [_f32(v) for v in values]
        out[key] = values
    return out


def _scalar_value(values: dict, key: str, where: str, default):
    v = values[key]
    if len(v) > 1:
        raise BadRecordError(f"{where}: feature {key!r} has {len(v)} values; expected one")
    return v[0] if v else default


def _parse_example(serialized: bytes, where: str) -> tf.train.Example:
    try:
        return tf.train.Example.FromString(serialized)
    except message.DecodeError as e:
        raise BadRecordError(f"{where}: not a tf.train.Example ({e})") from None


def from_example(serialized: bytes, source: str = "<bytes>") -> Utterance:
    """Inverse of `to_example(...).SerializeToString()`. Empty optionals come back as None."""
    v = _decode_values(_parse_example(serialized, source), _UTT_KINDS, source)
    rid = _scalar_value(v, "id", source, "")
    where = f"{source}: record {rid!r}"
    for a, b, c in (
        ("word_text", "word_start", "word_end"),
        ("sentence_text", "sentence_start", "sentence_end"),
    ):
        if not len(v[a]) == len(v[b]) == len(v[c]):
            raise BadRecordError(
                f"{where}: {a}/{b}/{c} have {len(v[a])}/{len(v[b])}/{len(v[c])} values; "
                "expected equal lengths"
            )
    lengths, flat = v["word_token_lengths"], v["word_token_ids"]
    if sum(lengths) != len(flat) or any(n < 0 for n in lengths):
        raise BadRecordError(f"{where}: word_token_lengths sum to {sum(lengths)} but there are {len(flat)} "
                             "word_token_ids")
    word_token_ids = None
    if lengths:
        bounds = np.cumsum([0, *lengths])
        word_token_ids = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return Utterance(
        id=rid,
        lang=_scalar_value(v, "lang", where, ""),
        units=v["units"],
        unit_rate_hz=_scalar_value(v, "unit_rate_hz", where, 0.0),
        pitch=v["pitch"] or None,
        pitch_rate_hz=_scalar_value(v, "pitch_rate_hz", where, 0.0) or None,
        style=v["style"] or None,
        style_rate_hz=_scalar_value(v, "style_rate_hz", where, 0.0) or None,
        text=_scalar_value(v, "text", where, "") or None,
        words=list(zip(v["word_text"], v["word_start"], v["word_end"])),
        sentences=list(zip(v["sentence_start"], v["sentence_end"], v["sentence_text"])),
        parallel_id=_scalar_value(v, "parallel_id", where, "") or None,
        word_token_ids=word_token_ids,
        word_token_model=_scalar_value(v, "word_token_model", where, "") or None,
    )


def paired_to_example(record: dict) -> tf.train.Example:
    """The TFRecord form of one `pair_parallel` record (keys of `PAIRED_TFRECORD_FEATURES`)."""
    missing = sorted(set(_PAIRED_KINDS) - set(record))
    if missing:
        raise BadRecordError(f"paired record {record.get('id')!r}: missing key(s) {missing}")
    values = {
        k: (list(record[k]) if isinstance(record[k], (list, tuple)) else [record[k]]) for k in _PAIRED_KINDS
    }
    return _example(_PAIRED_KINDS, values)


def paired_from_example(serialized: bytes, source: str = "<bytes>") -> dict:
    """Inverse of `paired_to_example(...).SerializeToString()`."""
    v = _decode_values(_parse_example(serialized, source), _PAIRED_KINDS, source)
    where = f"{source}: record {_scalar_value(v, 'id', source, '')!r}"
    defaults = {"id": "", "a_lang": "", "b_lang": "", "unit_rate_hz": 0.0}  # the scalar keys
    return {
        k: (_scalar_value(v, k, where, defaults[k]) if k in defaults else v[k])
        for k in PAIRED_TFRECORD_FEATURES
    }


# --- files: listing, JSONL ---------------------------------------------------------------
def list_files(pattern: str | Sequence[str]) -> list[str]:
    """Sorted files matching one glob or several; no match is an error naming the pattern."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files = []
    for p in patterns:
        matched = sorted(tf.io.gfile.glob(p))
        if not matched:
            raise FileNotFoundError(f"No files match {p!r}")
        files += matched
    return files


def write_jsonl(path: str, utts: Iterable[Utterance]) -> int:
    """Writes one JSON object per line (the dataclass fields); returns the record count."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    n = 0
    with tf.io.gfile.GFile(path, "w") as f:
        for utt in utts:
            f.write(json.dumps(utt.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_jsonl_objects(pattern: str | Sequence[str]) -> Iterator[tuple[str, Any]]:
    """Yields `("file:line", parsed JSON)` for each non-blank line of the matching files."""
    for path in list_files(pattern):
        with tf.io.gfile.GFile(path, "r") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadRecordError(f"{where}: invalid JSON ({e})") from None


def read_jsonl(pattern: str | Sequence[str], with_source: bool = False) -> Iterator:
    """Yields the Utterances of JSONL files (or `("file:line", utt)` with `with_source`)."""
    for where, obj in iter_jsonl_objects(pattern):
        utt = Utterance.from_dict(obj, source=where)
        yield (where, utt) if with_source else utt


# --- files: TFRecord -----------------------------------------------------------------------
def shard_path(out_dir: str, prefix: str, index: int, num_shards: int) -> str:
    return os.path.join(out_dir, f"{prefix}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")


def _check_no_foreign_shards(out_dir: str, prefix: str, paths: list[str]) -> None:
    """A stale shard set with another shard count would be read twice by `prefix-*` globs."""
    existing = tf.io.gfile.glob(os.path.join(out_dir, f"{prefix}-*-of-*{SHARD_SUFFIX}"))
    foreign = sorted(set(existing) - set(paths))
    if foreign:
        raise FileExistsError(
            f"{out_dir}: shards of another shard count exist for prefix {prefix!r} (e.g. {foreign[0]}); "
            "remove them or use another prefix"
        )


def write_serialized_shards(
    out_dir: str, prefix: str, records: Sequence[bytes], num_shards: int
) -> list[str]:
    """Writes serialized records into `num_shards` contiguous shards; returns their paths.

    Contiguous (not round-robin), so reading the shards in name order gives the records
    back in the order they were written. Each shard is written under a hidden temp name
    and renamed, so an interrupted run never leaves a half shard that a glob would read.
    """
    if num_shards < 1:
        raise ValueError(f"{out_dir}/{prefix}: num_shards must be >= 1, got {num_shards}")
    if len(records) < num_shards:
        logger.warning(
            "%s/%s: %d record(s) into %d shards: some shards are empty",
            out_dir,
            prefix,
            len(records),
            num_shards,
        )
    tf.io.gfile.makedirs(out_dir)
    paths = [shard_path(out_dir, prefix, i, num_shards) for i in range(num_shards)]
    _check_no_foreign_shards(out_dir, prefix, paths)
    bounds = np.linspace(0, len(records), num_shards + 1).astype(int)
    for i, path in enumerate(paths):
        tmp = os.path.join(out_dir, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        with tf.io.TFRecordWriter(tmp) as w:
            for rec in records[bounds[i] : bounds[i + 1]]:
                w.write(rec)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    return paths


def serialize(example: tf.train.Example) -> bytes:
    """Deterministic bytes (proto map keys sorted), so re-running a conversion is byte-identical."""
    return example.SerializeToString(deterministic=True)


def write_tfrecord_shards(out_dir: str, prefix: str, utts: Iterable[Utterance], num_shards: int) -> list[str]:
    """Writes Utterances to `out_dir/prefix-SSSSS-of-NNNNN.tfrecord`; returns the paths.

    Records are serialized while iterating (only the compact bytes are held), then
    split into contiguous shards (see `write_serialized_shards`).
    """
    return write_serialized_shards(out_dir, prefix, [serialize(to_example(u)) for u in utts], num_shards)


def iter_tfrecord_bytes(pattern: str | Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """Yields `("file#index", serialized record)` for the matching TFRecord files."""
    for path in list_files(pattern):
        try:
            for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                yield f"{path}#{i}", raw
        except tf.errors.DataLossError as e:
            raise BadRecordError(f"{path}: corrupt TFRecord file ({e.message})") from None


def read_tfrecord(pattern: str | Sequence[str], with_source: bool = False) -> Iterator:
    """Yields the Utterances of TFRecord files (or `("file#index", utt)` with `with_source`)."""
    for where, raw in iter_tfrecord_bytes(pattern):
        utt = from_example(raw, source=where)
        yield (where, utt) if with_source else utt


def iter_utterances(pattern: str | Sequence[str], with_source: bool = False) -> Iterator:
    """Reads Utterances from JSONL (`.jsonl`/`.json`) or TFRecord (`.tfrecord*`) files.

    The format is decided per matched file, so one glob may cover both kinds.
    """
    for path in list_files(pattern):
        name = os.path.basename(path)
        if name.endswith(JSONL_SUFFIXES):
            yield from read_jsonl(path, with_source=with_source)
        elif ".tfrecord" in name:
            yield from read_tfrecord(path, with_source=with_source)
        else:
            raise ValueError(f"{path}: unknown corpus format; expected a .jsonl/.json or .tfrecord* file")


# --- validation --------------------------------------------------------------------------
def _check_ids(values, name: str, num: int | None, where: str) -> None:
    """Integer ids in [0, num) (only >= 0 when num is None); names the first offender."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise BadRecordError(f"{where}: {name} must be integers, got dtype {arr.dtype}")
    hi = np.iinfo(np.int64).max if num is None else num
    bad = np.flatnonzero((arr < 0) | (arr >= hi))
    if bad.size:
        i = int(bad[0])
        expected = f"[0, {num})" if num is not None else ">= 0"
        raise BadRecordError(
            f"{where}: {name}[{i}]={int(arr[i])} out of range; expected {expected} ({bad.size} bad value(s))"
        )


def _check_rate(rate, name: str, where: str) -> None:
    if rate is None or not np.isfinite(rate) or rate <= 0:
        raise BadRecordError(f"{where}: {name} must be a positive number, got {rate!r}")


def _check_spans(spans: list[tuple[float, float]], name: str, duration: float, tol: float, where: str):
    """Spans inside [0, duration] (+tol), start < end, each starting at/after the previous end."""
    prev_end = 0.0
    for i, (start, end) in enumerate(spans):
        if not (np.isfinite(start) and np.isfinite(end)):
            raise BadRecordError(f"{where}: {name}[{i}] has a non-finite time ({start}, {end})")
        if start < 0 or end > duration + tol:
            raise BadRecordError(
                f"{where}: {name}[{i}] ({start}, {end}) lies outside [0, {duration:g}] s "
                f"(the units' duration, tolerance {tol:g} s)"
            )
        if not start < end:
            raise BadRecordError(
                f"{where}: {name}[{i}] starts at {start} but ends at {end}; expected start < end"
            )
        if start < prev_end:
            raise BadRecordError(
                f"{where}: {name}[{i}] starts at {start}, before the previous one ends "
                f"({prev_end}); expected non-overlapping, increasing times"
            )
        prev_end = end


def validate(
    utt: Utterance,
    *,
    num_units: int,
    num_pitch: int | None = None,
    num_style: int | None = None,
    source: str = "<file>",
    time_tolerance_s: float | None = None,
) -> None:
    """Raises `BadRecordError` (naming `source` and the record id) if `utt` breaks the schema.

    Checks: id and lang present; units non-empty and in [0, num_units); pitch/style in
    range (when present, with a positive rate); word and sentence times inside
    [0, duration_s] and strictly increasing. `time_tolerance_s` (default: one unit
    frame, 1 / unit_rate_hz) lets an alignment end slightly after the last unit, as
    forced aligners work on the audio, which is up to a frame longer than its units.
    """
    where = f"{source}: record {utt.id!r}" if utt.id else f"{source}: record <missing id>"
    if not utt.id:
        raise BadRecordError(f"{where}: id is missing; expected a non-empty string")
    if not utt.lang:
        raise BadRecordError(f"{where}: lang is missing; expected a language code like 'en'")
    if len(utt.units) == 0:
        raise BadRecordError(f"{where}: units are empty; expected at least one unit")
    _check_rate(utt.unit_rate_hz, "unit_rate_hz", where)
    _check_ids(utt.units, "units", num_units, where)
    for name, values, rate, num in (
        ("pitch", utt.pitch, utt.pitch_rate_hz, num_pitch),
        ("style", utt.style, utt.style_rate_hz, num_style),
    ):
        if values:
            _check_rate(rate, f"{name}_rate_hz", where)
            _check_ids(values, name, num, where)
    tol = 1.0 / utt.unit_rate_hz if time_tolerance_s is None else time_tolerance_s
    _check_spans([(w[1], w[2]) for w in utt.words], "words", utt.duration_s, tol, where)
    _check_spans([(s[0], s[1]) for s in utt.sentences], "sentences", utt.duration_s, tol, where)
    if utt.word_token_ids is not None:
        if len(utt.word_token_ids) != len(utt.words):
            raise BadRecordError(f"{where}: {len(utt.word_token_ids)} word_token_ids entries for "
                                 f"{len(utt.words)} words; expected one per word")
        if not utt.word_token_model:
            raise BadRecordError(f"{where}: word_token_ids without word_token_model; expected the sha256 "
                                 "of the SentencePiece model that produced them")


def check_on_bad_record(on_bad_record: str) -> None:
    if on_bad_record not in ON_BAD_RECORD_CHOICES:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD_CHOICES}, got {on_bad_record!r}")


def log_skipped(reasons: Sequence[str], total: int, what: str) -> None:
    """Warns with the number of skipped records and the first few reasons (never silent)."""
    if not reasons:
        return
    shown = "\n  ".join(reasons[:MAX_REASONS_LOGGED])
    more = (
        f"\n  ... and {len(reasons) - MAX_REASONS_LOGGED} more" if len(reasons) > MAX_REASONS_LOGGED else ""
    )
    logger.warning("%s: skipped %d bad record(s) of %d:\n  %s%s", what, len(reasons), total, shown, more)


def validate_all(
    utts: Iterable,
    *,
    num_units: int,
    num_pitch: int | None = None,
    num_style: int | None = None,
    source: str = "<input>",
    on_bad_record: OnBadRecord = "error",
    time_tolerance_s: float | None = None,
) -> tuple[list[Utterance], int]:
    """Validates many records; returns (good records, number skipped).

    Items are Utterances or `(source, Utterance)` pairs (as the readers yield with
    `with_source=True`), so errors name the exact file and line. With
    `on_bad_record='skip'` bad records are dropped, counted and logged.
    """
    check_on_bad_record(on_bad_record)
    good, reasons, total = [], [], 0
    for item in utts:
        where, utt = item if isinstance(item, tuple) else (source, item)
        total += 1
        try:
            validate(
                utt,
                num_units=num_units,
                num_pitch=num_pitch,
                num_style=num_style,
                source=where,
                time_tolerance_s=time_tolerance_s,
            )
        except BadRecordError as e:
            if on_bad_record == "error":
                raise
            reasons.append(str(e))
            continue
        good.append(utt)
    log_skipped(reasons, total, f"validate_all({source})")
    return good, len(reasons)


# --- cross-lingual pairs ------------------------------------------------------------------
def _group_by_parallel_id(utts: Iterable[Utterance], langs: tuple[str, str]) -> tuple[dict, int]:
    """parallel_id -> {lang: [utts]} in first-appearance order; counts records not taking part."""
    groups: dict[str, dict[str, list[Utterance]]] = {}
    ignored = 0
    for utt in utts:
        if utt.parallel_id is None or utt.lang not in langs:
            ignored += 1
            continue
        groups.setdefault(utt.parallel_id, {lang: [] for lang in langs})[utt.lang].append(utt)
    return groups, ignored


def _pair_one(pid: str, group: dict, lang_a: str, lang_b: str, source: str) -> dict:
    """One paired record from a parallel_id group, or BadRecordError naming the ids."""
    where = f"{source}: parallel_id {pid!r}"
    for lang, other in ((lang_a, lang_b), (lang_b, lang_a)):
        if not group[lang]:
            ids = [u.id for u in group[other]]
            raise BadRecordError(f"{where}: record(s) {ids} ({other}) have no {lang!r} partner")
        if len(group[lang]) > 1:
            ids = [u.id for u in group[lang]]
            raise BadRecordError(f"{where}: {len(ids)} {lang!r} records {ids}; expected exactly one")
    a, b = group[lang_a][0], group[lang_b][0]
    if not np.isclose(a.unit_rate_hz, b.unit_rate_hz, rtol=1e-6, atol=0.0):
        raise BadRecordError(
            f"{where}: {a.id!r} has unit_rate_hz {a.unit_rate_hz} but {b.id!r} has "
            f"{b.unit_rate_hz}; expected the same unit rate on both sides"
        )
    if len(a.sentences) != len(b.sentences):
        raise BadRecordError(
            f"{where}: {a.id!r} has {len(a.sentences)} sentence(s) but {b.id!r} has "
            f"{len(b.sentences)}; expected the same number (sentence i translates sentence i)"
        )
    if not a.sentences:
        raise BadRecordError(
            f"{where}: {a.id!r} and {b.id!r} have no sentence alignments; expected at least one"
        )
    return {
        "id": pid,
        "a_lang": a.lang,
        "a_units": list(a.units),
        "a_sentence_start": [s[0] for s in a.sentences],
        "a_sentence_end": [s[1] for s in a.sentences],
        "b_lang": b.lang,
        "b_units": list(b.units),
        "b_sentence_start": [s[0] for s in b.sentences],
        "b_sentence_end": [s[1] for s in b.sentences],
        "unit_rate_hz": a.unit_rate_hz,
    }


def pair_parallel(
    utterances: Iterable[Utterance],
    lang_a: str = "en",
    lang_b: str = "fr",
    *,
    on_bad_record: OnBadRecord = "error",
    source: str = "<input>",
) -> list[dict]:
    """Joins translations by `parallel_id` into records of `PAIRED_TFRECORD_FEATURES` keys.

    Each parallel_id needs exactly one `lang_a` and one `lang_b` record with the same
    unit rate and the same number of sentences (sentence i of one side translates
    sentence i of the other; the interleaving preprocessor alternates them). Records
    without a parallel_id or in another language do not take part (their count is
    logged at INFO). Output follows the first appearance of each parallel_id.
    A bad group raises BadRecordError naming the ids, or with `on_bad_record='skip'`
    is dropped and counted in a warning.
    """
    check_on_bad_record(on_bad_record)
    if lang_a == lang_b:
        raise ValueError(f"pair_parallel: lang_a and lang_b must differ, both are {lang_a!r}")
    groups, ignored = _group_by_parallel_id(utterances, (lang_a, lang_b))
    if ignored:
        logger.info(
            "pair_parallel(%s): %d record(s) without a parallel_id in %s/%s were not paired",
            source,
            ignored,
            lang_a,
            lang_b,
        )
    pairs, reasons = [], []
    for pid, group in groups.items():
        try:
            pairs.append(_pair_one(pid, group, lang_a, lang_b, source))
        except BadRecordError as e:
            if on_bad_record == "error":
                raise
            reasons.append(str(e))
    log_skipped(reasons, len(groups), f"pair_parallel({source})")
    return pairs


def write_paired_tfrecord_shards(
    out_dir: str, prefix: str, records: Iterable[dict], num_shards: int
) -> list[str]:
    """Writes `pair_parallel` records as TFRecord shards (like `write_tfrecord_shards`)."""
    return write_serialized_shards(
        out_dir, prefix, [serialize(paired_to_example(r)) for r in records], num_shards
    )


def read_paired_tfrecord(pattern: str | Sequence[str]) -> Iterator[dict]:
    """Yields the paired records of TFRecord files (inverse of `write_paired_tfrecord_shards`)."""
    for where, raw in iter_tfrecord_bytes(pattern):
        yield paired_from_example(raw, source=where)
