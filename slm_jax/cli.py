"""`slm-jax`: train, inspect and ahead-of-time compile (more sub-commands join in later issues).

    slm-jax train   --gin_file=gin/runs/demo_cpu.gin [--gin.TRAIN_STEPS=100] [--module_import=my_tasks]
    slm-jax inspect MODEL_DIR [--step N]
    slm-jax compile --gin_file=gin/runs/tpu_v5e_1b.gin --topology=v5e:4x4
    slm-jax units fit|encode ...            audio -> features -> k-means units
    slm-jax prepare demo-corpus|spm|import  build or import corpora, train SentencePiece
    slm-jax data show|stats TASK_OR_MIXTURE [--module_import=my_tasks]
    slm-jax eval --gin_file=RUN.gin --gin.MODEL_DIR=... --benchmarks=ssc_en,stc_en|demo [--all_checkpoints]
    slm-jax generate --gin_file=RUN.gin --prompts_from=ssc_en [--fewshot=asr|tts]
    slm-jax import-hf PATH --out MODEL_DIR [--vocab_layout speech|spiritlm]   HF Llama/Qwen2 -> step 0
    slm-jax export-hf MODEL_DIR --out PATH [--step N]                        checkpoint -> HF safetensors
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _gin_setup(argv):
    from slm_jax import gin_utils
    files, bindings, modules, rest = gin_utils.split_gin_args(argv)
    if not files and not bindings:
        raise gin_utils.ConfigError("no --gin_file given (e.g. --gin_file=gin/runs/demo_cpu.gin)")
    gin_utils.parse_gin(files, bindings, modules)
    return rest


def cmd_train(argv) -> int:
    _gin_setup(argv)
    import gin
    import jax
    from slm_jax.training.train import TrainRun, run_training
    run = TrainRun()
    last = run_training(run, config_str=gin.config_str())
    if jax.process_index() != 0:  # one summary per job, like the logs
        return 0
    if last and "preempted_at_step" in last:
        print(f"preempted: checkpoint at step {last['preempted_at_step']} in {run.model_dir}; "
              "run the same command again to resume")
    elif last:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float))
        print(f"done: step {last['step']}: {shown}")
    print(f"MODEL_DIR: {run.model_dir}")
    return 0


def cmd_inspect(argv) -> int:
    parser = argparse.ArgumentParser(prog="slm-jax inspect", description="Checkpoint steps, size and params hash.")
    parser.add_argument("model_dir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)
    import numpy as np
    from slm_jax.training import checkpoints
    ckpt_dir = f"{args.model_dir.rstrip('/')}/checkpoints"
    steps = checkpoints.list_complete_steps(ckpt_dir)
    print(f"model_dir: {args.model_dir}")
    print(f"checkpoint_steps: {' '.join(map(str, steps)) or '(none)'}")
    step, params = checkpoints.restore_params_to_host(ckpt_dir, args.step)
    import jax
    leaves = jax.tree.leaves(params)
    print(f"step: {step}")
    print(f"num_params: {sum(int(np.prod(x.shape)) for x in leaves)}")
    print(f"params_sha256: {checkpoints.params_sha256(params)}")
    _print_metrics_summary(args.model_dir)
    return 0


def _print_metrics_summary(model_dir: str) -> None:
    """First/last logged loss and the latest eval loss and speed, if metrics exist."""
    import json
    import tensorflow as tf
    path = f"{model_dir.rstrip('/')}/metrics.jsonl"
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


def cmd_compile(argv) -> int:
    parser = argparse.ArgumentParser(prog="slm-jax compile",
                                     description="AOT-compile the train step for a TPU slice on this machine.")
    parser.add_argument("--topology", required=True, help="TPU topology, e.g. v5e:2x2, v5p:2x2x2, v4:2x2x1")
    parser.add_argument("--num_slices", type=int, default=1)
    rest = _gin_setup(argv)
    args = parser.parse_args(rest)
    from slm_jax.training.aot import compile_for_topology, format_report
    from slm_jax.training.train import TrainRun
    report = compile_for_topology(TrainRun(), args.topology, num_slices=args.num_slices)
    print(format_report(report))
    return 0 if report["fits"] else 3


def cmd_units(argv) -> int:
    from slm_jax.speech.pipeline import units_main
    return units_main(argv)


PREPARE_HELP = """slm-jax prepare demo-corpus [--data_dir=DIR] [--num_stories=N]   spoken EN/FR demo corpus + cloze pairs
slm-jax prepare spm --input=GLOB --model_prefix=P --vocab_size=N        SentencePiece on corpus transcripts
slm-jax prepare import --format=slamkit|spiritlm --input=GLOB --output=DIR/PREFIX   import unit corpora"""


def cmd_prepare(argv) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(PREPARE_HELP)
        return 0 if argv else 2
    what, rest = argv[0], argv[1:]
    if what == "spm":
        from slm_jax.data.tokenizers.spm import spm_main
        return spm_main(rest)
    if what == "import":
        from slm_jax.data.corpus.importers import import_main
        return import_main(rest)
    if what == "demo-corpus":
        from slm_jax_demo.corpus import demo_corpus_main
        return demo_corpus_main(rest)
    print(f"slm-jax prepare: unknown target {what!r}\n{PREPARE_HELP}", file=sys.stderr)
    return 2


def cmd_data(argv) -> int:
    rest = argv
    modules = [a.split("=", 1)[1] for a in argv if a.startswith("--module_import=")]
    rest = [a for a in argv if not a.startswith("--module_import=")]
    from slm_jax import gin_utils
    gin_utils.import_modules(["slm_jax.testing.tasks", *modules])
    from slm_jax.data.inspect_data import data_main
    return data_main(rest)


def cmd_eval(argv) -> int:
    from slm_jax.evaluation.eval_cli import cmd_eval as eval_main
    return eval_main(argv)


def cmd_generate(argv) -> int:
    from slm_jax.evaluation.eval_cli import cmd_generate as generate_main
    return generate_main(argv)


def cmd_import_hf(argv) -> int:
    from slm_jax.interop.hf_import import cmd_import_hf as import_hf_main
    return import_hf_main(argv)


def cmd_export_hf(argv) -> int:
    from slm_jax.interop.hf_export import cmd_export_hf as export_hf_main
    return export_hf_main(argv)


COMMANDS = {"train": cmd_train, "inspect": cmd_inspect, "compile": cmd_compile, "units": cmd_units,
            "prepare": cmd_prepare, "data": cmd_data, "eval": cmd_eval,
            "generate": cmd_generate, "import-hf": cmd_import_hf, "export-hf": cmd_export_hf}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("slm_jax").setLevel(logging.INFO)
    # gin logs every search-path miss while resolving `include`; not a user-facing error.
    logging.getLogger().addFilter(lambda r: not str(r.msg).startswith(("Path not found", "system_path_file_exists")))
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from slm_jax.gin_utils import ConfigError
    from slm_jax.training.partitioning import MeshError
    from slm_jax.training.train import IncompatibleModelDirError, ModelDataMismatchError, NonFiniteLossError
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ConfigError, MeshError, IncompatibleModelDirError, ModelDataMismatchError, NonFiniteLossError) as err:
        print(f"slm-jax {argv[0]}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
