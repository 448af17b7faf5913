"""The speech corpus schema (`Utterance`, TFRecord feature specs) and its validator.

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
import logging
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf

from slm_jax.text_normalization import normalize_text


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


def _check_spans(spans: list[tuple[float, float]], name: str, duration: float, tol: float, where: str,
                 allow_empty: bool = False):
    """Spans inside [0, duration] (+tol), start < end (start <= end with `allow_empty`), each
    starting at/after the previous end."""
    prev_end = 0.0
    for i, (start, end) in enumerate(spans):
        if not (np.isfinite(start) and np.isfinite(end)):
            raise BadRecordError(f"{where}: {name}[{i}] has a non-finite time ({start}, {end})")
        if start < 0 or end > duration + tol:
            raise BadRecordError(
                f"{where}: {name}[{i}] ({start}, {end}) lies outside [0, {duration:g}] s "
                f"(the units' duration, tolerance {tol:g} s)"
            )
        if not (start <= end if allow_empty else start < end):
            expected = "start <= end" if allow_empty else "start < end"
            raise BadRecordError(
                f"{where}: {name}[{i}] starts at {start} but ends at {end}; expected {expected}"
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
    [0, duration_s], in order and not overlapping; sentences have start < end, words
    start <= end (zero-length words, start == end, are what forced aligners write for
    words they could not place: accepted, see `repair_words`); no word normalises to an
    empty string (`normalize_text`). `time_tolerance_s` (default: one unit frame,
    1 / unit_rate_hz) lets an alignment end slightly after the last unit, as forced
    aligners work on the audio, which is up to a frame longer than its units. Words
    further out are an error here; importers repair them first (`repair_words`).
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
    _check_words_text(utt.words, where)
    _check_spans([(w[1], w[2]) for w in utt.words], "words", utt.duration_s, tol, where, allow_empty=True)
    _check_spans([(s[0], s[1]) for s in utt.sentences], "sentences", utt.duration_s, tol, where)
    if utt.word_token_ids is not None:
        if len(utt.word_token_ids) != len(utt.words):
            raise BadRecordError(f"{where}: {len(utt.word_token_ids)} word_token_ids entries for "
                                 f"{len(utt.words)} words; expected one per word")
        if not utt.word_token_model:
            raise BadRecordError(f"{where}: word_token_ids without word_token_model; expected the sha256 "
                                 "of the SentencePiece model that produced them")


def _check_words_text(words, where: str) -> None:
    for i, w in enumerate(words):
        if not normalize_text(w[0]):
            raise BadRecordError(f"{where}: words[{i}][0]={w[0]!r} is empty after text normalisation "
                                 "(slm_jax.text_normalization.normalize_text); expected a word")


# --- repairs and normalisation at the corpus boundary -----------------------------------------
# Words further than this beyond the units' end (or before 0) are an error, not a repair: the
# alignment then belongs to other audio. Within it the aligner saw audio the encoder did not
# cover (its final partial frame, padding, a trimmed tail).
WORD_REPAIR_LIMIT_S = 1.0


def repair_words(utt: Utterance, *, time_tolerance_s: float | None = None) -> tuple[Utterance, dict[str, int]]:
    """Word times as real aligners write them -> times `validate` accepts; returns (utt, counts).

    The rule (documented in README "Your own data"), with D = `utt.duration_s` (len(units) /
    unit_rate_hz, seconds) and tol = `time_tolerance_s` (default one frame, 1 / unit_rate_hz):

    * zero-length words (start == end) are kept as they are (`validate` accepts them; the
      word-level preprocessors decide how such a word is spoken); counted `zero_length_words`.
    * out-of-audio words: when some word time lies outside [0, D + tol] but within
      `WORD_REPAIR_LIMIT_S` of [0, D], EVERY word time of the record is clipped into [0, D]
      (clipping is monotone, so order and non-overlap are kept; a word wholly past the end
      becomes a zero-length word at D and keeps its text); counted `words_clipped_to_audio`
      (words whose times changed). Times further out are left for `validate` to refuse.

    Nothing is dropped or reordered. Sentences are not touched.
    """
    counts = {"zero_length_words": 0, "words_clipped_to_audio": 0}
    if not utt.words or not utt.unit_rate_hz or utt.unit_rate_hz <= 0:
        return utt, counts
    duration = utt.duration_s
    tol = 1.0 / utt.unit_rate_hz if time_tolerance_s is None else time_tolerance_s
    times = [t for _, s, e in utt.words for t in (s, e)]
    finite = all(np.isfinite(t) for t in times)
    outside = finite and any(t < 0 or t > duration + tol for t in times)
    repairable = finite and all(-WORD_REPAIR_LIMIT_S <= t <= duration + WORD_REPAIR_LIMIT_S for t in times)
    words = utt.words
    if outside and repairable:
        clip = lambda t: min(max(t, 0.0), duration)  # noqa: E731
        words = [(w, clip(s), clip(e)) for w, s, e in utt.words]
        counts["words_clipped_to_audio"] = sum(a != b for a, b in zip(utt.words, words))
        utt = dataclasses.replace(utt, words=words)
    counts["zero_length_words"] = sum(s == e for _, s, e in words)
    return utt, counts


def normalize_utterance(utt: Utterance, where: str | None = None) -> tuple[Utterance, int]:
    """`utt` with `text`, every word and every sentence text in `normalize_text` form.

    Returns (utterance, number of text fields that changed). An empty `text` becomes None;
    a word that normalises to an empty string, or a changed word that carries
    `word_token_ids` (ids of the old spelling), raises BadRecordError naming `where`
    (default: the record id), the record and the field. Source of the rule:
    slm_jax.text_normalization.
    """
    where = where or f"record {utt.id!r}"
    if not where.endswith(f"record {utt.id!r}"):
        where = f"{where}: record {utt.id!r}"
    _check_words_text(utt.words, where)
    text = normalize_text(utt.text) if utt.text is not None else None
    words = [(normalize_text(w), s, e) for w, s, e in utt.words]
    sentences = [(s, e, normalize_text(t)) for s, e, t in utt.sentences]
    changed = (int(text != utt.text) + sum(a[0] != b[0] for a, b in zip(words, utt.words))
               + sum(a[2] != b[2] for a, b in zip(sentences, utt.sentences)))
    if not changed:
        return utt, 0
    if utt.word_token_ids is not None and any(a[0] != b[0] for a, b in zip(words, utt.words)):
        i = next(i for i, (a, b) in enumerate(zip(words, utt.words)) if a[0] != b[0])
        raise BadRecordError(f"{where}: words[{i}][0]={utt.words[i][0]!r} is not normalised but has "
                             f"word_token_ids; expected ids computed from normalize_text(word) = {words[i][0]!r}")
    return dataclasses.replace(utt, text=text or None, words=words, sentences=sentences), changed


def check_on_bad_record(on_bad_record: str) -> None:
    if on_bad_record not in ON_BAD_RECORD_CHOICES:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD_CHOICES}, got {on_bad_record!r}")


def log_skipped(reasons: Sequence[str], total: int, what: str, num_skipped: int | None = None) -> None:
    """Warns with the number of skipped records and the first few reasons (never silent).
    `num_skipped`: the count when `reasons` holds only the first few (default len(reasons))."""
    n = len(reasons) if num_skipped is None else num_skipped
    if not n:
        return
    shown = "\n  ".join(reasons[:MAX_REASONS_LOGGED])
    more = f"\n  ... and {n - MAX_REASONS_LOGGED} more" if n > MAX_REASONS_LOGGED else ""
    logger.warning("%s: skipped %d bad record(s) of %d:\n  %s%s", what, n, total, shown, more)


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

