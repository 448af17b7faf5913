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
- a benchmark folder as its authors publish it (sSC/tSC, slamkit's cross-modal StoryCloze,
  ZeroSpeech 2021 sWUGGY / sBLIMP, SALMon): read and paired by `benchmark_layouts`, its WAV
  files turned into units by `AudioUnitsEncoder` (cached, keyed by what made the units).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Sequence

import numpy as np

from slm_jax.evaluation.likelihood import COUNT_ALL, COUNT_ENDING, SUM_ALL, SUM_ENDING, LikelihoodScorer, \
    ScoredSequence
from slm_jax.evaluation.stats import pair_wins  # noqa: F401  (the one rule; re-exported)
from slm_jax.evaluation.sequences import MODALITIES, MODALITY_CODE, SPEECH, Segment, SequenceFormat

log = logging.getLogger("slm_jax")

SCORE_MODES = ("mean", "sum", "ending", "ending_sum")
SIDES = ("correct", "wrong")
UNITS_CACHE_FORMAT = 1  # bump when the cache records change meaning


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
    """Mean of `pair_wins`."""
    return float(pair_wins(correct, wrong).mean())


def evaluate_pairs(scorer: LikelihoodScorer, pairs: Sequence[ClozePair], fmt: SequenceFormat,
                   mode: str = "mean", renormalize: bool = False) -> ClozeResult:
    if mode not in SCORE_MODES:
        raise ValueError(f"score mode {mode!r}: expected one of {SCORE_MODES}")
    if not pairs:
        raise ValueError("evaluate_pairs: no pairs")
    scores = scores_from_sums(scorer(encode_pairs(pairs, fmt, renormalize)), mode)
    correct, wrong = scores[0::2], scores[1::2]
    return ClozeResult(pair_accuracy(correct, wrong), len(pairs), correct, wrong, tuple(p.id for p in pairs))




# --- audio -> units, cached by what made them ------------------------------------------------
def units_cache_key(centroids: np.ndarray, featurizer, features: str) -> dict[str, Any]:
    """What decides the units of a WAV file: the codebook (sha256 of its float32 [k, dim] values),
    the `--features` spec, frames per unit, the unit rate (Hz), the featurizer's input sample
    rate (Hz; audio is resampled to it) and, for a model encoder (`hubert:PATH:L`,
    `whisper:PATH`), a digest of its model folder (file names and sizes, config.json bytes)."""
    from slm_jax.speech.pipeline import codebook_digest  # the digest `slm-jax units encode` records too

    c = np.asarray(centroids, np.float32)
    digest = codebook_digest(c)
    inner = getattr(featurizer, "inner", featurizer)  # a FrameStack wraps the featurizer
    sample_rate = getattr(inner, "sample_rate", None) or getattr(getattr(inner, "config", None), "sample_rate", None)
    return {"format": UNITS_CACHE_FORMAT, "codebook_sha256": digest, "codebook_shape": list(c.shape),
            "features": features, "frame_stack": int(getattr(featurizer, "n", 1)),
            "unit_rate_hz": float(featurizer.rate_hz), "sample_rate_hz": None if sample_rate is None else int(sample_rate),
            "encoder_sha256": _model_dir_digest(features)}


