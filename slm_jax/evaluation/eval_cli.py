"""`slm-jax eval` and `slm-jax generate`: benchmarks and continuations from a run's checkpoints.

    slm-jax eval --gin_file=gin/runs/demo_cpu.gin [--gin.MODEL_DIR="'runs/demo'"] --benchmarks=demo
                 [--all_checkpoints | --step=N] [--score=mean|sum|ending|ending_sum] [--renormalize]
    slm-jax generate --gin_file=gin/runs/demo_cpu.gin --prompts_from=ssc_en --num_prompts=2
                 [--max_new_tokens=100] [--temperature=0.8] [--top_k=50] [--top_p=0.95] [--modality=speech]
    slm-jax generate --gin_file=... --fewshot=asr --shots=3 --num_queries=8 [--data=GLOB]

The gin files are the run's own (the model, mesh and task they describe are what is
evaluated; the token format is the task's). `eval` restores the latest complete checkpoint
(or each of them), writes `MODEL_DIR/eval/<step>.json`, plots benchmark accuracy over
checkpoints to `MODEL_DIR/eval/accuracy.png` (with matplotlib) and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import sys

import jax
import numpy as np

from slm_jax.evaluation import benchmarks as bench
from slm_jax.evaluation.cloze import SCORE_MODES, BadPairError

log = logging.getLogger("slm_jax")
EVAL_DIR = "eval"
PLOT_FILE = "accuracy.png"
PROMPT_FLAGS = ("prompt", "prompt_units", "prompt_text", "prompts_from")


# --- shared: gin run, checkpoints ------------------------------------------------------------
def setup_run(argv):
    """Parses t5x-style gin flags -> (TrainRun, Trainer, the other args)."""
    from slm_jax import gin_utils
    from slm_jax.training.train import TrainRun, build_trainer, check_model_dir_compatible
    files, bindings, modules, rest = gin_utils.split_gin_args(argv)
    if not files:
        raise gin_utils.ConfigError("no --gin_file given (the run's gin file, e.g. --gin_file=gin/runs/demo_cpu.gin)")
    gin_utils.parse_gin(files, bindings, modules)
    run = TrainRun()
    check_model_dir_compatible(run.model_dir, run.model)
    return run, build_trainer(run), rest


def checkpoint_dir(model_dir: str) -> str:
    return f"{model_dir.rstrip('/')}/checkpoints"


def steps_to_evaluate(model_dir: str, step: int | None, all_checkpoints: bool) -> list[int]:
    from slm_jax.training import checkpoints
    steps = checkpoints.list_complete_steps(checkpoint_dir(model_dir))
    if not steps:
        raise FileNotFoundError(f"MODEL_DIR={model_dir}: no complete checkpoint in {checkpoint_dir(model_dir)}")
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(f"--step={step}: no complete checkpoint for it in {checkpoint_dir(model_dir)}; "
                                    f"complete steps: {steps}")
        return [step]
    return steps if all_checkpoints else steps[-1:]


def restore_params(trainer, model_dir: str, step: int):
    """Only the `params` of a checkpoint, restored straight into the Trainer's shardings."""
    import orbax.checkpoint as ocp
    from etils import epath
    from slm_jax.training import checkpoints
    state_dir = epath.Path(os.path.abspath(checkpoint_dir(model_dir))) / str(step) / checkpoints.STATE_ITEM
    item = {"params": trainer.abstract_state["params"]}
    handler = ocp.PyTreeCheckpointHandler()
    try:
        restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
    finally:
        handler.close()
    return restored["params"]


def run_vocabulary(run, trainer):
    """The training task's vocabulary, checked against the model's embedding rows."""
    vocabulary = bench.task_vocabulary(run.train_dataset.mixture_or_task_name)
    model_vocab = trainer.model.config.vocab_size
    if vocabulary.vocab_size > model_vocab:
        raise bench.BenchmarkError(f"the task vocabulary has {vocabulary.vocab_size} ids but the model only "
                                   f"{model_vocab} (DecoderConfig.vocab_size)")
    return vocabulary


