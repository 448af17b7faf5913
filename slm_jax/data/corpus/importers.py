"""Importers: unit corpora made by other toolkits -> validated slm_jax TFRecord shards.

Why: users arrive with units already extracted by slamkit / textlesslib or SpiritLM;
converting once into the corpus schema lets every task read one format. Nothing is
shrunk, re-timed or dropped silently: each record is read as its toolkit wrote it, or
refused with an error naming the file:line, the record id, the field and what was expected.

Formats (one JSON object per line; blank lines are ignored):

* `slamkit` (also textlesslib and `slm-jax units encode` output):
  `{"file_name"|"audio"|"id": ..., "units": [12, 13, 5] or "12 13 5", ...}` with
  - run lengths, when the units are deduplicated: `duration` as a LIST (slamkit's
    `InterleavingTokeniser.audio_represent` writes `{'units': u, 'duration': run lengths}`;
    source: slp-rl/slamkit slamkit/tokeniser/interleaving_tokeniser.py) or `durations`
    (textlesslib's `SpeechEncoder` returns `units` + `durations` "measured in frames";
    source: facebookresearch/textlesslib textless/data/speech_encoder.py). The frame-level
    units are rebuilt exactly: unit i repeated run_length[i] times (15 deduplicated units with
    run lengths summing to 36 give 36 frames). Run lengths must be positive integers, one
    per unit; both lists at once is an error.
  - `duration` as a NUMBER: the recording's length in SECONDS.
  - the unit rate, in this order: the record's own `unit_rate_hz` key (`slm-jax units
    encode` writes it); else the `unit_rate_hz` argument (`--unit_rate_hz`) for all records
    (a record key that disagrees with the flag is an error); else inferred from the number
    of frames n and `duration` (seconds) by `snap_unit_rate`: the standard encoder rate R
    (`STANDARD_RATES_HZ`) with |n - duration * R| <= 2 frames, when exactly one R qualifies
    (12 frames / 0.5 s, 37 / 1.5 s, 75 / 3.0 s -> 25 Hz; 49 / 1.0 s, 74 / 1.5 s -> 50 Hz);
    none or several (short records) is an error naming the record and the flag; so are 50
    or more units without two equal neighbours (deduplicated units without run lengths would
    give half the rate and could snap to the wrong one). With a
    given rate and a `duration` in seconds, units covering a very different time (more than
    10% and 2 frames off) are refused: they are likely deduplicated without run lengths.
  - optional `aligned_text`: slamkit's word alignments `[[word, start_s, end_s], ...]`
    (source: slamkit/utils/data_prep.py `parse_transcriptions`), imported as the record's
    `words`; optional `text`; optional `lang` (overrides the default).
* `textlesslib`: the text files of textlesslib's dump script
  (tools/distributed_transcribe/transcribe.py): `--input` globs `OUT.units` files, one
  utterance per line, units separated by spaces, prefixed by `name<TAB>` with
  `--preserve_name` (else the record id is `<file stem>:<line>`, counted `ids_from_line_numbers`);
  a sibling `OUT.durations` file (written with `--durations`) holds the run lengths line by
  line and is read with it (same line count and names, else an error naming both files).
  Without it the units must be frame-level (not `--deduplicate`d): 50 or more units without
  two equal neighbours are refused. No seconds are written: pass --unit_rate_hz.
  `OUT.f0s` is not read.
* `spiritlm`: `{"file_name"|"audio"|"id": ..., "units": "[Hu12][Pi3][Hu7][St5]...", ...}`,
  see `parse_spiritlm`. Optional `durations` / `pitch_durations` (run lengths), `text`,
  `lang`, `unit_rate_hz`. HuBERT ids are [Hu0]..[Hu500] (501 ids, `SPIRITLM_NUM_UNITS`).
  A string's tokens are deduplicated: without `durations` each counts one frame (counted
  `spiritlm_strings_without_durations`, and `..._without_pitch_durations` for pitch, in the
  report: times and the expressive merge of such records are not the audio's). Also SpiritLM's `encode_units` dict, frame-level and
  exact: `{"audio": ..., "hubert": "1 1 2 2 3", "pitch": "15 15 20", "style": "7"}`.

At import every text field (`text`, every word) is normalised with
`slm_jax.text_normalization.normalize_text`; word times are repaired by
`corpus.repair_words` (zero-length words kept, out-of-audio words clipped into the audio);
then every record is validated (`corpus.validate`); ids must be unique across the import.
What was inferred, rebuilt, repaired or normalised, and every record key the format does not
read (`READ_KEYS`), is counted in the import report.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence

import numpy as np

from slm_jax.data import corpus
from slm_jax.data.corpus import BadRecordError, Utterance
from slm_jax.text_normalization import normalize_text

logger = logging.getLogger(__name__)

FORMATS = ("slamkit", "spiritlm", "textlesslib")
ID_KEYS = ("id", "file_name", "audio")  # first present wins
# Frame rates (Hz) of published unit encoders that a measured len(units) / duration snaps to.
STANDARD_RATES_HZ = {
    12.5: "Mimi semantic tokens (Moshi), 80 ms",
    25.0: "mHuBERT-25Hz (SpiritLM, slamkit, TWIST), 40 ms",
    50.0: "HuBERT / wav2vec 2.0 / WavLM, 20 ms",
    100.0: "10 ms log-mel or MFCC frames",
}
RATE_SNAP_FRAMES = 2.0  # |n - duration * R| <= this many frames
SLAMKIT_NUM_UNITS = 500  # slamkit's mHuBERT-25Hz k-means (InterleavingTokeniser num_units=500)
# SpiritLM: mHuBERT 25 Hz with 501 ids ([Hu0]..[Hu500]), pitch 12.5 Hz (64 codes), style 1 Hz
# (100 codes). 25.0 is the TRUE HuBERT frame rate (16 kHz / 640 samples), stored with the units;
# SpiritLM orders its expressive strings with 24.99 (preprocessors.interleave.expressive_tokens).
SPIRITLM_NUM_UNITS = 501
SPIRITLM_UNIT_RATE_HZ = 25.0
SPIRITLM_PITCH_RATE_HZ = 12.5
SPIRITLM_STYLE_RATE_HZ = 1.0
SPIRITLM_NUM_PITCH = 64
SPIRITLM_NUM_STYLE = 100
TEXTLESSLIB_NUM_UNITS = 100  # tools/distributed_transcribe/transcribe.py --vocab_size default
DEFAULT_NUM_UNITS = {"slamkit": SLAMKIT_NUM_UNITS, "spiritlm": SPIRITLM_NUM_UNITS,
                     "textlesslib": TEXTLESSLIB_NUM_UNITS}

# The keys each format reads; any other key of a record is counted `ignored_key_<name>` in the
# import report (e.g. slamkit's `split_sentence`, textlesslib's `f0`), so nothing is dropped unsaid.
READ_KEYS = {
    "slamkit": {*ID_KEYS, "units", "duration", "durations", "unit_rate_hz", "aligned_text", "text", "lang"},
    "spiritlm": {*ID_KEYS, "units", "durations", "pitch_durations", "unit_rate_hz", "text", "lang", "hubert",
                 "pitch", "style"},
}

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


def _normalized(text: str, counts) -> str:
    out = normalize_text(text)
    if counts is not None and out != text:
        counts["text_fields_normalised"] += 1
    return out


def _record_text(obj: dict, where: str, counts=None) -> str | None:
    """The `text` key, normalised (`normalize_text`); None when absent or empty."""
    text = obj.get("text")
    if text is None:
        return None
    if not isinstance(text, str):
        raise BadRecordError(f"{where}: text={text!r}; expected a string")
    return _normalized(text, counts) or None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _run_lengths(values, n: int, name: str, where: str) -> list[int]:
    """Positive integer run lengths, one per token (n of them)."""
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise BadRecordError(f"{where}: {name} has {got} value(s); expected a list of {n} run lengths "
                             "(one positive frame count per unit)")
    for i, d in enumerate(values):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise BadRecordError(f"{where}: {name}[{i}]={d!r}; expected a positive integer frame count")
    return values


def _expand(units: list[int], run_lengths: list[int]) -> list[int]:
    return np.repeat(np.asarray(units, dtype=np.int64), run_lengths).tolist()


# --- the unit rate ---------------------------------------------------------------------------
def snap_unit_rate(num_frames: int, duration_s: float, where: str = "<record>") -> float:
    """The standard encoder rate R (Hz, a key of `STANDARD_RATES_HZ`) of `num_frames` units
    covering `duration_s` seconds: the one R with |num_frames - duration_s * R| <= 2 frames.

    Real encoders emit a frame or so fewer than duration * R (their receptive field does not
    fit the last partial frame), so len(units) / duration is NOT the rate (49 / 1.0 s is
    50 Hz, not 49). BadRecordError naming `where` and --unit_rate_hz when no R or several R
    (short records) qualify.
    """
    near = [r for r in STANDARD_RATES_HZ if abs(num_frames - duration_s * r) <= RATE_SNAP_FRAMES]
    measured = num_frames / duration_s
    if len(near) == 1:
        return near[0]
    if not near:
        raise BadRecordError(
            f"{where}: unit_rate_hz: {num_frames} units over duration {duration_s:g} s is {measured:.4g} Hz, "
            f"not within {RATE_SNAP_FRAMES:g} frames of a standard encoder rate {sorted(STANDARD_RATES_HZ)} Hz; "
            "pass --unit_rate_hz (or a per-record 'unit_rate_hz' key)"
        )
    raise BadRecordError(
        f"{where}: unit_rate_hz: {num_frames} units over duration {duration_s:g} s is within "
        f"{RATE_SNAP_FRAMES:g} frames of several standard rates {near} Hz (record too short to tell); "
        "pass --unit_rate_hz (or a per-record 'unit_rate_hz' key)"
    )


def _resolve_rate(obj: dict, flag_rate: float | None, num_frames: int, duration_s: float | None,
                  where: str, counts) -> float:
    """Record key > flag > `snap_unit_rate` (module docstring); counts how each rate was found."""
    own = obj.get("unit_rate_hz")
    if own is not None:
        if not _is_number(own) or not own > 0:
            raise BadRecordError(f"{where}: unit_rate_hz={own!r}; expected a number of Hz > 0")
        if flag_rate is not None and not np.isclose(own, flag_rate, rtol=1e-6, atol=0.0):
            raise BadRecordError(f"{where}: unit_rate_hz={own!r} in the record but --unit_rate_hz={flag_rate!r}; "
                                 "expected them to agree (drop the flag to use each record's rate)")
        counts["rate_from_record"] += 1
        return float(own)
    if flag_rate is not None:
        counts["rate_from_flag"] += 1
        return float(flag_rate)
    if duration_s is None:
        raise BadRecordError(f"{where}: unit_rate_hz: no 'unit_rate_hz' key and no 'duration' in seconds to "
                             "infer it from; pass --unit_rate_hz")
    rate = snap_unit_rate(num_frames, duration_s, where)
    counts[f"rate_snapped_to_{rate:g}_hz"] += 1
    return rate


# Kept for callers of the old name: the rule is `snap_unit_rate`.
def infer_unit_rate(num_units: int, duration_s: float) -> float:
    """`snap_unit_rate` without a record name (BadRecordError when no single rate fits)."""
    return snap_unit_rate(num_units, duration_s)


def _check_covered_time(n: int, rate: float, duration_s: float, where: str) -> None:
    covered = n / rate
    if abs(covered - duration_s) > max(0.1 * duration_s, 2.0 / rate):
        raise BadRecordError(
            f"{where}: units: {n} frames at {rate:g} Hz cover {covered:.3f} s but duration is "
            f"{duration_s:g} s; expected frame-level units, or run lengths in 'duration' (list) / 'durations'"
        )


DEDUP_CHECK_MIN_FRAMES = 50  # frame-level units of real encoders repeat well within 50 frames


def _check_not_deduplicated(units: list[int], where: str) -> None:
    """Before inferring a rate from len(units) / duration: deduplicated units (no two equal
    neighbours) without run lengths would give about half the rate and could snap to the wrong
    standard one (50 Hz HuBERT deduplicated looks like 25 Hz)."""
    arr = np.asarray(units)
    if arr.size >= DEDUP_CHECK_MIN_FRAMES and not np.any(arr[1:] == arr[:-1]):
        raise BadRecordError(
            f"{where}: units: {arr.size} units with no two equal neighbours look deduplicated, so "
            "len(units) / duration is not their frame rate; give their run lengths ('duration' as a list "
            "or 'durations'), or pass --unit_rate_hz if they are frame-level"
        )


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


def _record_header(obj, source: str, units_what: str) -> tuple[str, str]:
    """(record id, "<source>: record <id>") of a JSONL object that must carry `units`."""
    if not isinstance(obj, dict):
        raise BadRecordError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    uid = _record_id(obj, source)
    where = f"{source}: record {uid!r}"
    if "units" not in obj:
        raise BadRecordError(f"{where}: missing {units_what}")
    return uid, where


def _frames_and_seconds(obj: dict, units: list[int], where: str, counts) -> tuple[list[int], float | None]:
    """Frame-level units (run lengths expanded) and the duration in seconds (None if not given)."""
    duration, durations = obj.get("duration"), obj.get("durations")
    if isinstance(duration, list) and durations is not None:
        raise BadRecordError(f"{where}: duration (a list) and durations: two sets of run lengths; expected one")
    runs_key = "duration" if isinstance(duration, list) else ("durations" if durations is not None else None)
    if runs_key is not None:
        units = _expand(units, _run_lengths(obj[runs_key], len(units), runs_key, where))
        counts["run_lengths_expanded"] += 1
    seconds = None
    if duration is not None and not isinstance(duration, list):
        if not _is_number(duration) or not np.isfinite(duration) or not duration > 0:
            raise BadRecordError(f"{where}: duration={duration!r}; expected seconds > 0 or a list of run lengths")
        seconds = float(duration)
    return units, seconds


def _aligned_words(value, where: str, counts=None) -> list[tuple[str, float, float]]:
    """slamkit's `aligned_text` [[word, start_s, end_s], ...] -> normalised (word, start, end)."""
    if not isinstance(value, list):
        raise BadRecordError(f"{where}: aligned_text must be a list of [word, start_s, end_s], "
                             f"got {type(value).__name__}")
    words = []
    for i, w in enumerate(value):
        if not (isinstance(w, (list, tuple)) and len(w) == 3 and isinstance(w[0], str)
                and _is_number(w[1]) and _is_number(w[2])):
            raise BadRecordError(f"{where}: aligned_text[{i}]={w!r}; expected [word, start_s, end_s]")
        word = _normalized(w[0], counts)
        if not word:
            raise BadRecordError(f"{where}: aligned_text[{i}][0]={w[0]!r} is empty after text normalisation "
                                 "(normalize_text); expected a word")
        words.append((word, float(w[1]), float(w[2])))
    return words


