"""`slm-jax units fit|encode|verify`: audio -> k-means codebook -> units JSONL (slm_jax.speech.pipeline),
on one machine or on many workers (slm_jax.speech.workers), and the check that workers left no gaps."""

from __future__ import annotations

import argparse
import os
import sys

from slm_jax.speech import verify as verify_lib
from slm_jax.speech import workers as workers_lib
from slm_jax.speech.pipeline import BAD_RECORD_POLICIES, encode_folder, fit_codebook, fit_from_samples

WORKERS_HELP = ("Workers: each of N workers reads only its own files (file id -> sha256 mod N) and writes its own "
                "output; worker index/count from --worker_index/--num_workers, else a SLURM array "
                "(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), else the JAX process "
                "index/count (TPU VM slice hosts), else one worker.")

# --- CLI -----------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser, audio_required: bool = True) -> None:
    p.add_argument("--audio", required=audio_required, help="folder (every *.wav below it), glob, or one WAV file")
    p.add_argument("--features", default=None,
                   help="logmel | mfcc | hubert:PATH:LAYER | whisper:PATH[:LAYER] (default: logmel)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--frame_stack", type=int, default=None, help="average N consecutive feature frames")
    rate.add_argument("--rate_hz", type=float, default=None, help="unit rate: feature rate / a whole number")
    p.add_argument("--on_bad_record", choices=BAD_RECORD_POLICIES, default="error",
                   help="undecodable audio: stop with an error naming the file, or skip it and count it")
    p.add_argument("--device", default=None, help="torch device for hubert/whisper (default: cuda if any)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--worker_index", type=int, default=None, help="this worker, 0-based (with --num_workers)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="number of workers sharing --audio (with --worker_index; default: SLURM array, JAX, or 1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-jax units", description="Audio -> k-means speech units.",
                                     epilog=WORKERS_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit", help="fit a k-means codebook on audio features, save it as .npy",
        epilog="Several workers: each samples frames of its own files into OUT.frames-IIIII-of-NNNNN.npz; then ONE "
               "`units fit --from_samples --out=OUT --k=K` fits on all samples together. Every frame's sampling key "
               "depends only on (seed, file id, frame index), so with --worker_max_frames at its default the merged "
               "sample is exactly the frames one process would sample (same seed -> same codebook). " + WORKERS_HELP)
    _add_common(fit, audio_required=False)
    fit.add_argument("--out", required=True, help="codebook file (.npy, [k, dim] float32)")
    fit.add_argument("--k", type=int, default=500, help="number of clusters (default 500)")
    fit.add_argument("--max_frames", type=int, default=None,
                     help="uniform sample of frames to fit on (default 1000000)")
    fit.add_argument("--worker_max_frames", type=int, default=None,
                     help="several workers: frames each keeps (default --max_frames: exact; less bounds each "
                          "sample file to N x dim x 4 bytes, the merged sample is then every frame under a cutoff)")
    fit.add_argument("--iters", type=int, default=100, help="Lloyd iterations, or mini-batch steps")
    fit.add_argument("--batch_size", type=int, default=None, help="mini-batch k-means with this batch size (fast on CPU)")
    fit.add_argument("--seed", type=int, default=None, help="sampling and k-means seed (default 0)")
    fit.add_argument("--no_shard", action="store_true", help="do not split k-means over the local devices")
    fit.add_argument("--from_samples", action="store_true",
                     help="fit on the samples the workers wrote (features, seed and sample size come from them; "
                          "with --audio, first check the workers read every file exactly once)")
    enc = sub.add_parser("encode", help="encode audio to a units JSONL (resumable)",
                         epilog="Several workers: worker I of N writes OUT's shard ROOT-IIIII-of-NNNNN.EXT (with its "
                                "own sidecar) and resumes it on its own; check them with `units verify`. "
                                + WORKERS_HELP)
    _add_common(enc)
    enc.add_argument("--centroids", required=True, help="codebook .npy from `units fit` (or an exported one)")
    enc.add_argument("--out", required=True, help="units JSONL; existing ids are skipped, new lines appended "
                     "(OUT.meta.json records the codebook digest, features and rates; a resume must match them)")
    enc.add_argument("--reencode", action="store_true",
                     help="discard --out (and OUT.meta.json) and encode every file with this run's settings")
    ver = sub.add_parser("verify", help="check that the workers' shards hold every audio file exactly once",
                         epilog="Reads --out and every ROOT-IIIII-of-NNNNN.EXT shard of it (never writes); exits 1 "
                                "naming missing, duplicated and unlisted ids, absent shards and shards made with "
                                "another codebook or settings. Files skipped as bad records count as missing.")
    ver.add_argument("--audio", required=True, help="the --audio the workers encoded")
    ver.add_argument("--out", required=True, help="the --out the workers were given")
    ver.add_argument("--show", type=int, default=50, help="ids listed per kind of problem (default 50; 0: all)")
    return parser


def _listed(ids, show: int) -> str:
    ids = list(ids)
    shown = ids if show <= 0 else ids[:show]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" ... and {more} more" if more else "")


