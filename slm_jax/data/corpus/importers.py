"""Importers: unit corpora made by other toolkits -> validated slm_jax TFRecord shards.

Why: users arrive with units already extracted by slamkit / textlesslib or SpiritLM;
converting once into the corpus schema (corpus.py) lets every task read one format.

Formats (one JSON object per line; blank lines are ignored):

* `slamkit` (also textlesslib / GSLM dumps):
  `{"file_name"|"audio"|"id": ..., "units": [12, 13, 13, 5] or "12 13 13 5", "duration": ...}`
  - `duration` in SECONDS (a number): units are taken as frame-level (before dedup).
    Without `unit_rate_hz`, the rate is inferred as len(units) / duration and snapped to
    25, 50 or 100 Hz only when within 1% of one of them (frame counts of real encoders
    fall a fraction of a frame short of duration * rate); otherwise the exact quotient is
    kept, so each record may get its own rate: pass `unit_rate_hz` for real corpora.
    With `unit_rate_hz` given, a record whose units cover a very different time than
    `duration` (more than 10% and 2 frames off) is an error: its units are likely
    deduplicated.
  - `duration` as a LIST of run lengths (slamkit's `extract_features` output: deduplicated
    units with their frame counts): the frame-level units are reconstructed exactly
    (unit i repeated duration[i] times); `unit_rate_hz` is then required.
  - no `duration`: units are frame-level at `unit_rate_hz` (required).
  Optional `lang` (overrides the default) and `text` keys are kept.
* `spiritlm`: `{"file_name"|"audio"|"id": ..., "units": "[Hu12][Pi3][Hu7][St5]...", ...}`,
  see `parse_spiritlm`. Optional `durations` / `pitch_durations` (run lengths) and `lang`.

Every record is validated (`corpus.validate`); ids must be unique across the import.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence

import numpy as np

from slm_jax.data import corpus
from slm_jax.data.corpus import BadRecordError, Utterance

logger = logging.getLogger(__name__)

FORMATS = ("slamkit", "spiritlm")
ID_KEYS = ("id", "file_name", "audio")  # first present wins
STANDARD_RATES_HZ = (25.0, 50.0, 100.0)
RATE_SNAP_RTOL = 0.01
# SpiritLM defaults: mHuBERT 25 Hz, pitch 12.5 Hz (64 codes), style 1 Hz (100 codes).
SPIRITLM_UNIT_RATE_HZ = 25.0
SPIRITLM_PITCH_RATE_HZ = 12.5
SPIRITLM_STYLE_RATE_HZ = 1.0
SPIRITLM_NUM_PITCH = 64
SPIRITLM_NUM_STYLE = 100

_SPIRIT_TOKEN = re.compile(r"\[(Hu|Pi|St)(\d+)\]|\[(Text|Speech)\]|\s+")


# --- shared record helpers ------------------------------------------------------------
def _record_id(obj: dict, where: str) -> str:
    for key in ID_KEYS:
        if obj.get(key) not in (None, ""):
            value = obj[key]
            if not isinstance(value, str):
                raise BadRecordError(f"{where}: {key}={value!r} must be a string")
            return value
    raise BadRecordError(f"{where}: no record id; expected one of the keys {list(ID_KEYS)}")


def _record_lang(obj: dict, default: str, where: str) -> str:
    lang = obj.get("lang", default)
    if not isinstance(lang, str) or not lang:
        raise BadRecordError(f"{where}: lang={lang!r}; expected a language code like 'en'")
    return lang


def _run_lengths(values, n: int, name: str, where: str) -> list[int]:
    """Positive integer run lengths, one per token (n of them)."""
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise BadRecordError(f"{where}: {name} has {got} value(s); expected a list of {n} run lengths")
    for i, d in enumerate(values):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise BadRecordError(f"{where}: {name}[{i}]={d!r}; expected a positive integer frame count")
    return values


def _expand(units: list[int], run_lengths: list[int]) -> list[int]:
    return np.repeat(np.asarray(units, dtype=np.int64), run_lengths).tolist()


# --- slamkit / textlesslib ----------------------------------------------------------------
def _slamkit_units(value, where: str) -> list[int]:
    if isinstance(value, str):
        try:
            return [int(tok) for tok in value.split()]
        except ValueError:
            raise BadRecordError(
                f"{where}: units string {value[:40]!r}... is not whitespace-separated integers"
            ) from None
    if isinstance(value, list):
        for i, u in enumerate(value):
            if isinstance(u, bool) or not isinstance(u, int):
                raise BadRecordError(f"{where}: units[{i}]={u!r} is not an integer")
        return value
    raise BadRecordError(
        f"{where}: units must be a list of integers or a string like '12 13 5', got {type(value).__name__}"
    )


def infer_unit_rate(num_units: int, duration_s: float) -> float:
    """len(units) / duration, snapped to 25/50/100 Hz when within 1% (else kept exact)."""
    rate = num_units / duration_s
    for standard in STANDARD_RATES_HZ:
        if abs(rate - standard) <= RATE_SNAP_RTOL * standard:
            return standard
    return rate


def _check_covered_time(n: int, rate: float, duration_s: float, where: str) -> None:
    covered = n / rate
    if abs(covered - duration_s) > max(0.1 * duration_s, 2.0 / rate):
        raise BadRecordError(
            f"{where}: {n} units at {rate:g} Hz cover {covered:.3f} s but duration is "
            f"{duration_s:g} s; expected frame-level (not deduplicated) units"
        )


def _record_header(obj, source: str, units_what: str) -> tuple[str, str]:
    """(record id, "<source>: record <id>") of a JSONL object that must carry `units`."""
    if not isinstance(obj, dict):
        raise BadRecordError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    uid = _record_id(obj, source)
    where = f"{source}: record {uid!r}"
    if "units" not in obj:
        raise BadRecordError(f"{where}: missing {units_what}")
    return uid, where


def from_slamkit(
    obj: dict, *, lang: str = "en", unit_rate_hz: float | None = None, source: str = "<input>"
) -> Utterance:
    """One slamkit/textlesslib unit record -> Utterance (see the module docstring)."""
    uid, where = _record_header(obj, source, "'units'")
    units = _slamkit_units(obj["units"], where)
    duration = obj.get("duration")
    if isinstance(duration, list):
        units = _expand(units, _run_lengths(duration, len(units), "duration", where))
        if unit_rate_hz is None:
            raise BadRecordError(
                f"{where}: duration is a list of run lengths (frames), which gives no rate; "
                "pass unit_rate_hz (--unit_rate_hz)"
            )
        rate = unit_rate_hz
    elif duration is None:
        if unit_rate_hz is None:
            raise BadRecordError(
                f"{where}: no duration to infer the unit rate from; pass unit_rate_hz (--unit_rate_hz)"
            )
        rate = unit_rate_hz
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration > 0:
        if unit_rate_hz is None:
            rate = infer_unit_rate(len(units), float(duration)) if units else 0.0
        else:
            rate = unit_rate_hz
            _check_covered_time(len(units), rate, float(duration), where)
    else:
        raise BadRecordError(f"{where}: duration={duration!r}; expected seconds > 0 or a list of run lengths")
    text = obj.get("text")
    return Utterance(
        id=uid,
        lang=_record_lang(obj, lang, where),
        units=units,
        unit_rate_hz=float(rate),
        text=text if isinstance(text, str) and text else None,
    )


# --- SpiritLM ---------------------------------------------------------------------------
def _spiritlm_tokens(s: str, where: str) -> dict[str, list[int]]:
    """Splits a speech-only SpiritLM string into its Hu/Pi/St streams (in string order)."""
    streams: dict[str, list[int]] = {"Hu": [], "Pi": [], "St": []}
    pos = 0
    while pos < len(s):
        m = _SPIRIT_TOKEN.match(s, pos)
        if m is None:
            raise BadRecordError(
                f"{where}: unexpected text at character {pos}: {s[pos : pos + 20]!r}; expected "
                "tokens like [Hu12], [Pi3], [St5] or [Speech]"
            )
        if m.group(3) == "Text":
            raise BadRecordError(
                f"{where}: the string contains [Text] at character {pos}; this importer takes "
                "speech-only SpiritLM strings ([Speech][Hu..][Pi..][St..]); split interleaved "
                "speech-text data into its speech parts first"
            )
        if m.group(1):
            streams[m.group(1)].append(int(m.group(2)))
        pos = m.end()
    return streams


def parse_spiritlm(
    s: str,
    *,
    utt_id: str,
    lang: str = "en",
    unit_rate_hz: float = SPIRITLM_UNIT_RATE_HZ,
    pitch_rate_hz: float = SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = SPIRITLM_STYLE_RATE_HZ,
    durations: Sequence[int] | None = None,
    pitch_durations: Sequence[int] | None = None,
    source: str = "<string>",
) -> Utterance:
    """A speech-only SpiritLM unit string -> Utterance with units/pitch/style streams.

    Expressive strings merge HuBERT, pitch and style tokens by time; they are split by
    token type here, each stream at its own rate (`unit_rate_hz`, `pitch_rate_hz`,
    `style_rate_hz`; SpiritLM: 25, 12.5 and 1 Hz). `[Speech]` markers are dropped; a
    `[Text]` marker is an error (speech-only strings only).

    LOSSY: SpiritLM deduplicates HuBERT and pitch tokens, while the corpus stores units
    BEFORE dedup. Without run lengths each token counts as ONE frame, so durations (and
    the times of a merged stream) are shortened; dedup in the pipeline then gives the
    original tokens back, but word/sentence times cannot be attached to such units.
    When the run lengths are known, pass `durations` (one per [Hu] token) and/or
    `pitch_durations` (one per [Pi] token) to reconstruct the frame-level streams exactly.
    Style tokens are not deduplicated by SpiritLM, so they are kept as they are.
    """
    where = f"{source}: record {utt_id!r}"
    if not isinstance(s, str):
        raise BadRecordError(f"{where}: expected a SpiritLM unit string, got {type(s).__name__}")
    streams = _spiritlm_tokens(s, where)
    units, pitch, style = streams["Hu"], streams["Pi"], streams["St"]
    if durations is not None:
        units = _expand(units, _run_lengths(list(durations), len(units), "durations", where))
    if pitch_durations is not None:
        pitch = _expand(pitch, _run_lengths(list(pitch_durations), len(pitch), "pitch_durations", where))
    return Utterance(
        id=utt_id,
        lang=lang,
        units=units,
        unit_rate_hz=float(unit_rate_hz),
        pitch=pitch or None,
        pitch_rate_hz=float(pitch_rate_hz) if pitch else None,
        style=style or None,
        style_rate_hz=float(style_rate_hz) if style else None,
    )


def from_spiritlm(
    obj: dict,
    *,
    lang: str = "en",
    unit_rate_hz: float | None = None,
    pitch_rate_hz: float = SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = SPIRITLM_STYLE_RATE_HZ,
    source: str = "<input>",
) -> Utterance:
    """One SpiritLM JSONL record (`id`/`file_name`/`audio`, `units` string) -> Utterance."""
    uid, where = _record_header(obj, source, "'units' (the SpiritLM string)")
    return parse_spiritlm(
        obj["units"],
        utt_id=uid,
        lang=_record_lang(obj, lang, where),
        unit_rate_hz=SPIRITLM_UNIT_RATE_HZ if unit_rate_hz is None else unit_rate_hz,
        pitch_rate_hz=pitch_rate_hz,
        style_rate_hz=style_rate_hz,
        durations=obj.get("durations"),
        pitch_durations=obj.get("pitch_durations"),
        source=source,
    )


# --- the import loop -------------------------------------------------------------------
def _iter_lines(pattern: str):
    """Yields ("file:line", text) for the non-blank lines of the matching files."""
    import tensorflow as tf  # gfile, so gs:// inputs work

    for path in corpus.list_files(pattern):
        with tf.io.gfile.GFile(path, "r") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{path}:{lineno}", line


def convert_line(
    fmt: str,
    line: str,
    *,
    source: str,
    lang: str = "en",
    unit_rate_hz: float | None = None,
    pitch_rate_hz: float = SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = SPIRITLM_STYLE_RATE_HZ,
) -> Utterance:
    """One input line of `fmt` -> Utterance (not yet validated)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRecordError(f"{source}: invalid JSON ({e})") from None
    if fmt == "slamkit":
        return from_slamkit(obj, lang=lang, unit_rate_hz=unit_rate_hz, source=source)
    if fmt == "spiritlm":
        return from_spiritlm(
            obj,
            lang=lang,
            unit_rate_hz=unit_rate_hz,
            pitch_rate_hz=pitch_rate_hz,
            style_rate_hz=style_rate_hz,
            source=source,
        )
    raise ValueError(f"unknown import format {fmt!r}; expected one of {FORMATS}")


