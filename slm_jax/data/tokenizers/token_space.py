"""One token space for text, speech units, prosody and language tags (SpiritLM-style).

Layout (contiguous ids, in this order, so checkpoints and corpora stay comparable):

    [0, N)                 text block. With a SentencePiece model its N pieces keep their
                           own ids, and PAD/EOS/UNK are the model's. Without a model N = 3:
                           0 PAD, 1 EOS, 2 UNK (a unit-only variant), unless a
                           `text_vocab_size` placeholder is given (ids only, no text codec).
    N                      [Text]     (`text_marker_id`)
    N + 1                  [Speech]   (`speech_marker_id`)
    unit_offset  = N + 2   [Hu0] ... [Hu{num_units-1}]
    pitch_offset           [Pi0] ... [Pi{num_pitch-1}]
    style_offset           [St0] ... [St{num_style-1}]
    lang_offset            one tag per `langs` entry, upper-cased: [EN], [FR], ...
    sentinel_offset        `num_sentinels` span-corruption sentinels <extra_id_0> ... (T5 order:
                           <extra_id_0> is the block's LAST id, <extra_id_k> = sentinel_offset +
                           num_sentinels - 1 - k, so with no seqio extra ids they are exactly T5's
                           `vocab_size - 1 - k`; `sentinel_id`)
    then seqio `extra_ids` (which seqio's `decode` maps to UNK).

Sentinels (T5 / UL2 span corruption, `slm_jax.data.preprocessors.span_corruption`) come last
so every other id stays where it was: `spiritlm(spm, num_sentinels=100)` keeps SpiritLM's ids
and appends the 100 sentinels after [St99] (32667..32766). Their modality is MARKER; the
string form is T5's ``<extra_id_N>``, parsed and rendered by encode/decode (python and TF).

`SpeechTextVocabulary.spiritlm(spm)` with the 32000-piece Llama-2 model gives exactly
SpiritLM's ids: [Text]=32000, [Speech]=32001, [Hu0..Hu500]=32002..32502,
[Pi0..Pi63]=32503..32566, [St0..St99]=32567..32666.

PAD: seqio pads with id 0 and the decoder shifts targets with 0 as BOS, so `pad_id` is
the model's pad piece when it has one and 0 otherwise. Llama-2's model has no pad piece,
so there pad_id = 0 = <unk>: an <unk> token is then indistinguishable from padding in
`modality_ids` (harmless: the Llama-2 BPE has byte fallback and never emits <unk>).

String form (seqio `encode`/`decode`, `encode_tf`/`decode_tf`), e.g.
``"[Speech][Hu3][Hu7][Text]the cat[EN]"``: the tags `[Text]`, `[Speech]`, `[HuN]`, `[PiN]`,
`[StN]` and the language tags are parsed into their ids; the text spans between tags go
through SentencePiece (whitespace-only spans are dropped). `decode` renders non-text ids
as tags and each run of text ids through the SentencePiece decoder; PAD and EOS are not
rendered.

Text normalisation: every text span (and every `encode_text(_tf)` input) is normalised with
`slm_jax.text_normalization.normalize_text` (NFKC, whitespace runs -> one space, stripped;
`normalize_text_tf` in TF) before SentencePiece, for any model: corpus text is normalised at
import, so eval prompts, few-shot prompts and generation prompts given as NFD, with U+202F or
`…` get the ids the model was trained on. Limits, identical in the python and TF paths: a
round trip is exact for strings whose text spans are normalised and have no leading/trailing
space (e.g. ``"[Text]the cat[Speech][Hu3]"``); a bracketed string that is not a
known tag (e.g. ``[foo]``) is ordinary text; the TF path uses the control character
U+0001 as an internal separator, so input strings must not contain it. Without a model,
text spans are an error and text-block ids other than PAD/EOS decode as ``<unk>``.

Every id mapping comes in a numpy version (raises ValueError naming the value) and a TF
version (graph-safe: range checks are `tf.debugging.Assert`s that print the offending
values, so they fail inside tf.data pipelines too, which stay checkpointable).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

# Modality ids (per token; re-exported here for users of this module) come from the contract.
from slm_jax.contract import MODALITY_MARKER, MODALITY_PAD, MODALITY_SPEECH, MODALITY_TEXT  # noqa: F401
from slm_jax.contract import SPEECH_MARKER, TEXT_MARKER
from slm_jax.text_normalization import WHITESPACE, normalize_text

SPIRITLM_TEXT_VOCAB_SIZE = 32000
UNK_STR = "<unk>"
_SEP = "\x01"  # internal separator of the TF string parser (see module docstring)
_SENTINEL_TAG = r"<extra_id_[0-9]+>"  # T5's string form of span-corruption sentinel k

# Without a SentencePiece model the text block holds only these specials.
_NO_SPM_PAD, _NO_SPM_EOS, _NO_SPM_UNK = 0, 1, 2
_NO_SPM_TEXT_SIZE = 3

ModelSpec = Union[str, os.PathLike, bytes, None]

# A run of `text_normalization.WHITESPACE` characters (what `str.split()` splits on) that is
# not already one ASCII space: one that holds another whitespace character, or 2+ characters.
# Lone ASCII spaces, most of the whitespace of normalised text, do not match, so they cost no
# replacement (measured ~3x faster than replacing every run).
_WS = "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE)
_WS_NOT_SPACE = "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE if c != " ")
_WHITESPACE_RUN_RE2 = f"[{_WS}]*[{_WS_NOT_SPACE}][{_WS}]*|[{_WS}]{{2,}}"


def normalize_text_tf(text) -> tf.Tensor:
    """`slm_jax.text_normalization.normalize_text` in TF graph ops, elementwise.

    tf.string of any shape -> tf.string of the same shape: ICU NFKC
    (`tensorflow_text.normalize_utf8`), every run of `WHITESPACE` characters -> one ASCII
    space, leading / trailing spaces removed. Agrees with the python rule on every code point
    Python's `unicodedata` knows (see the text_normalization docstring for the newer ones).
    Bytes that are not valid UTF-8 pass through unchanged, so a later strict decode (e.g.
    `add_ctc_targets`) still reports it."""
    import tensorflow_text as tf_text

    text = tf_text.normalize_utf8(tf.convert_to_tensor(text, tf.string), "NFKC")
    return tf.strings.strip(tf.strings.regex_replace(text, _WHITESPACE_RUN_RE2, " "))


def _read_model_bytes(model: ModelSpec) -> tuple[Optional[bytes], Optional[str]]:
    """Returns (serialized model, path or None); a path is read once so the vocab is self-contained."""
    if model is None:
        return None, None
    if isinstance(model, bytes):
        return model, None
    path = os.fspath(model)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read(), path
    except (tf.errors.NotFoundError, OSError) as e:
        raise ValueError(f"SpeechTextVocabulary: cannot read sentencepiece_model {path!r}: {e}") from e


class SpeechTextVocabulary(seqio.Vocabulary):
    """Text (SentencePiece) + [Text]/[Speech] markers + units + pitch + style + language tags.

    Args:
      sentencepiece_model: path (or serialized bytes) of a SentencePiece model; None for a
        unit-only vocabulary without a text codec.
      num_units, num_pitch, num_style: sizes of the speech streams (0 allowed for pitch/style).
      langs: language codes, one tag id each (tags are the codes upper-cased: "en" -> [EN]).
      num_sentinels: span-corruption sentinel ids after the language tags (>= 0; T5 uses 100).
      extra_ids: seqio extra ids after everything else.
      text_vocab_size: size of the text block. With a model it must equal the model's piece
        count (a check); without one it reserves that many placeholder ids (0 PAD, 1 EOS,
        2 UNK, the rest undecodable), which lets a unit-only corpus use a text LM's layout.
      eos_id: without a model, the EOS id inside the placeholder text block (default 1): an
        imported byte-level LLM's own end-of-text id (Llama 3 `<|end_of_text|>`, Qwen
        `<|endoftext|>`; `slm-jax import-hf` records it in hf_import.json `tokens.eos_ids`), so
        sequences end, and generation stops, where the checkpoint's did. With a model the EOS is
        the model's (ValueError if given).
    """

    def __init__(
        self,
        sentencepiece_model: ModelSpec = None,
        num_units: int = 500,
        num_pitch: int = 0,
        num_style: int = 0,
        langs: Sequence[str] = (),
        extra_ids: int = 0,
        text_vocab_size: Optional[int] = None,
        num_sentinels: int = 0,
        eos_id: Optional[int] = None,
    ):
        self._model_bytes, self._model_path = _read_model_bytes(sentencepiece_model)
        self._sp = None  # python SentencePieceProcessor, built lazily
        self._tf_tok = None  # tensorflow_text.SentencepieceTokenizer, built lazily
        for name, value, minimum in (
            ("num_units", num_units, 1),
            ("num_pitch", num_pitch, 0),
            ("num_style", num_style, 0),
            ("extra_ids", extra_ids, 0),
            ("num_sentinels", num_sentinels, 0),
        ):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"SpeechTextVocabulary: {name} must be an int >= {minimum}, got {value!r}")
        self._num_units, self._num_pitch, self._num_style = int(num_units), int(num_pitch), int(num_style)
        self._num_sentinels = int(num_sentinels)
        self._langs = self._check_langs(langs)
        self._init_text_block(text_vocab_size, eos_id)
        self._model_digest = hashlib.sha256(self._model_bytes).hexdigest() if self._model_bytes else None
        super().__init__(extra_ids=int(extra_ids))

    @classmethod
    def spiritlm(cls, sentencepiece_model: ModelSpec = None, num_sentinels: int = 0) -> "SpeechTextVocabulary":
        """SpiritLM's token space: 32000 text ids, 501 HuBERT units, 64 pitch, 100 style codes.

        The model must have exactly 32000 pieces (Llama-2's); with None the 32000 text ids
        are placeholders (speech-only data in SpiritLM's id layout, no text codec).
        `num_sentinels` span-corruption sentinels are appended after [St99] (SpiritLM's ids
        unchanged).
        """
        vocab = cls(
            sentencepiece_model,
            num_units=501,
            num_pitch=64,
            num_style=100,
            text_vocab_size=None if sentencepiece_model is not None else SPIRITLM_TEXT_VOCAB_SIZE,
            num_sentinels=num_sentinels,
        )
        if vocab.text_vocab_size != SPIRITLM_TEXT_VOCAB_SIZE:
            raise ValueError(
                f"SpeechTextVocabulary.spiritlm: sentencepiece_model {vocab._model_name()} has "
                f"{vocab.text_vocab_size} pieces; SpiritLM's layout needs exactly "
                f"{SPIRITLM_TEXT_VOCAB_SIZE} (the Llama-2 tokenizer)"
            )
        return vocab

    # --- construction helpers ---------------------------------------------------------
    @staticmethod
    def _check_langs(langs: Sequence[str]) -> tuple[str, ...]:
        if isinstance(langs, (str, bytes)):
            raise ValueError(
                f"SpeechTextVocabulary: langs must be a sequence of codes, got the string {langs!r}"
            )
        out = []
        for lang in langs:
            if not isinstance(lang, str) or not lang or re.search(r"[\[\]\s\x01]", lang):
                raise ValueError(
                    f"SpeechTextVocabulary: language code {lang!r} must be a non-empty string without "
                    "brackets or whitespace"
                )
            if lang.upper() in [x.upper() for x in out]:
                raise ValueError(
                    f"SpeechTextVocabulary: language {lang!r} is listed twice in langs={list(langs)}"
                )
            out.append(lang)
        return tuple(out)

    def _init_text_block(self, text_vocab_size: Optional[int], eos_id: Optional[int] = None) -> None:
        if self._model_bytes is None:
            n = _NO_SPM_TEXT_SIZE if text_vocab_size is None else int(text_vocab_size)
            if n < _NO_SPM_TEXT_SIZE:
                raise ValueError(
                    f"SpeechTextVocabulary: text_vocab_size must be >= {_NO_SPM_TEXT_SIZE} "
                    f"(PAD, EOS, UNK), got {text_vocab_size}"
                )
            eos = _NO_SPM_EOS if eos_id is None else eos_id
            if not isinstance(eos, (int, np.integer)) or isinstance(eos, bool) or not 0 < eos < n:
                raise ValueError(f"SpeechTextVocabulary: eos_id must be an int in [1, text_vocab_size={n}) (0 is PAD), "
                                 f"got {eos_id!r}")
            unk = _NO_SPM_UNK if eos != _NO_SPM_UNK else _NO_SPM_EOS  # keep UNK off the EOS id
            self._text_size, self._pad, self._eos, self._unk = n, _NO_SPM_PAD, int(eos), unk
            return
        if eos_id is not None:
            raise ValueError(f"SpeechTextVocabulary: eos_id={eos_id} is for vocabularies without a sentencepiece_model; "
                             f"{self._model_name()}'s EOS is its own")
        sp = self.sp_processor
        n = sp.get_piece_size()
        if text_vocab_size is not None and int(text_vocab_size) != n:
            raise ValueError(
                f"SpeechTextVocabulary: text_vocab_size={text_vocab_size} but sentencepiece_model "
                f"{self._model_name()} has {n} pieces"
            )
        if sp.eos_id() < 0:
            raise ValueError(
                f"SpeechTextVocabulary: sentencepiece_model {self._model_name()} has no EOS piece; "
                "train it with eos_id set (see slm_jax.data.tokenizers.spm.train_sentencepiece)"
            )
        self._text_size = n
        self._pad = sp.pad_id() if sp.pad_id() >= 0 else 0  # no pad piece: seqio's 0 (see docstring)
        self._eos, self._unk = sp.eos_id(), sp.unk_id()

    def _model_name(self) -> str:
        return repr(self._model_path) if self._model_path else "<bytes>"

    @property
    def sp_processor(self):
        """The python `sentencepiece.SentencePieceProcessor` (None without a model)."""
        if self._model_bytes is None:
            return None
        if self._sp is None:
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(self._model_bytes)
            except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
                raise ValueError(
                    f"SpeechTextVocabulary: sentencepiece_model {self._model_name()} is not a "
                    f"SentencePiece model: {e}"
                ) from e
            self._sp = sp
        return self._sp

    @property
    def tf_tokenizer(self):
        """A `tensorflow_text.SentencepieceTokenizer`, created eagerly (init_scope) so that
        functions traced later (tf.data maps) capture one shared resource."""
        self.require_text_model("tf_tokenizer")
        if self._tf_tok is None:
            import tensorflow_text as tf_text

            with tf.init_scope():
                self._tf_tok = tf_text.SentencepieceTokenizer(model=self._model_bytes, out_type=tf.int32)
        return self._tf_tok

    def require_text_model(self, what: str) -> None:
        """Raises a ValueError naming `what` when there is no SentencePiece model (text needs one)."""
        if self._model_bytes is None:
            raise ValueError(
                f"SpeechTextVocabulary.{what}: this vocabulary has no sentencepiece_model, so it "
                "cannot encode or decode text"
            )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_sp"] = None
        state["_tf_tok"] = None
        return state

    # --- layout -------------------------------------------------------------------------
    @property
    def model_digest(self) -> str | None:
        """sha256 (hex) of the SentencePiece model; corpora store it beside pre-tokenized words."""
        return self._model_digest

    @property
    def has_text_model(self) -> bool:
        return self._model_bytes is not None

    @property
    def text_vocab_size(self) -> int:
        return self._text_size

    @property
    def text_marker_id(self) -> int:
        return self._text_size

    @property
    def speech_marker_id(self) -> int:
        return self._text_size + 1

    @property
    def unit_offset(self) -> int:
        return self._text_size + 2

    @property
    def num_units(self) -> int:
        return self._num_units

    @property
    def pitch_offset(self) -> int:
        return self.unit_offset + self._num_units

    @property
    def num_pitch(self) -> int:
        return self._num_pitch

    @property
    def style_offset(self) -> int:
        return self.pitch_offset + self._num_pitch

    @property
    def num_style(self) -> int:
        return self._num_style

    @property
    def lang_offset(self) -> int:
        return self.style_offset + self._num_style

    @property
    def langs(self) -> tuple[str, ...]:
        return self._langs

    @property
    def speech_range(self) -> tuple[int, int]:
        """[start, end) of the speech ids (units, pitch, style): one contiguous block."""
        return self.unit_offset, self.lang_offset

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def bos_id(self) -> Optional[int]:
        return None  # Decoder-only: seqio shifts targets with 0 as BOS.

    @property
    def sentinel_offset(self) -> int:
        """First id of the sentinel block (== the end of the language tags)."""
        return self.lang_offset + len(self._langs)

    @property
    def num_sentinels(self) -> int:
        return self._num_sentinels

    def sentinel_id(self, k: int) -> int:
        """Id of sentinel k (``<extra_id_k>``), 0 <= k < num_sentinels: T5's order, k = 0 is the
        block's last id. ValueError naming k and the count otherwise."""
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self._num_sentinels:
            raise ValueError(f"SpeechTextVocabulary: sentinel {k!r} is out of range [0, {self._num_sentinels}) "
                             "(raise num_sentinels)")
        return self.sentinel_offset + self._num_sentinels - 1 - int(k)

    def is_sentinel(self, ids) -> np.ndarray:
        """bool, same shape as `ids`: which ids are sentinels."""
        arr = np.asarray(ids, np.int64)
        return (arr >= self.sentinel_offset) & (arr < self.sentinel_offset + self._num_sentinels)

    @property
    def _base_vocab_size(self) -> int:
        return self.sentinel_offset + self._num_sentinels

    def lang_tag_id(self, lang: str) -> int:
        """Id of the language tag of `lang` (case-insensitive: "en" and "EN" are [EN])."""
        if isinstance(lang, bytes):
            lang = lang.decode("utf-8")
        upper = [x.upper() for x in self._langs]
        if not isinstance(lang, str) or lang.upper() not in upper:
            raise ValueError(
                f"SpeechTextVocabulary: unknown language {lang!r}; known langs: {list(self._langs)}"
            )
        return self.lang_offset + upper.index(lang.upper())

    def lang_tag_id_tf(self, lang) -> tf.Tensor:
        """TF version of `lang_tag_id` for a tf.string scalar (graph-safe; an unknown
        language fails a tf.debugging.Assert that prints it and the known langs)."""
        lang = tf.strings.upper(tf.convert_to_tensor(lang, tf.string))
        known = tf.constant([x.upper() for x in self._langs] or [""], tf.string)
        match = tf.equal(known, lang)
        if not self._langs:
            match = tf.zeros_like(match)
        check = tf.debugging.Assert(
            tf.reduce_any(match),
            [
                "SpeechTextVocabulary.lang_tag_id_tf: unknown language",
                lang,
                f"known langs: {list(self._langs)}",
            ],
        )
        with tf.control_dependencies([check]):
            return tf.cast(self.lang_offset + tf.argmax(tf.cast(match, tf.int32)), tf.int32)

    def lang_tags(self) -> list[str]:
        """The tag strings of `langs`, in id order: ["[EN]", "[FR]", ...]."""
        return [f"[{x.upper()}]" for x in self._langs]

    # --- stream value -> id (numpy and TF) ------------------------------------------------
    def _to_ids_np(self, values, offset: int, count: int, what: str) -> np.ndarray:
        arr = np.asarray(values)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"SpeechTextVocabulary: {what} values must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < 0) | (arr >= count)]
        if bad.size:
            raise ValueError(
                f"SpeechTextVocabulary: {what} {int(bad.flat[0])} is out of range [0, {count})"
                f" ({bad.size} out-of-range value(s); first few: {bad.ravel()[:8].tolist()})"
            )
        return (arr + offset).astype(np.int32)

    def _to_ids_tf(self, values, offset: int, count: int, what: str) -> tf.Tensor:
        values = tf.convert_to_tensor(values)
        if not values.dtype.is_integer:
            raise ValueError(f"SpeechTextVocabulary: {what} must be an integer tensor, got {values.dtype}")
        values = tf.cast(values, tf.int64)
        in_range = tf.logical_and(values >= 0, values < count)
        check = tf.debugging.Assert(
            tf.reduce_all(in_range),
            [
                f"SpeechTextVocabulary: {what} out of range [0, {count}); offending values:",
                tf.boolean_mask(values, tf.logical_not(in_range)),
            ],
            summarize=16,
        )
        with tf.control_dependencies([check]):
            return tf.cast(values + offset, tf.int32)

    def units_to_ids(self, units) -> np.ndarray:
        return self._to_ids_np(units, self.unit_offset, self._num_units, "unit")

    def units_to_ids_tf(self, units) -> tf.Tensor:
        return self._to_ids_tf(units, self.unit_offset, self._num_units, "unit")

    def pitch_to_ids(self, pitch) -> np.ndarray:
        return self._to_ids_np(pitch, self.pitch_offset, self._num_pitch, "pitch")

    def pitch_to_ids_tf(self, pitch) -> tf.Tensor:
        return self._to_ids_tf(pitch, self.pitch_offset, self._num_pitch, "pitch")

    def style_to_ids(self, style) -> np.ndarray:
        return self._to_ids_np(style, self.style_offset, self._num_style, "style")

    def style_to_ids_tf(self, style) -> tf.Tensor:
        return self._to_ids_tf(style, self.style_offset, self._num_style, "style")

    def ids_to_units(self, ids) -> np.ndarray:
        """Inverse of `units_to_ids` (numpy); a non-unit id raises ValueError naming it."""
        arr = np.asarray(ids, dtype=np.int64)
        bad = arr[(arr < self.unit_offset) | (arr >= self.pitch_offset)]
        if bad.size:
            raise ValueError(
                f"SpeechTextVocabulary: id {int(bad.flat[0])} is not a unit id "
                f"(unit ids are [{self.unit_offset}, {self.pitch_offset}))"
            )
        return (arr - self.unit_offset).astype(np.int32)

    # --- text -----------------------------------------------------------------------------
    def encode_text(self, text: Union[str, bytes]) -> list[int]:
        """SentencePiece ids of `normalize_text(text)` (no EOS); str or UTF-8 bytes.

        ValueError without a model; TypeError for other input types."""
        self.require_text_model("encode_text")
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return list(self.sp_processor.EncodeAsIds(normalize_text(text)))

    def encode_text_tf(self, text) -> Union[tf.Tensor, tf.RaggedTensor]:
        """tf.string scalar -> int32 [n]; 1-D [B] -> int32 ragged [B, None] (no EOS); the text
        is normalised first (`normalize_text_tf`), as in `encode_text`."""
        self.require_text_model("encode_text_tf")
        text = tf.convert_to_tensor(text, tf.string)
        if text.shape.rank not in (0, 1):
            raise ValueError(
                f"SpeechTextVocabulary.encode_text_tf: expected a scalar or 1-D string, got {text.shape}"
            )
        return tf.cast(self.tf_tokenizer.tokenize(normalize_text_tf(text)), tf.int32)

    def newline_ids(self) -> list[int]:
        """Ids of a newline, for joining few-shot examples.

        The SentencePiece encoding of "\\n" when the model keeps it (Llama-2 has a byte
        piece <0x0A>); most models normalise "\\n" away, so the fallback is [EOS]: a
        separator the model has seen at every example boundary of its training data.
        """
        if self.has_text_model:
            sp = self.sp_processor
            ids = [i for i in sp.EncodeAsIds("\n") if i != self._unk and sp.IdToPiece(i) != "\u2581"]
            if ids:
                return ids
        return [self._eos]

    # --- modality ---------------------------------------------------------------------------
    def modality_ids(self, ids) -> np.ndarray:
        """Per-token modality (MODALITY_*) of an id array; ids outside the vocab raise ValueError."""
        arr = np.asarray(ids, dtype=np.int64)
        bad = arr[(arr < 0) | (arr >= self.vocab_size)]
        if bad.size:
            raise ValueError(
                f"SpeechTextVocabulary.modality_ids: id {int(bad.flat[0])} is outside the vocabulary "
                f"[0, {self.vocab_size})"
            )
        return self._modality(arr, np)

    def modality_ids_tf(self, ids) -> tf.Tensor:
        """TF version of `modality_ids` (graph-safe; out-of-vocab ids fail a tf.debugging.Assert)."""
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int64)
        ok = tf.logical_and(ids >= 0, ids < self.vocab_size)
        check = tf.debugging.Assert(
            tf.reduce_all(ok),
            [
                f"SpeechTextVocabulary.modality_ids_tf: ids outside the vocabulary [0, {self.vocab_size}):",
                tf.boolean_mask(ids, tf.logical_not(ok)),
            ],
            summarize=16,
        )
        with tf.control_dependencies([check]):
            return self._modality(ids, tf)

    def _modality(self, ids, xp):
        """Shared numpy/TF body: the layout is a handful of contiguous ranges."""
        where = xp.where
        speech_lo, speech_hi = self.speech_range
        is_speech = (ids >= speech_lo) & (ids < speech_hi)
        is_text = (ids < self._text_size) & (ids != self._pad) & (ids != self._eos)
        out = where(is_speech, MODALITY_SPEECH, MODALITY_MARKER)
        out = where(is_text, MODALITY_TEXT, out)
        out = where(ids == self._pad, MODALITY_PAD, out)
        return out.astype(np.int32) if xp is np else tf.cast(out, tf.int32)

    # --- tags -------------------------------------------------------------------------------
    def _tag_pattern(self) -> str:
        """RE2/python regex matching one known tag (whole tag, brackets included)."""
        alts = ["Text", "Speech", "Hu[0-9]+", "Pi[0-9]+", "St[0-9]+"]
        alts += [re.escape(x.upper()) for x in self._langs]
        bracketed = r"\[(?:" + "|".join(alts) + r")\]"
        return f"(?:{bracketed}|{_SENTINEL_TAG})" if self._num_sentinels else bracketed

    def _fixed_tags(self) -> tuple[list[str], list[int]]:
        """Tags with a fixed id: the markers and the language tags."""
        tags = [TEXT_MARKER, SPEECH_MARKER] + self.lang_tags()
        ids = [self.text_marker_id, self.speech_marker_id] + [
            self.lang_offset + i for i in range(len(self._langs))
        ]
        return tags, ids

    def tag_to_id(self, tag: str) -> int:
        """Id of one tag string ("[Hu3]", "[Text]", "[EN]", ...); ValueError naming it otherwise."""
        tags, ids = self._fixed_tags()
        if tag in tags:
            return ids[tags.index(tag)]
        if re.fullmatch(_SENTINEL_TAG, tag):
            return self.sentinel_id(int(tag[len("<extra_id_"):-1]))
        m = re.fullmatch(r"\[(Hu|Pi|St)([0-9]+)\]", tag)
        if not m:
            raise ValueError(f"SpeechTextVocabulary: {tag!r} is not a known tag")
        value = int(m.group(2))
        if m.group(1) == "Hu":
            return int(self.units_to_ids([value])[0])
        if m.group(1) == "Pi":
            return int(self.pitch_to_ids([value])[0])
        return int(self.style_to_ids([value])[0])

    def id_to_tag(self, i: int) -> str:
        """Tag string of a non-text id ("[Hu3]", "[Speech]", "[EN]", "<extra_id_0>"); "<unk>" for anything else."""
        i = int(i)
        tags, ids = self._fixed_tags()
        if i in ids:
            return tags[ids.index(i)]
        if self.is_sentinel(i):
            return f"<extra_id_{self.sentinel_offset + self._num_sentinels - 1 - i}>"
        for prefix, offset, count in (
            ("Hu", self.unit_offset, self._num_units),
            ("Pi", self.pitch_offset, self._num_pitch),
            ("St", self.style_offset, self._num_style),
        ):
            if offset <= i < offset + count:
                return f"[{prefix}{i - offset}]"
        return UNK_STR

    # --- seqio string API: python -------------------------------------------------------------
    def _encode(self, s: Union[str, bytes]) -> list[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        if not isinstance(s, str):
            raise TypeError(f"SpeechTextVocabulary.encode: expected a string, got {type(s).__name__}")
        out: list[int] = []
        for piece in re.split("(" + self._tag_pattern() + ")", s):
            if not piece:
                continue
            if re.fullmatch(self._tag_pattern(), piece):
                out.append(self.tag_to_id(piece))
            elif normalize_text(piece):
                if not self.has_text_model:
                    raise ValueError(
                        f"SpeechTextVocabulary.encode: text span {piece[:80]!r} in {s[:80]!r} but this "
                        "vocabulary has no sentencepiece_model"
                    )
                out.extend(self.encode_text(piece))
        return out

    def _is_text_id(self, i: int) -> bool:
        return 0 <= i < self._text_size and i not in (self._pad, self._eos)

    def _decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        run: list[int] = []

        def flush():
            if run:
                out.append(self.sp_processor.DecodeIds(list(run)))
                run.clear()

        for i in ids:
            i = int(i)
            if i in (self._pad, self._eos):
                continue
            if self.has_text_model and self._is_text_id(i):
                run.append(i)
                continue
            flush()
            out.append(self.id_to_tag(i))
        flush()
        return "".join(out)

    # --- seqio string API: TF -----------------------------------------------------------------
    def _encode_tf(self, s) -> Union[tf.Tensor, tf.RaggedTensor]:
        """Scalar string -> int32 [n]; 1-D [B] -> ragged int32 [B, None]."""
        s = tf.convert_to_tensor(s, tf.string)
        if s.shape.rank == 0:
            return self._encode_one_tf(s)
        if s.shape.rank == 1:
            return tf.map_fn(
                self._encode_one_tf,
                s,
                fn_output_signature=tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
            )
        raise ValueError(f"SpeechTextVocabulary.encode_tf: expected a scalar or 1-D string, got {s.shape}")

    def _encode_one_tf(self, s: tf.Tensor) -> tf.Tensor:
        pattern = self._tag_pattern()
        pieces = tf.strings.split(tf.strings.regex_replace(s, pattern, _SEP + r"\0" + _SEP), _SEP)
        is_tag = tf.strings.regex_full_match(pieces, pattern)
        pieces = tf.where(is_tag, pieces, normalize_text_tf(pieces))  # text spans as in `encode_text`
        keep = tf.logical_or(is_tag, tf.strings.length(pieces) > 0)
        pieces, is_tag = tf.boolean_mask(pieces, keep), tf.boolean_mask(is_tag, keep)
        tags = tf.boolean_mask(pieces, is_tag)
        texts = tf.boolean_mask(pieces, tf.logical_not(is_tag))
        tag_rows = tf.RaggedTensor.from_tensor(tf.expand_dims(self._tags_to_ids_tf(tags), 1))
        if self.has_text_model:
            text_rows = tf.cast(self.tf_tokenizer.tokenize(texts), tf.int32)
        else:
            check = tf.debugging.Assert(
                tf.equal(tf.size(texts), 0),
                ["SpeechTextVocabulary.encode_tf: text spans but no sentencepiece_model:", texts, "in", s],
                summarize=8,
            )
            with tf.control_dependencies([check]):
                text_rows = tf.RaggedTensor.from_row_lengths(
                    tf.zeros([0], tf.int32), tf.zeros([tf.size(texts)], tf.int64)
                )
        # Put tag rows and text rows back in input order.
        tag_int, text_int = tf.cast(is_tag, tf.int32), 1 - tf.cast(is_tag, tf.int32)
        order = tf.where(
            is_tag,
            tf.shape(texts)[0] + tf.cumsum(tag_int, exclusive=True),
            tf.cumsum(text_int, exclusive=True),
        )
        rows = tf.concat([text_rows, tag_rows], axis=0)
        return tf.gather(rows, order).flat_values

    def _tags_to_ids_tf(self, tags: tf.Tensor) -> tf.Tensor:
        """Tag strings [T] -> int32 ids [T], range-checked (bad tags printed)."""
        fixed, fixed_ids = self._fixed_tags()
        eq = tf.equal(tf.expand_dims(tags, 1), tf.constant(fixed, tf.string)[tf.newaxis, :])
        fixed_id = tf.reduce_sum(tf.where(eq, tf.constant(fixed_ids, tf.int64)[tf.newaxis, :], 0), axis=1)
        is_numbered = tf.strings.regex_full_match(tags, r"\[(?:Hu|Pi|St)[0-9]+\]")
        digits = tf.where(is_numbered, tf.strings.regex_replace(tags, r"[^0-9]", ""), "0")
        number = tf.strings.to_number(digits, out_type=tf.int64)
        prefix = tf.strings.substr(tags, 1, 2)
        ok = tf.reduce_any(eq, axis=1)
        ids = fixed_id
        if self._num_sentinels:
            is_sentinel = tf.strings.regex_full_match(tags, _SENTINEL_TAG)
            k = tf.strings.to_number(tf.where(is_sentinel, tf.strings.regex_replace(tags, r"[^0-9]", ""), "0"),
                                     out_type=tf.int64)
            ok = tf.logical_or(ok, tf.logical_and(is_sentinel, k < self._num_sentinels))
            ids = tf.where(is_sentinel, self.sentinel_offset + self._num_sentinels - 1 - k, ids)
        for name, offset, count in (
            ("Hu", self.unit_offset, self._num_units),
            ("Pi", self.pitch_offset, self._num_pitch),
            ("St", self.style_offset, self._num_style),
        ):
            is_kind = tf.logical_and(is_numbered, tf.equal(prefix, name))
            ok = tf.logical_or(ok, tf.logical_and(is_kind, number < count))
            ids = tf.where(is_kind, number + offset, ids)
        check = tf.debugging.Assert(
            tf.reduce_all(ok),
            ["SpeechTextVocabulary.encode_tf: tag out of range:", tf.boolean_mask(tags, tf.logical_not(ok))],
            summarize=16,
        )
        with tf.control_dependencies([check]):
            return tf.cast(ids, tf.int32)

    def _decode_tf(self, ids) -> tf.Tensor:
        """int ids [..., n] -> string [...]; PAD/EOS dropped, text runs through SentencePiece."""
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
        if ids.shape.rank == 1:
            return self._decode_one_tf(ids)
        if ids.shape.rank is None or ids.shape.rank == 0:
            raise ValueError(f"SpeechTextVocabulary.decode_tf: expected ids of rank >= 1, got {ids.shape}")
        lead = tf.shape(ids)[:-1]
        flat = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
        out = tf.map_fn(self._decode_one_tf, flat, fn_output_signature=tf.TensorSpec([], tf.string))
        return tf.reshape(out, lead)

    def _decode_one_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.boolean_mask(ids, tf.logical_and(tf.not_equal(ids, self._pad), tf.not_equal(ids, self._eos)))
        is_text = tf.logical_and(ids >= 0, ids < self._text_size)
        if not self.has_text_model:
            is_text = tf.zeros_like(is_text)  # each text id renders alone as <unk>
        starts = tf.concat([[True], tf.logical_not(tf.logical_and(is_text[1:], is_text[:-1]))], 0)
        starts = starts[: tf.size(ids)]
        row_ids = tf.cumsum(tf.cast(starts, tf.int64)) - 1
        first = tf.boolean_mask(ids, starts)
        row_is_text = tf.boolean_mask(is_text, starts)
        tag_str = self._ids_to_tags_tf(first)
        if self.has_text_model:
            rows = tf.RaggedTensor.from_value_rowids(
                tf.where(is_text, ids, 0), row_ids, nrows=tf.cast(tf.size(first), tf.int64)
            )
            row_str = tf.where(row_is_text, self.tf_tokenizer.detokenize(rows), tag_str)
        else:
            row_str = tag_str
        return tf.strings.reduce_join(row_str, separator="")

    def _ids_to_tags_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Non-text ids [R] -> tag strings [R] ("<unk>" where an id has no tag)."""
        out = tf.fill(tf.shape(ids), UNK_STR)
        for prefix, offset, count in (
            ("Hu", self.unit_offset, self._num_units),
            ("Pi", self.pitch_offset, self._num_pitch),
            ("St", self.style_offset, self._num_style),
        ):
            inside = tf.logical_and(ids >= offset, ids < offset + count)
            out = tf.where(inside, "[" + prefix + tf.strings.as_string(ids - offset) + "]", out)
        fixed, fixed_ids = self._fixed_tags()
        for tag, i in zip(fixed, fixed_ids):
            out = tf.where(tf.equal(ids, i), tag, out)
        if self._num_sentinels:
            lo, n = self.sentinel_offset, self._num_sentinels
            inside = tf.logical_and(ids >= lo, ids < lo + n)
            out = tf.where(inside, "<extra_id_" + tf.strings.as_string(lo + n - 1 - ids) + ">", out)
        return out

    # --- identity --------------------------------------------------------------------------------
    def _key(self):
        return (
            self._model_digest,
            self._text_size,
            self._num_units,
            self._num_pitch,
            self._num_style,
            tuple(x.upper() for x in self._langs),
            self.extra_ids,
            self._num_sentinels,
            self._eos,
        )

    def __eq__(self, other):
        if not isinstance(other, SpeechTextVocabulary):
            return NotImplemented
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self):
        return hash((type(self).__name__,) + self._key())

    def __repr__(self):
        model = self._model_path or ("<bytes>" if self._model_bytes else None)
        return (
            f"SpeechTextVocabulary(sentencepiece_model={model!r}, text_vocab_size={self._text_size}, "
            f"num_units={self._num_units}, num_pitch={self._num_pitch}, num_style={self._num_style}, "
            f"langs={list(self._langs)}, num_sentinels={self._num_sentinels}, extra_ids={self.extra_ids}"
            + (f", eos_id={self._eos})" if self._model_bytes is None and self._eos != _NO_SPM_EOS else ")")
        )


def sentinel_block(vocabulary) -> tuple[int, int]:
    """(first id, count) of a vocabulary's span-corruption sentinels (sentinel k at first + count - 1 - k):
    the `num_sentinels` block of a `SpeechTextVocabulary` (also behind a `registration.LazyVocabulary`);
    (0, 0) for any other vocabulary. seqio `extra_ids` are NOT sentinels here (they decode as <unk>)."""
    vocabulary = getattr(vocabulary, "real", vocabulary)
    count = int(getattr(vocabulary, "num_sentinels", 0) or 0)
    return (vocabulary.sentinel_offset, count) if count else (0, 0)
