"""`slm-jax generate`: continuations or few-shot ASR/TTS from a run's checkpoint.

    slm-jax generate --gin_file=gin/runs/demo_cpu.gin --prompts_from=ssc_en --num_prompts=2
                 [--max_new_tokens=100] [--temperature=0.8] [--top_k=50] [--top_p=0.95] [--modality=speech]
    slm-jax generate --gin_file=... --fewshot=asr --shots=3 --num_queries=8 --data=GLOB
"""
from __future__ import annotations

import argparse

from slm_jax.cli.common import reports
from slm_jax.cli.eval import restore_params, run_vocabulary, setup_run, steps_to_evaluate
from slm_jax.evaluation import benchmarks as bench
from slm_jax.evaluation.cloze import BadPairError
from slm_jax.speech.units import dedup_with_durations

PROMPT_FLAGS = ("prompt", "prompt_units", "prompt_text", "prompts_from")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slm-jax generate", description="Continuations or few-shot ASR/TTS.")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="token string, e.g. '[Speech][Hu3][Hu7]' (the vocabulary's form)")
    src.add_argument("--prompt_units", default=None, help="frame-level units '3 3 7 9' (deduplicated as in training)")
    src.add_argument("--prompt_text", default=None, help="text (needs a vocabulary with a SentencePiece model)")
    src.add_argument("--prompts_from", default=None,
                     help="the prompts of a pair JSONL (cloze.py formats) or of a registered benchmark (ssc_en, ...)")
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
    p.add_argument("--allow_sentinels", action="store_true", help="let the model emit span-corruption sentinels "
                   "(<extra_id_N>; banned by default: a denoising-trained model emits them only inside targets)")
    p.add_argument("--fewshot", choices=("asr", "tts"), default=None, help="few-shot ASR / TTS with WER/CER")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--num_queries", type=int, default=8)
    p.add_argument("--data", default=None, help="few-shot utterances (corpus TFRecord/JSONL glob with units "
                                                "and text); required with --fewshot")
    return p


@reports("slm-jax generate", bench.BenchmarkError, BadPairError, FileNotFoundError)
def cmd_generate(argv) -> int:
    from slm_jax.evaluation import generate as gen
    from slm_jax.evaluation.runner import ModelRunner
    run, trainer, rest = setup_run(argv)
    args = parser().parse_args(rest)
    vocabulary = run_vocabulary(run)
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
                       stop_ids=[vocabulary.eos_id], banned_ids=banned, vocabulary=vocabulary, padding=args.padding,
                       allow_sentinels=args.allow_sentinels)
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
        path = bench.pair_file(path)  # a registered benchmark name, or a file
        pairs = [p for p in load_pairs_jsonl(path, max_pairs=args.num_prompts) if p.prompt]
        if not pairs:
            raise BadPairError(f"--prompts_from={args.prompts_from}: no record has a prompt")
        return [p.id for p in pairs], [fmt.encode(p.prompt).ids.tolist() for p in pairs]
    return ["empty"], [[vocabulary.speech_marker_id] if hasattr(vocabulary, "speech_marker_id") else []]


def _fewshot(runner, vocabulary, args, sampling_config, utterances) -> int:
    from slm_jax.evaluation import generate as gen
    from slm_jax.evaluation import metrics_text
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
    refs = [dedup_with_durations(u.units)[0].tolist() for u in queries]
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
        raise bench.BenchmarkError(f"--fewshot={args.fewshot} needs --data=GLOB: corpus TFRecord/JSONL files with "
                                   f"units and text (the demo's: $SLM_JAX_DATA_DIR/spoken_demo*/speech/"
                                   f"validation-en-*.tfrecord)")
    utts = [u for u in corpus.iter_utterances(pattern) if u.units and u.text]
    if len(utts) <= args.shots:
        raise bench.BenchmarkError(f"--data={pattern}: {len(utts)} utterances with units and text, not more than "
                                   f"--shots={args.shots}")
    return utts[:args.shots + args.num_queries]
