"""`slm-jax prepare pair`: join parallel EN/FR corpus records into the paired shards that
sentence-level cross-lingual interleaving reads (`slm_jax.data.corpus.pair_parallel`).

    slm-jax prepare pair --input="DIR/speech/train-*.tfrecord" --output=DIR/paired/train [--num_shards=N]
                         [--lang_a=en --lang_b=fr] [--on_bad_record=error|skip]

Input: corpus TFRecords (`slm-jax prepare import` output) holding both languages; records are
joined by `parallel_id`, one per language, with the same unit rate and sentence count (sentence
i of one side translates sentence i of the other). Records without a parallel_id in these two
languages are counted and not paired. Exit 1 with one line naming the ids on a bad group
(or, with --on_bad_record=skip, skipped and counted).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax prepare pair", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="glob of corpus TFRecords holding both languages")
    p.add_argument("--output", required=True, help="DIR/PREFIX of the paired shards")
    p.add_argument("--lang_a", default="en")
    p.add_argument("--lang_b", default="fr")
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--on_bad_record", default="error", choices=("error", "skip"))
    return p


def pair_main(argv: Sequence[str]) -> int:
    import os

    from slm_jax.data import corpus
    args = _parser().parse_args(list(argv))
    if args.num_shards < 1:
        print(f"slm-jax prepare pair: error: --num_shards={args.num_shards} must be >= 1", file=sys.stderr)
        return 1
    try:
        records = corpus.pair_parallel(corpus.read_tfrecord(args.input), args.lang_a, args.lang_b,
                                       on_bad_record=args.on_bad_record, source=args.input)
        if not records:
            raise ValueError(f"--input={args.input}: no {args.lang_a}/{args.lang_b} record pair shares a parallel_id")
        out_dir, prefix = os.path.split(args.output)
        shards = corpus.write_paired_tfrecord_shards(out_dir or ".", prefix, records, args.num_shards)
    except (corpus.BadRecordError, FileNotFoundError, ValueError) as e:
        print(f"slm-jax prepare pair: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(records)} {args.lang_a}/{args.lang_b} pair(s) to {len(shards)} shard(s) ({args.output}-*)")
    return 0