def from_slamkit(
    obj: dict, *, lang: str = "en", unit_rate_hz: float | None = None, source: str = "<input>",
    counts: collections.Counter | None = None,
) -> Utterance:
    """One slamkit / textlesslib unit record -> Utterance (see the module docstring).

    `unit_rate_hz` is the --unit_rate_hz flag (None: the record's key, else inferred);
    `counts` (optional) accumulates what was rebuilt or inferred. BadRecordError names
    `source`, the record id, the field and what was expected."""
    counts = collections.Counter() if counts is None else counts
    uid, where = _record_header(obj, source, "'units'")
    units, seconds = _frames_and_seconds(obj, _slamkit_units(obj["units"], where), where, counts)
    if not units:
        raise BadRecordError(f"{where}: units are empty; expected at least one unit")
    explicit = obj.get("unit_rate_hz") is not None or unit_rate_hz is not None
    if not explicit and seconds is not None and counts["run_lengths_expanded"] == 0:
        _check_not_deduplicated(units, where)
    rate = _resolve_rate(obj, unit_rate_hz, len(units), seconds, where, counts)
    if explicit and seconds is not None:
        _check_covered_time(len(units), rate, seconds, where)
    words = _aligned_words(obj["aligned_text"], where, counts) if obj.get("aligned_text") is not None else []
    return Utterance(
        id=uid,
        lang=_record_lang(obj, lang, where),
        units=units,
        unit_rate_hz=float(rate),
        text=_record_text(obj, where, counts),
        words=words,
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

    Expressive strings merge HuBERT, pitch and style tokens by time (SpiritLM's
    `units_to_string`, source: facebookresearch/spiritlm
    spiritlm/speech_tokenizer/spiritlm_tokenizer.py, orders them with a HuBERT rate of
    24.99 Hz); they are split by token type here, each stream kept in its order and stored
    at its own TRUE rate (`unit_rate_hz`, `pitch_rate_hz`, `style_rate_hz`; SpiritLM: 25,
    12.5 and 1 Hz). `preprocessors.interleave.expressive_merge` rebuilds the same string
    from frame-level streams. `[Speech]` markers are dropped; a `[Text]` marker is an
    error (speech-only strings only). HuBERT ids go up to 500 (`SPIRITLM_NUM_UNITS`).

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
    counts: collections.Counter | None = None,
) -> Utterance:
    """One SpiritLM JSONL record (`id`/`file_name`/`audio`, `units` string) -> Utterance.

    The HuBERT rate is the record's `unit_rate_hz` key, else `unit_rate_hz` (the flag), else
    `SPIRITLM_UNIT_RATE_HZ` (25 Hz); a record key that disagrees with the flag is an error.
    Optional `text` is normalised (`normalize_text`)."""
    counts = collections.Counter() if counts is None else counts
    if isinstance(obj, dict) and "units" not in obj and "hubert" in obj:
        return _from_spiritlm_units(obj, lang=lang, unit_rate_hz=unit_rate_hz, pitch_rate_hz=pitch_rate_hz,
                                    style_rate_hz=style_rate_hz, source=source, counts=counts)
    uid, where = _record_header(obj, source, "'units' (the SpiritLM string) or 'hubert' (frame-level units)")
    if obj.get("unit_rate_hz") is None and unit_rate_hz is None:
        rate = SPIRITLM_UNIT_RATE_HZ
        counts["rate_spiritlm_default"] += 1
    else:
        rate = _resolve_rate(obj, unit_rate_hz, 0, None, where, counts)
    for key in ("durations", "pitch_durations"):
        if obj.get(key) is not None:
            counts[f"{key}_expanded"] += 1
    if obj.get("durations") is None:
        # Deduplicated tokens count one frame each: the record is shorter than its audio.
        counts["spiritlm_strings_without_durations"] += 1
    utt = parse_spiritlm(
        obj["units"],
        utt_id=uid,
        lang=_record_lang(obj, lang, where),
        unit_rate_hz=rate,
        pitch_rate_hz=pitch_rate_hz,
        style_rate_hz=style_rate_hz,
        durations=obj.get("durations"),
        pitch_durations=obj.get("pitch_durations"),
        source=source,
    )
    if utt.pitch and obj.get("pitch_durations") is None:
        counts["spiritlm_strings_without_pitch_durations"] += 1
    utt.text = _record_text(obj, where, counts)
    return utt


