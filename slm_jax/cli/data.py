"""`slm-jax data show|stats TASK_OR_MIXTURE`: what a task or mixture feeds the model;
`slm-jax data cache TASK_OR_MIXTURE...`: SeqIO's offline cache of tasks on Apache Beam
(`slm_jax.data.beam_cache`; read with `DatasetConfig.use_cached=True`)."""

from __future__ import annotations

import argparse
import sys

from slm_jax import gin_utils
from slm_jax.data import inspect_data
from slm_jax.data.inspect_data import rates_for_token_shares, show, stats


def data_main(argv) -> int:
    # --gin_file / --gin.NAME=VALUE / --module_import as in train, so a run's data settings (e.g. the
    # denoisers of gin/data/ul2.gin) show here as they train
    _, _, modules, _ = gin_utils.split_gin_args(argv)
    argv = gin_utils.setup(argv, required=False)
    parser = argparse.ArgumentParser(
        prog="slm-jax data", description=inspect_data.__doc__,
        epilog="Every subcommand also takes --module_import=MODULE (your tasks), --gin_file=FILE and "
               "--gin.NAME=VALUE (e.g. a run file, so gin-configured preprocessing shows as it trains).")
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
    p_cache = sub.add_parser(
        "cache", help="preprocess tasks up to their cache point into SeqIO's offline cache (Apache Beam)",
        description="Caches tasks (a mixture: its tasks) for DatasetConfig.use_cached=True. Flags not listed here go "
        "to Apache Beam's PipelineOptions (e.g. --direct_num_workers=4, or --project/--region/--temp_location "
        "with --runner=DataflowRunner). Needs pip install -e '.[beam]'.")
    p_cache.add_argument("names", nargs="+", metavar="TASK_OR_MIXTURE")
    p_cache.add_argument("--cache_dir", default=None,
                         help="where caches go (default $SLM_JAX_DATA_DIR/seqio_cache; gs:// works)")
    p_cache.add_argument("--runner", default="DirectRunner",
                         help="Beam runner: DirectRunner (local), DataflowRunner, FlinkRunner, SparkRunner, ...")
    p_cache.add_argument("--split", action="append", default=None, help="cache only this split (repeatable)")
    p_cache.add_argument("--overwrite", action="store_true", help="rebuild caches that are already complete")
    p_cache.add_argument("--base_seed", type=int, default=None,
                         help="seed of seeded pre-cache preprocessors (seqio's rule: + a hash of task and shard)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.cmd != "cache":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.beam_args, args.modules = extra, modules
    try:
        return _run(args)
    except ValueError as err:  # bad task name, split, shares: one line, not a traceback
        print(f"slm-jax data {args.cmd}: {err}", file=sys.stderr)
        return 2


def _cache(args) -> int:
    try:
        from slm_jax.data import beam_cache
    except ImportError as e:
        raise ValueError(f"needs Apache Beam: pip install -e '.[beam]' ({e})") from None
    out = beam_cache.run_task_cache(args.names, args.cache_dir, runner=args.runner, pipeline_args=args.beam_args,
                                    modules=args.modules, splits=args.split, overwrite=args.overwrite,
                                    base_seed=args.base_seed)
    for task in out["skipped"]:
        print(f"{task}: already cached in {out['cache_dir']} (--overwrite rebuilds it)")
    for task, splits in out["cached"].items():
        for split, stats in splits.items():
            print(f"{task} {split}: {stats.get('examples', 0):,} examples, {stats.get('targets_tokens', 0):,} "
                  "targets tokens")
    print(f"cache dir: {out['cache_dir']} (train with --gin.train/DatasetConfig.use_cached=True "
          f"--gin.train/DatasetConfig.cache_dir=\"'{out['cache_dir']}'\")")
    return 0


def _run(args) -> int:
    if args.cmd == "cache":
        return _cache(args)
    if args.cmd == "show":
        colour = {"auto": sys.stdout.isatty(), "always": True, "never": False}[args.colour]
        print(show(args.name, args.n, args.split, args.sequence_length, colour))
        return 0
    table = stats(args.name, args.split, args.max_examples, args.sequence_length)
    keys = ["examples", "tokens", "loss_tokens", "tokens_per_example", "speech", "text", "marker", "modality_runs"]
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
