"""Evaluation results on disk: `MODEL_DIR/eval/<step>.json` records and the accuracy plot.

A record (`write_eval_json`) is

    {"step": S, "model_dir": ..., "options": {EvalOptions fields},
     "metrics": {name: float, ...},        every float result, plus for each pair benchmark
                                           `<acc>/ci_low`, `<acc>/ci_high` (`interval_metrics`)
     "details": {name: other values},      `<name>/pairs` (every pair's id and both scores),
                                           `<name>/num_pairs`, alignment `per_layer`, ...
     "intervals": {"method", "confidence", "resamples", "seed"}   how the ci keys were made
     "tokens": {"target": N, "target_speech": ..., "task/<name>": ...}}   target tokens seen
                                           up to step S (MODEL_DIR/metrics.jsonl); absent when unknown

`<acc>` is the metric that IS the flat mean over pairs (`flat_accuracy_key`): `<name>` for a
pair file, `<name>/pair_mean` for a benchmark folder (whose `<name>` is the official
aggregation: ZeroSpeech's by-item mean has no interval here; see `stats`).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Any

from slm_jax.evaluation import stats
from slm_jax.training import run_dir

log = logging.getLogger("slm_jax")
PLOT_FILE = "accuracy.png"
CI_LOW, CI_HIGH = "ci_low", "ci_high"
TOKENS_PREFIX = "tokens/"
INTERVAL_METHOD = "percentile bootstrap over pairs (Efron & Tibshirani 1993)"


def write_eval_json(out_dir: str, step: int, detailed: dict, options, model_dir: str,
                    intervals: dict[str, Any] | None = None) -> str:
    """`<out_dir>/<step>.json` (module docstring), written whole (temp file + rename).

    `intervals`: how the `ci_*` metrics in `detailed` were made (`interval_settings`), when
    they were; `tokens` is read from `model_dir`'s metrics.jsonl (`tokens_at_step`)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{step}.json")
    record = {"step": step, "model_dir": model_dir,
              "metrics": {k: v for k, v in detailed.items() if isinstance(v, float)},
              "details": {k: v for k, v in detailed.items() if not isinstance(v, float)},
              "options": dataclasses.asdict(options)}
    if intervals is not None:
        record["intervals"] = intervals
    tokens = tokens_at_step(model_dir, step)
    if tokens is not None:
        record["tokens"] = tokens
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def tokens_at_step(model_dir: str, step: int) -> dict[str, int] | None:
    """Target tokens seen from step 0 up to `step`, from `MODEL_DIR/metrics.jsonl`: the
    `tokens/*` keys of the last line logged at `step` that has `tokens/target` (the training
    loop writes one at every checkpoint step), without the prefix, e.g. `{"target": N,
    "target_speech": ..., "task/<name>": ...}`. None when the file or such a line is missing.
    ValueError naming the file and line when a line is not JSON."""
    path = run_dir.metrics_path(model_dir)
    if not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err})") from err
            if row.get("step") == step and f"{TOKENS_PREFIX}target" in row:
                found = {k[len(TOKENS_PREFIX):]: v for k, v in row.items() if k.startswith(TOKENS_PREFIX)}
    return found


def pair_benchmark_names(details: dict[str, Any]) -> list[str]:
    """The pair benchmarks of a record: names with a `<name>/pairs` list and `<name>/num_pairs`."""
    suffix = "/pairs"
    return sorted(k[:-len(suffix)] for k, v in details.items()
                  if k.endswith(suffix) and isinstance(v, list) and f"{k[:-len(suffix)]}/num_pairs" in details)


ALIGNMENT_ITEM_METRICS = ("cos_parallel", "cos_gap")  # per-item values of an alignment result with intervals


def alignment_benchmark_names(details: dict[str, Any]) -> list[str]:
    """The alignment benchmarks of a record that kept per-item values (`<name>/items`)."""
    suffix = "/items"
    return sorted(k[:-len(suffix)] for k, v in details.items() if k.endswith(suffix) and isinstance(v, list) and v
                  and isinstance(v[0], dict) and "cos_parallel" in v[0])


