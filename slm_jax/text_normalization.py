"""The one text normalisation of slm_jax, applied at the corpus boundary.

Why: transcripts in the wild spell the same text several ways. French ones carry narrow
no-break spaces (U+202F before `;:!?` and in `10 000`), no-break spaces (U+00A0), `…`,
ligatures (`ﬁ`) and decomposed accents (NFD `c` + U+0327). SentencePiece, the CTC character
vocabulary, espeak-ng and the WER word split would each see different strings. slm_jax
normalises once, where text enters (corpus import, SentencePiece training, CTC character
targets, TTS of the demo, the WER/CER metrics), with one rule:

    normalize_text(s) = Unicode NFKC of s, then every run of whitespace -> one ASCII space,
                        leading / trailing whitespace removed.

NFKC composes decomposed accents (NFD -> NFC), maps compatibility characters to their plain
form (U+202F / U+00A0 -> ' ', `…` -> `...`, `ﬁ` -> `fi`, full-width -> ASCII); it is also
the base of SentencePiece's default `nmt_nfkc` rule, so a SentencePiece model trained on
normalised text sees no second rewrite. Case and punctuation are kept (ASR scoring lower-
cases and strips punctuation on top of this, in `evaluation.metrics_text`).

Pure Python, no imports from slm_jax: every room may use it.
"""
from __future__ import annotations

import unicodedata

TEXT_NORMALIZATION = "nfkc_collapse_whitespace"  # recorded where normalised text is written


def normalize_text(text: str) -> str:
    """`text` in NFKC with whitespace runs collapsed to one ASCII space and stripped.

    Idempotent: normalize_text(normalize_text(s)) == normalize_text(s). TypeError if `text`
    is not a str."""
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects str, got {type(text).__name__}")
    return " ".join(unicodedata.normalize("NFKC", text).split())


def is_normalized(text: str) -> bool:
    """True when `normalize_text(text) == text`."""
    return normalize_text(text) == text
