"""Pairwise likelihood benchmarks: spoken StoryCloze / TopicCloze, sWUGGY, sBLIMP-style pairs.

Each item is a pair of WHOLE sequences, the correct one and the wrong one (a shared prompt
plus two endings, or two complete sequences). A sequence is scored by the model and

    accuracy = mean over pairs of 1 if score(correct) > score(wrong), 0.5 on a tie, else 0.

Score modes (`SCORE_MODES`): `mean` per-token log-likelihood over every predicted token
(slamkit's default), `sum`, `ending` (mean over the ending's tokens, conditioned on the
prompt) and `ending_sum`. Tokens are written as the training task writes them
(`sequences.SequenceFormat`).

Inputs, all paired by record id / file name, never by order:

- JSONL of the spoken demo corpus (`prepare demo-corpus` writes `cloze/{ssc,stc}_{en,fr,
  en_fr,fr_en}.jsonl`): `{"id", "prompt": {"lang", "units", "text"}, "correct": {...},
  "wrong": {...}}`, units at frame rate (deduplicated here, as in training). The modality
  of the prompt and of the endings is chosen per benchmark (speech: `units`, text: `text`),
  which gives the cross-modal variants; en_fr / fr_en files are the cross-lingual ones.
- simple JSONL pairs `{"id", "correct", "wrong"}` (+ optional "prompt"): a side is a list
  of unit ints, a string (text) or a dict as above.
- a folder of audio in the SpokenStoryCloze naming (`<key>_correct.wav` /
  `<key>_incorrect.wav`, any sub-folders), encoded to units by `slm_jax.speech.pipeline`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from slm_jax.evaluation.likelihood import COUNT_ALL, COUNT_ENDING, SUM_ALL, SUM_ENDING, LikelihoodScorer, \
    ScoredSequence
from slm_jax.evaluation.sequences import MODALITIES, MODALITY_CODE, SPEECH, Segment, SequenceFormat

SCORE_MODES = ("mean", "sum", "ending", "ending_sum")
SIDES = ("correct", "wrong")
# SpokenStoryCloze file naming: <key>_correct.wav and <key>_incorrect.wav
AUDIO_SIDE_RE = re.compile(r"^(?P<key>.+)_(?P<side>correct|incorrect)$", re.IGNORECASE)


class BadPairError(ValueError):
    """A pair record or file that cannot be scored; the message names it."""


@dataclasses.dataclass(frozen=True)
class ClozePair:
    id: str
    prompt: tuple[Segment, ...]
    correct: tuple[Segment, ...]
    wrong: tuple[Segment, ...]


@dataclasses.dataclass(frozen=True)
class ClozeResult:
    accuracy: float
    num_pairs: int
    correct_scores: np.ndarray
    wrong_scores: np.ndarray
    ids: tuple[str, ...]


# --- reading pairs ------------------------------------------------------------------------
def _side_segment(value: Any, modality: str, where: str) -> Segment:
    """One side of a record -> a Segment; dict sides pick `units` or `text` by `modality`."""
    if isinstance(value, dict):
        key = "units" if modality == SPEECH else "text"
        if key not in value:
            raise BadPairError(f"{where}: has no {key!r} (needed for a {modality} side); keys: {sorted(value)}")
        lang = value.get("lang")
        value = value[key]
    else:
        lang = None
    if isinstance(value, str):
        segment = Segment.text(value, lang)
    elif isinstance(value, list) and all(isinstance(u, int) and not isinstance(u, bool) for u in value):
        segment = Segment.speech(value, lang)
    else:
        raise BadPairError(f"{where}: expected a list of unit ints, a string or a dict with 'units'/'text', "
                           f"got {type(value).__name__} {str(value)[:60]}")
    if segment.is_empty():
        raise BadPairError(f"{where}: is empty")
    return segment


def pair_from_record(record: Any, where: str, prompt_modality: str = SPEECH,
                     ending_modality: str = SPEECH) -> ClozePair:
    """A JSON record (demo cloze or simple pair) -> ClozePair; BadPairError names `where`."""
    if not isinstance(record, dict):
        raise BadPairError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in ("id", *SIDES) if k not in record]
    if missing:
        raise BadPairError(f"{where}: missing key(s) {missing}; a pair needs 'id', 'correct', 'wrong' "
                           f"(and optionally 'prompt')")
    where = f"{where} (id {record['id']!r})"
    prompt = ()
    if record.get("prompt") is not None:
        prompt = (_side_segment(record["prompt"], prompt_modality, f"{where} 'prompt'"),)
    sides = [(_side_segment(record[s], ending_modality, f"{where} {s!r}"),) for s in SIDES]
    return ClozePair(str(record["id"]), prompt, *sides)


def load_pairs_jsonl(path: str, prompt_modality: str = SPEECH, ending_modality: str = SPEECH,
                     max_pairs: int | None = None) -> list[ClozePair]:
    """Every pair of a JSONL file (see the module docstring); errors name file:line and id."""
    for name, value in (("prompt_modality", prompt_modality), ("ending_modality", ending_modality)):
        if value not in MODALITIES:
            raise ValueError(f"{name}={value!r}: expected one of {MODALITIES}")
    pairs, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except ValueError as err:
                raise BadPairError(f"{where}: not JSON ({err})") from None
            pair = pair_from_record(record, where, prompt_modality, ending_modality)
            if pair.id in seen:
                raise BadPairError(f"{where}: id {pair.id!r} already used at line {seen[pair.id]}")
            seen[pair.id] = line_no
            pairs.append(pair)
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
    if not pairs:
        raise BadPairError(f"{path}: no pairs")
    return pairs


def pair_audio_ids(ids: Sequence[str], source: str = "<audio>") -> list[tuple[str, str, str]]:
    """(key, correct id, incorrect id) for ids named `<key>_correct` / `<key>_incorrect`, sorted
    by key; the input order does not matter. A stray or unpaired name is an error naming it."""
    sides: dict[str, dict[str, str]] = {}
    for audio_id in ids:
        m = AUDIO_SIDE_RE.match(audio_id)
        if not m:
            raise BadPairError(f"{source}: {audio_id!r} is not named <key>_correct or <key>_incorrect "
                               f"(SpokenStoryCloze naming)")
        side = m.group("side").lower()
        by_side = sides.setdefault(m.group("key"), {})
        if side in by_side:
            raise BadPairError(f"{source}: {by_side[side]!r} and {audio_id!r} are both the {side} side of "
                               f"{m.group('key')!r}")
        by_side[side] = audio_id
    for key, by_side in sides.items():
        for side in ("correct", "incorrect"):
            if side not in by_side:
                other = next(iter(by_side.values()))
                raise BadPairError(f"{source}: {other!r} has no {side} partner ({key}_{side})")
    return [(key, s["correct"], s["incorrect"]) for key, s in sorted(sides.items())]


def load_audio_pairs(folder: str, centroids: str, units_path: str, *, features: str = "logmel",
                     frame_stack: int | None = None, rate_hz: float | None = None,
                     max_pairs: int | None = None) -> list[ClozePair]:
    """Encodes a SpokenStoryCloze-style folder to units (`units_path`, resumable JSONL) and pairs
    its files by name. The units must come from the codebook and features the model was trained on."""
    from slm_jax.speech.pipeline import encode_folder
    encode_folder(folder, centroids, units_path, features=features, frame_stack=frame_stack, rate_hz=rate_hz,
                  progress=False)
    units = {}
    with open(units_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                units[record["id"]] = record["units"]
    pairs = []
    for key, correct, wrong in pair_audio_ids(list(units), source=folder)[:max_pairs]:
        sides = []
        for audio_id in (correct, wrong):
            if not units[audio_id]:
                raise BadPairError(f"{folder}: {audio_id!r} encodes to no units (empty or too short audio)")
            sides.append((Segment.speech(units[audio_id]),))
        pairs.append(ClozePair(key, (), *sides))
    return pairs


# --- scoring ------------------------------------------------------------------------------
def encode_pairs(pairs: Sequence[ClozePair], fmt: SequenceFormat, renormalize: bool = False) -> list[ScoredSequence]:
    """Two scored sequences per pair (correct, wrong), in pair order."""
    out = []
    for pair in pairs:
        for side in SIDES:
            ending = getattr(pair, side)
            try:
                encoded = fmt.encode(pair.prompt, ending)
            except ValueError as err:
                raise BadPairError(f"pair {pair.id!r} ({side}): {err}") from err
            if encoded.ending_start >= len(encoded.ids):
                raise BadPairError(f"pair {pair.id!r} ({side}): the ending has no token to score")
            renorm = MODALITY_CODE[ending[-1].modality] if renormalize else 0
            out.append(ScoredSequence(encoded.ids, encoded.ending_start, renorm))
    return out


def scores_from_sums(sums: np.ndarray, mode: str) -> np.ndarray:
    """Per-sequence score from LikelihoodScorer sums under a SCORE_MODES mode."""
    if mode == "mean":
        return sums[:, SUM_ALL] / sums[:, COUNT_ALL]
    if mode == "sum":
        return sums[:, SUM_ALL]
    if mode == "ending":
        return sums[:, SUM_ENDING] / sums[:, COUNT_ENDING]
    if mode == "ending_sum":
        return sums[:, SUM_ENDING]
    raise ValueError(f"score mode {mode!r}: expected one of {SCORE_MODES}")


def pair_accuracy(correct: np.ndarray, wrong: np.ndarray) -> float:
    """Mean of 1 (correct scores higher), 0.5 (tie), 0 (wrong scores higher)."""
    correct, wrong = np.asarray(correct), np.asarray(wrong)
    wins = np.where(correct > wrong, 1.0, np.where(correct == wrong, 0.5, 0.0))
    return float(wins.mean())


def evaluate_pairs(scorer: LikelihoodScorer, pairs: Sequence[ClozePair], fmt: SequenceFormat,
                   mode: str = "mean", renormalize: bool = False) -> ClozeResult:
    if mode not in SCORE_MODES:
        raise ValueError(f"score mode {mode!r}: expected one of {SCORE_MODES}")
    if not pairs:
        raise ValueError("evaluate_pairs: no pairs")
    scores = scores_from_sums(scorer(encode_pairs(pairs, fmt, renormalize)), mode)
    correct, wrong = scores[0::2], scores[1::2]
    return ClozeResult(pair_accuracy(correct, wrong), len(pairs), correct, wrong, tuple(p.id for p in pairs))


def audio_units_path(cache_dir: str, folder: str) -> str:
    """Where the units of an audio benchmark folder are cached."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.abspath(folder).strip("/"))
    return os.path.join(cache_dir, f"{name}.units.jsonl")

