"""The MODEL_DIR layout, owned in one place (training writes it; evaluation, interop and
the CLI read it).

    MODEL_DIR/
      checkpoints/<step>/   Orbax steps: params, opt_state, step, each process's data position
      config.gin            the full gin config of the FIRST launch (`gin.config_str()`), never overwritten
      config-<N>.gin        the full gin config of launch N (1, 2, ...)
      launches.jsonl        one JSON object per launch: time, start step, TRAIN_STEPS, resume settings,
                            what changed and which change the launch allowed (`slm-jax inspect` shows it)
      model_config.json     the model's fields + parameter shapes (resume compatibility record)
      metrics.jsonl         one JSON object per logged step (and per checkpoint step): losses, speed,
                            cumulative token counts (`tokens/*`)
      token_budget.json     runs with TRAIN_TOKENS: the measured target tokens per step and the step
                            estimate the LR schedule ends at (`write_token_budget`)
      tensorboard/          the same scalars as TensorBoard events
      eval/<step>.json      `slm-jax eval` results (+ accuracy.png)

Paths may be local or `gs://` (through `tf.io.gfile` where TensorFlow is installed).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Iterable, Mapping

CHECKPOINTS = "checkpoints"
CONFIG_GIN = "config.gin"
LAUNCHES_FILE = "launches.jsonl"
MODEL_CONFIG_FILE = "model_config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD = "tensorboard"
EVAL = "eval"
TOKEN_BUDGET_FILE = "token_budget.json"


class IncompatibleModelDirError(ValueError):
    """MODEL_DIR holds a run whose model shapes differ from the requested model."""


class ResumeSettingsError(IncompatibleModelDirError):
    """A resume asks for a setting a resume may not change (see `RESUME_SETTINGS`)."""


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
    Raises IncompatibleModelDirError naming every differing `DecoderConfig.<field>`. A key that
    a record written before the field existed lacks counts as `model_cfg.RECORD_DEFAULTS[key]`
    (at any depth: LSTConfig nests its global DecoderConfig's shapes).
    """
    saved = read_model_config(model_dir)
    if saved is None:
        return
    wanted = model_cfg.shape_dict()
    diff = _shape_differences(saved, wanted, getattr(model_cfg, "RECORD_DEFAULTS", {}))
    if diff:
        lines = ", ".join(f"DecoderConfig.{k}: saved {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise IncompatibleModelDirError(
            f"MODEL_DIR={model_dir} holds a model incompatible with the requested one ({lines}); "
            f"use a new MODEL_DIR or the saved model config ({path(model_dir, MODEL_CONFIG_FILE)})")