def import_to_tfrecord(
    fmt: str,
    input_pattern: str,
    output: str,
    *,
    lang: str = "en",
    num_shards: int = 1,
    on_bad_record: str = "error",
    num_units: int = 500,
    num_pitch: int | None = None,
    num_style: int | None = None,
    unit_rate_hz: float | None = None,
    pitch_rate_hz: float = SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = SPIRITLM_STYLE_RATE_HZ,
) -> dict:
    """Converts, validates and writes `output`-SSSSS-of-NNNNN.tfrecord shards (output = DIR/PREFIX).

    Bad records (unparsable, invalid, duplicate id) raise BadRecordError naming the file,
    line and id, or with `on_bad_record='skip'` are dropped, counted and logged.
    Returns {'written': n, 'skipped': k, 'shards': [paths]}.
    """
    corpus.check_on_bad_record(on_bad_record)
    out_dir, prefix = os.path.dirname(output) or ".", os.path.basename(output)
    if not prefix:
        raise ValueError(f"--output={output!r}: expected DIR/PREFIX (a file name prefix after the directory)")
    records, reasons, seen, total = [], [], {}, 0
    for where, line in _iter_lines(input_pattern):
        total += 1
        try:
            utt = convert_line(
                fmt,
                line,
                source=where,
                lang=lang,
                unit_rate_hz=unit_rate_hz,
                pitch_rate_hz=pitch_rate_hz,
                style_rate_hz=style_rate_hz,
            )
            corpus.validate(utt, num_units=num_units, num_pitch=num_pitch, num_style=num_style, source=where)
            if utt.id in seen:
                raise BadRecordError(f"{where}: record {utt.id!r}: duplicate id (first at {seen[utt.id]})")
        except BadRecordError as e:
            if on_bad_record == "error":
                raise
            reasons.append(str(e))
            continue
        seen[utt.id] = where
        records.append(corpus.serialize(corpus.to_example(utt)))
    corpus.log_skipped(reasons, total, f"import {fmt} {input_pattern}")
    if not records:
        raise BadRecordError(
            f"{input_pattern}: no valid records to write ({len(reasons)} skipped of {total})"
        )
    paths = corpus.write_serialized_shards(out_dir, prefix, records, num_shards)
    return {"written": len(records), "skipped": len(reasons), "shards": paths}
