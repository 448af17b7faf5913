"""Metrics sinks (MODEL_DIR/metrics.jsonl + TensorBoard events) and MFU bookkeeping."""
from __future__ import annotations

import json
import math

import jax

from slm_jax.training import run_dir

# Dense bf16 peak FLOP/s per chip, by `device.device_kind` prefix (vendor data sheets).
PEAK_BF16_FLOPS = (
    ("NVIDIA H100", 989e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H800", 989e12),
    ("NVIDIA GH200", 989e12),
    ("NVIDIA B200", 2250e12),
    ("NVIDIA A100", 312e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
)


def peak_flops_per_device(device=None) -> float | None:
    """Peak bf16 FLOP/s of a device, None where unknown (CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    for prefix, flops in PEAK_BF16_FLOPS:
        if kind.startswith(prefix):
            return flops
    return None


def mfu(tokens_per_second: float, flops_per_token: float, num_devices: int, device=None) -> float | None:
    peak = peak_flops_per_device(device)
    if peak is None:
        return None
    return tokens_per_second * flops_per_token / (num_devices * peak)


def _gfile():
    import tensorflow as tf  # heavy: imported only where metrics are written
    return tf.io.gfile


class MetricsWriter:
    """Writes one JSON object per logged step and TensorBoard scalars; process 0 only.

    On resume, lines past the restored step are dropped first: those steps are about to
    be trained again and would otherwise appear twice.
    """

    def __init__(self, model_dir: str, resume_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = run_dir.metrics_path(model_dir)
        self._tb = None
        if not self.enabled:
            return
        gfile = _gfile()
        gfile.makedirs(model_dir)
        kept = []
        if gfile.exists(self.path):
            with gfile.GFile(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        self._lines = kept
        self._flush_file()
        import tensorflow as tf
        self._tb = tf.summary.create_file_writer(run_dir.path(model_dir, run_dir.TENSORBOARD))

    def _flush_file(self):
        # Rewrite whole (GCS has no append); metrics files are small.
        gfile = _gfile()
        tmp = self.path + ".tmp"
        with gfile.GFile(tmp, "w") as f:
            f.write("".join(self._lines))
        gfile.rename(tmp, self.path, overwrite=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._lines.append(json.dumps({"step": int(step), **clean}) + "\n")
        self._flush_file()
        import tensorflow as tf
        with self._tb.as_default(step=int(step)):
            for k, v in clean.items():
                if isinstance(v, (int, float)):
                    tf.summary.scalar(k, v)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
