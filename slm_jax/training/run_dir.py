"""The MODEL_DIR layout, owned in one place (training writes it; evaluation, interop and
the CLI read it).

    MODEL_DIR/
      checkpoints/<step>/   Orbax steps: params, opt_state, step, each process's data position
      config.gin            the full gin config of the run (`gin.config_str()`)
      model_config.json     the model's fields + parameter shapes (resume compatibility record)
      metrics.jsonl         one JSON object per logged step
      tensorboard/          the same scalars as TensorBoard events
      eval/<step>.json      `slm-jax eval` results (+ accuracy.png)

Paths may be local or `gs://` (through `tf.io.gfile` where TensorFlow is installed).
"""

from __future__ import annotations

import json
from typing import Any

CHECKPOINTS = "checkpoints"
CONFIG_GIN = "config.gin"
MODEL_CONFIG_FILE = "model_config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD = "tensorboard"
EVAL = "eval"


class IncompatibleModelDirError(ValueError):
    """MODEL_DIR holds a run whose model shapes differ from the requested model."""


class ModelDirError(ValueError):
    """A path that is not a usable slm_jax MODEL_DIR (missing or unreadable run files)."""


def path(model_dir: str, *parts: str) -> str:
    """`model_dir/part/...` for local and `gs://` paths alike (no os.path: gs:// keeps '//')."""
    return "/".join([str(model_dir).rstrip("/"), *parts])


def checkpoints_dir(model_dir: str) -> str:
    return path(model_dir, CHECKPOINTS)


def metrics_path(model_dir: str) -> str:
    return path(model_dir, METRICS_FILE)


def eval_dir(model_dir: str) -> str:
    return path(model_dir, EVAL)


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


def read_model_config(model_dir: str) -> dict[str, Any] | None:
    """The saved `model_config.json` as a dict, or None when the run has none yet."""
    p, gfile = path(model_dir, MODEL_CONFIG_FILE), _gfile()
    if not gfile.exists(p):
        return None
    with gfile.GFile(p) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ModelDirError(f"{p}: not valid JSON ({err})") from err


def check_compatible(model_dir: str, model_cfg) -> None:
    """Refuse to resume a MODEL_DIR trained with different parameter shapes.

    `model_cfg` is any model config with `shape_dict()` (DecoderConfig, LSTConfig).
    Raises IncompatibleModelDirError naming every differing `DecoderConfig.<field>`.
    """
    saved = read_model_config(model_dir)
    if saved is None:
        return
    wanted = model_cfg.shape_dict()
    diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if diff:
        lines = ", ".join(f"DecoderConfig.{k}: saved {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise IncompatibleModelDirError(
            f"MODEL_DIR={model_dir} holds a model incompatible with the requested one ({lines}); "
            f"use a new MODEL_DIR or the saved model config ({path(model_dir, MODEL_CONFIG_FILE)})")


def write_run_files(model_dir: str, model_cfg, config_str: str) -> None:
    """`model_config.json` (fields + shapes) and `config.gin`; process 0 only in a multi-process job."""
    import jax
    if jax.process_index() != 0:
        return
    gfile = _gfile()
    gfile.makedirs(str(model_dir))
    with gfile.GFile(path(model_dir, MODEL_CONFIG_FILE), "w") as f:
        json.dump({**model_cfg.to_dict(), **model_cfg.shape_dict()}, f, indent=1, sort_keys=True)
    with gfile.GFile(path(model_dir, CONFIG_GIN), "w") as f:
        f.write(config_str)


def has_run(model_dir: str) -> bool:
    """True when MODEL_DIR already holds run files or a complete checkpoint."""
    from slm_jax.training.checkpoints import list_complete_steps
    return bool(list_complete_steps(checkpoints_dir(model_dir))) or read_model_config(model_dir) is not None


def restore_params(model_dir: str, step: int | None = None, abstract_params=None) -> tuple[int, dict]:
    """(step, params) of a checkpoint without the optimizer state: host numpy arrays, or
    with `abstract_params` (ShapeDtypeStructs with shardings, e.g. a Trainer's
    `abstract_state["params"]`) device arrays in those shardings.

    `step` defaults to the latest complete checkpoint. Raises FileNotFoundError naming
    the checkpoints folder when there is none (for that step).
    """
    from slm_jax.training import checkpoints
    if abstract_params is None:
        return checkpoints.restore_params_to_host(checkpoints_dir(model_dir), step)
    return checkpoints.restore_params_sharded(checkpoints_dir(model_dir), abstract_params, step)


# The BOS convention of a run (issue 13 kind 4): written by `slm-jax import-hf`, checked by train/eval/generate.
BOS_FILE = "bos.json"


def write_bos_record(model_dir: str, bos_id: int, source: str) -> None:
    """`MODEL_DIR/bos.json`: {"bos_id": the input before every sequence's first token, "source":
    where it was read (e.g. "config.json bos_token_id")}; process 0 only."""
    import jax
    if jax.process_index() != 0:
        return
    gfile = _gfile()
    gfile.makedirs(str(model_dir))
    with gfile.GFile(path(model_dir, BOS_FILE), "w") as f:
        json.dump({"bos_id": int(bos_id), "source": source}, f, indent=1)


def read_bos_record(model_dir: str) -> dict[str, Any] | None:
    """`MODEL_DIR/bos.json` as a dict, None when the run has none (a run from scratch: BOS 0).
    Raises ModelDirError for a file that is not JSON or has no int `bos_id`."""
    p, gfile = path(model_dir, BOS_FILE), _gfile()
    if not gfile.exists(p):
        return None
    with gfile.GFile(p) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise ModelDirError(f"{p}: not valid JSON ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("bos_id"), int):
        raise ModelDirError(f"{p}: expected an object with an int 'bos_id', got {record!r}")
    return record


def check_bos(model_dir: str, bos_id: int) -> None:
    """Refuse a run whose BOS id (gin `run_bos_id.bos_id`) differs from the one MODEL_DIR records.

    Raises IncompatibleModelDirError naming both ids, where the recorded one came from and the
    binding to use (a model trained, scored or sampled behind a first token it never saw is wrong
    without any message)."""
    record = read_bos_record(model_dir)
    if record is not None and record["bos_id"] != bos_id:
        raise IncompatibleModelDirError(
            f"MODEL_DIR={model_dir} records BOS id {record['bos_id']} ({record.get('source')}; "
            f"{path(model_dir, BOS_FILE)}) but the run uses {bos_id}: pass MODEL_DIR/model.gin after the run's gin "
            f"file, or --gin.run_bos_id.bos_id={record['bos_id']}")