# --- eval ----------------------------------------------------------------------------------
def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax eval", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", required=True, help="comma-separated names (see above), or demo")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all_checkpoints", action="store_true", help="every complete checkpoint, not the latest")
    which.add_argument("--step", type=int, default=None, help="this checkpoint step only")
    p.add_argument("--score", default="mean", choices=SCORE_MODES, help="sequence score (default mean per token)")
    p.add_argument("--renormalize", action="store_true",
                   help="score ending tokens by a softmax over their own modality's ids only")
    p.add_argument("--batch_size", type=int, default=16, help="sequences per scoring call (rounded to the mesh)")
    p.add_argument("--max_pairs", type=int, default=None, help="first N pairs of each benchmark")
    p.add_argument("--lang_tags", action="store_true", help="the task writes language tags ([EN]) before runs")
    p.add_argument("--no_dedup", action="store_true", help="the task keeps repeated units")
    p.add_argument("--no_markers", action="store_true", help="the task writes no [Speech]/[Text] markers")
    p.add_argument("--data_dir", default=None, help="demo corpus data dir (default $SLM_JAX_DATA_DIR)")
    p.add_argument("--centroids", default=None, help="audio benchmarks: the k-means codebook (.npy)")
    p.add_argument("--features", default="logmel", help="audio benchmarks: features (see slm-jax units)")
    p.add_argument("--frame_stack", type=int, default=None, help="audio benchmarks: frames averaged per unit")
    p.add_argument("--rate_hz", type=float, default=None, help="audio benchmarks: unit rate")
    p.add_argument("--out_dir", default=None, help="where <step>.json and the plot go (default MODEL_DIR/eval)")
    p.add_argument("--no_plot", action="store_true")
    return p


def _eval_options(args, out_dir: str) -> bench.EvalOptions:
    return bench.EvalOptions(score=args.score, renormalize=args.renormalize, batch_size=args.batch_size,
                             max_pairs=args.max_pairs, dedup=not args.no_dedup, markers=not args.no_markers,
                             lang_tags=args.lang_tags, data_dir=args.data_dir, centroids=args.centroids,
                             features=args.features, frame_stack=args.frame_stack, rate_hz=args.rate_hz,
                             units_cache_dir=os.path.join(out_dir, "units"))


