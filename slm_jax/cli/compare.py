"""`slm-jax compare`: is run B better than run A? Accuracy with 95% intervals and paired tests.

    slm-jax compare RUN_DIR [RUN_DIR ...] [--step=N | --tokens=T] [--budget_tolerance=0.02]
                    [--allow_budget_mismatch] [--out=compare] [--resamples=2000] [--seed=0] [--no_plot]

Reads only `RUN_DIR/eval/<step>.json` (written by `slm-jax eval`; RUN_DIR is the run's
MODEL_DIR): no model is built, nothing is compiled. One step per run: `--step=N`, the
evaluated step whose target tokens seen is closest to `--tokens=T`, or the latest evaluated
step. The FIRST run is the reference: each other run is compared with it on every pair
benchmark all runs hold, on the same pairs (matched by id): accuracy difference with its
paired-bootstrap 95% interval and p-value, and McNemar's exact p
(`slm_jax.evaluation.stats`). Runs whose target tokens seen differ from the reference's by
more than --budget_tolerance (relative), or are unknown, are refused (exit 2) unless
--allow_budget_mismatch, which flags them in the table. Writes OUT/compare.json (everything
in the table, plus every evaluated step's accuracy) and OUT/compare.png (accuracy vs tokens
seen, one panel per benchmark, one line per run, 95% error bars). Exit 2 on bad input.
"""
from __future__ import annotations

import argparse

from slm_jax.cli.common import reports
from slm_jax.evaluation import compare, stats


def _tokens(value: str) -> float:
    """`--tokens`: a count such as 1000000, 1e6 or 1_000_000."""
    try:
        n = float(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens (e.g. 2e9), got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected >= 0 tokens, got {value!r}")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="MODEL_DIRs with eval/<step>.json; the first "
                   "is the reference")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="compare this evaluated step of every run")
    which.add_argument("--tokens", type=_tokens, default=None,
                       help="per run, the evaluated step whose target tokens seen is closest to T")
    p.add_argument("--budget_tolerance", type=float, default=compare.DEFAULT_TOLERANCE,
                   help="largest relative difference of tokens seen from the reference (default 0.02)")
    p.add_argument("--allow_budget_mismatch", action="store_true",
                   help="compare runs of other (or unknown) token budgets anyway; the table flags them")
    p.add_argument("--out", default="compare", help="folder for compare.json and compare.png (default ./compare)")
    p.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed")
    p.add_argument("--no_plot", action="store_true", help="write no PNG")
    return p


@reports("slm-jax compare", ValueError, FileNotFoundError)  # CompareError, PairMismatchError, bad records
def main(argv) -> int:
    args = parser().parse_args(argv)
    if args.resamples < 1:
        raise compare.CompareError(f"--resamples={args.resamples} must be >= 1")
    choices = [compare.choose_step(d, compare.load_records(d), args.step, args.tokens) for d in args.run_dirs]
    result = compare.compare_runs(choices, args.resamples, args.seed, args.budget_tolerance,
                                  args.allow_budget_mismatch)
    print(compare.format_compare_table(result))
    for path in compare.write_outputs(result, args.out, plot=not args.no_plot):
        print(f"wrote {path}")
    return 0
