"""Corpus files: `Utterance` <-> tf.train.Example, JSONL and TFRecord shards (readers and writers).

The layout is documented in `slm_jax.data.corpus.schema`. All paths go through `tf.io.gfile`,
so `gs://` works; errors name the file and the record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import message

from slm_jax.data.corpus.shard_writer import ShardWriter, shard_path  # noqa: F401  (shard_path: public name)
from slm_jax.data.corpus.schema import (JSONL_SUFFIXES, PAIRED_TFRECORD_FEATURES, SHARD_SUFFIX, BadRecordError,
                                        Utterance, _PAIRED_KINDS, _UTT_KINDS, normalize_utterance)

logger = logging.getLogger(__name__)

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
    """The TFRecord form of `utt` (every key of `TFRECORD_FEATURES` present).

    Text, word and sentence texts are written in `slm_jax.text_normalization.normalize_text`
    form, so every corpus TFRecord holds normalised text whoever wrote it; a word that
    normalises to an empty string raises BadRecordError naming the record and the field."""
    utt, _ = normalize_utterance(utt)
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
    """Writes one JSON object per line (the dataclass fields, text normalised as in `to_example`);
    returns the record count."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    n = 0
    with tf.io.gfile.GFile(path, "w") as f:
        for utt in utts:
            f.write(json.dumps(normalize_utterance(utt)[0].to_dict(), ensure_ascii=False) + "\n")
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
def write_serialized_shards(
    out_dir: str, prefix: str, records: Sequence[bytes], num_shards: int
) -> list[str]:
    """Writes serialized records into `num_shards` contiguous shards; returns their paths.

    Contiguous (not round-robin), so reading the shards in name order gives the records
    back in the order they were written. Each shard is written under a hidden temp name
    and renamed, so an interrupted run never leaves a half shard that a glob would read
    (`shard_writer.ShardWriter`, which also writes streams whose length is not known).
    """
    with ShardWriter(out_dir, prefix, num_shards=num_shards, total=len(records)) as writer:
        for rec in records:
            writer.write(rec)
        return writer.close()


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

