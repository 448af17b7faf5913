"""`slm-jax eval`: benchmarks of a run's checkpoints.

    slm-jax eval --gin_file=gin/runs/demo_cpu.gin [--gin.MODEL_DIR="'runs/demo'"] --benchmarks=demo
                 [--all_checkpoints | --step=N] [--score=mean|sum|ending|ending_sum] [--renormalize]
    slm-jax eval --gin_file=... --benchmarks=/data/zerospeech2021,/data/salmon,/data/sSC --centroids=km.npy

The gin files are the run's own (the model, mesh and task they describe are what is
evaluated; the token format is the task's). `eval` restores the latest complete checkpoint
(or each of them), writes `MODEL_DIR/eval/<step>.json`, plots benchmark accuracy over
checkpoints to `MODEL_DIR/eval/accuracy.png` (with matplotlib) and prints a table: each pair
accuracy in % with its 95% percentile-bootstrap interval over pairs, e.g. `82.5 [71.3, 92.5]`
(`slm_jax.evaluation.stats`; seed 0, 2000 resamples). Each `<step>.json` lists, per pair
benchmark, every pair's id and both scores (`details`), the interval (`metrics`:
`<acc>/ci_low`, `<acc>/ci_high`) and the target tokens seen at that step (`tokens`, from
MODEL_DIR/metrics.jsonl, when known). `slm-jax compare RUN_DIR ...` compares runs from these
records. Benchmark folders are read and paired before any audio is encoded.
"""
from __future__ import annotations

import argparse
import logging
import os

import jax

from slm_jax import gin_utils
from slm_jax.cli.common import reports
from slm_jax.evaluation import benchmarks as bench
from slm_jax.evaluation.cloze import SCORE_MODES, BadPairError, UnitsCacheError
from slm_jax.evaluation.results import interval_metrics, interval_settings, plot_accuracy, write_eval_json

log = logging.getLogger("slm_jax")


def describe_run(argv):
    """t5x-style gin flags -> (TrainRun, the other args); the run's MODEL_DIR must match its model."""
    from slm_jax.training import run_dir
    from slm_jax.training.train import TrainRun
    rest = gin_utils.setup(argv, what="the run's gin file")
    from slm_jax.data.feature_converter import run_bos_id
    run = TrainRun()
    run_dir.check_compatible(run.model_dir, run.model)
    run_dir.check_bos(run.model_dir, run_bos_id())  # the scorer and generation read the same binding
    from slm_jax.training.train import check_imported_vocabulary
    check_imported_vocabulary(run)  # an imported run scores with the id layout it was imported with
    return run, rest


def setup_run(argv):
    """t5x-style gin flags -> (TrainRun, Trainer, the other args)."""
    from slm_jax.training.train import build_trainer
    run, rest = describe_run(argv)
    return run, build_trainer(run), rest


def steps_to_evaluate(model_dir: str, step: int | None, all_checkpoints: bool) -> list[int]:
    """The complete checkpoint steps to evaluate; FileNotFoundError naming the folder and --step."""
    from slm_jax.training import checkpoints, run_dir
    ckpt_dir = run_dir.checkpoints_dir(model_dir)
    steps = checkpoints.list_complete_steps(ckpt_dir)
    if not steps:
        raise FileNotFoundError(f"MODEL_DIR={model_dir}: no complete checkpoint in {ckpt_dir}")
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(f"--step={step}: no complete checkpoint for it in {ckpt_dir}; "
                                    f"complete steps: {steps}")
        return [step]
    return steps if all_checkpoints else steps[-1:]


def restore_params(trainer, model_dir: str, step: int):
    """Only the `params` of a checkpoint, restored straight into the Trainer's shardings."""
    from slm_jax.training import run_dir
    return run_dir.restore_params(model_dir, step, abstract_params=trainer.abstract_state["params"])[1]


