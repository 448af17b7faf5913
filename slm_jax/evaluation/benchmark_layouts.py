"""Pair benchmarks as their authors publish them: folder layouts, pairing and official scores.

Reading here touches file names, `gold.csv` and `.txt` files only, never audio: a layout or
pairing error is raised before a single file is encoded (encoding the 63k files of sBLIMP
dev takes tens of minutes). Each reader returns a `BenchmarkLayout`: the pairs, each side an
audio path or a text, and the labels the official aggregation needs.

Layouts (one reader each; `LAYOUTS`):

- `swuggy`: ZeroSpeech 2021 lexical (`lexical/dev/<random>.wav` + `gold.csv` with columns
  `filename, voice, frequency, word, phones, length, correct, id`, read by name). A word row
  (`correct=1`) and a non-word row (`correct=0`) form a pair when they share `(voice, id)`
  (source: zerospeech/benchmarks `zerospeech/benchmarks/tasks/lm/lexical.py`, which merges
  the two on `['voice', 'id']`); each `(voice, id)` must hold exactly one of each.
  Official score (ibid. `eval_by_pair`, and `sLM_21/scores.py` `lexical_scores`): the pair
  win (1, 0.5 tie, 0) averaged over voices per `id`, then the mean over ids; `in_vocab`
  (the leaderboard's `lexical_invocab`) is the same mean over words of frequency >= 1.
- `sblimp`: ZeroSpeech 2021 syntactic (`syntactic/dev/<random>.wav` + `gold.csv` with
  `filename, type, subtype, transcription, correct, voice, id`). The k-th grammatical row
  (`correct=1`) pairs with the k-th ungrammatical row (`correct=0`) in file order (source:
  zerospeech/zerospeech2021 `zerospeech2021/syntactic.py` `load_data`, same in
  zerospeech/benchmarks `tasks/lm/syntactic.py`); here the two rows of a pair must also
  agree on `voice, type, subtype, id`, or the file is refused. Official score (ibid.
  `evaluate_by_pair` / `evaluate_by_type`, leaderboard `syntactic_scores`): wins averaged
  over voices per `(type, subtype, id)`, the mean over those groups; per type and subtype
  the same mean within each (details).
- `salmon`: one SALMon part (`<part>/sample_<i>_0.wav` positive, `sample_<i>_1.wav`
  negative; source: slp-rl/salmon `salmon.py` `SalmonDataset` and
  `data_generation/*_consistency.py`, which write `sample_{index}_{option}.wav` with option
  0 the true continuation). Official score: the flat mean over pairs, one per part. A third
  option (`sample_<i>_2.wav`) is refused: the official loader would silently ignore it.
- `storycloze`: spoken / topic StoryCloze (`<key>_correct.wav`, `<key>_incorrect.wav`;
  source: slp-rl/slamkit `slamkit/metric/modelling_metric.py` `storycloze`, the sSC / tSC
  releases). Official score: the flat mean over pairs.
- `cm_storycloze`: slamkit's cross-modal StoryCloze (`<key>_{correct,incorrect,mutual}
  .{wav,txt}`; source: slp-rl/slamkit `slamkit/metric/cross_modal_metric.py`
  `CrossModalMetricDataset`): `mutual` is the prompt, `correct` / `incorrect` the endings;
  the benchmark suffix (`:ts`, ...) picks `.txt` or `.wav` for the prompt and for the
  endings, and only the files that choice needs must exist. Text is read as UTF-8 and
  normalised (`slm_jax.text_normalization`). Official score: the flat mean over pairs.

Every layout also reports `pair_mean`, the flat mean over pairs (slamkit's aggregation of
sWUGGY / sBLIMP); for the flat layouts it equals the official score.

A folder (`find_benchmarks`) is one benchmark when it holds benchmark files itself (WAV
files or a `gold.csv`), else every sub-folder that is one is a benchmark of its own, one
result each, never merged (a parent of sSC/ and tSC/ gives two results). Refused, naming
what was found: files that fit no layout or fit two, a folder that holds benchmark files
AND sub-folders with more, audio other than WAV. Skipped with a reason (logged): the
ZeroSpeech 2021 `phonetic/` and `semantic/` tasks (not pair benchmarks) and a ZeroSpeech
split without `gold.csv` (test labels are not published), when a parent folder is given.
Hidden entries (`.slm_jax_units`, the default units cache) are not read.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from typing import Any, Sequence

import numpy as np

from slm_jax.contract import SPEECH, TEXT
from slm_jax.evaluation.cloze import BadPairError
from slm_jax.text_normalization import normalize_text

LAYOUTS = ("swuggy", "sblimp", "salmon", "storycloze", "cm_storycloze")
GOLD_FILE = "gold.csv"
AUDIO_EXT = ".wav"
OTHER_AUDIO_EXTS = (".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")  # refused: only WAV is read
LEXICAL_COLUMNS = ("filename", "voice", "id", "correct")
SYNTACTIC_COLUMNS = ("filename", "voice", "id", "correct", "type", "subtype")
LEXICAL_ONLY = {"phones", "frequency", "length", "word"}
SYNTACTIC_ONLY = {"type", "subtype", "transcription"}
ZEROSPEECH_PAIR_TASKS = ("lexical", "syntactic")
ZEROSPEECH_OTHER_TASKS = ("phonetic", "semantic")
SALMON_RE = re.compile(r"^sample_(?P<index>\d+)_(?P<option>\d+)$")
CLOZE_RE = re.compile(r"^(?P<key>.+)_(?P<side>correct|incorrect|mutual)$", re.IGNORECASE)
MAX_NAMED = 5  # how many offending names an error lists


class LayoutError(BadPairError):
    """A benchmark folder that does not fit a published layout; the message names the folder,
    the files or gold.csv lines at fault and what was expected."""


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a pair: a WAV file (`audio`, an absolute path) or a normalised text."""

    audio: str | None = None
    text: str | None = None

    @property
    def modality(self) -> str:
        return SPEECH if self.audio is not None else TEXT