def _shape_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any], record_defaults: Mapping[str, Any],
                       prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, wanted)} for every differing shape field (nested dicts compared key by key)."""
    diff = {}
    for key, value in wanted.items():
        have = saved.get(key, record_defaults.get(key)) if isinstance(saved, Mapping) else None
        if isinstance(value, Mapping) and isinstance(have, Mapping):
            diff.update(_shape_differences(have, value, record_defaults, f"{prefix}{key}."))
        elif have != value:
            diff[prefix + key] = (have, value)
    return diff


# What a resume may not change (issue 13, kind 9), besides the model's parameter shapes
# (`check_compatible`): name -> (the flags that set it, whether `train.allow_resume_changes`
# may let it through). Everything else may change on a resume: TRAIN_STEPS while the LR
# schedule does not depend on it (OptimizerConfig.decay_steps set, or decay='constant'),
# checkpoint / log / eval periods, eval data, benchmarks, MeshConfig (checkpoints are
# resharded on restore), TrainConfig (accumulation, z-loss, CTC weight), Adam's b1 / b2 / eps /
# weight_decay and the clipping norm's value, the model's non-shape fields (dtypes, remat).
# The schedule rule follows MaxText (source: AI-Hypercomputer/maxtext pyconfig:
# `learning_rate_schedule_steps=-1` means the run's `steps`; a run is extended by fixing it
# explicitly) rather than relying on a schedule that never reads the total steps (t5x's
# default rsqrt decay): the LR of a step must not depend on when the run was extended.
RESUME_SETTINGS: dict[str, tuple[str, bool]] = {
    "batch_size": ("BATCH_SIZE (train/DatasetConfig.batch_size)", True),
    "sequence_length": ("SEQUENCE_LENGTH (train/DatasetConfig.sequence_length, .ctc_length)", True),
    "mixture": ("MIXTURE_OR_TASK_NAME (train/DatasetConfig.mixture_or_task_name), its members' rates and the "
                "gin denoisers of its span-corruption members (denoising.denoisers)", True),
    "data_order": ("train/DatasetConfig.split / .seed (SEED) / .shuffle / .pack / .num_epochs / .use_cached", True),
    "vocabulary": ("the task's targets vocabulary (class, vocab_size)", True),
    "schedule": ("OptimizerConfig.learning_rate / .warmup_steps / .decay / .final_lr_fraction / .decay_steps "
                 "(TRAIN_STEPS when decay_steps=None), TRAIN_TOKENS (train.train_tokens; with it, the measured "
                 "step estimate of token_budget.json replaces TRAIN_STEPS)", True),
    # The optimizer state is restored as saved: another optimizer layout cannot resume at all.
    "optimizer": ("the optimizer (AdamW; OptimizerConfig.grad_clip_norm None vs set)", False),
}
# Settings whose change makes the saved input position meaningless: after an allowed change
# the train data starts again from the beginning of the new stream (logged).
DATA_SETTINGS = ("batch_size", "sequence_length", "mixture", "data_order")


def read_launches(model_dir: str) -> list[dict[str, Any]]:
    """The launch records of `launches.jsonl` (oldest first); [] when there are none."""
    p, gfile = path(model_dir, LAUNCHES_FILE), _gfile()
    if not gfile.exists(p):
        return []
    with gfile.GFile(p) as f:
        try:
            return [json.loads(line) for line in f if line.strip()]
        except json.JSONDecodeError as err:
            raise ModelDirError(f"{p}: not valid JSON lines ({err})") from err


def parse_allowed_changes(allowed: str | Iterable[str]) -> tuple[str, ...]:
    """`train.allow_resume_changes` ('schedule,batch_size' or a sequence) -> names; ConfigError
    (a ValueError) naming the flag for a name that is not an overridable `RESUME_SETTINGS` key."""
    from slm_jax.gin_utils import ConfigError
    names = [n.strip() for n in (allowed.split(",") if isinstance(allowed, str) else allowed) if n.strip()]
    known = sorted(k for k, (_, ok) in RESUME_SETTINGS.items() if ok)
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"train.allow_resume_changes: unknown or not overridable {bad}; known: {known}")
    return tuple(names)


def _changed(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    # JSON round trip so tuples / lists and int / float keys compare as they are stored
    wanted = json.loads(json.dumps(wanted, sort_keys=True))
    return {k: (saved.get(k), v) for k, v in wanted.items() if k in saved and saved[k] != v}


def check_resume(model_dir: str, settings: Mapping[str, Any], allowed: Iterable[str] = (),
                 hints: Mapping[str, str] | None = None) -> list[str]:
    """Compare a launch's resume settings with the last recorded launch of MODEL_DIR.

    `settings`: `RESUME_SETTINGS` name -> JSON-able value (built by
    `slm_jax.training.train.resume_settings`). Only a MODEL_DIR with a complete checkpoint and
    a launch record is a resume; otherwise nothing is compared. Returns the names that changed
    and were allowed (`allowed`, from `train.allow_resume_changes`); raises
    ResumeSettingsError naming, for every other change, the flag, the saved and the requested
    value, `hints[name]` when given, and the override to pass.
    """
    from slm_jax.training.checkpoints import list_complete_steps
    launches = read_launches(model_dir)
    if not launches or not list_complete_steps(checkpoints_dir(model_dir)):
        return []
    diff = _changed(launches[-1].get("settings", {}), settings)
    refused = [k for k in diff if k not in allowed or not RESUME_SETTINGS.get(k, ("", False))[1]]
    if refused:
        lines = []
        for k in refused:
            flag, overridable = RESUME_SETTINGS.get(k, (k, False))
            old, new = diff[k]
            fix = (f"or pass --gin.train.allow_resume_changes=\"'{k}'\" to accept it" if overridable
                   else "it cannot change on a resume")
            hint = f" {hints[k]}" if hints and k in hints else ""
            lines.append(f"{k} [{flag}]: saved {old!r}, requested {new!r}.{hint} Use a new MODEL_DIR, {fix}")
        raise ResumeSettingsError(
            f"MODEL_DIR={model_dir} (launch {launches[-1].get('launch')}, step {max(list_complete_steps(checkpoints_dir(model_dir)))}) "
            f"cannot be resumed with these settings: " + "; ".join(lines))
    return sorted(diff)


def record_launch(model_dir: str, settings: Mapping[str, Any], config_str: str, start_step: int,
                  train_steps: int, changed: Iterable[str] = ()) -> dict[str, Any] | None:
    """Appends this launch to `launches.jsonl` and writes its `config-<N>.gin` (and
    `config.gin` when MODEL_DIR has none: it stays the first launch's). Process 0 only;
    returns the record (None on other processes)."""
    import jax
    if jax.process_index() != 0:
        return None
    gfile = _gfile()
    gfile.makedirs(str(model_dir))
    launches = read_launches(model_dir)
    number = len(launches) + 1
    record = {"launch": number, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "start_step": int(start_step), "train_steps": int(train_steps), "config": f"config-{number}.gin",
              "changed": sorted(changed), "settings": json.loads(json.dumps(settings, sort_keys=True))}
    with gfile.GFile(path(model_dir, record["config"]), "w") as f:
        f.write(config_str)
    if not gfile.exists(path(model_dir, CONFIG_GIN)):
        with gfile.GFile(path(model_dir, CONFIG_GIN), "w") as f:
            f.write(config_str)
    # rewritten whole (GCS has no append), then renamed into place
    tmp = path(model_dir, LAUNCHES_FILE + ".tmp")
    with gfile.GFile(tmp, "w") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in [*launches, record]))
    gfile.rename(tmp, path(model_dir, LAUNCHES_FILE), overwrite=True)
    return record


def write_run_files(model_dir: str, model_cfg, config_str: str | None = None) -> None:
    """`model_config.json` (fields + shapes), and `config.gin` when MODEL_DIR has none yet
    (a resume keeps the first launch's; `record_launch` writes each launch's own); process 0
    only in a multi-process job."""
    import jax
    if jax.process_index() != 0:
        return
    gfile = _gfile()
    gfile.makedirs(str(model_dir))
    with gfile.GFile(path(model_dir, MODEL_CONFIG_FILE), "w") as f:
        json.dump({**model_cfg.to_dict(), **model_cfg.shape_dict()}, f, indent=1, sort_keys=True)
    if config_str is not None and not gfile.exists(path(model_dir, CONFIG_GIN)):
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


def write_bos_record(model_dir: str, bos_id: int, source: str, conventions: Mapping[str, Any] | None = None) -> None:
    """`MODEL_DIR/bos.json`: {"bos_id": the input before every sequence's first token, "source":
    where it was read (e.g. "config.json bos_token_id"), plus `conventions` (import-hf: whether the
    tokenizer adds the BOS, the EOS ids, whether it appends an EOS)}; process 0 only."""
    import jax
    if jax.process_index() != 0:
        return
    gfile = _gfile()
    gfile.makedirs(str(model_dir))
    with gfile.GFile(path(model_dir, BOS_FILE), "w") as f:
        json.dump({"bos_id": int(bos_id), "source": source, **(conventions or {})}, f, indent=1)


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


# Runs with a token budget (TRAIN_TOKENS): what the probe measured and the step estimate.
TOKEN_BUDGET_KEYS = ("train_tokens", "probe_batches", "target_tokens_per_step", "packed_tokens_per_step",
                     "capacity_tokens_per_step", "packing_efficiency", "target_fraction", "estimated_steps",
                     "batch_size", "sequence_length", "mixture")


def write_token_budget(model_dir: str, record: Mapping[str, Any]) -> None:
    """`MODEL_DIR/token_budget.json` (rewritten whole): `record` holds at least
    `TOKEN_BUDGET_KEYS` (ValueError naming the missing ones); process 0 only."""
    import jax
    missing = [k for k in TOKEN_BUDGET_KEYS if k not in record]
    if missing:
        raise ValueError(f"{TOKEN_BUDGET_FILE}: record lacks {missing}")
    if jax.process_index() != 0:
        return
    gfile = _gfile()
    gfile.makedirs(str(model_dir))
    tmp = path(model_dir, TOKEN_BUDGET_FILE + ".tmp")
    with gfile.GFile(tmp, "w") as f:
        json.dump(dict(record), f, indent=1, sort_keys=True)
    gfile.rename(tmp, path(model_dir, TOKEN_BUDGET_FILE), overwrite=True)


def read_token_budget(model_dir: str) -> dict[str, Any] | None:
    """`MODEL_DIR/token_budget.json` as a dict, None when the run has none. ModelDirError for a
    file that is not a JSON object."""
    p, gfile = path(model_dir, TOKEN_BUDGET_FILE), _gfile()
    if not gfile.exists(p):
        return None
    with gfile.GFile(p) as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise ModelDirError(f"{p}: not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise ModelDirError(f"{p}: expected a JSON object, got {type(record).__name__}")
    return record
