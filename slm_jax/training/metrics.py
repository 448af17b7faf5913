"""Metrics sinks (MODEL_DIR/metrics.jsonl + TensorBoard events), MFU bookkeeping and token
accounting (`TokenCounter`: the `tokens/*` keys of metrics.jsonl)."""
from __future__ import annotations

import json
import math
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from slm_jax import contract
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


# --- token accounting ---------------------------------------------------------------------
# metrics.jsonl keys (cumulative since step 0 of the run, summed over processes):
TOKENS_TARGET = "tokens/target"  # loss-weighted target tokens (sum of decoder_loss_weights)
TOKENS_PACKED = "tokens/packed"  # non-pad tokens (decoder_target_tokens != 0)
TOKENS_TASK_PREFIX = "tokens/task/"
# Weighted targets without a member id (a batch without `decoder_task_ids` from a mixture of
# several members: a data stream resumed from a checkpoint written before token accounting).
# seqio task names are [\w\d.:_]+, so this cannot be a task's name.
UNTAGGED_TASK = "<untagged>"
# tokens/target_<name> of each modality id (contract.TARGET_MODALITY_NAMES); speech and text are
# always written, other ids only once they have targets.
_MODALITY_IDS = tuple(sorted(contract.TARGET_MODALITY_NAMES))
_ALWAYS_MODALITIES = (contract.MODALITY_SPEECH, contract.MODALITY_TEXT)
GatherFn = Callable[[np.ndarray], np.ndarray]


def modality_token_key(modality_id: int) -> str:
    """'tokens/target_speech' etc. for a contract modality id."""
    return f"tokens/target_{contract.TARGET_MODALITY_NAMES[modality_id]}"


def task_token_key(task_name: str) -> str:
    """'tokens/task/<task name>'."""
    return TOKENS_TASK_PREFIX + task_name


def _weighted_bincount(ids: np.ndarray, weights: np.ndarray, size: int, feature: str, allowed: str) -> np.ndarray:
    """int64 [size]: the sum of `weights` per id of `ids` (same shape); ValueError naming the
    feature for an id outside [0, size) on a weighted token."""
    ids, weights = ids.ravel(), weights.ravel()
    used = weights != 0
    if used.any():
        lo, hi = int(ids[used].min()), int(ids[used].max())
        if lo < 0 or hi >= size:
            bad = sorted({int(i) for i in ids[used] if not 0 <= i < size})
            raise ValueError(f"{feature}: ids {bad[:8]} on target tokens; expected {allowed}")
    else:
        return np.zeros(size, np.int64)
    return np.rint(np.bincount(ids[used], weights=weights[used], minlength=size)).astype(np.int64)


