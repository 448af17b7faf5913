"""One import run, streaming: input files -> per-record conversion -> TFRecord shards, as it reads.

The per-record steps (`iter_file_records`, `convert_record`, `bad_record_kind`, the
first-occurrence rule for duplicate ids) are shared with the Beam pipeline
(`slm_jax.data.corpus.beam_import`), so both paths accept, repair and refuse exactly the same
records. Memory does not grow with the corpus: records are written as they are converted
(`shard_writer.ShardWriter`), ids seen so far live in an on-disk set (`seen_ids.SeenIds`), and
skipped records keep only counts per kind and the first few reasons (all of them go to
`bad_records_out` when asked).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

import tensorflow as tf

from slm_jax.data import corpus
from slm_jax.data.corpus import BadRecordError, Utterance, importers
from slm_jax.data.corpus.seen_ids import SeenIds
from slm_jax.data.corpus.shard_writer import ShardWriter

# `slm_jax`: an slm_jax corpus (JSONL `.jsonl`/`.json` or TFRecord `.tfrecord*` files, the
# `corpus.iter_utterances` rule), re-validated and re-sharded (e.g. to merge or re-cut corpora).
IMPORT_FORMATS = (*importers.FORMATS, "slm_jax")

# Field names a bad-record reason may start with (after "file:line: record 'id': "): its kind.
_FIELDS = frozenset({*corpus.TFRECORD_FEATURES, *(f.name for f in dataclasses.fields(Utterance)),
                     *(k for keys in importers.READ_KEYS.values() for k in keys), "words", "sentences"})
_RECORD_PREFIX = re.compile(r"record (?:'[^']*'|\"[^\"]*\"): ")
_LEADING = re.compile(r"(missing )?(?:required field\(s\) )?[\['\"]*([A-Za-z_]+)")


@dataclasses.dataclass(frozen=True)
class ImportOptions:
    """What every record of one import is converted with (the `slm-jax prepare import` flags)."""

    fmt: str
    lang: str = "en"
    num_units: int | None = None  # None: the format's DEFAULT_NUM_UNITS (required for slm_jax)
    num_pitch: int | None = None
    num_style: int | None = None
    unit_rate_hz: float | None = None
    pitch_rate_hz: float = importers.SPIRITLM_PITCH_RATE_HZ
    style_rate_hz: float = importers.SPIRITLM_STYLE_RATE_HZ

    def checked(self) -> "ImportOptions":
        """With `num_units` filled in; ValueError on an unknown format or a missing unit count."""
        if self.fmt not in IMPORT_FORMATS:
            raise ValueError(f"unknown import format {self.fmt!r}; expected one of {IMPORT_FORMATS}")
        if self.num_units is not None:
            return self
        if self.fmt == "slm_jax":
            raise ValueError("--format=slm_jax: pass --num_units (unit ids are in [0, num_units))")
        return dataclasses.replace(self, num_units=importers.DEFAULT_NUM_UNITS[self.fmt])


# --- reading -----------------------------------------------------------------------------------
def iter_file_records(fmt: str, path: str):
    """Yields (where, payload) for the records of ONE input file, in file order, as it reads:
    ("file:line", line) for JSONL, ("file:line", (obj, named)) for textlesslib `.units`,
    ("file#index", bytes) for slm_jax TFRecords. Errors that are not one record's (a durations
    file out of step, a corrupt TFRecord) raise here."""
    if fmt == "textlesslib":
        yield from importers.iter_textlesslib_file(path)
    elif fmt == "slm_jax" and ".tfrecord" in os.path.basename(path):
        yield from corpus.iter_tfrecord_bytes(path)
    elif fmt == "slm_jax" and not os.path.basename(path).endswith(corpus.JSONL_SUFFIXES):
        raise ValueError(f"{path}: unknown corpus format; expected a .jsonl/.json or .tfrecord* file")
    else:
        yield from importers.iter_file_lines(path)


def iter_records(fmt: str, input_pattern: str):
    """`iter_file_records` over the matching files (sorted per glob, `corpus.list_files`)."""
    for path in corpus.list_files(input_pattern):
        yield from iter_file_records(fmt, path)


# --- one record --------------------------------------------------------------------------------
def convert_record(opts: ImportOptions, where: str, payload) -> tuple[Utterance, collections.Counter]:
    """One record -> (repaired, validated Utterance, what was inferred/repaired/ignored for it).
    `opts` must be `checked()`. BadRecordError names the file:line, the record, the field and
    what was expected."""
    counts: collections.Counter = collections.Counter()
    if opts.fmt == "textlesslib":
        obj, named = payload
        if not named:
            counts["ids_from_line_numbers"] += 1
        utt = importers.from_textlesslib(obj, lang=opts.lang, unit_rate_hz=opts.unit_rate_hz, source=where,
                                         counts=counts)
    elif opts.fmt == "slm_jax":
        if isinstance(payload, bytes):
            utt = corpus.from_example(payload, source=where)
        else:
            try:
                obj = json.loads(payload)
            except json.JSONDecodeError as e:
                raise BadRecordError(f"{where}: invalid JSON ({e})") from None
            utt = Utterance.from_dict(obj, source=where)
    else:
        utt = importers.convert_line(opts.fmt, payload, source=where, lang=opts.lang, unit_rate_hz=opts.unit_rate_hz,
                                     pitch_rate_hz=opts.pitch_rate_hz, style_rate_hz=opts.style_rate_hz,
                                     counts=counts)
    utt = importers.prepare_record(utt, where, counts, num_units=opts.num_units, num_pitch=opts.num_pitch,
                                   num_style=opts.num_style)
    return utt, counts


def duplicate_id_error(where: str, record_id: str, first_at: str) -> BadRecordError:
    """The one duplicate-id rule of both paths: the record read first (file order, then line order) is
    kept, each later one is bad."""
    return BadRecordError(f"{where}: record {record_id!r}: duplicate id (first at {first_at})")


def bad_record_kind(reason: str, where: str) -> str:
    """The kind a skipped record is counted under, from its reason: `duplicate_id`, `invalid_json`,
    `missing_<field>`, `bad_<field>` (the field the reason names first, e.g. `bad_units`,
    `bad_durations`, `bad_unit_rate_hz`, `bad_words`), else `bad_record`."""
    rest = reason[len(where):].lstrip(": ") if reason.startswith(where) else reason
    if rest.startswith("invalid JSON"):
        return "invalid_json"
    m = _RECORD_PREFIX.match(rest)
    if m is None:
        return "bad_record"
    rest = rest[m.end():]
    if rest.startswith("duplicate id"):
        return "duplicate_id"
    m = _LEADING.match(rest)
    if m is None or m.group(2) not in _FIELDS:
        return "bad_record"
    return f"{'missing' if m.group(1) else 'bad'}_{m.group(2)}"


def bad_record_line(where: str, kind: str, reason: str) -> str:
    """One line of the bad-records side output (JSONL): where, kind, reason."""
    return json.dumps({"where": where, "kind": kind, "reason": reason}, ensure_ascii=False) + "\n"


def check_shard_args(num_shards: int | None, shard_size_mb: float | None) -> tuple[int | None, float | None]:
    """(num_shards, shard_size_mb) with the default of one shard; ValueError when both are given."""
    if num_shards is not None and shard_size_mb is not None:
        raise ValueError(f"--num_shards={num_shards} and --shard_size_mb={shard_size_mb}: give one of them")
    return (1 if num_shards is None and shard_size_mb is None else num_shards), shard_size_mb


def split_output(output: str) -> tuple[str, str]:
    out_dir, prefix = os.path.dirname(output) or ".", os.path.basename(output)
    if not prefix:
        raise ValueError(f"--output={output!r}: expected DIR/PREFIX (a file name prefix after the directory)")
    return out_dir, prefix


# --- the single-process run --------------------------------------------------------------------
def import_to_tfrecord(
    fmt: str,
    input_pattern: str,
    output: str,
    *,
    lang: str = "en",
    num_shards: int | None = None,
    shard_size_mb: float | None = None,
    on_bad_record: str = "error",
    bad_records_out: str | None = None,
    num_units: int | None = None,
    num_pitch: int | None = None,
    num_style: int | None = None,
    unit_rate_hz: float | None = None,
    pitch_rate_hz: float = importers.SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = importers.SPIRITLM_STYLE_RATE_HZ,
) -> dict:
    """Converts, repairs, validates and writes `output`-SSSSS-of-NNNNN.tfrecord shards
    (output = DIR/PREFIX), streaming: memory does not grow with the corpus. `num_units` defaults
    to the format's (`DEFAULT_NUM_UNITS`: slamkit 500, SpiritLM 501; required for `slm_jax`).

    Shards: `num_shards` (default 1) cuts the records into that many contiguous, balanced shards
    (as before streaming: the same bytes for the same input); or `shard_size_mb` starts a new
    shard when the current one would pass that many MiB (see `shard_writer.ShardWriter`). Records
    keep the input order (files sorted per glob, then line order) across the shards in name order.

    Bad records (unparsable, invalid, duplicate id: the first occurrence is kept) raise
    BadRecordError naming the file, line, id and field, or with `on_bad_record='skip'` are
    dropped, counted per kind (`bad_record_kind`) and logged; `bad_records_out` (skip only)
    writes one JSON line per skipped record: {"where": "file:line", "kind", "reason"}.
    Returns {'written': n, 'skipped': k, 'skipped_by_kind': {kind: count}, 'shards': [paths],
    'report': {what: count}}: the report counts how each unit rate was found
    (`rate_from_record`, `rate_from_flag`, `rate_snapped_to_<R>_hz`, `rate_spiritlm_default`),
    run lengths expanded, text fields normalised, zero-length words and words clipped into the
    audio (`corpus.repair_words`), and record keys the format does not read
    (`ignored_key_<name>`, see `READ_KEYS`). Records that were skipped count nothing.
    """
    opts = ImportOptions(fmt, lang, num_units, num_pitch, num_style, unit_rate_hz, pitch_rate_hz,
                         style_rate_hz).checked()
    corpus.check_on_bad_record(on_bad_record)
    if bad_records_out and on_bad_record != "skip":
        raise ValueError(f"--bad_records_out={bad_records_out!r} needs --on_bad_record=skip (the first bad record "
                         "stops the import otherwise)")
    num_shards, shard_size_mb = check_shard_args(num_shards, shard_size_mb)
    out_dir, prefix = split_output(output)
    files = corpus.list_files(input_pattern)
    report: collections.Counter = collections.Counter()
    skipped: collections.Counter = collections.Counter()
    first_reasons, total = [], 0
    with ShardWriter(out_dir, prefix, num_shards=num_shards, shard_size_mb=shard_size_mb) as writer, \
            SeenIds() as seen, _BadRecordsFile(bad_records_out) as bad_out:
        for path in files:
            for where, payload in iter_file_records(fmt, path):
                total += 1
                try:
                    utt, counts = convert_record(opts, where, payload)
                    first = seen.first_at(utt.id, where)
                    if first is not None:
                        raise duplicate_id_error(where, utt.id, first)
                except BadRecordError as e:
                    if on_bad_record == "error":
                        raise
                    kind = bad_record_kind(str(e), where)
                    skipped[kind] += 1
                    if len(first_reasons) < corpus.MAX_REASONS_LOGGED:
                        first_reasons.append(str(e))
                    bad_out.write(where, kind, str(e))
                    continue
                report.update(counts)
                writer.write(corpus.serialize(corpus.to_example(utt)))
        n_skipped = sum(skipped.values())
        corpus.log_skipped(first_reasons, total, f"import {fmt} {input_pattern}", num_skipped=n_skipped)
        if writer.count == 0:
            raise BadRecordError(f"{input_pattern}: no valid records to write ({n_skipped} skipped of {total})")
        paths = writer.close()
    return {"written": writer.count, "skipped": n_skipped, "skipped_by_kind": dict(sorted(skipped.items())),
            "shards": paths, "report": dict(sorted(report.items()))}


class _BadRecordsFile:
    """The bad-records side output of the single-process run (a no-op without a path)."""

    def __init__(self, path: str | None):
        self._f = None
        if path:
            parent = os.path.dirname(path)
            if parent:
                tf.io.gfile.makedirs(parent)
            self._f = tf.io.gfile.GFile(path, "w")

    def write(self, where: str, kind: str, reason: str) -> None:
        if self._f is not None:
            self._f.write(bad_record_line(where, kind, reason))

    def __enter__(self) -> "_BadRecordsFile":
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()