@dataclasses.dataclass(frozen=True)
class LayoutPair:
    """A pair as the benchmark defines it. `id` is unique in the benchmark; `group` is the unit
    of the official average (ZeroSpeech: the item a pair is one voice of; else the pair id);
    `labels` are the published columns kept for the eval JSON (voice, type, frequency, ...)."""

    id: str
    correct: Side
    wrong: Side
    prompt: Side | None = None
    group: str = ""
    labels: tuple[tuple[str, Any], ...] = ()

    def audio_files(self) -> list[str]:
        return [s.audio for s in (self.prompt, self.correct, self.wrong) if s is not None and s.audio]


@dataclasses.dataclass(frozen=True)
class BenchmarkLayout:
    layout: str  # one of LAYOUTS
    folder: str
    pairs: tuple[LayoutPair, ...]

    def audio_files(self) -> list[str]:
        """Every WAV file the pairs need, each once, sorted."""
        return sorted({f for p in self.pairs for f in p.audio_files()})

    def head(self, max_pairs: int | None) -> "BenchmarkLayout":
        """The first `max_pairs` pairs (all for None)."""
        return self if max_pairs is None else dataclasses.replace(self, pairs=self.pairs[:max_pairs])


@dataclasses.dataclass(frozen=True)
class Found:
    """`find_benchmarks` output: benchmark folders (relative to the root, '.' for the root
    itself) with their layout, and folders not read with the reason."""

    benchmarks: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...] = ()


# --- listing -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Listing:
    wavs: tuple[str, ...]  # file names (not paths) of WAV files
    texts: tuple[str, ...]
    other_audio: tuple[str, ...]
    has_gold: bool
    dirs: tuple[str, ...]

    @property
    def has_members(self) -> bool:
        """Benchmark files here: WAV (or other audio, to refuse it), gold.csv, cloze-named .txt."""
        return bool(self.wavs or self.has_gold or self.other_audio
                    or any(CLOZE_RE.match(_stem(t)) for t in self.texts))


