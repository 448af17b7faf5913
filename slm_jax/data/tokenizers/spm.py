"""Train a SentencePiece model for the text block of `SpeechTextVocabulary`.

The ids follow the T5/seqio convention (0 PAD, 1 EOS, 2 UNK, no BOS) so padding with 0
and `seqio` feature converters work unchanged. Training is deterministic: the sentences
are read in order (`shuffle_input_sentence=false`) up to `input_sentence_size`.

Text normalisation (`slm_jax.text_normalization`, issue 13): every sentence is normalised with
`normalize_text` (NFKC + whitespace collapse) before training, and the model is trained with
SentencePiece's `identity` normalisation rule, so the model never rewrites text a second,
different way. SentencePiece's default `nmt_nfkc` is NFKC plus NMT rules that differ from ours
on already-normalised text (measured: 132 code points; it deletes control characters such as
U+0001, turns U+200B / U+200C / U+200E / U+200F / U+FEFF / U+FFFD into a space and keeps
U+FF5E), so ids of normalised text would not decode back to it. With `identity`,
`decode(encode(t)) == t` for every normalised `t` whose characters are in the model (the one
exception is U+2581 '▁', SentencePiece's own space symbol, which decodes as ' ').
`SpeechTextVocabulary.encode_text(_tf)` apply the same `normalize_text` before encoding, so raw
text (NFD, U+202F, `…`) at evaluation or generation time gets the training-time ids.

CLI: `slm-jax prepare spm --input='corpus/*.tfrecord' --model_prefix=spm/en --vocab_size=8000`
(corpus shards via `slm_jax.data.corpus.iter_utterances`), or `--text_files='transcripts/*.txt'`
(one transcript per line).
"""

from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator

from slm_jax.text_normalization import normalize_text

MAX_INPUT_SENTENCES = 10_000_000
# SentencePiece's normaliser applies no rewrite: `normalize_text` is the one rule (module docstring).
NORMALIZATION_RULE = "identity"


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = MAX_INPUT_SENTENCES,
) -> str:
    """Trains a model on `texts` and returns the path of `<model_prefix>.model`.

    `texts` (str or UTF-8 bytes, one sentence each) are normalised with `normalize_text`;
    sentences that are empty after it are not training data and are skipped. ValueError:
    bad `model_type` / `vocab_size`, or SentencePiece failing (message names the prefix, the
    settings and the number of sentences read)."""
    import sentencepiece

    if model_type not in ("unigram", "bpe", "char", "word"):
        raise ValueError(f"train_sentencepiece: model_type must be unigram|bpe|char|word, got {model_type!r}")
    if int(vocab_size) < 4:
        raise ValueError(
            f"train_sentencepiece: vocab_size must be >= 4 (PAD, EOS, UNK + pieces), got {vocab_size}"
        )
    parent = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(parent, exist_ok=True)
    count = [0]

    def sentences() -> Iterator[str]:
        for t in texts:
            t = normalize_text(t.decode("utf-8") if isinstance(t, bytes) else t)
            if t:
                count[0] += 1
                yield t

    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_prefix=model_prefix,
            vocab_size=int(vocab_size),
            model_type=model_type,
            normalization_rule_name=NORMALIZATION_RULE,
            character_coverage=float(character_coverage),
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            input_sentence_size=int(input_sentence_size),
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(
            f"train_sentencepiece: training {model_prefix!r} (vocab_size={vocab_size}, "
            f"model_type={model_type}) on {count[0]} sentences failed: {e}"
        ) from e
    return model_prefix + ".model"


def _iter_corpus_texts(pattern: str) -> Iterator[str]:
    """Transcripts of the corpus shards matching `pattern` (normalised later, in training): a
    record's `text`, else its `words` joined by spaces (records imported from slamkit's
    `aligned_text` carry only words; word-level interleaving encodes exactly those words)."""
    from slm_jax.data.corpus import iter_utterances

    for utt in iter_utterances(pattern):
        text = getattr(utt, "text", None)
        if not text and getattr(utt, "words", None):
            text = " ".join(w[0] for w in utt.words)
        if text:
            yield text.decode("utf-8") if isinstance(text, bytes) else text


def _iter_text_files(pattern: str) -> Iterator[str]:
    """Lines of the UTF-8 text files matching `pattern`, in sorted file order (one transcript
    per line; FileNotFoundError when nothing matches). Lines end at '\\n', '\\r\\n' or '\\r'
    (Python's universal newlines); U+0085 / U+2028 / U+2029 inside a line do not split it
    (normalisation turns them into spaces). A leading byte-order mark is not text: files are
    read as 'utf-8-sig'. ValueError naming the file when it is not UTF-8."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"--text_files={pattern!r} matches no file")
    for path in files:
        with open(path, encoding="utf-8-sig") as f:
            number = 0
            try:
                for number, line in enumerate(f, 1):
                    line = line.rstrip("\n")
                    if line.strip():
                        yield line
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 after line {number}: {e}") from e