def _from_spiritlm_units(obj: dict, *, lang, unit_rate_hz, pitch_rate_hz, style_rate_hz, source,
                         counts) -> Utterance:
    """SpiritLM's `encode_units` dict: frame-level (NOT deduplicated) space-separated streams
    `{"audio": path, "hubert": "1 1 2 2 3", "pitch": "15 15 20", "style": "7"}` (source:
    spiritlm/speech_tokenizer/spiritlm_tokenizer.py `SpiritLMTokenizer.encode_units`): exact."""
    counts = collections.Counter() if counts is None else counts
    uid = _record_id(obj, source)
    where = f"{source}: record {uid!r}"
    streams = {}
    for key in ("hubert", "pitch", "style"):
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRecordError(f"{where}: {key}={value!r}; expected space-separated integers like '12 12 7'")
        streams[key] = _slamkit_units(value, f"{where}: {key}")
    if obj.get("unit_rate_hz") is None and unit_rate_hz is None:
        rate = SPIRITLM_UNIT_RATE_HZ
        counts["rate_spiritlm_default"] += 1
    else:
        rate = _resolve_rate(obj, unit_rate_hz, 0, None, where, counts)
    pitch, style = streams.get("pitch"), streams.get("style")
    return Utterance(id=uid, lang=_record_lang(obj, lang, where), units=streams["hubert"], unit_rate_hz=rate,
                     pitch=pitch or None, pitch_rate_hz=float(pitch_rate_hz) if pitch else None,
                     style=style or None, style_rate_hz=float(style_rate_hz) if style else None,
                     text=_record_text(obj, where, counts))


