"""Error rates of generated transcripts and units, all through jiwer (Levenshtein alignment).

WER and CER are corpus-level (total edits / total reference words or characters), on
text normalised as usual for ASR scoring: lower-cased, punctuation removed, whitespace
collapsed (`normalize=False` scores the raw strings, spaces count as characters). The unit
error rate treats each unit as a word. Every error rate in slm_jax comes from here (the
CTC head's transcripts included): there is no second edit-distance implementation.
"""
from __future__ import annotations

from typing import Sequence

import jiwer


def _transform(normalize: bool, words: bool):
    steps = [jiwer.ToLowerCase(), jiwer.RemovePunctuation()] if normalize else []
    steps += [jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
    steps.append(jiwer.ReduceToListOfListOfWords() if words else jiwer.ReduceToListOfListOfChars())
    return jiwer.Compose(steps)


def _check(references: Sequence[str], hypotheses: Sequence[str], what: str) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{what}: {len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError(f"{what}: no references")
    empty = [i for i, r in enumerate(references) if not str(r).strip()]
    if empty:
        raise ValueError(f"{what}: reference {empty[0]} is empty (an error rate needs reference words)")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Word edits / reference words, over all pairs. ValueError: unequal counts, no or an empty reference."""
    _check(references, hypotheses, "word_error_rate")
    t = _transform(normalize, words=True)
    return float(jiwer.wer(list(references), list(hypotheses), reference_transform=t, hypothesis_transform=t))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Character edits / reference characters, over all pairs. ValueError as `word_error_rate`."""
    _check(references, hypotheses, "char_error_rate")
    t = _transform(normalize, words=False)
    return float(jiwer.cer(list(references), list(hypotheses), reference_transform=t, hypothesis_transform=t))


def unit_error_rate(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]]) -> float:
    """Edit distance over unit sequences / reference units (e.g. few-shot TTS vs real units)."""
    as_text = lambda seqs: [" ".join(str(int(u)) for u in s) for s in seqs]  # noqa: E731
    return word_error_rate(as_text(references), as_text(hypotheses), normalize=False)