def cmd_eval(argv) -> int:
    try:
        return _eval(argv)
    except (bench.BenchmarkError, BadPairError, FileNotFoundError) as err:
        print(f"slm-jax eval: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _eval(argv) -> int:
    from slm_jax.evaluation.runner import ModelRunner
    run, trainer, rest = setup_run(argv)
    args = _eval_parser().parse_args(rest)
    out_dir = args.out_dir or os.path.join(run.model_dir, EVAL_DIR)
    options = _eval_options(args, out_dir)
    suite = bench.BenchmarkSuite(bench.parse_benchmarks(args.benchmarks), run_vocabulary(run, trainer), options)
    steps = steps_to_evaluate(run.model_dir, args.step, args.all_checkpoints)
    by_step = {}
    for step in steps:
        runner = ModelRunner.from_trainer(trainer, restore_params(trainer, run.model_dir, step))
        detailed = suite.run_detailed(runner)
        by_step[step] = {k: v for k, v in detailed.items() if isinstance(v, float)}
        if jax.process_index() == 0:  # every process computed the same replicated results
            log.info("step %d: %s", step, write_eval_json(out_dir, step, detailed, options, run.model_dir))
    print(f"model_dir: {run.model_dir}  steps: {' '.join(map(str, steps))}  score: {options.score}")
    print(bench.format_steps_table(by_step))
    if "demo" in bench.benchmark_names(args.benchmarks):
        print(f"\ndemo benchmarks at step {steps[-1]}:")
        print(bench.format_demo_table(by_step[steps[-1]]))
    if not args.no_plot and jax.process_index() == 0:
        plot = plot_accuracy(out_dir)
        if plot:
            print(f"plot: {plot}")
    return 0


def write_eval_json(out_dir: str, step: int, detailed: dict, options: bench.EvalOptions, model_dir: str) -> str:
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


# --- generate ------------------------------------------------------------------------------
def _generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax generate", description="Continuations or few-shot ASR/TTS.")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="token string, e.g. '[Speech][Hu3][Hu7]' (the vocabulary's form)")
    src.add_argument("--prompt_units", default=None, help="frame-level units '3 3 7 9' (deduplicated as in training)")
    src.add_argument("--prompt_text", default=None, help="text (needs a vocabulary with a SentencePiece model)")
    src.add_argument("--prompts_from", default=None,
                     help="the prompts of a pair JSONL (cloze.py formats) or of a demo benchmark (ssc_en, ...)")
    p.add_argument("--num_prompts", type=int, default=4, help="with --prompts_from: the first N")
    p.add_argument("--num_samples", type=int, default=1, help="continuations per prompt")
    p.add_argument("--max_new_tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="<= 0: greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", choices=("speech", "text"), default=None, help="force the output modality")
    p.add_argument("--output", choices=("units", "text", "both"), default="both")
    p.add_argument("--padding", choices=("left", "right"), default="left")
    p.add_argument("--fewshot", choices=("asr", "tts"), default=None, help="few-shot ASR / TTS with WER/CER")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--num_queries", type=int, default=8)
    p.add_argument("--data", default=None, help="few-shot utterances (corpus TFRecord/JSONL glob with units "
                                                "and text; default: the demo corpus's EN validation)")
    return p


def cmd_generate(argv) -> int:
    try:
        return _generate_cmd(argv)
    except (bench.BenchmarkError, BadPairError, FileNotFoundError) as err:
        print(f"slm-jax generate: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _generate_cmd(argv) -> int:
    from slm_jax.evaluation import generate as gen
    from slm_jax.evaluation.runner import ModelRunner
    run, trainer, rest = setup_run(argv)
    args = _generate_parser().parse_args(rest)
    vocabulary = run_vocabulary(run, trainer)
    try:
        sampling_config = gen.SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    except ValueError as err:
        raise bench.BenchmarkError(f"--temperature/--top_k/--top_p: {err}") from err
    # every input is checked before the (possibly large) checkpoint is read
    if args.fewshot:
        utterances = _fewshot_utterances(args, vocabulary)
    else:
        names, prompts = _prompts(args, vocabulary)
    step = steps_to_evaluate(run.model_dir, args.step, False)[0]
    runner = ModelRunner.from_trainer(trainer, restore_params(trainer, run.model_dir, step))
    print(f"model_dir: {run.model_dir}  step: {step}")
    if args.fewshot:
        return _fewshot(runner, vocabulary, args, sampling_config, utterances)
    banned = []
    if args.modality:
        prompts, banned = gen.forced_modality_prompts(prompts, args.modality, vocabulary)
    rows = [p for p in prompts for _ in range(args.num_samples)]
    out = gen.generate(runner, rows, args.max_new_tokens, sampling_config=sampling_config,
                       stop_ids=[vocabulary.eos_id], banned_ids=banned, vocabulary=vocabulary, padding=args.padding)
    for i, (ids, stopped) in enumerate(zip(out.tokens, out.stopped)):
        name, sample = names[i // args.num_samples], i % args.num_samples
        print(f"[{name}] sample {sample}: {len(ids)} tokens{' + EOS' if stopped else ''}")
        if args.output in ("units", "both"):
            print("  units:", " ".join(map(str, gen.units_of(ids, vocabulary))))
        if args.output in ("text", "both"):
            print("  text: ", vocabulary.decode(ids.tolist()))
    return 0


def _prompts(args, vocabulary) -> tuple[list[str], list[list[int]]]:
    """(names, token ids without EOS) of the requested prompts; bad ones name their flag."""
    try:
        return _prompt_ids(args, vocabulary)
    except ValueError as err:
        if isinstance(err, BadPairError):
            raise
        given = [f for f in PROMPT_FLAGS if getattr(args, f) is not None]
        raise bench.BenchmarkError(f"--{given[0] if given else 'prompt'}: {err}") from err


def _prompt_ids(args, vocabulary) -> tuple[list[str], list[list[int]]]:
    from slm_jax.evaluation.cloze import load_pairs_jsonl
    from slm_jax.evaluation.sequences import Segment, SequenceFormat
    fmt = SequenceFormat(vocabulary, eos=False)
    if args.prompt is not None:
        return ["prompt"], [list(vocabulary.encode(args.prompt))]
    if args.prompt_units is not None:
        units = [int(u) for u in args.prompt_units.split()]
        return ["prompt"], [fmt.encode([Segment.speech(units)]).ids.tolist()]
    if args.prompt_text is not None:
        return ["prompt"], [fmt.encode([Segment.text(args.prompt_text)]).ids.tolist()]
    if args.prompts_from is not None:
        path = args.prompts_from
        if path in bench.DEMO_CLOZE:
            path = bench.demo_path(f"cloze/{path}.jsonl")
        pairs = [p for p in load_pairs_jsonl(path, max_pairs=args.num_prompts) if p.prompt]
        if not pairs:
            raise BadPairError(f"--prompts_from={args.prompts_from}: no record has a prompt")
        return [p.id for p in pairs], [fmt.encode(p.prompt).ids.tolist() for p in pairs]
    return ["empty"], [[vocabulary.speech_marker_id] if hasattr(vocabulary, "speech_marker_id") else []]


def _fewshot(runner, vocabulary, args, sampling_config, utterances) -> int:
    from slm_jax.evaluation import generate as gen, metrics_text
    shots, queries = utterances[:args.shots], utterances[args.shots:args.shots + args.num_queries]
    if args.fewshot == "asr":
        hyps = gen.fewshot_asr(runner, vocabulary, [(u.units, u.text) for u in shots], [u.units for u in queries],
                               args.max_new_tokens, sampling_config)
        refs = [u.text for u in queries]
        for u, hyp in zip(queries, hyps):
            print(f"[{u.id}]\n  ref: {u.text}\n  hyp: {hyp}")
        wer, cer = metrics_text.word_error_rate(refs, hyps), metrics_text.char_error_rate(refs, hyps)
        print(f"{args.shots}-shot ASR on {len(queries)} utterances: WER {100 * wer:.1f}%  CER {100 * cer:.1f}%")
        return 0
    hyps = gen.fewshot_tts(runner, vocabulary, [(u.text, u.units) for u in shots], [u.text for u in queries],
                           args.max_new_tokens, sampling_config)
    refs = [_dedup(u.units) for u in queries]
    for u, hyp in zip(queries, hyps):
        print(f"[{u.id}] {u.text}\n  units: {' '.join(map(str, hyp))}")
    print(f"{args.shots}-shot TTS on {len(queries)} utterances: unit error rate "
          f"{100 * metrics_text.unit_error_rate(refs, hyps):.1f}%")
    return 0


def _fewshot_utterances(args, vocabulary):
    """Utterances with units and text for --fewshot (shots first, then queries)."""
    from slm_jax.data import corpus
    if not getattr(vocabulary, "has_text_model", False):
        raise bench.BenchmarkError(f"--fewshot={args.fewshot} needs text: the run's task vocabulary "
                                   f"({type(vocabulary).__name__}) has no SentencePiece model")
    pattern = args.data
    if pattern is None:
        from slm_jax_demo.corpus import ensure_spoken_demo_corpus
        pattern = os.path.join(ensure_spoken_demo_corpus(), "speech", "validation-en-*.tfrecord")
    utts = [u for u in corpus.iter_utterances(pattern) if u.units and u.text]
    if len(utts) <= args.shots:
        raise bench.BenchmarkError(f"--data={pattern}: {len(utts)} utterances with units and text, not more than "
                                   f"--shots={args.shots}")
    return utts[:args.shots + args.num_queries]


def _dedup(units) -> list[int]:
    units = np.asarray(units)
    return units[np.concatenate([[True], units[1:] != units[:-1]])].tolist() if len(units) else []