def run_vocabulary(run):
    """The training task's vocabulary, checked against the model's embedding rows."""
    return bench.checked_task_vocabulary(run.train_dataset.mixture_or_task_name, run.model.vocab_size)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax eval", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", required=True, help="comma-separated names (see above), or demo")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all_checkpoints", action="store_true", help="every complete checkpoint, not the latest")
    which.add_argument("--step", type=int, default=None, help="this checkpoint step only")
    p.add_argument("--score", default="mean", choices=SCORE_MODES, help="sequence score (default mean per token)")
    p.add_argument("--renormalize", action="store_true",
                   help="score ending tokens by a softmax over their own modality's ids only")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per scoring call (rounded to the mesh)")
    p.add_argument("--max_pairs", type=int, default=None, help="first N pairs of each benchmark")
    p.add_argument("--lang_tags", action="store_true", help="the task writes language tags ([EN]) before runs")
    p.add_argument("--score_sentinels", action="store_true", help="keep the vocabulary's span-corruption sentinels "
                   "in the softmax (default: left out, as the model predicts them only inside denoising targets)")
    p.add_argument("--no_dedup", action="store_true", help="the task keeps repeated units")
    p.add_argument("--no_markers", action="store_true", help="the task writes no [Speech]/[Text] markers")
    p.add_argument("--data_dir", default=None, help="data dir of registered benchmarks (default $SLM_JAX_DATA_DIR)")
    p.add_argument("--centroids", default=None, help="benchmark folders: the k-means codebook (.npy) of the "
                   "model's units; units are cached in OUT_DIR/units, keyed by codebook digest, features, "
                   "frame stack, unit rate and sample rate")
    p.add_argument("--features", default="logmel", help="benchmark folders: features (see slm-jax units)")
    p.add_argument("--frame_stack", type=int, default=None, help="benchmark folders: frames averaged per unit")
    p.add_argument("--rate_hz", type=float, default=None, help="benchmark folders: unit rate")
    p.add_argument("--out_dir", default=None, help="where <step>.json and the plot go (default MODEL_DIR/eval)")
    p.add_argument("--no_plot", action="store_true")
    return p


def _eval_options(args, out_dir: str) -> bench.EvalOptions:
    return bench.EvalOptions(score=args.score, renormalize=args.renormalize, batch_size=args.batch_size,
                             max_pairs=args.max_pairs, dedup=not args.no_dedup, markers=not args.no_markers,
                             lang_tags=args.lang_tags, data_dir=args.data_dir, centroids=args.centroids,
                             features=args.features, frame_stack=args.frame_stack, rate_hz=args.rate_hz,
                             units_cache_dir=os.path.join(out_dir, "units"), score_sentinels=args.score_sentinels)


@reports("slm-jax eval", bench.BenchmarkError, BadPairError, UnitsCacheError, FileNotFoundError)
def cmd_eval(argv) -> int:
    from slm_jax.evaluation.runner import ModelRunner
    from slm_jax.training import run_dir
    from slm_jax.training.train import build_trainer
    run, rest = describe_run(argv)
    args = parser().parse_args(rest)
    out_dir = args.out_dir or run_dir.eval_dir(run.model_dir)
    options = _eval_options(args, out_dir)
    # cheap checks first: names and folder layouts, checkpoints; then audio is encoded, then the model built
    specs = bench.parse_benchmarks(args.benchmarks)
    steps = steps_to_evaluate(run.model_dir, args.step, args.all_checkpoints)
    suite = bench.BenchmarkSuite(specs, run_vocabulary(run), options)
    trainer = build_trainer(run)
    by_step = {}
    for step in steps:
        runner = ModelRunner.from_trainer(trainer, restore_params(trainer, run.model_dir, step))
        detailed = suite.run_detailed(runner)
        detailed.update(interval_metrics(detailed))  # 95% bootstrap interval of each pair accuracy
        by_step[step] = {k: v for k, v in detailed.items() if isinstance(v, float)}
        if jax.process_index() == 0:  # every process computed the same replicated results
            path = write_eval_json(out_dir, step, detailed, options, run.model_dir, interval_settings())
            log.info("step %d: %s", step, path)
    print(f"model_dir: {run.model_dir}  steps: {' '.join(map(str, steps))}  score: {options.score}")
    print(bench.format_steps_table(by_step))
    for suite, table in bench.suite_tables(args.benchmarks, by_step[steps[-1]]):
        print(f"\n{suite} benchmarks at step {steps[-1]}:")
        print(table)
    if not args.no_plot and jax.process_index() == 0:
        plot = plot_accuracy(out_dir)
        if plot:
            print(f"plot: {plot}")
    return 0


