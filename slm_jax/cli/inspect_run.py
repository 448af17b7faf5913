"""`slm-jax inspect MODEL_DIR [--step N]`: checkpoint steps, size, params hash, tokens seen, loss
summary, token budget, launches."""
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
    _print_tokens(args.model_dir, step)
    _print_metrics_summary(args.model_dir)
    _print_token_budget(args.model_dir)
    _print_launches(args.model_dir)
    return 0


def _fmt(value, spec: str) -> str:
    """A logged value, or 'n/a' where the step had none (null / absent / non-finite)."""
    if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        return "n/a"
    return format(value, spec)


def _print_metrics_summary(model_dir: str) -> None:
    """First/last logged loss, per-modality losses where the run had them, the latest eval
    loss and speed, if metrics exist."""

    import tensorflow as tf
    path = run_dir.metrics_path(model_dir)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return
    first, last = rows[0], rows[-1]
    print(f"train_loss: {_fmt(first.get('loss'), '.4f')} (step {first['step']}) -> "
          f"{_fmt(last.get('loss'), '.4f')} (step {last['step']})")
    # a modality the run never had (e.g. text in a unit-only run) is not printed at all
    for key in ("loss_text", "loss_speech", "ctc_loss"):
        logged = [r for r in rows if isinstance(r.get(key), (int, float))]
        if logged:
            print(f"{key}: {_fmt(logged[-1][key], '.4f')} (step {logged[-1]['step']})")
    evals = [r for r in rows if r.get("eval_loss") is not None]
    if evals:
        print(f"eval_loss: {_fmt(evals[-1]['eval_loss'], '.4f')} (step {evals[-1]['step']})")
    print(f"tokens_per_second: {_fmt(last.get('tokens_per_second'), ',.0f')}")


def _print_tokens(model_dir: str, step: int) -> None:
    """The cumulative token counts saved with checkpoint `step` (one `tokens/*` key a line), or
    why there are none."""
    record = checkpoints.read_token_counts(run_dir.checkpoints_dir(model_dir), step)
    counts = (record or {}).get("counts")
    if not counts:
        print("tokens: n/a (a checkpoint saved before token accounting, or an import-hf step 0)")
        return
    print(f"tokens/target: {counts.get('tokens/target', 0):,} (step {step})")
    for key in sorted(k for k in counts if k != "tokens/target"):
        print(f"  {key}: {counts[key]:,}")


def _print_token_budget(model_dir: str) -> None:
    """`token_budget.json` of a run with TRAIN_TOKENS: the budget, the measured rates and the estimate."""
    record = run_dir.read_token_budget(model_dir)
    if record is None:
        return
    print(f"token_budget ({run_dir.TOKEN_BUDGET_FILE}): train_tokens {_fmt(record.get('train_tokens'), ',')}, estimated_steps "
          f"{record.get('estimated_steps')}, target_tokens_per_step {_fmt(record.get('target_tokens_per_step'), ',.1f')} "
          f"(packing_efficiency {_fmt(record.get('packing_efficiency'), '.3f')}, target_fraction "
          f"{_fmt(record.get('target_fraction'), '.3f')}, {record.get('probe_batches')} probe batches, measured at "
          f"step {record.get('start_step', 0)})")


def _print_launches(model_dir: str) -> None:
    """One line per launch of `launches.jsonl`: number, UTC time, steps, config file, changes."""
    launches = run_dir.read_launches(model_dir)
    if not launches:
        return
    print(f"launches: {len(launches)} (first launch's config: {run_dir.CONFIG_GIN})")
    for r in launches:
        changed = ", ".join(r.get("changed") or []) or "-"
        print(f"  {r.get('launch')}: {r.get('time')} steps {r.get('start_step')} -> {r.get('train_steps')} "
              f"config {r.get('config')} changed: {changed}")
