"""The training loop: validate, restore or init, step, log, evaluate, checkpoint.

`train` is the gin entry point (`slm-jax train`); everything it calls is plain code.
Order matters for users: every config error surfaces before the first compile, and
before step 1: the resume settings (`run_dir.RESUME_SETTINGS`), then that every task
the run reads yields examples on every process (`slm_jax.data.pipeline.check_not_empty`),
then, for a token budget (`train.train_tokens`), the measured target tokens per step.

Token budgets: with TRAIN_TOKENS the run stops at the first step whose cumulative global
loss-weighted target tokens reach it; the LR schedule ends at the step estimated from the
first `token_probe_batches` batches (`MODEL_DIR/token_budget.json`), TRAIN_STEPS is ignored.
Token accounting (`tokens/*` in metrics.jsonl, `metrics.TokenCounter`) is always on; the
counts travel with each checkpoint (`checkpoints.TOKENS_ITEM`).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import time
from typing import Any, Callable

import gin
import jax
import numpy as np

from slm_jax.gin_utils import ConfigError
from slm_jax.training import distributed, partitioning, run_dir
from slm_jax.training.distributed import DistributedConfig
from slm_jax.training.metrics import MetricsWriter, TokenCounter, mfu, sum_over_processes, target_and_packed
from slm_jax.training.optimizer import OptimizerConfig, schedule_problem
from slm_jax.training.partitioning import MeshConfig
from slm_jax.training.trainer import TrainConfig, Trainer

log = logging.getLogger("slm_jax")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the last good checkpoint is left untouched."""


class ModelDataMismatchError(ValueError):
    """The model cannot represent the data (e.g. fewer embedding rows than token ids)."""


# The MODEL_DIR layout lives in run_dir; these names stay importable from here.
MODEL_CONFIG_FILE = run_dir.MODEL_CONFIG_FILE
IncompatibleModelDirError = run_dir.IncompatibleModelDirError
check_model_dir_compatible = run_dir.check_compatible
write_run_files = run_dir.write_run_files


# Per-modality means that are NaN when a logged step has no such targets (a unit-only run has
# no text): absent from metrics.jsonl and the summary rather than logged as NaN / null.
ABSENT_WHEN_NO_TARGETS = ("loss_text", "loss_speech", "ctc_loss")


def drop_absent_modalities(values: dict[str, float]) -> dict[str, float]:
    """`values` without the `ABSENT_WHEN_NO_TARGETS` entries that are not finite (no such targets;
    a NaN of the total loss is caught by the non-finite check, not hidden here)."""
    return {k: v for k, v in values.items() if k not in ABSENT_WHEN_NO_TARGETS or math.isfinite(v)}


def _process_gather():
    """`process_allgather` in a multi-process job (every process gets every process's
    array, stacked on a new leading axis), None for one process."""
    if jax.process_count() == 1:
        return None
    from jax.experimental import multihost_utils
    return lambda x: np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def _vocabulary_record(vocab) -> dict[str, Any]:
    from slm_jax.data.registration import LazyVocabulary
    real = vocab.real if isinstance(vocab, LazyVocabulary) else vocab
    return {"class": type(real).__name__, "vocab_size": int(vocab.vocab_size)}