def _list(folder: str) -> _Listing:
    wavs, texts, other, dirs, gold = [], [], [], [], False
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if ext == AUDIO_EXT:
                wavs.append(entry.name)
            elif ext == ".txt":
                texts.append(entry.name)
            elif ext in OTHER_AUDIO_EXTS:
                other.append(entry.name)
            elif entry.name == GOLD_FILE:
                gold = True
    return _Listing(tuple(sorted(wavs)), tuple(sorted(texts)), tuple(sorted(other)), gold, tuple(sorted(dirs)))


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def _named(names: Sequence[str]) -> str:
    names = list(names)
    more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
    return ", ".join(repr(n) for n in names[:MAX_NAMED]) + more


def _contains_audio(folder: str) -> bool:
    for path, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.lower().endswith((AUDIO_EXT, *OTHER_AUDIO_EXTS)) or f == GOLD_FILE for f in files):
            return True
    return False


# --- detection -----------------------------------------------------------------------------
def detect_layout(folder: str) -> str:
    """The layout of a folder holding benchmark files itself (LayoutError when none or two fit)."""
    return _detect(folder, _list(folder))


def _detect(folder: str, listing: _Listing) -> str:
    if listing.other_audio:
        raise LayoutError(f"{folder}: holds audio other than WAV ({_named(listing.other_audio)}); only WAV is "
                          f"read (convert, e.g. ffmpeg -i x.flac -ar 16000 x.wav)")
    if listing.has_gold:
        return _zerospeech_kind(folder)
    salmon = [n for n in listing.wavs if SALMON_RE.match(_stem(n))]
    cloze = [n for n in listing.wavs if CLOZE_RE.match(_stem(n))]
    neither = [n for n in listing.wavs if n not in salmon and n not in cloze]
    if neither:
        raise LayoutError(f"{folder}: {_named(neither)} fit no published layout: SALMon sample_<i>_<0|1>.wav, "
                          f"StoryCloze <key>_correct.wav / <key>_incorrect.wav (+ _mutual for slamkit's "
                          f"cross-modal one), or ZeroSpeech 2021 sWUGGY / sBLIMP (random names + gold.csv, "
                          f"none here)")
    if salmon and cloze:
        raise LayoutError(f"{folder}: mixes SALMon names ({len(salmon)} files, e.g. {_named(salmon[:2])}) and "
                          f"StoryCloze names ({len(cloze)} files, e.g. {_named(cloze[:2])}); one folder is one "
                          f"benchmark")
    if salmon:
        return "salmon"
    names = [*listing.wavs, *(t for t in listing.texts if CLOZE_RE.match(_stem(t)))]
    if not names:
        raise LayoutError(f"{folder}: no benchmark files (WAV files or gold.csv)")
    if any(CLOZE_RE.match(_stem(n)).group("side").lower() == "mutual" for n in names):
        return "cm_storycloze"
    return "storycloze"


