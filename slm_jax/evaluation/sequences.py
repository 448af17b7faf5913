"""Evaluation inputs as token ids, written exactly as the training tasks write them.

A sequence is a list of `Segment`s (speech units or text, with a language). The token ids
follow `slm_jax.data.preprocessors.interleave` / `task_formats` (SpiritLM conventions):

- a modality marker (`[Speech]` / `[Text]`) opens the sequence and appears again only where
  the modality changes (`markers=False`, or a unit-only `UnitVocabulary`, writes none);
- consecutive speech segments of one language are ONE recording: their frame-level units
  are run-length deduplicated together (a cloze prompt and its ending come from one story
  recording); a change of language starts a new run, deduplicated on its own, as in
  `interleave.crosslingual_interleave`;
- with `lang_tags` a language tag (`[EN]`) precedes each run of one language (as
  `crosslingual_interleave(lang_tags=True)`);
- text is SentencePiece-encoded segment by segment (equal to encoding the space-joined
  text, since pieces never cross whitespace);
- EOS closes the sequence (`eos=True`), as every training example ends with it.

The model reads `[BOS] + ids[:-1]` and predicts `ids` (seqio's decoder-only shift), so
every id is a prediction target. BOS is the run's (`slm_jax.data.feature_converter.run_bos_id`:
0 for runs from scratch, the checkpoint's own first token for a model imported with
`slm-jax import-hf`), the same id the training packs put at each segment start.

`EncodedSequence.ending_start` is the index of the first content token of the ending
(after the marker / tag announcing it, which is given, not predicted evidence).

`SequenceFormat.encode` is the one numpy writer of this format; tests/test_sequences.py
checks it against the training tasks' TF preprocessors and vocabularies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from slm_jax.contract import MODALITIES, MODALITY_CODE, MODALITY_MARKER, MODALITY_SPEECH, SPEECH, TEXT  # noqa: F401
from slm_jax.speech.units import run_starts_mask


@dataclasses.dataclass(frozen=True)
class Segment:
    """One stretch of a sequence: frame-level speech units (ints) or text (str)."""

    modality: str
    content: tuple[int, ...] | str
    lang: str | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"Segment.modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.modality == TEXT and not isinstance(self.content, str):
            raise ValueError(f"a text segment holds a str, got {type(self.content).__name__}")
        if self.modality == SPEECH and isinstance(self.content, str):
            raise ValueError(f"a speech segment holds unit ints, got the string {self.content[:40]!r}")

    @classmethod
    def speech(cls, units, lang: str | None = None) -> "Segment":
        return cls(SPEECH, tuple(int(u) for u in units), lang)

    @classmethod
    def text(cls, text: str, lang: str | None = None) -> "Segment":
        return cls(TEXT, text, lang)

    def is_empty(self) -> bool:
        return len(self.content.strip() if isinstance(self.content, str) else self.content) == 0


@dataclasses.dataclass(frozen=True)
class EncodedSequence:
    ids: np.ndarray  # int32 [n] prediction targets
    ending_start: int  # first target of the ending (== len(ids) without an ending)


def real_vocabulary(vocabulary):
    """The vocabulary behind a `registration.LazyVocabulary` (built now), else itself."""
    return getattr(vocabulary, "real", vocabulary)


def has_markers(vocabulary) -> bool:
    return hasattr(vocabulary, "speech_marker_id")


def sentinel_mask(vocabulary, size: int) -> np.ndarray:
    """bool [size]: the vocabulary's span-corruption sentinels (`SpeechTextVocabulary.num_sentinels`,
    else seqio extra ids; `token_space.sentinel_block`), which a denoising-trained model predicts only
    inside its targets: the scorer and generation leave them out unless asked."""
    from slm_jax.data.tokenizers.token_space import sentinel_block  # TensorFlow: the vocabulary has it loaded
    first, count = sentinel_block(real_vocabulary(vocabulary))
    out = np.zeros(size, bool)
    out[min(first, size):min(first + count, size)] = True
    return out


def modality_of_ids(vocabulary, size: int) -> np.ndarray:
    """int32 [size]: modality of every id (0 pad / unknown, 1 text, 2 speech, 3 marker); ids
    the vocabulary does not define (model rows beyond it) are 0."""
    vocabulary = real_vocabulary(vocabulary)
    n = min(size, vocabulary.vocab_size)
    out = np.zeros(size, np.int32)
    if has_markers(vocabulary):
        out[:n] = vocabulary.modality_ids(np.arange(n))
    else:  # UnitVocabulary: 0 pad, 1 eos, 2 unk, then units
        out[1:min(n, 3)] = MODALITY_MARKER
        out[3:n] = MODALITY_SPEECH
    return out


@dataclasses.dataclass(frozen=True)
class SequenceFormat:
    """How a training task writes sequences (see the module docstring)."""

    vocabulary: Any
    dedup: bool = True
    markers: bool = True
    lang_tags: bool = False
    eos: bool = True

    def __post_init__(self):
        object.__setattr__(self, "vocabulary", real_vocabulary(self.vocabulary))
        if not has_markers(self.vocabulary):
            if self.lang_tags:
                raise ValueError(f"lang_tags=True needs a SpeechTextVocabulary with langs; "
                                 f"{type(self.vocabulary).__name__} has no language tags")
            object.__setattr__(self, "markers", False)

    @property
    def eos_id(self) -> int:
        return int(self.vocabulary.eos_id)

    def marker_id(self, modality: str) -> int:
        v = self.vocabulary
        return int(v.speech_marker_id if modality == SPEECH else v.text_marker_id)

    def unit_ids(self, units) -> np.ndarray:
        v = self.vocabulary
        ids = v.units_to_ids(units) if has_markers(v) else v.unit_ids_to_tokens(units)
        return np.asarray(ids, np.int32)

    def text_ids(self, text: str) -> np.ndarray:
        if not has_markers(self.vocabulary):
            raise ValueError(f"text needs a SpeechTextVocabulary with a sentencepiece_model; the task's "
                             f"vocabulary is a unit-only {type(self.vocabulary).__name__}")
        return np.asarray(self.vocabulary.encode_text(text), np.int32)

    def encode(self, prompt: Sequence[Segment], ending: Sequence[Segment] = ()) -> EncodedSequence:
        """Token ids of prompt + ending and where the ending's content starts."""
        segments = [*prompt, *ending]
        if not segments:
            raise ValueError("cannot encode an empty sequence (no segments)")
        pieces: list[np.ndarray] = []
        ending_start = None
        length, previous = 0, None
        for run in _runs(segments):
            header = self._run_header(run, previous)
            previous = run[-1][1]
            pieces.append(np.asarray(header, np.int32))
            length += len(header)
            body, first_ending = self._run_body(run, len(prompt))
            if ending_start is None and first_ending is not None:
                ending_start = length + first_ending
            pieces.append(body)
            length += len(body)
        if self.eos:
            pieces.append(np.asarray([self.eos_id], np.int32))
        ids = np.concatenate(pieces).astype(np.int32)
        if ending_start is None:  # no ending, or an ending deduplicated away: only EOS is its own
            ending_start = length
        return EncodedSequence(ids, ending_start)

    def _run_header(self, run, previous) -> list[int]:
        """Marker where the modality changes (or at the start), then the run's language tag."""
        modality, lang = run[0][1].modality, run[0][1].lang
        header = []
        if self.markers and (not previous or previous.modality != modality):
            header.append(self.marker_id(modality))
        if self.lang_tags and lang is not None:
            header.append(int(self.vocabulary.lang_tag_id(lang)))
        return header

    def _run_body(self, run, num_prompt: int) -> tuple[np.ndarray, int | None]:
        """ids of one run and the offset in them of the first ending token (None: none)."""
        if run[0][1].modality == TEXT:
            parts = [self.text_ids(seg.content) for _, seg in run]
            offsets = np.cumsum([0] + [len(p) for p in parts])
            first = next((int(offsets[k]) for k, (i, _) in enumerate(run) if i >= num_prompt), None)
            return np.concatenate(parts).astype(np.int32), first
        units = np.concatenate([np.asarray(seg.content, np.int64).reshape(-1) for _, seg in run])
        from_ending = np.concatenate([np.full(len(seg.content), i >= num_prompt) for i, seg in run])
        keep = run_starts_mask(units) if self.dedup else np.ones(len(units), bool)
        kept_ending = np.flatnonzero(from_ending[keep])
        first = int(kept_ending[0]) if len(kept_ending) else None
        return self.unit_ids(units[keep]), first


