"""`slm-jax units fit|encode`: audio -> k-means codebook -> units JSONL (slm_jax.speech.pipeline)."""

from __future__ import annotations

import argparse
import os
import sys

from slm_jax.speech.pipeline import BAD_RECORD_POLICIES, encode_folder, fit_codebook

# --- CLI -----------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", required=True, help="folder (every *.wav below it), glob, or one WAV file")
    p.add_argument("--features", default="logmel",
                   help="logmel | mfcc | hubert:PATH:LAYER | whisper:PATH[:LAYER] (default: logmel)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--frame_stack", type=int, default=None, help="average N consecutive feature frames")
    rate.add_argument("--rate_hz", type=float, default=None, help="unit rate: feature rate / a whole number")
    p.add_argument("--on_bad_record", choices=BAD_RECORD_POLICIES, default="error",
                   help="undecodable audio: stop with an error naming the file, or skip it and count it")
    p.add_argument("--device", default=None, help="torch device for hubert/whisper (default: cuda if any)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-jax units", description="Audio -> k-means speech units.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a k-means codebook on audio features, save it as .npy")
    _add_common(fit)
    fit.add_argument("--out", required=True, help="codebook file (.npy, [k, dim] float32)")
    fit.add_argument("--k", type=int, default=500, help="number of clusters (default 500)")
    fit.add_argument("--max_frames", type=int, default=1_000_000, help="uniform sample of frames to fit on")
    fit.add_argument("--iters", type=int, default=100, help="Lloyd iterations, or mini-batch steps")
    fit.add_argument("--batch_size", type=int, default=None, help="mini-batch k-means with this batch size (fast on CPU)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--no_shard", action="store_true", help="do not split k-means over the local devices")
    enc = sub.add_parser("encode", help="encode audio to a units JSONL (resumable)")
    _add_common(enc)
    enc.add_argument("--centroids", required=True, help="codebook .npy from `units fit` (or an exported one)")
    enc.add_argument("--out", required=True, help="units JSONL; existing ids are skipped, new lines appended "
                     "(OUT.meta.json records the codebook digest, features and rates; a resume must match them)")
    enc.add_argument("--reencode", action="store_true",
                     help="discard --out (and OUT.meta.json) and encode every file with this run's settings")
    return parser


def units_main(argv: list[str]) -> int:
    """`slm-jax units fit|encode ...`; returns the exit code (2 on bad input, with the reason on stderr)."""
    args = _parser().parse_args(argv)
    if args.features.startswith(("hubert:", "whisper:")):
        # torch shares the accelerator with JAX: keep JAX from reserving most of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    common = dict(features=args.features, frame_stack=args.frame_stack, rate_hz=args.rate_hz,
                  on_bad_record=args.on_bad_record, device=args.device, progress=not args.no_progress)
    try:
        if args.command == "fit":
            stats = fit_codebook(args.audio, args.out, k=args.k, max_frames=args.max_frames, seed=args.seed,
                                 iters=args.iters, batch_size=args.batch_size, shard=not args.no_shard,
                                 **common)
            print(f"fit: {stats.files} files, {stats.frames_seen} frames ({stats.frames_used} used), "
                  f"k={args.k} -> {args.out}; bad records skipped: {stats.bad_records}")
        else:
            stats = encode_folder(args.audio, args.centroids, args.out, reencode=args.reencode, **common)
            print(f"encode: {stats.encoded} files encoded, {stats.already_done} already in {args.out}; "
                  f"bad records skipped: {stats.bad_records}")
    except (ValueError, FileNotFoundError, ImportError) as err:  # UnitsCacheMismatchError is a ValueError
        print(f"slm-jax units {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0
