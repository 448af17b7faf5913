"""`slm-jax prepare import`: slamkit/textlesslib/SpiritLM unit dumps -> validated corpus shards.

Streams (memory does not grow with the corpus) in one process, or runs as an Apache Beam
pipeline with `--runner=DirectRunner|DataflowRunner|FlinkRunner|...` (the `beam` extra; any
other `--flag=value` is passed to Beam's PipelineOptions). Prints what was written, the skipped
records per kind and the import report (how each unit rate was found, run lengths expanded,
text normalised, words repaired, keys not read); exit 1 with one line naming the file:line,
record, field and expectation on bad input (see slm_jax.data.corpus.importers)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slm_jax.data import corpus
from slm_jax.data.corpus.import_run import IMPORT_FORMATS, import_to_tfrecord
from slm_jax.data.corpus.importers import (
    DEFAULT_NUM_UNITS,
    SPIRITLM_NUM_PITCH,
    SPIRITLM_NUM_STYLE,
    SPIRITLM_PITCH_RATE_HZ,
    SPIRITLM_STYLE_RATE_HZ,
    BadRecordError,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slm-jax prepare import",
        description="Convert slamkit / textlesslib JSONL (--format=slamkit), textlesslib transcribe.py "
        ".units/.durations files (--format=textlesslib) or SpiritLM strings (--format=spiritlm) into "
        "validated slm_jax TFRecord shards (--format=slm_jax: re-validate and re-shard slm_jax JSONL/TFRecord "
        "corpus files). Flags not listed here go to Apache Beam's PipelineOptions when --runner is given.",
    )
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    p.add_argument("--input", required=True, help="glob of JSONL files, or of .units files for textlesslib "
                   "(gs:// works)")
    p.add_argument("--output", required=True, help="DIR/PREFIX of the shards")
    p.add_argument("--lang", default="en", help="language of records without a 'lang' key")
    shards = p.add_mutually_exclusive_group()
    shards.add_argument("--num_shards", type=int, default=None,
                        help="this many contiguous, balanced shards (default 1; Beam: 0 lets the runner choose)")
    shards.add_argument("--shard_size_mb", type=float, default=None,
                        help="a new shard when the current one would pass this many MiB (single process only)")
    p.add_argument("--on_bad_record", default="error", choices=corpus.ON_BAD_RECORD_CHOICES)
    p.add_argument("--bad_records_out", default=None,
                   help="with --on_bad_record=skip: write each skipped record's file:line, kind and reason "
                   "here (JSONL; Beam: PATH-SSSSS-of-NNNNN.jsonl shards)")
    p.add_argument("--runner", default=None,
                   help="run as an Apache Beam pipeline on this runner (DirectRunner locally; DataflowRunner, "
                   "FlinkRunner, SparkRunner, ...); needs pip install -e '.[beam]'")
    p.add_argument("--num_units", type=int, default=None,
                   help=f"unit ids are in [0, num_units); default per format {DEFAULT_NUM_UNITS}")
    p.add_argument("--num_pitch", type=int, default=SPIRITLM_NUM_PITCH)
    p.add_argument("--num_style", type=int, default=SPIRITLM_NUM_STYLE)
    p.add_argument(
        "--unit_rate_hz",
        type=float,
        default=None,
        help="for every record (a record's own 'unit_rate_hz' key must agree). Omitted: the record's key, "
        "else slamkit: len(units)/duration snapped to a standard encoder rate (within 2 frames), "
        "spiritlm: 25",
    )
    p.add_argument("--pitch_rate_hz", type=float, default=SPIRITLM_PITCH_RATE_HZ)
    p.add_argument("--style_rate_hz", type=float, default=SPIRITLM_STYLE_RATE_HZ)
    return p


def import_main(argv: Sequence[str]) -> int:
    """CLI `slm-jax prepare import --format=.. --input=GLOB --output=DIR/PREFIX ..`; returns the exit code."""
    args, beam_args = _parser().parse_known_args(list(argv))
    if beam_args and args.runner is None:
        _parser().error(f"unrecognized arguments: {' '.join(beam_args)} (Beam pipeline options need --runner)")
    kwargs = dict(
        lang=args.lang,
        num_shards=args.num_shards,
        on_bad_record=args.on_bad_record,
        bad_records_out=args.bad_records_out,
        num_units=args.num_units,
        num_pitch=args.num_pitch,
        num_style=args.num_style,
        unit_rate_hz=args.unit_rate_hz,
        pitch_rate_hz=args.pitch_rate_hz,
        style_rate_hz=args.style_rate_hz,
    )
    try:
        if args.runner is None:
            summary = import_to_tfrecord(args.format, args.input, args.output, shard_size_mb=args.shard_size_mb,
                                         **kwargs)
        else:
            if args.shard_size_mb is not None:
                raise ValueError("--shard_size_mb is for the single-process import; with --runner give --num_shards "
                                 "(0: the runner chooses)")
            try:
                from slm_jax.data.corpus import beam_import
            except ImportError as e:
                raise ValueError(f"--runner={args.runner} needs Apache Beam: pip install -e '.[beam]' ({e})") from None
            summary = beam_import.run_beam_import(args.format, args.input, args.output, runner=args.runner,
                                                  pipeline_args=beam_args, **kwargs)
    except (BadRecordError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"slm-jax prepare import: error: {e}", file=sys.stderr)
        return 1
    n = len(summary["shards"])
    print(
        f"wrote {summary['written']} record(s) to {n} shard(s) "
        f"({args.output}-*-of-{n:05d}.tfrecord); skipped {summary['skipped']}"
    )
    for kind, count in summary["skipped_by_kind"].items():
        print(f"  skipped {kind}: {count}")
    if args.bad_records_out:
        print(f"skipped records with their reasons: {args.bad_records_out}*")
    for what, count in summary["report"].items():
        print(f"  {what}: {count}")
    return 0