def alignment_item_values(items: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """item id -> value of `metric` (ALIGNMENT_ITEM_METRICS): `cos_parallel`, or `cos_gap` =
    cos_parallel - cos_random (the item's similarity to its translation beyond its similarity to
    the other items' translations; its mean is the record's cos_parallel - cos_random)."""
    if metric == "cos_gap":
        return {str(x["id"]): float(x["cos_parallel"]) - float(x["cos_random"]) for x in items}
    return {str(x["id"]): float(x[metric]) for x in items}


def flat_accuracy_key(name: str, metrics: dict[str, Any]) -> str:
    """The metric that is the flat mean over pairs of benchmark `name`: `<name>/pair_mean` for a
    benchmark folder (which has one), else `<name>`."""
    return f"{name}/pair_mean" if f"{name}/pair_mean" in metrics else name


def interval_settings(resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> dict[str, Any]:
    """The record's `intervals` entry: how its `ci_*` metrics were made."""
    return {"method": INTERVAL_METHOD, "confidence": stats.CONFIDENCE, "resamples": resamples, "seed": seed}


def interval_metrics(detailed: dict[str, Any], resamples: int = stats.DEFAULT_RESAMPLES,
                     seed: int = stats.DEFAULT_SEED) -> dict[str, float]:
    """`{<acc>/ci_low, <acc>/ci_high}` for every pair benchmark of `detailed` (a
    `BenchmarkSuite.run_detailed` result), `<acc>` its `flat_accuracy_key`: the 95% percentile
    bootstrap interval over its pairs (`stats.accuracy_interval`); for every alignment benchmark
    with per-item values, `<name>/cos_parallel` and `<name>/cos_gap` with their intervals over items."""
    out = {}
    for name in pair_benchmark_names(detailed):
        wins = list(stats.wins_of_record_pairs(detailed[f"{name}/pairs"]).values())
        interval = stats.accuracy_interval(wins, resamples, seed)
        key = flat_accuracy_key(name, detailed)
        out[f"{key}/{CI_LOW}"], out[f"{key}/{CI_HIGH}"] = interval.low, interval.high
    for name in alignment_benchmark_names(detailed):
        for metric in ALIGNMENT_ITEM_METRICS:
            values = list(alignment_item_values(detailed[f"{name}/items"], metric).values())
            interval = stats.accuracy_interval(values, resamples, seed)  # a mean over items, like an accuracy
            out[f"{name}/{metric}"] = interval.estimate
            out[f"{name}/{metric}/{CI_LOW}"], out[f"{name}/{metric}/{CI_HIGH}"] = interval.low, interval.high
    return out


def read_eval_records(out_dir: str) -> dict[int, dict]:
    """step -> the record `write_eval_json` wrote."""
    records = {}
    for path in glob.glob(os.path.join(out_dir, "*.json")):
        with open(path) as f:
            record = json.load(f)
        records[int(record["step"])] = record
    return records


def accuracy_series(records: dict[int, dict]) -> dict[str, list[tuple[int, float]]]:
    """Pair-benchmark accuracy over steps (a pair benchmark is one with a `<name>/num_pairs`)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(records):
        metrics, details = records[step]["metrics"], records[step]["details"]
        for name, value in metrics.items():
            if f"{name}/num_pairs" in details:
                series.setdefault(name, []).append((step, value))
    return series


def plot_accuracy(out_dir: str) -> str | None:
    """Accuracy of every pair benchmark over the evaluated checkpoints (PNG), if matplotlib is there."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no accuracy plot (pip install matplotlib)")
        return None
    series = accuracy_series(read_eval_records(out_dir))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(series.items()):
        ax.plot([s for s, _ in points], [100 * v for _, v in points], marker="o", label=os.path.basename(name))
    ax.axhline(50, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("benchmark accuracy over checkpoints")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    path = os.path.join(out_dir, PLOT_FILE)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