# --- reading input files ---------------------------------------------------------------
def iter_file_lines(path: str):
    """Yields ("file:line", text) for the non-blank lines of one file, as it reads (streaming)."""
    import tensorflow as tf  # gfile, so gs:// inputs work

    with tf.io.gfile.GFile(path, "r") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", line


def _iter_lines(pattern: str):
    """Yields ("file:line", text) for the non-blank lines of the matching files."""
    for path in corpus.list_files(pattern):
        yield from iter_file_lines(path)


def _textlesslib_line(line: str, where: str) -> tuple[str | None, str]:
    """(name or None, space-separated values) of one transcribe.py line (`name<TAB>values` or `values`)."""
    if "\t" in line:
        name, values = line.rstrip("\n").split("\t", 1)
        if not name:
            raise BadRecordError(f"{where}: empty name before the tab; expected 'name<TAB>units'")
        return name, values
    return None, line


def _numbered_nonblank(f):
    return ((i, ln) for i, ln in enumerate(f, start=1) if ln.strip())


def iter_textlesslib_file(path: str):
    """Yields ("file:line", (record dict, whether the line was named)) for one textlesslib `.units`
    file and its sibling `.durations` (read line by line in step, as they stream). A durations
    file with another number of lines is an error when the shorter one ends."""
    import tensorflow as tf

    if not path.endswith(".units"):
        raise ValueError(f"{path}: expected a textlesslib '.units' file (transcribe.py --output=OUT writes "
                         "OUT.units and, with --durations, OUT.durations)")
    dur_path = path[: -len(".units")] + ".durations"
    stem = os.path.basename(path)[: -len(".units")]
    has_durations = tf.io.gfile.exists(dur_path)
    with contextlib.ExitStack() as stack:
        unit_lines = _numbered_nonblank(stack.enter_context(tf.io.gfile.GFile(path, "r")))
        dur_lines = _numbered_nonblank(stack.enter_context(tf.io.gfile.GFile(dur_path, "r"))) if has_durations else None
        n_units = n_durs = 0
        for lineno, line in unit_lines:
            n_units += 1
            where = f"{path}:{lineno}"
            name, values = _textlesslib_line(line, where)
            obj = {"id": name if name is not None else f"{stem}:{lineno}", "units": values}
            if dur_lines is not None:
                nxt = next(dur_lines, None)
                if nxt is None:
                    n_units += sum(1 for _ in unit_lines)
                    break
                n_durs += 1
                d_lineno, d_line = nxt
                d_where = f"{dur_path}:{d_lineno}"
                d_name, d_values = _textlesslib_line(d_line, d_where)
                if d_name != name:
                    raise BadRecordError(f"{where}: record {obj['id']!r}: {d_where} is named {d_name!r}; expected "
                                         "the same name on both lines (files out of step)")
                try:
                    obj["durations"] = [int(v) for v in d_values.split()]
                except ValueError:
                    raise BadRecordError(f"{d_where}: record {obj['id']!r}: durations {d_values[:40]!r} are not "
                                         "space-separated integers") from None
            yield where, (obj, name is not None)
        if dur_lines is not None:
            n_durs += sum(1 for _ in dur_lines)
            if n_durs != n_units:
                raise BadRecordError(f"{path} has {n_units} utterance line(s) but {dur_path} has "
                                     f"{n_durs}; expected one run-length line per units line")


