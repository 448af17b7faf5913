"""mSLAM's character vocabulary for the auxiliary CTC objective (arXiv 2202.01374, §3).

`CharVocabulary`: id 0 is the CTC blank (`slm_jax.contract.CTC_BLANK_ID`), then the
alphabet's characters in order, then an optional `<unk>`. Pure Python (no TensorFlow),
so the TF target writer (`slm_jax.data.preprocessors.ctc_targets`) and the CTC head
(`slm_jax.models.ctc`) agree on ids through this class and the contract.

Text normalisation (issue 13): a character is a code point of
`slm_jax.text_normalization.normalize_text(text)` (NFKC, whitespace runs -> one ' ', stripped),
lowercased for a lowercase-only alphabet. So `"ça"` typed as NFC (U+00E7) or NFD
(`c` + U+0327) gives the same ids, `ﬁ` gives the ids of `fi`, U+202F / U+00A0 the id of ' '.
The alphabet itself must be in that form (each character unchanged by NFKC, no whitespace
but ' '): a character that normalised text can never contain would be a class that is never
a target, so it is refused. `from_texts` builds the alphabet from normalised texts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from slm_jax.contract import CTC_BLANK_ID
from slm_jax.text_normalization import normalize_text

BLANK_ID = CTC_BLANK_ID
UNK_STR = "<unk>"


class CharVocabulary:
    """Character inventory for CTC targets: id 0 = blank, ids 1..n = `alphabet`, then `<unk>`.

    Args:
      alphabet: the characters (a str, each code point one class; no duplicates).
      unk: map characters outside the alphabet to an explicit `<unk>` id (the last id)
        instead of raising.

    Input text is normalised (`normalize_text`, module docstring) and, if the alphabet has no
    character that `str.lower` changes ("lowercase-only"), lowercased (`normalize`), here and
    in the TF preprocessor (`normalize_text_tf` then `tf.strings.lower(..., encoding="utf-8")`,
    which agrees with `str.lower` except for the few code points whose lowercase is longer
    than one character).

    ValueError: empty alphabet, duplicates, or characters that normalised text never holds
    (not NFKC-stable, e.g. a decomposed accent or `ﬁ`, or whitespace other than ' ').
    """

    def __init__(self, alphabet: str, unk: bool = False):
        if not isinstance(alphabet, str):
            raise TypeError(f"CharVocabulary: alphabet must be a str, got {type(alphabet).__name__}")
        if not alphabet:
            raise ValueError("CharVocabulary: empty alphabet")
        seen, dups = set(), set()
        for c in alphabet:
            (dups if c in seen else seen).add(c)
        if dups:
            raise ValueError(f"CharVocabulary: duplicate characters in the alphabet: {sorted(dups)!r}")
        unstable = [c for c in alphabet if c != " " and normalize_text(c) != c]
        if unstable:
            raise ValueError(
                "CharVocabulary: the alphabet has characters that normalised text never contains "
                f"(NFKC changes them, or whitespace other than ' '): "
                f"{[f'U+{ord(c):04X} -> {normalize_text(c)!r}' for c in unstable]}; "
                "build the alphabet from normalised text (CharVocabulary.from_texts does)")
        self.alphabet = alphabet
        self.unk = bool(unk)
        self._ids = {c: i + 1 for i, c in enumerate(alphabet)}

    # ----- sizes and ids
    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def unk_id(self) -> int | None:
        return len(self.alphabet) + 1 if self.unk else None

    @property
    def size(self) -> int:
        """Number of CTC classes: blank + characters (+ unk)."""
        return 1 + len(self.alphabet) + int(self.unk)

    def padded_size(self, multiple: int) -> int:
        """`size` rounded up to `multiple` (e.g. the 'tensor' mesh size the head's 'vocab'
        axis is sharded over); the extra classes are never targets."""
        return -(-self.size // multiple) * multiple

    @property
    def lowercase_only(self) -> bool:
        return all(c.lower() == c for c in self.alphabet)

    @property
    def char_to_id(self) -> dict[str, int]:
        return dict(self._ids)

    # ----- text <-> ids
    def normalize(self, text: str) -> str:
        """`normalize_text(text)`, lowercased for a lowercase-only alphabet: what `encode` maps."""
        text = normalize_text(text)
        return text.lower() if self.lowercase_only else text

    def encode(self, text: str) -> list[int]:
        """ids [len(normalize(text))] of the normalised text; ValueError naming characters
        outside the alphabet (without `unk`)."""
        text = self.normalize(text)
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown and not self.unk:
            raise ValueError(f"CharVocabulary.encode: characters outside the vocabulary: {unknown!r} "
                             f"in {text!r}")
        unk_id = self.unk_id
        return [self._ids.get(c, unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text; blanks are dropped, `<unk>` is rendered as the string '<unk>'."""
        out = []
        for i in np.asarray(list(ids), dtype=np.int64).tolist():
            if i == BLANK_ID:
                continue
            if 1 <= i <= len(self.alphabet):
                out.append(self.alphabet[i - 1])
            elif self.unk and i == self.unk_id:
                out.append(UNK_STR)
            else:
                raise ValueError(f"CharVocabulary.decode: id {i} outside [0, {self.size})")
        return "".join(out)

    # ----- construction / persistence
    @classmethod
    def from_texts(cls, texts: Iterable[str], unk: bool = False, lowercase: bool = False) -> CharVocabulary:
        """Alphabet = the sorted set of characters of the normalised `texts` (`normalize_text`,
        then lowercased if asked), so NFD and NFC spellings add the same characters."""
        chars: set[str] = set()
        for t in texts:
            t = normalize_text(t)
            chars.update(t.lower() if lowercase else t)
        if not chars:
            raise ValueError("CharVocabulary.from_texts: no characters in the given texts")
        return cls("".join(sorted(chars)), unk=unk)

    def to_json(self) -> str:
        return json.dumps({"type": "CharVocabulary", "version": 1, "alphabet": self.alphabet,
                           "unk": self.unk}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharVocabulary:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("type") != "CharVocabulary" or "alphabet" not in d:
            raise ValueError(f"CharVocabulary.from_json: not a CharVocabulary JSON: {text[:200]!r}")
        return cls(d["alphabet"], unk=bool(d.get("unk", False)))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> CharVocabulary:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocabulary) and (self.alphabet, self.unk) == (other.alphabet, other.unk)

    def __hash__(self) -> int:
        return hash((self.alphabet, self.unk))

    def __repr__(self) -> str:
        return f"CharVocabulary(alphabet={self.alphabet!r}, unk={self.unk})"