def resume_settings(run) -> dict[str, Any]:
    """The values of `run_dir.RESUME_SETTINGS` for `run` (JSON-able), recorded per launch in
    `launches.jsonl` and compared on resume by `run_dir.check_resume`."""
    import seqio

    from slm_jax.data.pipeline import active_members
    data, opt = run.train_dataset, run.optimizer
    mixture: dict[str, Any] = {"name": data.mixture_or_task_name}
    vocabulary = None
    try:
        provider = seqio.get_mixture_or_task(data.mixture_or_task_name)
    except ValueError:
        provider = None  # get_dataset raises the detailed "not registered" error
    if provider is not None:
        members = active_members(provider)
        total = sum(rate for _, rate in members) or 1.0
        # fractions, so scaling every rate alike is no change
        mixture["rates"] = {task.name: round(rate / total, 9) for task, rate in members}
        from slm_jax.data.preprocessors.span_corruption import gin_denoisers_of
        denoisers = next(filter(None, (gin_denoisers_of(task) for task, _ in members)), None)
        if denoisers is not None:  # only for denoising tasks, so other runs' records compare as before
            mixture["denoisers"] = denoisers
        vocabulary = _vocabulary_record(provider.output_features["targets"].vocabulary)
    constant = opt.decay == "constant"
    schedule = {"learning_rate": opt.learning_rate, "warmup_steps": opt.warmup_steps, "decay": opt.decay,
                "final_lr_fraction": None if constant else opt.final_lr_fraction,
                # the step where the decay ends: what TRAIN_STEPS (or the TRAIN_TOKENS estimate)
                # moves when decay_steps=None
                "decay_end_step": None if constant else (opt.decay_steps or run.train_steps)}
    if run.train_tokens is not None:  # absent without a budget, so older launch records compare equal
        schedule["train_tokens"] = run.train_tokens
    return {
        "batch_size": data.batch_size,
        "sequence_length": {"sequence_length": data.sequence_length, "ctc_length": data.ctc_length},
        "mixture": mixture,
        # use_cached only when set, so launch records from before it compare equal: a tf.data position
        # saved over the live pipeline does not restore into the cached one (another graph)
        "data_order": {"split": data.split, "seed": data.seed, "shuffle": data.shuffle, "pack": data.pack,
                       "num_epochs": data.num_epochs, **({"use_cached": True} if data.use_cached else {})},
        "vocabulary": vocabulary,
        "optimizer": {"kind": "adamw", "grad_clip": opt.grad_clip_norm is not None},
        "schedule": schedule,
    }


def schedule_hint(run, saved: dict[str, Any] | None, start_step: int | None) -> str | None:
    """For a refused schedule change: the LR jump it would make at the next step, and, when
    only the end of the decay moved (TRAIN_STEPS with decay_steps=None), the flag that keeps
    the schedule continuous."""
    from slm_jax.training.optimizer import make_schedule
    if not saved or start_step is None:
        return None
    old, opt = saved.get("schedule") or {}, run.optimizer
    new = resume_settings(run)["schedule"]
    step = start_step + 1
    text = ""
    try:
        old_cfg = dataclasses.replace(opt, learning_rate=old["learning_rate"], warmup_steps=old["warmup_steps"],
                                      decay=old["decay"], final_lr_fraction=old["final_lr_fraction"] or 0.0,
                                      decay_steps=old["decay_end_step"])
        before = float(make_schedule(old_cfg, old["decay_end_step"] or 1)(step - 1))
        after = float(make_schedule(opt, run.train_steps)(step - 1))
        text = f"The learning rate of step {step} would be {after:.3g} instead of {before:.3g}."
    except (KeyError, TypeError, ValueError):
        pass
    moved_end_only = {**old, "decay_end_step": None} == {**new, "decay_end_step": None}
    if moved_end_only and opt.decay_steps is None and old.get("decay_end_step"):
        mover = ("The step estimate of TRAIN_TOKENS (re-measured: token_budget.json)" if run.train_tokens is not None
                 else "TRAIN_STEPS")
        text += (f" {mover} moves the end of the {opt.decay} decay (OptimizerConfig.decay_steps=None follows "
                 f"it): to extend the run with the schedule continuous, pass "
                 f"--gin.OptimizerConfig.decay_steps={old['decay_end_step']} (the LR then stays at its end value).")
    return text or None


def check_vocabulary_fits(run) -> None:
    """The model's embedding must cover every id the task can emit (else NaN logits)."""
    import seqio

    for cfg in filter(None, (run.train_dataset, run.eval_dataset)):
        try:
            provider = seqio.get_mixture_or_task(cfg.mixture_or_task_name)
        except ValueError:
            continue  # get_dataset raises the detailed "not registered" error
        vocab_size = provider.output_features["targets"].vocabulary.vocab_size
        if vocab_size > run.model.vocab_size:
            raise ModelDataMismatchError(
                f"DecoderConfig.vocab_size={run.model.vocab_size} is smaller than the vocabulary of "
                f"{cfg.mixture_or_task_name!r} ({vocab_size} ids); set DecoderConfig.vocab_size >= {vocab_size} "
                f"(a multiple of 128 is efficient)")


IMPORT_RECORD = "hf_import.json"  # written by `slm-jax import-hf` (slm_jax.interop.hf_import.IMPORT_RECORD)
_LAYOUT_FIELDS = ("text_vocab_size", "num_units", "num_pitch", "num_style", "langs", "num_sentinels")


