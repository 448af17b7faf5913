"""`slm-jax inspect MODEL_DIR [--step N]`: checkpoint steps, size, params hash, loss summary."""
from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from slm_jax.training import checkpoints, run_dir


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="slm-jax inspect", description="Checkpoint steps, size and params hash.")
    parser.add_argument("model_dir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)
    steps = checkpoints.list_complete_steps(run_dir.checkpoints_dir(args.model_dir))
    print(f"model_dir: {args.model_dir}")
    print(f"checkpoint_steps: {' '.join(map(str, steps)) or '(none)'}")
    step, params = run_dir.restore_params(args.model_dir, args.step)
    leaves = jax.tree.leaves(params)
    print(f"step: {step}")
    print(f"num_params: {sum(int(np.prod(x.shape)) for x in leaves)}")
    print(f"params_sha256: {checkpoints.params_sha256(params)}")
    _print_metrics_summary(args.model_dir)
    return 0


def _print_metrics_summary(model_dir: str) -> None:
    """First/last logged loss and the latest eval loss and speed, if metrics exist."""

    import tensorflow as tf
    path = run_dir.metrics_path(model_dir)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return
    first, last = rows[0], rows[-1]
    print(f"train_loss: {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} (step {last['step']})")
    evals = [r for r in rows if r.get("eval_loss") is not None]
    if evals:
        print(f"eval_loss: {evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})")
    print(f"tokens_per_second: {last['tokens_per_second']:,.0f}")
