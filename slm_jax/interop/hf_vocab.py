"""Extend a text LM's vocabulary with speech tokens: id layout, new rows, tokenizer tokens.

Layout: the text ids keep their ids [0, text_vocab_size) (the HF embedding rows); the
speech ranges follow in `slm_jax.data.tokenizers.token_space.SpeechTextVocabulary`'s order
([Text], [Speech], units, pitch, style, language tags, then `num_sentinels` span-corruption
sentinels `<extra_id_N>` for denoising tasks); the total is padded to a
multiple of `pad_to_multiple` (128: MXU/tensor-core friendly, divisible by any tensor
axis). The `spiritlm` layout is SpiritLM's (needs the 32000-row Llama-2 vocabulary).

New rows (speech and padding alike) are drawn from N(mean, cov) of the existing rows
(Hewitt 2021, "Initializing new word embeddings"): they start inside the cloud of
known embeddings, so the text model's behaviour is unchanged for text ids and new
logits start near the average one instead of dominating or vanishing.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import numpy as np

LAYOUTS = ("none", "speech", "spiritlm")
SPIRITLM_TEXT_ROWS = 32000
FILLER_TOKEN = "<|slm_jax_unused_{}|>"


class VocabLayoutError(ValueError):
    """A vocabulary layout that does not fit the model or its tokenizer."""


@dataclasses.dataclass(frozen=True)
class VocabExtension:
    """Where the speech ids go, after a `text_vocab_size`-row text vocabulary."""

    layout: str
    text_vocab_size: int
    num_units: int = 500
    num_pitch: int = 0
    num_style: int = 0
    langs: tuple[str, ...] = ()
    pad_to_multiple: int = 128
    num_sentinels: int = 0

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise VocabLayoutError(f"--vocab_layout={self.layout!r}: expected one of {LAYOUTS}")
        if self.pad_to_multiple < 1:
            raise VocabLayoutError(f"--pad_vocab_to={self.pad_to_multiple} must be >= 1")
        if self.layout == "spiritlm" and self.text_vocab_size != SPIRITLM_TEXT_ROWS:
            raise VocabLayoutError(
                f"--vocab_layout=spiritlm needs the {SPIRITLM_TEXT_ROWS}-token Llama-2 vocabulary (SpiritLM puts "
                f"[Text] at id {SPIRITLM_TEXT_ROWS}), but the model has {self.text_vocab_size} embedding rows; use "
                "--vocab_layout=speech")

    @classmethod
    def create(cls, layout: str, text_vocab_size: int, *, num_units: int = 500, num_pitch: int = 0,
               num_style: int = 0, langs=(), pad_to_multiple: int | None = None,
               num_sentinels: int = 0) -> VocabExtension:
        """The layout's stream sizes (SpiritLM's are fixed; its sentinels are appended after [St99]); padding
        defaults to 128 with speech, none without."""
        if layout == "spiritlm":
            num_units, num_pitch, num_style, langs = 501, 64, 100, ()
        if layout == "none":  # no speech ids: record no stream sizes
            num_units, num_pitch, num_style, langs = 0, 0, 0, ()
        if layout == "none" and num_sentinels:
            raise VocabLayoutError("--num_sentinels needs a speech layout (--vocab_layout=speech or spiritlm): the "
                                   "sentinels follow the speech tokens")
        if pad_to_multiple is None:
            pad_to_multiple = 1 if layout == "none" else 128
        return cls(layout, int(text_vocab_size), int(num_units), int(num_pitch), int(num_style), tuple(langs),
                   int(pad_to_multiple), int(num_sentinels))

    @functools.cached_property
    def vocabulary(self):
        """The `SpeechTextVocabulary` of this layout (text ids as placeholders); None without speech."""
        if self.layout == "none":
            return None
        from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary  # imports TensorFlow
        try:
            if self.layout == "spiritlm":
                return SpeechTextVocabulary.spiritlm(None, num_sentinels=self.num_sentinels)
            return SpeechTextVocabulary(None, num_units=self.num_units, num_pitch=self.num_pitch,
                                        num_style=self.num_style, langs=self.langs,
                                        text_vocab_size=self.text_vocab_size, num_sentinels=self.num_sentinels)
        except ValueError as err:  # a stream size or language code it refuses, named in its message
            raise VocabLayoutError(str(err)) from err

    def new_tokens(self) -> list[str]:
        """Token strings of ids [text_vocab_size, ...) in id order: "[Text]", "[Speech]", "[Hu0]", ..."""
        vocab = self.vocabulary
        if vocab is None:
            return []
        return [vocab.id_to_tag(i) for i in range(vocab.text_marker_id, vocab.vocab_size)]

    @property
    def vocab_size(self) -> int:
        """Rows of the extended embedding (text + speech, padded)."""
        used = self.text_vocab_size if self.vocabulary is None else self.vocabulary.vocab_size
        return math.ceil(used / self.pad_to_multiple) * self.pad_to_multiple

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "langs": list(self.langs), "vocab_size": self.vocab_size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VocabExtension:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "langs" else v) for k, v in data.items() if k in fields})


# --------------------------------------------------------------------------------------
# new embedding rows
# --------------------------------------------------------------------------------------


def row_covariance(rows: np.ndarray, mean: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Covariance [d, d] (fp64) of `rows` [n, d], accumulated over row chunks (no fp64 copy of `rows`)."""
    n, d = rows.shape
    acc = np.zeros((d, d), np.float64)
    for start in range(0, n, chunk):
        centered = rows[start:start + chunk].astype(np.float64) - mean
        acc += centered.T @ centered
    return acc / max(n - 1, 1)