def _read_gold_header(gold: str) -> list[str]:
    with open(gold, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def _zerospeech_kind(folder: str) -> str:
    gold = os.path.join(folder, GOLD_FILE)
    columns = set(_read_gold_header(gold))
    lexical, syntactic = columns & (LEXICAL_ONLY - {"word"}), columns & SYNTACTIC_ONLY
    if lexical and not syntactic:
        return "swuggy"
    if syntactic and not lexical:
        return "sblimp"
    raise LayoutError(f"{gold}: columns {sorted(columns)} are neither ZeroSpeech 2021 lexical "
                      f"({', '.join(LEXICAL_COLUMNS)} + phones/frequency/length) nor syntactic "
                      f"({', '.join(SYNTACTIC_COLUMNS)} + transcription)")


def find_benchmarks(root: str) -> Found:
    """The benchmarks in `root` (see the module docstring); FileNotFoundError / LayoutError."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder")
    found, skipped = [], []
    _walk(root, ".", found, skipped, is_root=True)
    if not found:
        reasons = "; ".join(f"{rel}: {why}" for rel, why in skipped)
        raise LayoutError(f"{root}: no benchmark folder found (WAV files in a published layout or a gold.csv)"
                          + (f"; not read: {reasons}" if reasons else ""))
    return Found(tuple(found), tuple(skipped))


def _walk(folder: str, rel: str, found: list, skipped: list, is_root: bool = False) -> None:
    listing = _list(folder)
    if listing.has_members:
        if not is_root and _is_zerospeech_split_without_gold(folder, listing):
            skipped.append((rel, "a ZeroSpeech split without gold.csv (test labels are not published)"))
            return
        nested = [d for d in listing.dirs if _contains_audio(os.path.join(folder, d))]
        if nested:
            raise LayoutError(f"{folder}: holds benchmark files ({_named((*listing.wavs, *listing.other_audio))}) "
                              f"AND sub-folders with more ({_named(nested)}); give one benchmark folder, or a "
                              f"parent of benchmark folders only")
        found.append((rel, _detect(folder, listing)))
        return
    is_zerospeech_root = any(d in ZEROSPEECH_PAIR_TASKS for d in listing.dirs)
    for d in listing.dirs:
        child_rel = d if rel == "." else f"{rel}/{d}"
        if is_zerospeech_root and d in ZEROSPEECH_OTHER_TASKS:
            skipped.append((child_rel, f"the ZeroSpeech 2021 {d} task is not a pair benchmark"))
            continue
        _walk(os.path.join(folder, d), child_rel, found, skipped)


def _is_zerospeech_split_without_gold(folder: str, listing: _Listing) -> bool:
    parent = os.path.basename(os.path.dirname(os.path.abspath(folder)))
    return parent in ZEROSPEECH_PAIR_TASKS and not listing.has_gold and listing.wavs and not any(
        SALMON_RE.match(_stem(n)) or CLOZE_RE.match(_stem(n)) for n in listing.wavs)


# --- reading -------------------------------------------------------------------------------
def read_layout(folder: str, layout: str | None = None, prompt_modality: str = SPEECH,
                ending_modality: str = SPEECH) -> BenchmarkLayout:
    """Reads one benchmark folder in `layout` (detected when None); no audio is opened.

    `prompt_modality` / `ending_modality` (speech or text) choose the sides of a cross-modal
    StoryCloze; every other layout is speech only (LayoutError otherwise)."""
    layout = layout or detect_layout(folder)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    if layout != "cm_storycloze" and (prompt_modality, ending_modality) != (SPEECH, SPEECH):
        raise LayoutError(f"{folder}: a {layout} folder is speech only (the :XY modality suffix needs slamkit's "
                          f"cross-modal StoryCloze layout, <key>_{{correct,incorrect,mutual}}.{{wav,txt}})")
    if layout == "cm_storycloze":
        return read_cross_modal_storycloze(folder, prompt_modality, ending_modality)
    return {"swuggy": read_swuggy, "sblimp": read_sblimp, "salmon": read_salmon,
            "storycloze": read_storycloze}[layout](folder)


def _abs(folder: str, name: str) -> str:
    return os.path.abspath(os.path.join(folder, name))


def _natural_key(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def read_salmon(folder: str) -> BenchmarkLayout:
    """One SALMon part: `sample_<i>_0.wav` (positive) and `sample_<i>_1.wav` (negative) per i."""
    by_index: dict[int, dict[int, str]] = collections.defaultdict(dict)
    listing = _list(folder)
    for name in listing.wavs:
        m = SALMON_RE.match(_stem(name))
        if not m:
            raise LayoutError(f"{folder}: {name!r} is not named sample_<i>_<0|1>.wav (SALMon)")
        by_index[int(m.group("index"))][int(m.group("option"))] = name
    pairs = []
    for index in sorted(by_index):
        options = by_index[index]
        if set(options) != {0, 1}:
            raise LayoutError(f"{folder}: sample {index} has options {sorted(options)} "
                              f"({_named(options.values())}); SALMon pairs option 0 (positive) with option 1 "
                              f"(negative), nothing else")
        pairs.append(LayoutPair(f"sample_{index}", Side(_abs(folder, options[0])), Side(_abs(folder, options[1])),
                                group=f"sample_{index}"))
    if not pairs:
        raise LayoutError(f"{folder}: no sample_<i>_<j>.wav files")
    return BenchmarkLayout("salmon", os.path.abspath(folder), tuple(pairs))


def _cloze_files(folder: str, names: Sequence[str]) -> dict[str, dict[tuple[str, str], str]]:
    """key -> {(side, ext): file name} for names `<key>_<side>.<ext>`; a clash is an error."""
    by_key: dict[str, dict[tuple[str, str], str]] = collections.defaultdict(dict)
    for name in names:
        stem, ext = os.path.splitext(name)
        m = CLOZE_RE.match(stem)
        if not m:
            raise LayoutError(f"{folder}: {name!r} is not named <key>_correct / <key>_incorrect / <key>_mutual")
        slot = (m.group("side").lower(), ext.lower())
        have = by_key[m.group("key")]
        if slot in have:
            raise LayoutError(f"{folder}: {have[slot]!r} and {name!r} are both the {slot[0]}{slot[1]} of "
                              f"{m.group('key')!r}")
        have[slot] = name
    return by_key


def read_storycloze(folder: str) -> BenchmarkLayout:
    """sSC / tSC: `<key>_correct.wav` and `<key>_incorrect.wav` per key, sorted by key (numbers
    numerically); an unpaired or stray file is an error naming it."""
    listing = _list(folder)
    by_key = _cloze_files(folder, listing.wavs)
    pairs = []
    for key in sorted(by_key, key=_natural_key):
        have = by_key[key]
        if ("mutual", ".wav") in have:
            raise LayoutError(f"{folder}: {have[('mutual', '.wav')]!r} is a cross-modal StoryCloze prompt in a "
                              f"two-file StoryCloze folder")
        for side in ("correct", "incorrect"):
            if (side, ".wav") not in have:
                raise LayoutError(f"{folder}: {next(iter(have.values()))!r} has no {side} partner "
                                  f"({key}_{side}.wav)")
        pairs.append(LayoutPair(key, Side(_abs(folder, have[("correct", ".wav")])),
                                Side(_abs(folder, have[("incorrect", ".wav")])), group=key))
    if not pairs:
        raise LayoutError(f"{folder}: no <key>_correct.wav / <key>_incorrect.wav files")
    return BenchmarkLayout("storycloze", os.path.abspath(folder), tuple(pairs))


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8-sig") as f:
        text = normalize_text(f.read())
    if not text:
        raise LayoutError(f"{path}: empty text")
    return text


def read_cross_modal_storycloze(folder: str, prompt_modality: str = SPEECH,
                                ending_modality: str = SPEECH) -> BenchmarkLayout:
    """slamkit's cross-modal StoryCloze: per key a `mutual` prompt and `correct` / `incorrect`
    endings, each `.wav` (speech) or `.txt` (text) as the modalities ask."""
    listing = _list(folder)
    texts = [t for t in listing.texts if CLOZE_RE.match(_stem(t))]
    by_key = _cloze_files(folder, [*listing.wavs, *texts])
    ext = {SPEECH: ".wav", TEXT: ".txt"}
    need = [("mutual", ext[prompt_modality]), ("correct", ext[ending_modality]), ("incorrect", ext[ending_modality])]
    pairs = []
    for key in sorted(by_key, key=_natural_key):
        have = by_key[key]
        missing = [f"{key}_{side}{e}" for side, e in need if (side, e) not in have]
        if missing:
            raise LayoutError(f"{folder}: key {key!r} lacks {_named(missing)} (prompt {prompt_modality}, endings "
                              f"{ending_modality}; found {_named(sorted(have.values()))})")
        sides = []
        for side, e in need:
            path = _abs(folder, have[(side, e)])
            sides.append(Side(audio=path) if e == ".wav" else Side(text=_read_text(path)))
        pairs.append(LayoutPair(key, sides[1], sides[2], prompt=sides[0], group=key))
    if not pairs:
        raise LayoutError(f"{folder}: no <key>_{{correct,incorrect,mutual}}.{{wav,txt}} files")
    return BenchmarkLayout("cm_storycloze", os.path.abspath(folder), tuple(pairs))


# --- ZeroSpeech 2021 ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _GoldRow:
    line: int
    values: dict

    def __getitem__(self, key):
        return self.values[key]


def _read_gold(folder: str, required: Sequence[str]) -> list[_GoldRow]:
    """gold.csv rows (by column name), each `correct` 0 or 1, and the folder's WAV files exactly
    the rows' filenames (as ZeroSpeech's validation requires)."""
    gold = os.path.join(folder, GOLD_FILE)
    with open(gold, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not part of 'filename'
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise LayoutError(f"{gold}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = [_GoldRow(i, row) for i, row in enumerate(reader, start=2)]
    if not rows:
        raise LayoutError(f"{gold}: no rows")
    seen: dict[str, int] = {}
    for row in rows:
        if row["correct"].strip() not in ("0", "1"):
            raise LayoutError(f"{gold}:{row.line}: correct={row['correct']!r}, expected 1 (real) or 0 (fake)")
        name = row["filename"]
        if name in seen:
            raise LayoutError(f"{gold}:{row.line}: filename {name!r} already on line {seen[name]}")
        seen[name] = row.line
    wavs = {_stem(n) for n in _list(folder).wavs}
    absent = sorted(set(seen) - wavs)
    if absent:
        raise LayoutError(f"{folder}: gold.csv lists {len(absent)} file(s) with no .wav here: {_named(absent)}")
    extra = sorted(wavs - set(seen))
    if extra:
        raise LayoutError(f"{folder}: {len(extra)} .wav file(s) not in gold.csv: {_named(extra)}")
    return rows


def _real(row: _GoldRow) -> bool:
    return row["correct"].strip() == "1"


def _frequency(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(float(value)) if value else None


def read_swuggy(folder: str) -> BenchmarkLayout:
    """ZeroSpeech 2021 lexical: pairs on (voice, id), in the order of the word rows."""
    rows = _read_gold(folder, LEXICAL_COLUMNS)
    by_key: dict[tuple[str, str], dict[bool, list[_GoldRow]]] = collections.defaultdict(
        lambda: {True: [], False: []})
    for row in rows:
        by_key[(row["voice"], row["id"])][_real(row)].append(row)
    pairs = []
    for (voice, item), sides in by_key.items():
        if len(sides[True]) != 1 or len(sides[False]) != 1:
            lines = [r.line for r in sides[True] + sides[False]]
            raise LayoutError(f"{folder}/gold.csv: (voice {voice!r}, id {item!r}) has {len(sides[True])} word and "
                              f"{len(sides[False])} non-word row(s) (lines {lines}); sWUGGY pairs exactly one of "
                              f"each on (voice, id)")
        word, non_word = sides[True][0], sides[False][0]
        labels = (("voice", voice), ("word", word.values.get("word")),
                  ("non_word", non_word.values.get("word") or non_word.values.get("phones")),
                  ("frequency", _frequency(word.values.get("frequency"))), ("length", word.values.get("length")),
                  ("files", [word["filename"], non_word["filename"]]))
        pairs.append((word.line, LayoutPair(f"{item}/{voice}", Side(_abs(folder, word["filename"] + AUDIO_EXT)),
                                            Side(_abs(folder, non_word["filename"] + AUDIO_EXT)),
                                            group=item, labels=labels)))
    pairs.sort(key=lambda p: p[0])
    return BenchmarkLayout("swuggy", os.path.abspath(folder), tuple(p for _, p in pairs))


def read_sblimp(folder: str) -> BenchmarkLayout:
    """ZeroSpeech 2021 syntactic: the k-th grammatical row with the k-th ungrammatical one."""
    rows = _read_gold(folder, SYNTACTIC_COLUMNS)
    real, fake = [r for r in rows if _real(r)], [r for r in rows if not _real(r)]
    if len(real) != len(fake):
        raise LayoutError(f"{folder}/gold.csv: {len(real)} grammatical and {len(fake)} ungrammatical rows; sBLIMP "
                          f"pairs them one to one in file order")
    keys = ("voice", "type", "subtype", "id")
    pairs, ids = [], set()
    for good, bad in zip(real, fake):
        if any(good[k] != bad[k] for k in keys):
            raise LayoutError(f"{folder}/gold.csv: lines {good.line} and {bad.line} are paired by order but differ in "
                              + ", ".join(f"{k} ({good[k]!r} vs {bad[k]!r})" for k in keys if good[k] != bad[k]))
        pair_id = "/".join(good[k] for k in ("type", "subtype", "id", "voice"))
        if pair_id in ids:  # the official scoring does not need unique keys; the audit trail does
            pair_id = f"{pair_id}#line{good.line}"
        ids.add(pair_id)
        labels = (("voice", good["voice"]), ("type", good["type"]), ("subtype", good["subtype"]),
                  ("sentence", good.values.get("transcription")), ("non_sentence", bad.values.get("transcription")),
                  ("files", [good["filename"], bad["filename"]]))
        pairs.append(LayoutPair(pair_id, Side(_abs(folder, good["filename"] + AUDIO_EXT)),
                                Side(_abs(folder, bad["filename"] + AUDIO_EXT)),
                                group="/".join(good[k] for k in ("type", "subtype", "id")), labels=labels))
    return BenchmarkLayout("sblimp", os.path.abspath(folder), tuple(pairs))


# --- official aggregation ------------------------------------------------------------------
# ZeroSpeech's frequency bands: pandas.cut(frequency, [0, 1, 5, 20, 100, inf], right=False) with
# these labels (zerospeech/benchmarks tasks/lm/lexical.py `eval_by_frequency`), kept as published.
FREQUENCY_BANDS = ((1, "oov"), (5, "1-5"), (20, "6-20"), (100, "21-100"), (float("inf"), ">100"))


def _frequency_band(frequency: int | None) -> str | None:
    if frequency is None or frequency < 0:
        return None
    return next(label for upper, label in FREQUENCY_BANDS if frequency < upper)


def _binned(groups: dict[str, float], bin_of: dict[str, Any]) -> dict[str, float]:
    """Mean group score per bin (groups without a bin are left out, as pandas groupby does)."""
    bins: dict[str, list[float]] = {}
    for g, score in groups.items():
        if bin_of[g] not in (None, ""):
            bins.setdefault(str(bin_of[g]), []).append(score)
    return {k: float(np.mean(v)) for k, v in bins.items()}


def _group_means(pairs: Sequence[LayoutPair], wins: np.ndarray) -> dict[str, float]:
    """group -> mean win over its pairs (ZeroSpeech: over voices), groups in first-seen order."""
    sums: dict[str, list[float]] = {}
    for pair, win in zip(pairs, wins):
        sums.setdefault(pair.group, []).append(float(win))
    return {g: float(np.mean(v)) for g, v in sums.items()}


def aggregate(layout: BenchmarkLayout, wins: np.ndarray) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details) from per-pair wins (1, 0.5, 0; in `layout.pairs` order).

    metrics: `""` the official score, `"pair_mean"` the flat mean over pairs, and for sWUGGY
    `"in_vocab"` (words of frequency >= 1, when gold.csv has frequencies). details:
    `num_groups`; sWUGGY `by_frequency` (ZeroSpeech's bands) and `by_length` (phones); sBLIMP
    `by_type` / `by_subtype` (the official score within each)."""
    wins = np.asarray(wins, np.float64)
    if len(wins) != len(layout.pairs):
        raise ValueError(f"aggregate: {len(wins)} wins for {len(layout.pairs)} pairs")
    metrics = {"pair_mean": float(wins.mean())}
    if layout.layout not in ("swuggy", "sblimp"):
        metrics[""] = metrics["pair_mean"]
        return metrics, {}
    groups = _group_means(layout.pairs, wins)
    metrics[""] = float(np.mean(list(groups.values())))
    details: dict[str, Any] = {"num_groups": len(groups)}
    first = {}
    for pair in layout.pairs:
        first.setdefault(pair.group, dict(pair.labels))
    if layout.layout == "swuggy":
        known = [score for g, score in groups.items() if (first[g].get("frequency") or 0) >= 1]
        if known:
            metrics["in_vocab"] = float(np.mean(known))
        details["by_frequency"] = _binned(groups, {g: _frequency_band(first[g].get("frequency")) for g in groups})
        details["by_length"] = _binned(groups, {g: first[g].get("length") for g in groups})
        return metrics, details
    for level, keys in (("by_type", ("type",)), ("by_subtype", ("type", "subtype"))):
        bins: dict[str, list[float]] = {}
        for g, score in groups.items():
            bins.setdefault("/".join(first[g][k] for k in keys), []).append(score)
        details[level] = {k: float(np.mean(v)) for k, v in sorted(bins.items())}
    return metrics, details
