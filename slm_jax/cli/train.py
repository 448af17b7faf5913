"""`slm-jax train --gin_file=RUN.gin [--gin.NAME=VALUE ...] [--module_import=my_tasks]`.

Parses the run's gin, builds the in-training benchmark scorer when `train.benchmarks` is
set (so an unknown benchmark fails before compiling), trains and prints a summary.
"""
from __future__ import annotations

import math

import jax

import gin
from slm_jax import gin_utils
from slm_jax.training.train import TrainRun, run_training


def main(argv) -> int:
    gin_utils.setup(argv, other_args=False)
    run = TrainRun()
    benchmark_fn = None
    if run.benchmarks and run.benchmark_period:
        from slm_jax.evaluation.benchmarks import in_training_scorer
        benchmark_fn = in_training_scorer(run.benchmarks, run.train_dataset.mixture_or_task_name)
    last = run_training(run, config_str=gin.config_str(), benchmark_fn=benchmark_fn)
    if jax.process_index() != 0:  # one summary per job, like the logs
        return 0
    if last and "preempted_at_step" in last:
        print(f"preempted: checkpoint at step {last['preempted_at_step']} in {run.model_dir}; "
              "run the same command again to resume")
    elif last:
        # never "nan" for a metric without values (e.g. loss_text of a unit-only run)
        shown = ", ".join(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}=n/a"
                          for k, v in last.items() if isinstance(v, float))
        print(f"done: step {last['step']}: {shown}")
    if last and "tokens/target" in last:
        budget = f" of TRAIN_TOKENS={run.train_tokens:,}" if run.train_tokens is not None else ""
        reached = " (already reached: nothing trained)" if last.get("budget_reached") else ""
        print(f"tokens: {last['tokens/target']:,} target tokens{budget} at step {last['step']}{reached}")
    print(f"MODEL_DIR: {run.model_dir}")
    return 0
