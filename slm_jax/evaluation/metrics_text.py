"""Error rates of generated transcripts and units, all through jiwer (Levenshtein alignment).

WER and CER are corpus-level (total edits / total reference words or characters). Both
sides are first normalised with the one text rule of slm_jax,
`slm_jax.text_normalization.normalize_text` (NFKC, every run of Unicode whitespace -> one
ASCII space, stripped), so spellings of the same text score 0: NFD vs NFC accents, U+202F /
U+00A0 vs ' ' (`10\u202f000` vs `10 000`), `…` vs `...`, `ﬁ` vs `fi`. jiwer splits words on
the ASCII space only, which is why the rule comes first.

  normalize=True (default): then lower-cased and punctuation removed (jiwer: Unicode
    categories P*), whitespace collapsed again; the usual ASR scoring.
  normalize=False: the normalised strings as they are: case and punctuation count, and in
    CER each space is a character. ("Raw" means raw up to the spelling rule above, which is
    applied in both modes.)

The unit error rate treats each unit as a word. Every error rate in slm_jax comes from here
(the CTC head's transcripts included): there is no second edit-distance implementation.
"""
from __future__ import annotations

from typing import Sequence

import jiwer

from slm_jax.text_normalization import normalize_text


def _transform(normalize: bool, words: bool):
    """jiwer steps applied to both sides after `normalize_text`."""
    steps = [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
             jiwer.Strip()] if normalize else []
    steps.append(jiwer.ReduceToListOfListOfWords() if words else jiwer.ReduceToListOfListOfChars())
    return jiwer.Compose(steps)


def _prepared(references: Sequence[str], hypotheses: Sequence[str], normalize: bool, words: bool,
              what: str) -> tuple[list[str], list[str], jiwer.Compose]:
    """(normalised references, normalised hypotheses, the jiwer transform); ValueError on
    unequal counts, no reference, or a reference with nothing left to score (empty, only
    whitespace, or only punctuation when `normalize`), naming its index."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{what}: {len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError(f"{what}: no references")
    refs = [normalize_text(str(r)) for r in references]
    hyps = [normalize_text(str(h)) for h in hypotheses]
    t = _transform(normalize, words)
    for i, r in enumerate(refs):
        if not r or not t([r])[0]:
            steps = " (NFKC, whitespace, lower-case, punctuation removed)" if normalize else " (NFKC, whitespace)"
            raise ValueError(f"{what}: reference {i} is empty after normalisation{steps}: "
                             f"{references[i]!r:.60}; an error rate needs reference words")
    return refs, hyps, t


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Word edits / reference words, over all pairs (module docstring: both normalisations).

    ValueError: unequal counts, no reference, or a reference without words."""
    refs, hyps, t = _prepared(references, hypotheses, normalize, True, "word_error_rate")
    return float(jiwer.wer(refs, hyps, reference_transform=t, hypothesis_transform=t))


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True) -> float:
    """Character edits / reference characters, over all pairs. ValueError as `word_error_rate`."""
    refs, hyps, t = _prepared(references, hypotheses, normalize, False, "char_error_rate")
    return float(jiwer.cer(refs, hyps, reference_transform=t, hypothesis_transform=t))


def unit_error_rate(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]]) -> float:
    """Edit distance over unit sequences / reference units (e.g. few-shot TTS vs real units)."""
    as_text = lambda seqs: [" ".join(str(int(u)) for u in s) for s in seqs]  # noqa: E731
    return word_error_rate(as_text(references), as_text(hypotheses), normalize=False)
