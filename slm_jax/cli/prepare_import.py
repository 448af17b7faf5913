"""`slm-jax prepare import`: slamkit/textlesslib/SpiritLM unit dumps -> validated corpus shards.

Prints what was written and the import report (how each unit rate was found, run lengths
expanded, text normalised, words repaired, keys not read); exit 1 with one line naming the
file:line, record, field and expectation on bad input (see slm_jax.data.corpus.importers)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slm_jax.data import corpus
from slm_jax.data.corpus.importers import (
    FORMATS,
    DEFAULT_NUM_UNITS,
    SPIRITLM_NUM_PITCH,
    SPIRITLM_NUM_STYLE,
    SPIRITLM_PITCH_RATE_HZ,
    SPIRITLM_STYLE_RATE_HZ,
    BadRecordError,
    import_to_tfrecord,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="slm-jax prepare import",
        description="Convert slamkit / textlesslib JSONL (--format=slamkit), textlesslib transcribe.py "
        ".units/.durations files (--format=textlesslib) or SpiritLM strings (--format=spiritlm) into "
        "validated slm_jax TFRecord shards.",
    )
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--input", required=True, help="glob of JSONL files, or of .units files for textlesslib "
                   "(gs:// works)")
    p.add_argument("--output", required=True, help="DIR/PREFIX of the shards")
    p.add_argument("--lang", default="en", help="language of records without a 'lang' key")
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--on_bad_record", default="error", choices=corpus.ON_BAD_RECORD_CHOICES)
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
    args = _parser().parse_args(list(argv))
    try:
        summary = import_to_tfrecord(
            args.format,
            args.input,
            args.output,
            lang=args.lang,
            num_shards=args.num_shards,
            on_bad_record=args.on_bad_record,
            num_units=args.num_units,
            num_pitch=args.num_pitch,
            num_style=args.num_style,
            unit_rate_hz=args.unit_rate_hz,
            pitch_rate_hz=args.pitch_rate_hz,
            style_rate_hz=args.style_rate_hz,
        )
    except (BadRecordError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"slm-jax prepare import: error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary['written']} record(s) to {len(summary['shards'])} shard(s) "
        f"({args.output}-*-of-{len(summary['shards']):05d}.tfrecord); skipped {summary['skipped']}"
    )
    for what, count in summary["report"].items():
        print(f"  {what}: {count}")
    return 0
