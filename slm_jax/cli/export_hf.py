"""`slm-jax export-hf`: a MODEL_DIR checkpoint -> HF safetensors (+ tokenizer)."""

from __future__ import annotations

import argparse
import sys

from slm_jax.interop import hf_layout
from slm_jax.interop.hf_export import DEFAULT_MAX_SHARD, ModelDirError, UnsupportedModelError, export_hf, parse_size


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax export-hf", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="directory to write (new or empty)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--family", choices=sorted(hf_layout.CAUSAL_LM_CLASSES), default=None,
                   help="default: the imported model's, else qwen2 with q/k/v biases, qwen3 with q/k norm, llama without")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="weight dtype (default: the checkpoint's param dtype)")
    p.add_argument("--max_shard_size", type=parse_size, default=DEFAULT_MAX_SHARD,
                   help=f"largest safetensors file before sharding (default {DEFAULT_MAX_SHARD})")
    return p


def cmd_export_hf(argv) -> int:
    args = _parser().parse_args(argv)
    try:
        result = export_hf(args.model_dir, args.out, step=args.step, family=args.family, dtype=args.dtype,
                           max_shard_size=args.max_shard_size)
    except (ModelDirError, UnsupportedModelError, FileExistsError) as err:
        print(f"slm-jax export-hf: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    print(f"exported step {result.step} of {args.model_dir} as {hf_layout.CAUSAL_LM_CLASSES[result.family]} to "
          f"{args.out} ({len(result.files)} safetensors file(s))\n{result.tokenizer}\n{result.bos}")
    return 0
