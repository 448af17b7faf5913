"""`slm-jax data show|stats TASK_OR_MIXTURE`: what a task or mixture feeds the model."""

from __future__ import annotations

import argparse
import sys

from slm_jax import gin_utils
from slm_jax.data import inspect_data
from slm_jax.data.inspect_data import rates_for_token_shares, show, stats


def data_main(argv) -> int:
    modules = [a.split("=", 1)[1] for a in argv if a.startswith("--module_import=")]
    argv = [a for a in argv if not a.startswith("--module_import=")]
    gin_utils.import_modules(modules)
    parser = argparse.ArgumentParser(prog="slm-jax data", description=inspect_data.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_show = sub.add_parser("show", help="decode the first examples of a task/mixture")
    p_show.add_argument("name")
    p_show.add_argument("-n", type=int, default=3)
    p_show.add_argument("--split", default="train")
    p_show.add_argument("--sequence_length", type=int, default=None)
    p_show.add_argument("--colour", choices=["auto", "always", "never"], default="auto")
    p_stats = sub.add_parser("stats", help="token counts per task and modality")
    p_stats.add_argument("name")
    p_stats.add_argument("--split", default="train")
    p_stats.add_argument("--max_examples", type=int, default=None)
    p_stats.add_argument("--sequence_length", type=int, default=None)
    p_stats.add_argument("--token_shares", default=None,
                         help="task=share,... : print mixture rates giving these TOKEN shares (matched budgets)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as err:  # bad task name, split, shares: one line, not a traceback
        print(f"slm-jax data {args.cmd}: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.cmd == "show":
        colour = {"auto": sys.stdout.isatty(), "always": True, "never": False}[args.colour]
        print(show(args.name, args.n, args.split, args.sequence_length, colour))
        return 0
    table = stats(args.name, args.split, args.max_examples, args.sequence_length)
    keys = ["examples", "tokens", "tokens_per_example", "speech", "text", "marker", "modality_runs"]
    print("task".ljust(32) + "".join(k.rjust(20) for k in keys))
    for task, row in table.items():
        print(task.ljust(32) + "".join(f"{row.get(k, 0):20,.1f}" if isinstance(row.get(k, 0), float)
                                       else f"{row.get(k, 0):20,d}" for k in keys))
    for task, row in table.items():
        if not row["examples"]:
            print(f"warning: {inspect_data.empty_task_message(task, args.split)}", file=sys.stderr)
    for task, row in table.items():  # record repairs and skips (slm_jax.data.inspect_data._record_checks)
        if "repaired_words" in row or "skipped_records" in row:
            print(f"{task}: repaired_words={row.get('repaired_words', 0)} (took the frame they lie in) "
                  f"skipped_records={row.get('skipped_records', 0)} {row.get('skipped_because', '')}".rstrip())
    if args.token_shares:
        try:
            shares = {t: float(v) for t, v in (item.split("=") for item in args.token_shares.split(","))}
        except ValueError:
            raise ValueError(f"--token_shares={args.token_shares!r}: expected task=share,task=share") from None
        rates = rates_for_token_shares({t: r["tokens_per_example"] for t, r in table.items()}, shares)
        print("\nmixture rates for the requested token shares (register_mixture(name, [(task, rate), ...])):")
        for task, rate in rates.items():
            print(f"  ({task!r}, {rate:.6f}),")
    return 0
