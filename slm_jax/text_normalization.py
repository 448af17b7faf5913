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
form (U+202F / U+00A0 -> ' ', `…` -> `...`, `ﬁ` -> `fi`, full-width -> ASCII). "Whitespace" is
what `str.split()` splits on: the characters of `WHITESPACE` (Unicode White_Space plus the
ASCII separators U+001C..U+001F). Case, punctuation, letters such as `œ`/`æ` (not compatibility
ligatures), zero-width characters (U+200B, U+FEFF) and control characters are kept: the rule
rewrites spellings of the same text, it does not clean text.

Consumers (each applies this rule itself, so raw text from anywhere gets the same result):
  - SentencePiece (`data.tokenizers.spm`): trained on normalised text with SentencePiece's
    `identity` rule, so no second rewrite happens inside the model (its default `nmt_nfkc`
    would delete control characters and turn U+200B/U+FEFF/U+FFFD into spaces);
    `SpeechTextVocabulary.encode_text` / `encode_text_tf` normalise before encoding.
  - CTC characters (`data.tokenizers.chars`, `data.preprocessors.ctc_targets`).
  - ASR scoring (`evaluation.metrics_text`): both sides, before lower-casing / punctuation.
  - espeak-ng input of the demo (`slm_jax_demo.tts`).
The TF form (`data.tokenizers.token_space.normalize_text_tf`: ICU NFKC + the same whitespace
class) agrees with this one on every code point assigned up to the Unicode version of
Python's `unicodedata` (14.0 on Python 3.11); ICU's newer tables also map ~100 compatibility
characters added later (e.g. U+1CCD6.. outlined letters), which Python 3.11 leaves alone.

Pure Python, no imports from slm_jax: every room may use it.
"""
from __future__ import annotations

import unicodedata

TEXT_NORMALIZATION = "nfkc_collapse_whitespace"  # recorded where normalised text is written

# What `str.split()` (hence the rule) treats as whitespace: every code point c with
# `c.isspace()` (Unicode White_Space + U+001C..U+001F), written out so the TF form can use the
# same class (tests/test_text_normalization.py checks it against `str.isspace`).
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
              "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


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