def _model_dir_digest(features: str) -> str | None:
    """sha256 over a model folder's file names, sizes and config.json (None for logmel / mfcc)."""
    kind, _, rest = features.partition(":")
    if kind not in ("hubert", "whisper") or not rest:
        return None
    path = rest.rpartition(":")[0] if kind == "hubert" or rest.rpartition(":")[2].isdigit() else rest
    if not os.path.isdir(path):
        return None
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            h.update(f"{name}:{os.path.getsize(full)};".encode())
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def key_digest(key: dict[str, Any]) -> str:
    """sha256 (hex) of a cache key's canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _is_first_process() -> bool:
    import jax
    return jax.process_index() == 0


class UnitsCacheError(ValueError):
    """A units cache that does not belong to this codebook / featurizer, or is unreadable."""


class AudioUnitsEncoder:
    """WAV files -> frame-level units with the codebook and features of the model's corpus.

    Calling it with file paths returns `{path: [unit ints]}` (not deduplicated; the sequence
    format dedups as training does). With a `cache_dir` the units are kept in
    `<cache_dir>/units-<digest16>.jsonl`, the digest being that of `units_cache_key`: another
    codebook, feature type, frame stack, unit rate or sample rate reads and writes another
    file, so old units are never reused for a new setting. The file's first line is
    `{"cache_key": {...}}`; a file whose key differs (copied or renamed by hand) is refused
    with the differing fields named (UnitsCacheError). Each record is `{"path", "size",
    "mtime_ns", "units"}`: a WAV file whose size or mtime changed is encoded again (the
    last record of a path wins); a line cut off by a kill is dropped and re-encoded. With
    several JAX processes only process 0 writes (and repairs) the file; every process encodes
    what the cache lacks.

    Errors at construction, before any audio is read: FileNotFoundError / ValueError for the
    codebook, ValueError when its dim differs from the features' (`kmeans.load_centroids`).
    """

    def __init__(self, centroids_path: str, features: str = "logmel", frame_stack: int | None = None,
                 rate_hz: float | None = None, cache_dir: str | None = None, device: str | None = None,
                 featurizer=None):
        from slm_jax.speech import kmeans, pipeline
        self.featurizer = featurizer or pipeline.make_featurizer(features, frame_stack=frame_stack, rate_hz=rate_hz,
                                                                 device=device)
        self.centroids = kmeans.load_centroids(centroids_path, dim=self.featurizer.dim)
        self.key = units_cache_key(self.centroids, self.featurizer, features)
        self.cache_path = (os.path.join(cache_dir, f"units-{key_digest(self.key)[:16]}.jsonl")
                           if cache_dir else None)
        self.encoded = 0  # files this object encoded (not read from the cache)
        self.writer = _is_first_process()  # several processes share one cache file: one writes it

    def __call__(self, paths: Sequence[str]) -> dict[str, list[int]]:
        cached = self._read_cache()
        out, todo = {}, []
        for path in dict.fromkeys(os.path.abspath(p) for p in paths):
            record, stat = cached.get(path), os.stat(path)
            if record is not None and (record["size"], record["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                out[path] = record["units"]
            else:
                todo.append((path, stat))
        if todo:
            log.info("encoding %d audio file(s) to units (%d cached)", len(todo), len(out))
            out.update(self._encode_all(todo))
        return out

    def encode_file(self, path: str) -> list[int]:
        from slm_jax.speech import audio, kmeans
        wave, sample_rate = audio.load_audio(path)
        self.encoded += 1
        return kmeans.assign(self.featurizer(wave, sample_rate), self.centroids).tolist()

    def _encode_all(self, todo) -> dict[str, list[int]]:
        out = {}
        sink = None
        if self.cache_path and self.writer:
            os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
            fresh = not os.path.exists(self.cache_path)
            sink = open(self.cache_path, "a", encoding="utf-8")
            if fresh:
                sink.write(json.dumps({"cache_key": self.key}) + "\n")
        try:
            for path, stat in todo:
                out[path] = self.encode_file(path)
                if sink:
                    sink.write(json.dumps({"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                           "units": out[path]}) + "\n")
                    sink.flush()
        finally:
            if sink:
                sink.close()
        return out

    def _read_cache(self) -> dict[str, dict]:
        if not self.cache_path or not os.path.exists(self.cache_path):
            return {}
        records, good_end = {}, 0
        with open(self.cache_path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    if line.endswith(b"\n"):
                        raise UnitsCacheError(f"{self.cache_path}:{line_no}: not JSON; delete the file to "
                                              f"re-encode") from None
                    if self.writer:  # another process may be writing it: only the writer repairs
                        log.warning("%s:%d: dropping a line cut off by an interrupted run", self.cache_path, line_no)
                    break
                if line_no == 1:
                    self._check_header(record)
                else:
                    records[record["path"]] = record
                good_end += len(line)
        if self.writer and good_end < os.path.getsize(self.cache_path):
            os.truncate(self.cache_path, good_end)
        return records

    def _check_header(self, record) -> None:
        key = record.get("cache_key") if isinstance(record, dict) else None
        if key != self.key:
            diff = [f"{k}: cache {None if key is None else key.get(k)!r} vs now {v!r}" for k, v in self.key.items()
                    if key is None or key.get(k) != v]
            raise UnitsCacheError(f"{self.cache_path}: made by another codebook / featurizer ({'; '.join(diff)}); "
                                  f"delete it or use another cache folder")