def _iter_textlesslib(pattern: str):
    """`iter_textlesslib_file` over the matching `.units` files."""
    for path in corpus.list_files(pattern):
        yield from iter_textlesslib_file(path)


def from_textlesslib(obj: dict, *, lang: str = "en", unit_rate_hz: float | None = None, source: str = "<input>",
                     counts: collections.Counter | None = None) -> Utterance:
    """One record of `_iter_textlesslib` ({id, units string, optional durations}) -> Utterance.
    Without run lengths the units must look frame-level (`_check_not_deduplicated`)."""
    counts = collections.Counter() if counts is None else counts
    if obj.get("durations") is None:
        _check_not_deduplicated(_slamkit_units(obj["units"], f"{source}: record {obj['id']!r}"),
                                f"{source}: record {obj['id']!r}")
    return from_slamkit(obj, lang=lang, unit_rate_hz=unit_rate_hz, source=source, counts=counts)


def convert_line(
    fmt: str,
    line: str,
    *,
    source: str,
    lang: str = "en",
    unit_rate_hz: float | None = None,
    pitch_rate_hz: float = SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = SPIRITLM_STYLE_RATE_HZ,
    counts: collections.Counter | None = None,
) -> Utterance:
    """One input line of `fmt` -> Utterance (not yet repaired nor validated)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRecordError(f"{source}: invalid JSON ({e})") from None
    if fmt in READ_KEYS and isinstance(obj, dict) and counts is not None:
        counts.update(f"ignored_key_{k}" for k in sorted(set(obj) - READ_KEYS[fmt]))
    if fmt == "slamkit":
        return from_slamkit(obj, lang=lang, unit_rate_hz=unit_rate_hz, source=source, counts=counts)
    if fmt == "spiritlm":
        return from_spiritlm(
            obj,
            lang=lang,
            unit_rate_hz=unit_rate_hz,
            pitch_rate_hz=pitch_rate_hz,
            style_rate_hz=style_rate_hz,
            source=source,
            counts=counts,
        )
    raise ValueError(f"unknown import format {fmt!r}; expected one of {FORMATS}")


def prepare_record(utt: Utterance, where: str, counts: collections.Counter, **limits) -> Utterance:
    """Normalises text, repairs word times (`corpus.repair_words`) and validates one record,
    adding what changed to `counts`. `limits`: num_units / num_pitch / num_style of `validate`."""
    utt, changed = corpus.normalize_utterance(utt, where)
    if changed:
        counts["text_fields_normalised"] += changed
    utt, repairs = corpus.repair_words(utt)
    counts.update({k: v for k, v in repairs.items() if v})
    corpus.validate(utt, source=where, **limits)
    return utt


def import_to_tfrecord(*args, **kwargs) -> dict:
    """`slm_jax.data.corpus.import_run.import_to_tfrecord` (the streaming run lives there; it
    imports this module, hence the call-time import)."""
    from slm_jax.data.corpus import import_run

    return import_run.import_to_tfrecord(*args, **kwargs)
