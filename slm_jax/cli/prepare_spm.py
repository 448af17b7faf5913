"""`slm-jax prepare spm`: SentencePiece on corpus transcripts or text files.

Every transcript is normalised with `slm_jax.text_normalization.normalize_text` (NFKC +
whitespace collapse) and the model uses SentencePiece's `identity` rule (see
`slm_jax.data.tokenizers.spm`). Exit 1 with one line on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from slm_jax.data.tokenizers.spm import _iter_corpus_texts, _iter_text_files, train_sentencepiece


def spm_main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: trains a model from corpus shards (--input) or plain text files (--text_files)."""
    p = argparse.ArgumentParser(prog="slm-jax prepare spm", description="Train a SentencePiece model (0 PAD, 1 EOS, 2 UNK) on "
                                "transcripts normalised with NFKC + whitespace collapse.")
    p.add_argument("--input", help="glob of corpus shards (read with slm_jax.data.corpus.iter_utterances)")
    p.add_argument("--text_files", help="glob of text files, one transcript per line")
    p.add_argument("--model_prefix", required=True)
    p.add_argument("--vocab_size", type=int, required=True)
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    p.add_argument("--character_coverage", type=float, default=1.0)
    args = p.parse_args(argv)
    if bool(args.input) == bool(args.text_files):
        p.error("give exactly one of --input or --text_files")
    try:
        texts = list(_iter_corpus_texts(args.input) if args.input else _iter_text_files(args.text_files))
        if not texts:  # SentencePiece would only say "training on 0 sentences failed"
            raise ValueError(f"--input={args.input!r}: no record has a `text` or `words` field to train on"
                             if args.input else f"--text_files={args.text_files!r}: every line is blank")
        path = train_sentencepiece(
            texts, args.model_prefix, args.vocab_size, args.model_type, args.character_coverage
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"slm-jax prepare spm: {e}", file=sys.stderr)
        return 1
    logging.info("wrote %s", path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(spm_main())
