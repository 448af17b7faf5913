"""`slm-jax prepare demo-corpus|spm|import|pair`: build or import corpora, train SentencePiece.

`demo-corpus` needs espeak-ng: when it is missing, broken or lacks a voice, the command prints
one line saying what and how to install it (`make espeak`, or apt-get install -y espeak-ng)
and exits 2, before any synthesis; other bad input (a ValueError) is one line too.
"""
from __future__ import annotations

import sys

PREPARE_HELP = """slm-jax prepare demo-corpus [--data_dir=DIR] [--num_stories=N] [--num_benchmark_stories=N]   spoken EN/FR demo corpus + cloze pairs
slm-jax prepare spm --input=GLOB --model_prefix=P --vocab_size=N        SentencePiece on corpus transcripts
slm-jax prepare import --format=slamkit|textlesslib|spiritlm --input=GLOB --output=DIR/PREFIX   import unit corpora
slm-jax prepare pair --input=GLOB --output=DIR/PREFIX [--lang_a=en --lang_b=fr]   parallel records -> paired shards"""


def main(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(PREPARE_HELP)
        return 0 if argv else 2
    what, rest = argv[0], argv[1:]
    if what == "spm":
        from slm_jax.cli.prepare_spm import spm_main
        return spm_main(rest)
    if what == "import":
        from slm_jax.cli.prepare_import import import_main
        return import_main(rest)
    if what == "pair":
        from slm_jax.cli.prepare_pair import pair_main
        return pair_main(rest)
    if what == "demo-corpus":
        # the demo is a consumer of slm_jax; this forward keeps the documented command working
        from slm_jax_demo.corpus import EspeakError, demo_corpus_main
        try:
            return demo_corpus_main(rest)
        except (EspeakError, ValueError) as err:  # no/broken espeak-ng, or a bad flag value
            print(f"slm-jax prepare demo-corpus: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
    print(f"slm-jax prepare: unknown target {what!r}\n{PREPARE_HELP}", file=sys.stderr)
    return 2