def target_and_packed(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """int64 [2]: the batch's loss-weighted target tokens (sum of `decoder_loss_weights`) and
    non-pad tokens (`decoder_target_tokens != 0`)."""
    weights = np.asarray(batch[contract.DECODER_LOSS_WEIGHTS], np.int64)
    return np.array([weights.sum(), np.count_nonzero(batch[contract.DECODER_TARGET_TOKENS])], np.int64)


def batch_token_counts(batch: Mapping[str, np.ndarray], num_tasks: int) -> np.ndarray:
    """Token counts of one (local) batch, int64 [2 + len(TARGET_MODALITY_NAMES) + 1 + num_tasks]:
    [loss-weighted targets, non-pad tokens, weighted targets per modality id 0.., weighted
    targets per task id 0 (untagged), 1..num_tasks].

    `batch`: the numpy features of `slm_jax.data.pipeline` (int [rows, length] each):
    `decoder_loss_weights` (0/1), `decoder_target_tokens`, optionally `decoder_modality`
    (missing: 0) and `decoder_task_ids` (missing: all targets to task 1 when `num_tasks == 1`,
    else to id 0). Raises ValueError for a modality or task id out of range on a target.
    """
    weights = np.asarray(batch[contract.DECODER_LOSS_WEIGHTS], np.int64)
    tokens = np.asarray(batch[contract.DECODER_TARGET_TOKENS])
    target, packed = (int(v) for v in target_and_packed(batch))
    modality = batch.get(contract.DECODER_MODALITY)
    if modality is None:
        modality = np.zeros_like(tokens)
    by_modality = _weighted_bincount(np.asarray(modality), weights, len(_MODALITY_IDS), contract.DECODER_MODALITY,
                                     f"contract modality ids {list(_MODALITY_IDS)}")
    task_ids = batch.get(contract.DECODER_TASK_IDS)
    if task_ids is None:
        by_task = np.zeros(num_tasks + 1, np.int64)
        by_task[1 if num_tasks == 1 else 0] = target
    else:
        by_task = _weighted_bincount(np.asarray(task_ids), weights, num_tasks + 1, contract.DECODER_TASK_IDS,
                                     f"1..{num_tasks} (slm_jax.data.pipeline.task_names)")
    return np.concatenate([[target, packed], by_modality, by_task]).astype(np.int64)


def sum_over_processes(values: np.ndarray, gather: GatherFn | None) -> np.ndarray:
    """`values` (int64 [n], each in [0, 2**62)) summed over the processes of the job, exactly.

    `gather(int32 [m]) -> int32 [processes, m]` (`multihost_utils.process_allgather`; None for
    one process). The values travel as two int32 halves (31 low bits, the rest), as JAX
    without x64 would cut int64 to int32. Collective: every process must call it alike.
    """
    values = np.asarray(values, np.int64)
    if gather is None:
        return values.copy()
    halves = np.concatenate([values >> 31, values & (2**31 - 1)]).astype(np.int32)
    table = np.asarray(gather(halves)).reshape(-1, 2 * values.size).astype(np.int64).sum(0)
    return (table[:values.size] << 31) + table[values.size:]


class TokenCounter:
    """Cumulative token counts of a run (the `tokens/*` metrics), on the host.

    `add(batch)` counts this process's numpy batch (no device sync); `sync(gather)` folds
    every process's counts since the last sync into the global totals (a collective: call it
    at the same steps on every process). `values()` / `state()` are the global totals as of
    the last sync, identical on every process.

    `task_names`: `slm_jax.data.pipeline.task_names(cfg)` (task id i + 1 -> name).
    `restored`: `values()` of a checkpoint (metric key -> int) to continue from; keys of
    members this run does not have (an allowed mixture change) are carried on unchanged.
    """

    def __init__(self, task_names: Sequence[str], restored: Mapping[str, int] | None = None):
        self.task_names = list(task_names)
        self._keys = ([TOKENS_TARGET, TOKENS_PACKED] + [modality_token_key(m) for m in _MODALITY_IDS]
                      + [task_token_key(UNTAGGED_TASK)] + [task_token_key(n) for n in self.task_names])
        self._global = np.zeros(len(self._keys), np.int64)
        self._local = np.zeros(len(self._keys), np.int64)
        self._carried: dict[str, int] = {}
        index = {k: i for i, k in enumerate(self._keys)}
        for key, value in (restored or {}).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"token counts: {key}={value!r} must be an int >= 0")
            if key in index:
                self._global[index[key]] = value
            else:
                self._carried[key] = value

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Counts one local batch (`batch_token_counts`)."""
        self._local += batch_token_counts(batch, len(self.task_names))

    def sync(self, gather: GatherFn | None = None) -> None:
        """Adds every process's counts since the last sync to the totals (collective)."""
        self._global += sum_over_processes(self._local, gather)
        self._local[:] = 0

    @property
    def target(self) -> int:
        """Global loss-weighted target tokens as of the last sync."""
        return int(self._global[0])

    def values(self) -> dict[str, int]:
        """metrics.jsonl keys -> global counts as of the last sync: tokens/target, tokens/packed,
        tokens/target_<modality> (speech and text always, others when > 0), tokens/task/<name>
        (every member; `UNTAGGED_TASK` only when > 0) and carried keys. The per-modality and the
        per-task counts each sum to tokens/target."""
        always = {TOKENS_TARGET, TOKENS_PACKED, *(modality_token_key(m) for m in _ALWAYS_MODALITIES),
                  *(task_token_key(n) for n in self.task_names)}
        out = {k: int(v) for k, v in zip(self._keys, self._global) if k in always or v > 0}
        for key, value in self._carried.items():
            out[key] = out.get(key, 0) + value
        return out
