"""Evaluation results on disk: `MODEL_DIR/eval/<step>.json` records and the accuracy plot."""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

log = logging.getLogger("slm_jax")
PLOT_FILE = "accuracy.png"


def write_eval_json(out_dir: str, step: int, detailed: dict, options, model_dir: str) -> str:
    """`<out_dir>/<step>.json`, written whole (temp file + rename)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{step}.json")
    record = {"step": step, "model_dir": model_dir,
              "metrics": {k: v for k, v in detailed.items() if isinstance(v, float)},
              "details": {k: v for k, v in detailed.items() if not isinstance(v, float)},
              "options": dataclasses.asdict(options)}
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


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