def check_imported_vocabulary(run) -> None:
    """A run started by `slm-jax import-hf` trains and scores with the id layout it was imported
    with: the task vocabulary's text block and speech streams (a `SpeechTextVocabulary` is laid
    out by these sizes) must equal `MODEL_DIR/hf_import.json`'s, else every speech id would
    address another row than the one the import initialised (a silently wrong model).
    ModelDataMismatchError names the task, the field and both values; no-op without the record."""
    import seqio
    import tensorflow as tf

    path = os.path.join(run.model_dir, IMPORT_RECORD)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        record = json.load(f)
    imported = record.get("vocab") or {}
    eos_ids = (record.get("tokens") or {}).get("eos_ids") or []
    if imported.get("layout") in (None, "none"):
        return
    for cfg in filter(None, (run.train_dataset, run.eval_dataset)):
        try:
            vocab = seqio.get_mixture_or_task(cfg.mixture_or_task_name).output_features["targets"].vocabulary
        except ValueError:
            continue  # get_dataset raises the detailed "not registered" error
        vocab = getattr(vocab, "real", vocab)  # registration.LazyVocabulary
        if not hasattr(vocab, "text_vocab_size"):  # e.g. the legacy UnitVocabulary (it has num_units too)
            raise ModelDataMismatchError(
                f"{cfg.mixture_or_task_name!r} uses {type(vocab).__name__}, but {path} was imported with the "
                f"{imported['layout']!r} speech layout: register the task with a SpeechTextVocabulary of that layout")
        for field in _LAYOUT_FIELDS:
            want = tuple(imported.get(field) or ()) if field == "langs" else imported.get(field)
            got = tuple(getattr(vocab, field)) if field == "langs" else getattr(vocab, field)
            if want is not None and got != want:
                raise ModelDataMismatchError(
                    f"{cfg.mixture_or_task_name!r}: vocabulary {field}={got!r} but {path} has {field}={want!r}; "
                    f"the task must use the imported layout (its text model is the imported tokenizer, "
                    f"MODEL_DIR/tokenizer; SpeechTextVocabulary(<its SentencePiece model>, num_units=...), or for a "
                    f"byte-level tokenizer (Llama 3, Qwen, SmolLM2) and unit-only tasks SpeechTextVocabulary(None, "
                    f"text_vocab_size=<its text size>, eos_id=<its EOS>, num_units=...)) "
                    f"or ids do not line up with the imported embedding")
        if eos_ids and not vocab.has_text_model and vocab.eos_id not in eos_ids:
            log.warning("%r ends every sequence with id %d, an ordinary token of the imported checkpoint, whose EOS "
                        "ids are %s (%s): build the task's vocabulary with SpeechTextVocabulary(None, ..., eos_id=%d) "
                        "so sequences end, and generation stops, where the checkpoint's do",
                        cfg.mixture_or_task_name, vocab.eos_id, eos_ids, path, eos_ids[0])


def _first_non_finite(pending: list[tuple[int, Any]]) -> int | None:
    """First step whose loss, gradient norm or resulting parameter norm is NaN/Inf."""
    for step, values in pending:
        if not all(math.isfinite(float(v)) for v in values):
            return step
    return None


def _next_batch_on_every_process(iterator):
    """The next batch, or None once any process's iterator is exhausted: the eval step is a
    collective, so a process that went on alone would wait forever for the others."""
    try:
        batch = next(iterator)
    except StopIteration:
        batch = None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        if not multihost_utils.process_allgather(np.asarray(batch is not None)).all():
            return None
    return batch


def evaluate(trainer: Trainer, params, eval_iterator_factory, eval_steps: int) -> dict[str, float]:
    """Mean per-token loss over `eval_steps` batches of a FRESH eval iterator (same batches each time)."""
    iterator = eval_iterator_factory()
    loss_sum, tokens = 0.0, 0.0
    for _ in range(eval_steps):
        batch = _next_batch_on_every_process(iterator)
        if batch is None:
            break
        out = jax.device_get(trainer.eval_step(params, trainer.global_batch(batch)))
        loss_sum += float(out["loss_sum"])
        tokens += float(out["target_tokens"])
    if tokens == 0 and eval_steps > 0:
        # an eval loss of 0 over no tokens would read as a perfect model
        from slm_jax.data.pipeline import EmptyDataError
        raise EmptyDataError("the eval stream gave no batch with target tokens (a finite eval "
                             "DatasetConfig.num_epochs with fewer rows than one batch?); eval_loss would be meaningless")
    return {"eval_loss": loss_sum / max(tokens, 1.0), "eval_tokens": tokens}