def _runs(segments: Sequence[Segment]) -> list[list[tuple[int, Segment]]]:
    """Consecutive segments of the same modality and language, with their indices."""
    runs: list[list[tuple[int, Segment]]] = []
    for i, seg in enumerate(segments):
        last = runs[-1][-1][1] if runs else None
        if last is not None and (last.modality, last.lang) == (seg.modality, seg.lang):
            runs[-1].append((i, seg))
        else:
            runs.append([(i, seg)])
    return runs


def model_inputs(ids: np.ndarray, bos_id: int | None = None) -> np.ndarray:
    """int32 [n]: the decoder's inputs for targets `ids` [n]: BOS then ids shifted right by one.
    `bos_id` None: the run's (`slm_jax.data.feature_converter.run_bos_id`)."""
    if bos_id is None:
        bos_id = run_bos()
    return np.concatenate([[bos_id], np.asarray(ids[:-1])]).astype(np.int32)


def run_bos(bos_id: int | None = None) -> int:
    """`bos_id` checked, or the run's BOS id when None (`feature_converter.run_bos_id`: 0 unless
    gin binds `run_bos_id.bos_id`, as `slm-jax import-hf`'s model.gin does)."""
    from slm_jax.data.feature_converter import resolve_bos_id  # TensorFlow: only when needed
    return resolve_bos_id(bos_id, "bos_id")