def _verify(args) -> int:
    report = verify_lib.verify_units(args.audio, args.out)
    account = report.account
    print(f"verify: {report.files} audio files, {report.records} records in {len(report.shards)} output(s) of "
          f"{args.out}")
    for problem in report.problems:
        print(f"  problem: {problem}")
    if account.missing:
        print(f"  missing ({len(account.missing)} files in --audio, in no shard): "
              f"{_listed(account.missing, args.show)}")
    if account.duplicated:
        dup = [f"{i} ({' and '.join(places)})" for i, places in account.duplicated.items()]
        print(f"  duplicated ({len(dup)} ids in more than one place): {_listed(dup, args.show)}")
    if account.extra:
        print(f"  not in --audio ({len(account.extra)} ids in shards only): {_listed(account.extra, args.show)}")
    if report.ok:
        print("verify: OK, every audio file encoded exactly once with one codebook and settings")
        return 0
    print("verify: FAILED", file=sys.stderr)
    return 1


def _resolve_worker(args):
    worker = workers_lib.resolve_worker(args.worker_index, args.num_workers)
    print(f"units {args.command}: {worker.describe()}")
    return worker


def _fit_from_samples(args) -> int:
    taken = [f"--{name}" for name in ("features", "frame_stack", "rate_hz", "seed", "max_frames", "worker_max_frames",
                                      "worker_index", "num_workers") if getattr(args, name) is not None]
    if taken:
        raise ValueError(f"--from_samples: {', '.join(taken)} come from the workers' samples; drop them")
    stats = fit_from_samples(args.out, k=args.k, iters=args.iters, batch_size=args.batch_size,
                             shard=not args.no_shard, audio_source=args.audio)
    print(f"fit: {stats.files} files, {stats.frames_seen} frames ({stats.frames_used} used) from the workers' "
          f"samples, k={args.k} -> {args.out}; bad records skipped: {stats.bad_records}")
    return 0


def units_main(argv: list[str]) -> int:
    """`slm-jax units fit|encode|verify ...`; returns the exit code (2 on bad input, with the reason on
    stderr; `verify`: 1 when the shards are incomplete or inconsistent)."""
    args = _parser().parse_args(argv)
    if (getattr(args, "features", None) or "").startswith(("hubert:", "whisper:")):
        # torch shares the accelerator with JAX: keep JAX from reserving most of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        if args.command == "verify":
            return _verify(args)
        if args.command == "fit" and args.from_samples:
            return _fit_from_samples(args)
        if args.command == "fit" and args.audio is None:
            raise ValueError("--audio is required (except with --from_samples)")
        common = dict(features=args.features or "logmel", frame_stack=args.frame_stack, rate_hz=args.rate_hz,
                      on_bad_record=args.on_bad_record, device=args.device, progress=not args.no_progress)
        worker = _resolve_worker(args)
        if args.command == "fit":
            stats = fit_codebook(args.audio, args.out, k=args.k, seed=args.seed or 0,
                                 max_frames=1_000_000 if args.max_frames is None else args.max_frames,
                                 worker_max_frames=args.worker_max_frames, iters=args.iters,
                                 batch_size=args.batch_size, shard=not args.no_shard, worker=worker, **common)
            if stats.sample_path is None:
                print(f"fit: {stats.files} files, {stats.frames_seen} frames ({stats.frames_used} used), "
                      f"k={args.k} -> {args.out}; bad records skipped: {stats.bad_records}")
            else:
                done = "already sampled" if stats.skipped else "sampled"
                print(f"fit: {stats.files} files {done}, {stats.frames_seen} frames ({stats.frames_used} kept) -> "
                      f"{stats.sample_path}; bad records skipped: {stats.bad_records}. When all {worker.count} "
                      f"workers are done: slm-jax units fit --from_samples --out={args.out} --k=K "
                      f"--audio={args.audio}")
        else:
            stats = encode_folder(args.audio, args.centroids, args.out, reencode=args.reencode, worker=worker,
                                  **common)
            share = f" (this worker's share: {stats.files} files)" if worker.count > 1 else ""
            print(f"encode: {stats.encoded} files encoded, {stats.already_done} already in {stats.out_path}{share}; "
                  f"bad records skipped: {stats.bad_records}")
    except (ValueError, FileNotFoundError, ImportError) as err:  # UnitsCacheMismatchError is a ValueError
        print(f"slm-jax units {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0