def next_train_batch(iterator, cfg, step: int) -> dict:
    """The next train batch; EmptyDataError (never a bare StopIteration) once the stream runs
    out. A finite stream (`DatasetConfig.num_epochs`) can run out on one process first, so
    then every process agrees each step (one small all-gather); a repeated stream that passed
    `check_not_empty` on every process never runs out, so it pays nothing."""
    from slm_jax.data.pipeline import exhausted_error
    if cfg.num_epochs is not None:
        batch = _next_batch_on_every_process(iterator)
    else:
        batch = next(iterator, None)
    if batch is None:
        raise exhausted_error(cfg, step)
    return batch


def _progress(total: int, initial: int):
    if jax.process_index() != 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)


@gin.configurable("train")
@dataclasses.dataclass(frozen=True)
class TrainRun:
    """Everything one run needs; gin binds it as `train.*` (t5x style)."""

    model_dir: str = gin.REQUIRED
    model: Any = gin.REQUIRED  # a registered model config: DecoderConfig or LSTConfig
    train_dataset: Any = gin.REQUIRED  # slm_jax.data.pipeline.DatasetConfig
    train_steps: int = gin.REQUIRED
    # Token budget (TRAIN_TOKENS): stop at the first step whose cumulative global loss-weighted
    # target tokens reach it; int >= 1, or None to stop at train_steps. When set, train_steps is
    # ignored: the LR schedule ends at the step estimated from `token_probe_batches` batches
    # (int >= 1) of the train stream, recorded in MODEL_DIR/token_budget.json.
    train_tokens: int | None = None
    token_probe_batches: int = 32
    eval_dataset: Any = None
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    train_config: TrainConfig = TrainConfig()
    checkpoint_period: int = 1000
    keep_checkpoints: int | None = 3
    log_period: int = 10
    eval_period: int = 0
    eval_steps: int = 10
    # In-training benchmarks (names the caller's scorer knows, e.g. 'ssc_en,stc_en' for
    # slm_jax.evaluation.benchmarks), run every `benchmark_period` steps (a multiple of
    # log_period) and logged as `bench/<name>` next to the loss. `run_training` receives the
    # scorer as `benchmark_fn` (`slm-jax train` builds it), so training never imports evaluation.
    benchmarks: str = ""
    benchmark_period: int = 0
    seed: int = 0
    async_checkpoints: bool = True
    # Resume settings this launch may change (names of run_dir.RESUME_SETTINGS, comma-separated,
    # e.g. 'schedule,batch_size'); by default a resume with any of them changed is refused.
    allow_resume_changes: str = ""
    # Called at run time, so `DistributedConfig.*` gin bindings apply without a `train.` binding.
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def __post_init__(self):
        for key, value in (("TRAIN_STEPS (train.train_steps)", self.train_steps),
                           ("CHECKPOINT_PERIOD (train.checkpoint_period)", self.checkpoint_period),
                           ("train.log_period", self.log_period),
                           ("train.token_probe_batches", self.token_probe_batches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}={value!r} must be an int >= 1")
        if isinstance(self.train_tokens, float) and self.train_tokens.is_integer():  # TRAIN_TOKENS = 10e9
            object.__setattr__(self, "train_tokens", int(self.train_tokens))
        if self.train_tokens is not None and (not isinstance(self.train_tokens, int)
                                              or isinstance(self.train_tokens, bool) or self.train_tokens < 1):
            raise ConfigError(f"TRAIN_TOKENS (train.train_tokens)={self.train_tokens!r} must be an int >= 1 "
                             f"(loss-weighted target tokens) or None (stop at TRAIN_STEPS)")
        run_dir.parse_allowed_changes(self.allow_resume_changes)
        if self.benchmarks and self.benchmark_period:
            if not isinstance(self.benchmark_period, int) or self.benchmark_period % self.log_period:
                raise ConfigError(f"train.benchmark_period={self.benchmark_period!r} must be a multiple of "
                                 f"train.log_period={self.log_period} (benchmarks are logged with the loss)")


def build_trainer(run: TrainRun, devices=None) -> Trainer:
    """Mesh + Trainer for a run; all shape/mesh errors are raised here, before compiling."""
    device_mesh = partitioning.make_mesh(run.mesh, devices)
    return Trainer(run.model, run.optimizer, run.train_config, device_mesh, run.mesh.logical_axis_rules,
                   run.train_steps, run.train_dataset.batch_size, run.train_dataset.sequence_length)


BenchmarkFn = Callable[[Trainer, Any], dict[str, float]]


# --- token budgets -----------------------------------------------------------------------------


def probe_token_rates(cfg, shard_info, gather, batches: int) -> dict[str, Any]:
    """Target and packed tokens per step, measured on the first `batches` batches of a FRESH
    iterator of `cfg` on this process's shard (`shard_info`), summed over the processes of the
    job (`gather`: `_process_gather()`; a collective then). A finite stream
    (`DatasetConfig.num_epochs`) may give fewer batches; all processes stop at the same one.

    Returns {probe_batches, target_tokens_per_step, packed_tokens_per_step,
    capacity_tokens_per_step (global batch * length), packing_efficiency (packed / capacity),
    target_fraction (target / packed), target_tokens (the probe's total), processes}.
    Raises EmptyDataError when the batches hold no loss-weighted target token.
    """
    from slm_jax.data.pipeline import DataIterator, EmptyDataError, get_dataset
    iterator = DataIterator(get_dataset(cfg, shard_info))
    local, read = np.zeros(2, np.int64), 0
    for _ in range(batches):
        batch = _next_batch_on_every_process(iterator) if cfg.num_epochs is not None else next(iterator, None)
        if batch is None:
            break
        local += target_and_packed(batch)
        read += 1
    target, packed = (int(v) for v in sum_over_processes(local, gather))
    if target == 0:
        raise EmptyDataError(f"TRAIN_TOKENS: the first {read} batches of {cfg.mixture_or_task_name!r} (split "
                             f"{cfg.split!r}) hold no loss-weighted target token; no number of steps reaches a "
                             f"token budget")
    capacity = cfg.batch_size * cfg.sequence_length
    return {"probe_batches": read, "target_tokens": target, "target_tokens_per_step": target / read,
            "packed_tokens_per_step": packed / read, "capacity_tokens_per_step": capacity,
            "packing_efficiency": packed / read / capacity, "target_fraction": target / max(packed, 1),
            "processes": jax.process_count()}


def estimated_budget_steps(train_tokens: int, probe: dict[str, Any], start_step: int = 0,
                           start_tokens: int = 0) -> int:
    """The step expected to reach `train_tokens`: `start_step` + ceil(the tokens still missing
    after `start_tokens` / the probe's target tokens per step), at least 1."""
    missing = max(train_tokens - start_tokens, 0)
    per_step_num, per_step_den = probe["target_tokens"], probe["probe_batches"]  # exact rational rate
    return max(start_step + -(-missing * per_step_den // per_step_num), 1)


def _budget_matches(record: dict | None, run: "TrainRun", mixture: Any, latest_step: int | None) -> bool:
    """Whether `token_budget.json` holds this run's estimate: same TRAIN_TOKENS, batch, length
    and mixture, measured at a step this MODEL_DIR has reached."""
    if not record:
        return False
    data = run.train_dataset
    same = (record.get("train_tokens") == run.train_tokens and record.get("batch_size") == data.batch_size
            and record.get("sequence_length") == data.sequence_length
            and record.get("mixture") == json.loads(json.dumps(mixture, sort_keys=True))
            and isinstance(record.get("estimated_steps"), int) and record["estimated_steps"] >= 1)
    return same and record.get("start_step", 0) <= (latest_step or 0)


def _settings_before_probe(settings: dict[str, Any], launches: list[dict[str, Any]]) -> dict[str, Any]:
    """The resume settings to check before the probe has measured the schedule's end: that end as
    the last launch recorded it (the check runs again once it is measured)."""
    saved = ((launches[-1].get("settings") or {}).get("schedule") or {}) if launches else {}
    if "decay_end_step" not in saved:
        return settings
    return {**settings, "schedule": {**settings["schedule"], "decay_end_step": saved["decay_end_step"]}}


def measure_token_budget(run: "TrainRun", settings: dict[str, Any], shard_info, gather,
                         start_step: int = 0, start_tokens: int = 0) -> tuple["TrainRun", dict[str, Any]]:
    """Probes the train stream (`probe_token_rates`), writes MODEL_DIR/token_budget.json and
    returns (`run` with train_steps = the estimate, the record). `start_step` / `start_tokens`:
    where a resumed run stands (the estimate counts the missing tokens from there)."""
    probe = probe_token_rates(run.train_dataset, shard_info, gather, run.token_probe_batches)
    estimate = estimated_budget_steps(run.train_tokens, probe, start_step, start_tokens)
    data = run.train_dataset
    record = {**{k: v for k, v in probe.items() if k != "target_tokens"}, "train_tokens": run.train_tokens,
              "estimated_steps": estimate, "batch_size": data.batch_size, "sequence_length": data.sequence_length,
              "mixture": settings["mixture"], "start_step": start_step, "start_target_tokens": start_tokens}
    run_dir.write_token_budget(run.model_dir, record)
    log.info("TRAIN_TOKENS=%d: %.1f target tokens per step (packing efficiency %.3f, %d probe batches): the "
             "budget is expected at step %d, where the LR schedule ends", run.train_tokens,
             probe["target_tokens_per_step"], probe["packing_efficiency"], probe["probe_batches"], estimate)
    return dataclasses.replace(run, train_steps=estimate), record


def _check_resume(run: "TrainRun", settings: dict[str, Any], launches, latest: int | None,
                  with_hint: bool = True) -> list[str]:
    """`run_dir.check_resume` of `settings` with the schedule hint; returns the allowed changes."""
    hint = schedule_hint(run, launches[-1].get("settings") if launches else None, latest) if with_hint else None
    return run_dir.check_resume(run.model_dir, settings, run_dir.parse_allowed_changes(run.allow_resume_changes),
                                hints={"schedule": hint} if hint else None)


def _restored_tokens(ckpt_dir: str, step: int | None) -> dict[str, Any] | None:
    """The `tokens` item of `step` (None: no step, or a step saved without one)."""
    from slm_jax.training.checkpoints import read_token_counts
    return None if step is None else read_token_counts(ckpt_dir, step)


def run_training(run: TrainRun, config_str: str = "", benchmark_fn: BenchmarkFn | None = None) -> dict[str, Any]:
    """Train until `run.train_steps` (or, with `run.train_tokens`, until the first step whose
    cumulative target tokens reach it), resuming from MODEL_DIR if it holds a checkpoint.

    `benchmark_fn(trainer, params) -> {name: value}` scores `run.benchmarks` every
    `run.benchmark_period` steps (e.g. `slm_jax.evaluation.benchmarks.in_training_scorer`);
    ValueError if benchmarks are configured without one.

    Returns the last logged metrics (used by tests and the demo report; `tokens/*` included);
    after a preemption notice (SIGTERM) it saves the step every process reached, returns early
    with `preempted_at_step` set, and the next launch resumes from that step. A budget run that
    already reached its budget returns {"step": the restored step, "budget_reached": True, tokens/*}.
    """
    import seqio

    from slm_jax.data.pipeline import DataIterator, check_not_empty, get_dataset, task_names
    from slm_jax.training.checkpoints import CheckpointManager, has_data_item, list_complete_steps
    from slm_jax.training.preemption import PreemptionWatcher

    if run.benchmarks and run.benchmark_period and benchmark_fn is None:
        raise ValueError(f"train.benchmarks={run.benchmarks!r} needs a scorer: run through `slm-jax train` or pass "
                         f"run_training(..., benchmark_fn=slm_jax.evaluation.benchmarks.in_training_scorer(...))")
    if not (run.benchmarks and run.benchmark_period):
        benchmark_fn = None

    # 0. Join the multi-process job (TPU pod, SLURM) before anything touches a device.
    distributed.initialize(run.distributed)

    # 1. Everything that can be checked without compiling.
    model_dir = run.model_dir
    ckpt_dir = run_dir.checkpoints_dir(model_dir)
    run_dir.check_compatible(model_dir, run.model)
    from slm_jax.data.feature_converter import run_bos_id  # the BOS the training packs start segments with
    run_dir.check_bos(model_dir, run_bos_id())
    launches = run_dir.read_launches(model_dir)
    saved_steps = list_complete_steps(ckpt_dir)
    latest = max(saved_steps) if saved_steps else None
    budget = run.train_tokens
    measure = False  # the budget's step estimate is not recorded yet: probe the stream
    if budget is not None:
        log.info("TRAIN_TOKENS=%d: the run stops at the first step whose cumulative target tokens reach it; "
                 "TRAIN_STEPS (train.train_steps=%d) is ignored", budget, run.train_steps)
        record = run_dir.read_token_budget(model_dir)
        if _budget_matches(record, run, resume_settings(run)["mixture"], latest):
            run = dataclasses.replace(run, train_steps=record["estimated_steps"])
        else:
            measure = True
    settings = resume_settings(run)
    changed = _check_resume(run, _settings_before_probe(settings, launches) if measure else settings, launches,
                            latest, with_hint=not measure)
    check_vocabulary_fits(run)
    check_imported_vocabulary(run)
    trainer = build_trainer(run)
    shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
    gather = _process_gather()
    # Before step 1 and the same on every process: each member yields examples on each shard.
    check_not_empty(run.train_dataset, shard, gather)
    eval_factory = None
    if run.eval_dataset is not None and run.eval_period:
        check_not_empty(run.eval_dataset, shard, gather)
        eval_factory = lambda: DataIterator(get_dataset(run.eval_dataset, shard))  # noqa: E731
    tokens_saved = _restored_tokens(ckpt_dir, latest)
    done_tokens = int(((tokens_saved or {}).get("counts") or {}).get("tokens/target", 0))
    if measure:
        if latest is not None and done_tokens >= budget:
            run = dataclasses.replace(run, train_steps=latest)  # nothing left to train: no probe
        else:
            run, _ = measure_token_budget(run, settings, shard, gather, latest or 0, done_tokens)
        settings = resume_settings(run)
        changed = _check_resume(run, settings, launches, latest)  # again, with the measured end of the schedule
        trainer = build_trainer(run)
    # The data item of a step saved before token accounting restores only into that pipeline
    # (and a run resumed from one keeps it: its later steps say so with data_task_ids=False).
    new_stream = sorted(set(changed) & set(run_dir.DATA_SETTINGS))
    legacy_data = False
    if latest is not None and not new_stream and has_data_item(ckpt_dir, latest):
        legacy_data = tokens_saved is None or tokens_saved.get("data_task_ids") is False
    data_iter = DataIterator(get_dataset(run.train_dataset, shard, task_ids=not legacy_data))
    run_dir.write_run_files(model_dir, run.model)

    # 2. Restore or initialise.
    ckpt = CheckpointManager(ckpt_dir, save_period=run.checkpoint_period,
                             max_to_keep=run.keep_checkpoints, async_save=run.async_checkpoints)
    start = ckpt.latest_step()
    if start is not None:
        log.info("Restoring step %d from %s", start, model_dir)
        # `slm-jax import-hf` writes step 0 without an input position: the data starts at its beginning
        imported = start == 0 and not ckpt.has_data_state(0)
        # the saved position belongs to another stream after an allowed data change
        if new_stream:
            log.warning("Resume with changed %s (train.allow_resume_changes): the train data starts again from "
                        "the beginning of the new stream", ", ".join(new_stream))
        state = ckpt.restore(trainer.abstract_state, step=start,
                             data_iterator=None if imported or new_stream else data_iter)
        if tokens_saved is None and start > 0:
            log.warning("Checkpoint step %d has no token counts (saved before token accounting): tokens/* count "
                        "from 0 at this step", start)
        if legacy_data:
            log.warning("Checkpoint step %d holds the input position of the pipeline before token accounting: the "
                        "train data resumes in that layout, without per-member ids (a mixture's tokens are counted "
                        "as tokens/task/%s)", start, "<untagged>")
    else:
        start = 0
        state = trainer.init_state(run.seed)
    counter = TokenCounter(task_names(run.train_dataset), restored=(tokens_saved or {}).get("counts"))
    problem = schedule_problem(run.optimizer, run.train_steps)
    if problem:
        log.warning("LR schedule: %s%s", problem, f" (TRAIN_TOKENS={budget} is expected at step {run.train_steps})"
                    if budget is not None else "")
    run_dir.record_launch(model_dir, settings, config_str, start, run.train_steps, changed)
    writer = MetricsWriter(model_dir, resume_step=start)

    tokens_per_step = run.train_dataset.batch_size * run.train_dataset.sequence_length
    flops_per_token = run.model.flops_per_token(run.train_dataset.sequence_length)
    bar = _progress(run.train_steps, start)
    preemption = PreemptionWatcher()
    pending: list[tuple[int, Any]] = []
    last: dict[str, Any] = {}
    window_start, window_steps = time.perf_counter(), 0
    # Budget: the counts are global only after a sync (a collective); one step adds at most
    # batch * length target tokens (0/1 loss weights), so no step before `next_check` can reach it.
    synced_at, next_check, warned_past_estimate = start, start + 1, False

    def sync(step: int) -> None:
        nonlocal synced_at, next_check
        if synced_at != step:
            counter.sync(gather)
            synced_at = step
        if budget is not None:
            next_check = step + max(1, -(-(budget - counter.target) // tokens_per_step))

    def check_finite():
        bad = _first_non_finite([(s, jax.device_get(l)) for s, l in pending])
        if bad is not None:
            ckpt.wait_until_finished()
            good = ckpt.latest_step()
            raise NonFiniteLossError(
                f"non-finite loss, gradient or parameters at step {bad}; stopping. The last good checkpoint (step {good}) in "
                f"{model_dir} is intact; lower OptimizerConfig.learning_rate or raise TrainConfig.z_loss")
        pending.clear()

    def checkpoint_tokens() -> dict[str, Any]:
        return {"counts": counter.values(), "data_task_ids": not legacy_data, "train_tokens": budget}

    if budget is not None:
        sync(start)
    reached = budget is not None and counter.target >= budget
    if reached:
        log.info("TRAIN_TOKENS=%d already reached at step %d (%d target tokens): nothing to train", budget, start,
                 counter.target)
        last = {"step": start, "budget_reached": True, **counter.values()}
    steps = (itertools.count(start + 1) if budget is not None else range(start + 1, run.train_steps + 1))
    try:
        for step in ([] if reached else steps):
            local = next_train_batch(data_iter, run.train_dataset, step)
            counter.add(local)
            state, metrics = trainer.train_step(state, trainer.global_batch(local))
            pending.append((step, (metrics["loss"], metrics["grad_norm"], metrics["param_norm"])))
            window_steps += 1

            if budget is None:
                is_last = step == run.train_steps
            else:
                if step >= next_check or step == run.train_steps:
                    sync(step)
                is_last = synced_at == step and counter.target >= budget
                if not is_last and step >= run.train_steps and not warned_past_estimate:
                    warned_past_estimate = True
                    log.warning("Step %d (the estimate of token_budget.json) has %d of TRAIN_TOKENS=%d target tokens: "
                                "training on at the schedule's end learning rate until the budget is reached",
                                step, counter.target, budget)
            stopping = not is_last and preemption.should_stop(step)
            saving = ckpt.should_save(step) or is_last or stopping
            logged = step % run.log_period == 0 or is_last

            if logged or saving:  # a metrics line at every checkpoint: tokens/* are known at each saved step
                sync(step)
                check_finite()
                values = drop_absent_modalities({k: float(v) for k, v in jax.device_get(metrics).items()})
                if values.get("ctc_dropped_chars", 0) > 0:
                    raise ModelDataMismatchError(
                        f"step {step}: {values['ctc_dropped_chars']:.0f} transcript characters did not fit the CTC "
                        f"target buffer; raise TrainConfig.ctc_max_chars (longest transcript) or "
                        f"TrainConfig.ctc_max_segments (packed examples per row)")
                elapsed = time.perf_counter() - window_start
                tps = tokens_per_step * window_steps / max(elapsed, 1e-9)
                values["tokens_per_second"] = tps
                values["mfu"] = mfu(tps, flops_per_token, jax.device_count())
                if logged and eval_factory is not None and step % run.eval_period == 0:
                    values.update(evaluate(trainer, state["params"], eval_factory, run.eval_steps))
                if logged and benchmark_fn is not None and step % run.benchmark_period == 0:
                    values.update({f"bench/{k}": v for k, v in benchmark_fn(trainer, state["params"]).items()})
                values.update(counter.values())
                writer.write(step, values)
                last = {"step": step, **values}
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{tps:,.0f}")
                window_start, window_steps = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)

            if saving:
                check_finite()
                ckpt.save(step, state, data_iter, force=True, tokens=checkpoint_tokens())
            if stopping:
                ckpt.wait_until_finished()
                log.warning("Preemption notice (SIGTERM): saved step %d in %s; relaunch the same command to resume",
                            step, model_dir)
                last = {**last, "step": last.get("step", step), "preempted_at_step": step}
                break
            if is_last:
                if budget is not None:
                    log.info("TRAIN_TOKENS=%d reached at step %d (%d target tokens)", budget, step, counter.target)
                break
        ckpt.wait_until_finished()
    finally:
        preemption.close()
        ckpt.close()
        writer.close()
        if bar is not None:
            bar.close()
    return last
