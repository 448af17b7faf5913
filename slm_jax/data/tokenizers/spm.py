"""Train a SentencePiece model for the text block of `SpeechTextVocabulary`.

The ids follow the T5/seqio convention (0 PAD, 1 EOS, 2 UNK, no BOS) so padding with 0
and `seqio` feature converters work unchanged. Training is deterministic: the sentences
are read in order (`shuffle_input_sentence=false`) up to `input_sentence_size`.

CLI: `python -m slm_jax.data.tokenizers.spm --input='corpus/*.tfrecord' --model_prefix=spm/en
--vocab_size=8000` (corpus shards via `slm_jax.data.corpus.iter_utterances`), or
`--text_files='transcripts/*.txt'` (one transcript per line).
"""

from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator, Optional, Sequence

MAX_INPUT_SENTENCES = 10_000_000


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    input_sentence_size: int = MAX_INPUT_SENTENCES,
) -> str:
    """Trains a model on `texts` and returns the path of `<model_prefix>.model`."""
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
            t = t.decode("utf-8") if isinstance(t, bytes) else t
            if t and t.strip():
                count[0] += 1
                yield t

    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_prefix=model_prefix,
            vocab_size=int(vocab_size),
            model_type=model_type,
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
    try:
        from slm_jax.data.corpus import iter_utterances
    except ImportError as e:
        raise SystemExit(f"spm: --input needs slm_jax.data.corpus ({e}); use --text_files instead")
    for utt in iter_utterances(pattern):
        text = getattr(utt, "text", None)
        if text:
            yield text.decode("utf-8") if isinstance(text, bytes) else text


def _iter_text_files(pattern: str) -> Iterator[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"spm: --text_files={pattern!r} matches no file")
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    yield line