def sample_like_rows(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` rows ~ N(mean, cov) of `rows` [n, d], in `rows`' dtype.

    The covariance is factored with `eigh` (negative eigenvalues from rounding clipped to
    0), which stays valid when it is singular (n <= d, collinear rows) where a Cholesky
    factorisation would need jitter.
    """
    mean = rows.astype(np.float64).mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(row_covariance(rows, mean))
    scale = np.sqrt(np.clip(eigenvalues, 0.0, None))
    z = rng.standard_normal((count, rows.shape[1]))
    return (mean + (z * scale) @ eigenvectors.T).astype(rows.dtype)


def extend_rows(text_rows: np.ndarray, total_rows: int, seed: int, stream: int) -> np.ndarray:
    """`text_rows` [n, d] followed by `total_rows - n` sampled rows; `stream` separates the embedding
    and lm_head draws of one seed."""
    extra = total_rows - text_rows.shape[0]
    if extra <= 0:
        return text_rows
    rng = np.random.default_rng([seed, stream])
    return np.concatenate([text_rows, sample_like_rows(text_rows, extra, rng)], axis=0)


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------


def extend_tokenizer(tokenizer, ext: VocabExtension) -> int:
    """Adds the speech tokens to a transformers tokenizer at their slm_jax ids; returns how many tokens were added.

    `add_tokens` appends at id len(tokenizer), so ids between the tokenizer's end and
    the text block's end (models often have more embedding rows than tokens, e.g.
    Qwen2) are filled with unused special placeholders first.
    """
    from tokenizers import AddedToken

    tags = ext.new_tokens()
    have = len(tokenizer)
    if have > ext.text_vocab_size:
        raise VocabLayoutError(f"the tokenizer has {have} tokens but the model only {ext.text_vocab_size} embedding rows; "
                         "it cannot be extended without moving ids")
    clash = [t for t in tags if t in tokenizer.get_vocab()]
    if clash:
        raise VocabLayoutError(f"the tokenizer already has the speech tokens {clash[:5]} (at other ids)")
    fillers = [AddedToken(FILLER_TOKEN.format(i), special=True, normalized=False)
               for i in range(have, ext.text_vocab_size)]
    tokenizer.add_tokens(fillers, special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in tags])
    got = tokenizer.convert_tokens_to_ids(tags)
    want = list(range(ext.text_vocab_size, ext.text_vocab_size + len(tags)))
    if got != want:
        first = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
        raise VocabLayoutError(f"the extended tokenizer maps {tags[first]!r} to id {got[first]}, expected {want[first]}")
    return len(fillers) + len(tags)


# --------------------------------------------------------------------------------------
# tokenizer parity with SpeechTextVocabulary (issue 13 kind 5)
# --------------------------------------------------------------------------------------

SPAN_RULE = ("text spans between speech/marker tokens are encoded one by one, each normalised as slm_jax's "
             "normalize_text (NFKC, whitespace runs -> one space, stripped) and given SentencePiece's dummy-prefix "
             "'\u2581' (SpeechTextVocabulary's rule; Llama's legacy=True behaviour); whitespace-only spans are dropped; "
             "decode removes the dummy prefix after each such token")


def _is_sentencepiece_style(pipeline: dict) -> bool:
    """A tokenizer converted from SentencePiece (Llama): word boundaries are '\u2581' (Metaspace pre-tokenizer,
    or a Prepend/Replace normalizer), not byte-level BPE."""
    parts = json.dumps({k: pipeline.get(k) for k in ("normalizer", "pre_tokenizer")})
    return "Metaspace" in parts or "\u2581" in parts


def span_parity_pipeline(out_dir: str, tags: list[str]) -> bool:
    """Rewrites `out_dir`/tokenizer.json (+ tokenizer_config.json) so that it encodes interleaved strings such
    as "[Text]the cat[Speech][Hu3][Hu7][Text] sat" to `SpeechTextVocabulary`'s ids and decodes them back (rule:
    `SPAN_RULE`). Returns False, changing nothing, for a tokenizer that is not SentencePiece-style (byte-level
    BPE has no dummy prefix) or has no tokenizer.json.

    Why: transformers' Llama tokenizer (transformers 5, and 4.x with legacy=False) prefixes only the first
    span of a string with '\u2581' and never doubles it, while SentencePiece (and so the slm_jax corpora and
    `SpeechTextVocabulary.encode`) prefixes every span unconditionally: "[Speech][Hu1][Text]the cat" is
    ..., '\u2581the', ... in slm_jax and ..., 'the', ... in transformers. The rewritten pipeline: normalizer = per span NFKC, whitespace
    runs -> ' ', strip (`slm_jax.text_normalization.normalize_text`, which `SpeechTextVocabulary.encode` applies
    to every span; a whitespace-only span becomes empty and is dropped), Prepend('\u2581'), Replace(' ', '\u2581') (per span: the speech tokens are split off first, as
    non-normalized added tokens); no pre-tokenizer; decoder = ByteFallback, Fuse, remove one '\u2581' right
    after each speech/marker tag, '\u2581' -> ' ', strip the first dummy space. The tokenizer config names
    `PreTrainedTokenizerFast` (the class that runs tokenizer.json as written; transformers' LlamaTokenizer
    rebuilds its own pipeline) and records `SPAN_RULE`.
    """
    import os
    import re

    from tokenizers import Regex, Tokenizer, decoders, normalizers

    path = os.path.join(out_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        if not _is_sentencepiece_style(json.load(f)):
            return False
    tok = Tokenizer.from_file(path)
    # per span, as SpeechTextVocabulary.encode: normalize_text (NFKC, whitespace runs -> one space, stripped;
    # a whitespace-only span becomes empty and gets no prefix), then the dummy prefix
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(left=True, right=True), normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = None
    after_tag = "|".join(re.escape(t) for t in tags)  # top-level alternatives: a valid Oniguruma look-behind
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Replace(Regex(f"(?<={after_tag})\u2581"), ""),
                                     decoders.Replace("\u2581", " "), decoders.Strip(" ", 1, 0)])
    tok.save(path)
    config_path = os.path.join(out_dir, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
    config.update(tokenizer_class="PreTrainedTokenizerFast", legacy=True, slm_jax_text_spans=SPAN_RULE)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=1)
    return True
