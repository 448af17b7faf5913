"""`slm-jax`: the command line. One module per sub-command; the only place in slm_jax with
argparse, printing and exit codes (0 ok; non-zero on bad input with a message naming the
file, record or flag: 2 for most commands, 1 for `prepare import|spm`; 3: does not fit;
1 when a checkpoint could not be written (full disk): the one line names the step, the
reason, MODEL_DIR and the complete step a rerun resumes from).

    slm-jax train   --gin_file=gin/runs/demo_cpu.gin [--gin.TRAIN_STEPS=100] [--module_import=my_tasks]
    slm-jax inspect MODEL_DIR [--step N]
    slm-jax compile --gin_file=gin/runs/tpu_v5e_1b.gin --topology=v5e:4x4
    slm-jax units fit|encode ...            audio -> features -> k-means units
    slm-jax prepare demo-corpus|spm|import  build or import corpora, train SentencePiece
    slm-jax data show|stats TASK_OR_MIXTURE [--module_import=my_tasks]
    slm-jax eval --gin_file=RUN.gin --gin.MODEL_DIR=... --benchmarks=ssc_en,stc_en|demo [--all_checkpoints]
    slm-jax compare RUN_DIR [RUN_DIR ...] [--step=N | --tokens=T]   accuracy [95% CI] and paired tests vs the first run
    slm-jax generate --gin_file=RUN.gin --prompts_from=ssc_en [--fewshot=asr|tts --data=GLOB]
    slm-jax import-hf PATH --out MODEL_DIR [--vocab_layout speech|spiritlm]   HF Llama/Qwen2/Qwen3 -> step 0
    slm-jax export-hf MODEL_DIR --out PATH [--step N]                        checkpoint -> HF safetensors
"""
from __future__ import annotations

import errno
import importlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# sub-command -> (module in slm_jax.cli, its entry function); imported on use (startup stays fast)
COMMANDS = {
    "train": ("train", "main"),
    "inspect": ("inspect_run", "main"),
    "compile": ("compile", "main"),
    "units": ("units", "units_main"),
    "prepare": ("prepare", "main"),
    "data": ("data", "data_main"),
    "eval": ("eval", "cmd_eval"),
    "compare": ("compare", "main"),
    "generate": ("generate", "cmd_generate"),
    "import-hf": ("import_hf", "cmd_import_hf"),
    "export-hf": ("export_hf", "cmd_export_hf"),
}


def command(name: str):
    """The entry function `(argv) -> exit code` of a sub-command."""
    module, func = COMMANDS[name]
    return getattr(importlib.import_module(f"slm_jax.cli.{module}"), func)


# Commands configured by gin: `--help` shows their own flags plus the gin flags.
GIN_FLAGS = ("gin flags (t5x style): --gin_file=FILE (repeatable; relative to . or gin/), "
             "--gin.NAME=VALUE (any binding or macro), --module_import=MODULE (registers your tasks)")


def _gin_command_help(name: str) -> str:
    module = importlib.import_module(f"slm_jax.cli.{COMMANDS[name][0]}")
    text = module.parser().format_help() if hasattr(module, "parser") else (module.__doc__ or "")
    return f"{text.rstrip()}\n\n{GIN_FLAGS}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from slm_jax.cli.common import quiet_start
    quiet_start()  # before any command imports TensorFlow or initialises JAX
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("slm_jax").setLevel(logging.INFO)
    # gin logs every search-path miss while resolving `include`; not a user-facing error.
    logging.getLogger().addFilter(lambda r: not str(r.msg).startswith(("Path not found", "system_path_file_exists")))
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] in ("train", "compile", "eval", "generate") and any(a in ("-h", "--help") for a in argv[1:]):
        print(_gin_command_help(argv[0]))
        return 0
    from slm_jax.gin_utils import ConfigError
    from slm_jax.training.checkpoints import CheckpointWriteError
    from slm_jax.training.partitioning import MeshError
    from slm_jax.training.run_dir import IncompatibleModelDirError, ModelDirError
    from slm_jax.training.train import ModelDataMismatchError, NonFiniteLossError
    try:
        return command(argv[0])(argv[1:])
    except (ConfigError, MeshError, IncompatibleModelDirError, ModelDirError, ModelDataMismatchError,
            NonFiniteLossError) as err:
        print(f"slm-jax {argv[0]}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except CheckpointWriteError as err:  # the run stopped; a rerun after freeing space resumes exactly
        print(f"slm-jax {argv[0]}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - only a file-system or record-field refusal becomes one line
        reason = _file_system_refusal(err) or _record_field_refusal(err)
        if reason is None:
            raise
        print(f"slm-jax {argv[0]}: {reason}", file=sys.stderr)
        return 2


def _record_field_refusal(err: BaseException) -> str | None:
    """One line for a data read that stopped because a record lacks a field its task needs
    (`slm_jax.data.registration.check_record_fields`: a TF assertion naming task, record and
    field, raised from inside tf.data); None for any other error."""
    if type(err).__name__ != "InvalidArgumentError":
        return None
    from slm_jax.data.registration import MISSING_FIELD_MARK
    text = str(err)
    if MISSING_FIELD_MARK not in text:
        return None
    line = next(ln for ln in text.splitlines() if MISSING_FIELD_MARK in ln).strip()
    return "MissingFieldError: " + line.split("assertion failed:", 1)[-1].strip()


def _file_system_refusal(err: BaseException) -> str | None:
    """One line for an input path that is missing or not writable (FileNotFoundError,
    PermissionError, a read-only file system, TensorFlow's NotFound/PermissionDenied from
    tf.io.gfile); None for any other error, which keeps its traceback."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) \
            or (isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT)):
        return f"{type(err).__name__}: {err}"
    if type(err).__module__.startswith("tensorflow") and type(err).__name__ in ("NotFoundError",
                                                                                 "PermissionDeniedError"):
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {message}"
    return None


if __name__ == "__main__":
    sys.exit(main())
