"""`slm-jax import-hf`: a local HF Llama/Qwen2/Qwen3 checkpoint -> step 0 of a MODEL_DIR."""

from __future__ import annotations

import argparse
import sys

from slm_jax import gin_utils
from slm_jax.training.run_dir import read_bos_record
from slm_jax.interop.hf_import import (
    LAYOUTS,
    MODEL_GIN,
    BosConventionError,
    CheckpointMismatchError,
    UnsupportedModelError,
    VocabLayoutError,
    import_hf,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax import-hf", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="local Hugging Face checkpoint directory (config.json + safetensors)")
    p.add_argument("--out", required=True, help="MODEL_DIR to create")
    p.add_argument("--vocab_layout", choices=LAYOUTS, default="none",
                   help="none: keep the text vocabulary; speech: append SpeechTextVocabulary's speech ranges; "
                        "spiritlm: SpiritLM's ids (Llama-2 vocabulary)")
    p.add_argument("--num_units", type=int, default=500)
    p.add_argument("--num_pitch", type=int, default=0)
    p.add_argument("--num_style", type=int, default=0)
    p.add_argument("--langs", default="", help="language tags, comma-separated (e.g. en,fr)")
    p.add_argument("--num_sentinels", type=int, default=0,
                   help="span-corruption sentinels <extra_id_N> after the speech tokens (denoising tasks; T5: 100)")
    p.add_argument("--pad_vocab_to", type=int, default=None,
                   help="pad the vocabulary to a multiple of this (default 128 with speech tokens, 1 without)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new embedding rows")
    p.add_argument("--param_dtype", default=None, help="DecoderConfig.param_dtype (default: the run's)")
    p.add_argument("--no_scan_layers", action="store_true", help="DecoderConfig.scan_layers=False")
    p.add_argument("--bos_id", type=int, default=None,
                   help="the input before every sequence's first token (default: the checkpoint's: the BOS its "
                        "tokenizer adds, else bos_token_id, else eos_token_id of config.json)")
    return p


def cmd_import_hf(argv) -> int:
    args = _parser().parse_args(gin_utils.setup(argv, required=False))
    vocab = dict(layout=args.vocab_layout, num_units=args.num_units, num_pitch=args.num_pitch,
                 num_style=args.num_style, langs=[x for x in args.langs.split(",") if x],
                 pad_to_multiple=args.pad_vocab_to, num_sentinels=args.num_sentinels)
    options = {"param_dtype": args.param_dtype} if args.param_dtype else {}
    if args.no_scan_layers:
        options["scan_layers"] = False
    try:
        cfg = import_hf(args.path, args.out, vocab=vocab, seed=args.seed, decoder_options=options, bos_id=args.bos_id)
    except (UnsupportedModelError, CheckpointMismatchError, VocabLayoutError, BosConventionError, FileNotFoundError,
            FileExistsError) as err:
        print(f"slm-jax import-hf: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    bos = read_bos_record(args.out)
    print(f"BOS: id {bos['bos_id']} ({bos['source']})")
    print(f"imported {args.path} ({cfg.num_params() / 1e6:.1f}M params, vocab {cfg.vocab_size}) as step 0 of "
          f"{args.out}\ntrain it with: slm-jax train --gin_file=RUN.gin --gin_file={args.out}/{MODEL_GIN} "
          f"--gin.MODEL_DIR=\"'{args.out}'\"")
    return 0
