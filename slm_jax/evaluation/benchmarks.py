"""Named benchmarks, a suite that loads them once, and `run_benchmarks` for the training loop.

Names (`--benchmarks=a,b,...`):

    ssc_en ssc_fr ssc_en_fr ssc_fr_en      spoken StoryCloze of the demo corpus (EN, FR, EN->FR, FR->EN)
    stc_en stc_fr stc_en_fr stc_fr_en      spoken TopicCloze of the demo corpus
    align_en_fr                            hidden-state alignment of the demo's parallel validation
                                           stories (`align_en_fr:sentence`: per aligned sentence)
    demo                                   all of the above
    PATH.jsonl                             any pair file (`cloze.py` formats)
    DIR                                    a folder of SpokenStoryCloze-named audio (needs a codebook)

A cloze name may end in `:XY` with X the prompt's and Y the endings' modality, `s`
(speech, the default `:ss`) or `t` (text): `ssc_en:ts` scores spoken endings after a text
prompt (cross-modal; text needs a vocabulary with a SentencePiece model).

Results are flat `{name: value}` dicts: a cloze benchmark gives its accuracy under its
name, alignment gives `<name>/cos_parallel`, `<name>/cos_random`, `<name>/r1_en_fr`,
`<name>/r1_fr_en` (means over the transformer layers).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os
from typing import Any, Sequence

from slm_jax.evaluation import alignment, cloze
from slm_jax.evaluation.likelihood import LikelihoodScorer
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.evaluation.sequences import SPEECH, TEXT, SequenceFormat, modality_of_ids, real_vocabulary

CLOZE_KINDS = ("ssc", "stc")
LANG_PAIRS = ("en", "fr", "en_fr", "fr_en")
DEMO_CLOZE = tuple(f"{k}_{p}" for k in CLOZE_KINDS for p in LANG_PAIRS)
DEMO_ALIGNMENT = "align_en_fr"
DEMO_SUITE = (*DEMO_CLOZE, DEMO_ALIGNMENT)
MODALITY_LETTERS = {"s": SPEECH, "t": TEXT}


class BenchmarkError(ValueError):
    """A benchmark name, option or source that cannot be used; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    kind: str  # "cloze" | "audio_cloze" | "alignment"
    source: str  # a demo-corpus relative path, a file or a folder
    demo: bool = False  # source is relative to the demo corpus root
    prompt_modality: str = SPEECH
    ending_modality: str = SPEECH
    level: str = "utterance"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How benchmarks are read, tokenized and scored (flags of `slm-jax eval`)."""

    score: str = "mean"
    renormalize: bool = False
    batch_size: int = 16
    max_pairs: int | None = None
    dedup: bool = True
    markers: bool = True
    lang_tags: bool = False
    data_dir: str | None = None  # demo corpus location (default $SLM_JAX_DATA_DIR)
    # audio folders: the units pipeline the model's training data went through
    centroids: str | None = None
    features: str = "logmel"
    frame_stack: int | None = None
    rate_hz: float | None = None
    units_cache_dir: str | None = None

    def __post_init__(self):
        if self.score not in cloze.SCORE_MODES:
            raise BenchmarkError(f"--score={self.score}: expected one of {', '.join(cloze.SCORE_MODES)}")
        if self.batch_size < 1:
            raise BenchmarkError(f"--batch_size={self.batch_size} must be >= 1")


def parse_benchmarks(value: str | Sequence[str]) -> list[BenchmarkSpec]:
    """`--benchmarks` -> specs; an unknown name is an error naming it and the known ones."""
    names = benchmark_names(value)
    if not names:
        raise BenchmarkError("--benchmarks: no benchmark given (e.g. --benchmarks=ssc_en,stc_en or demo)")
    specs = []
    for name in names:
        specs += [_parse_one(n) for n in (DEMO_SUITE if name == "demo" else [name])]
    duplicated = sorted({s.name for s in specs if sum(t.name == s.name for t in specs) > 1})
    if duplicated:
        raise BenchmarkError(f"--benchmarks: {duplicated} given more than once")
    return specs


def benchmark_names(value: str | Sequence[str]) -> list[str]:
    return [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]


def _parse_one(name: str) -> BenchmarkSpec:
    base, _, suffix = name.partition(":")
    if base == DEMO_ALIGNMENT:
        if suffix not in ("", *alignment.LEVELS):
            raise BenchmarkError(f"--benchmarks: {name!r}: the suffix of {DEMO_ALIGNMENT} is one of {alignment.LEVELS}")
        return BenchmarkSpec(name, "alignment", "paired/validation-*.tfrecord", demo=True,
                             level=suffix or "utterance")
    prompt, ending = _modalities(name, suffix)
    if base in DEMO_CLOZE:
        return BenchmarkSpec(name, "cloze", f"cloze/{base}.jsonl", True, prompt, ending)
    if base.endswith((".jsonl", ".json")) and os.path.isfile(base):
        return BenchmarkSpec(name, "cloze", base, False, prompt, ending)
    if os.path.isdir(base):
        if (prompt, ending) != (SPEECH, SPEECH):
            raise BenchmarkError(f"--benchmarks: {name!r}: an audio folder is speech only")
        return BenchmarkSpec(name, "audio_cloze", base)
    raise BenchmarkError(f"--benchmarks: unknown benchmark {base!r}; known: {', '.join(DEMO_SUITE)}, demo, a pair "
                     f"file (.jsonl) or a folder of <key>_correct/<key>_incorrect audio")


def _modalities(name: str, suffix: str) -> tuple[str, str]:
    if not suffix:
        return SPEECH, SPEECH
    if len(suffix) != 2 or any(c not in MODALITY_LETTERS for c in suffix):
        raise BenchmarkError(f"--benchmarks: {name!r}: the modality suffix is two letters of s (speech) / t (text), "
                         f"prompt then ending, e.g. {name.split(':')[0]}:ts")
    return MODALITY_LETTERS[suffix[0]], MODALITY_LETTERS[suffix[1]]


def demo_path(relative: str, data_dir: str | None = None) -> str:
    """A path inside the spoken demo corpus (built on first use, cached afterwards)."""
    from slm_jax_demo.corpus import ensure_spoken_demo_corpus
    return os.path.join(ensure_spoken_demo_corpus(data_dir), relative)


def task_vocabulary(mixture_or_task_name: str):
    """The `targets` vocabulary of a registered SeqIO task or mixture (what the model was trained on)."""
    import seqio
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    return real_vocabulary(provider.output_features["targets"].vocabulary)


class BenchmarkSuite:
    """Benchmarks read and tokenized once, then run on any number of checkpoints."""

    def __init__(self, specs: Sequence[BenchmarkSpec], vocabulary, options: EvalOptions = EvalOptions()):
        self.specs, self.options = list(specs), options
        self.vocabulary = real_vocabulary(vocabulary)
        self.fmt = SequenceFormat(self.vocabulary, dedup=options.dedup, markers=options.markers,
                                  lang_tags=options.lang_tags)
        self.items = {spec.name: self._load(spec) for spec in self.specs}

    def _source(self, spec: BenchmarkSpec) -> str:
        return demo_path(spec.source, self.options.data_dir) if spec.demo else spec.source

    def _load(self, spec: BenchmarkSpec):
        o, source = self.options, self._source(spec)
        if spec.kind == "alignment":
            if not glob.glob(source):
                raise BenchmarkError(f"--benchmarks={spec.name}: no paired records at {source}")
            return alignment.load_parallel(source, level=spec.level, max_items=o.max_pairs)
        if spec.kind == "audio_cloze":
            if not o.centroids:
                raise BenchmarkError(f"--benchmarks={spec.name}: an audio folder needs --centroids (the codebook of "
                                 f"the model's units) and the same --features/--frame_stack as its corpus")
            cache_dir = o.units_cache_dir or os.path.join(source, ".slm_jax_units")
            os.makedirs(cache_dir, exist_ok=True)
            return cloze.load_audio_pairs(source, o.centroids, cloze.audio_units_path(cache_dir, source),
                                          features=o.features, frame_stack=o.frame_stack, rate_hz=o.rate_hz,
                                          max_pairs=o.max_pairs)
        if not os.path.isfile(source):
            raise BenchmarkError(f"--benchmarks={spec.name}: no pair file at {source}")
        pairs = cloze.load_pairs_jsonl(source, spec.prompt_modality, spec.ending_modality, o.max_pairs)
        cloze.encode_pairs(pairs[:1], self.fmt)  # tokenization errors (text without a text model...) now
        return pairs

    def run(self, runner: ModelRunner) -> dict[str, float]:
        """Flat metrics (module docstring)."""
        return {k: v for k, v in self.run_detailed(runner).items() if isinstance(v, float)}

    def run_detailed(self, runner: ModelRunner) -> dict[str, Any]:
        """Flat metrics plus `<alignment name>/per_layer` lists and pair counts."""
        o = self.options
        kinds = modality_of_ids(self.vocabulary, runner.config.vocab_size)
        scorer = LikelihoodScorer(runner, kinds, batch_size=o.batch_size)
        out: dict[str, Any] = {}
        for spec in self.specs:
            items = self.items[spec.name]
            if spec.kind == "alignment":
                result = alignment.evaluate_alignment(runner, self.fmt, items, o.batch_size)
                out.update({f"{spec.name}/{k}": v for k, v in result.items()})
            else:
                result = cloze.evaluate_pairs(scorer, items, self.fmt, o.score, o.renormalize)
                out[spec.name] = result.accuracy
                out[f"{spec.name}/num_pairs"] = result.num_pairs
        return out


@functools.lru_cache(maxsize=8)
def _cached_suite(names: tuple[str, ...], vocabulary, options: EvalOptions) -> BenchmarkSuite:
    return BenchmarkSuite(parse_benchmarks(names), vocabulary, options)


def run_benchmarks(trainer, params, benchmarks: Sequence[str] | str, vocabulary,
                   options: EvalOptions = EvalOptions()) -> dict[str, float]:
    """Benchmark metrics of `params` on the Trainer's mesh, e.g. from the training loop.

    The benchmarks are read and tokenized on the first call and cached (by names,
    vocabulary and options); the scoring programs are compiled once per model and shape.
    """
    suite = _cached_suite(tuple(benchmark_names(benchmarks)), real_vocabulary(vocabulary), options)
    return suite.run(ModelRunner.from_trainer(trainer, params))


# --- reporting -----------------------------------------------------------------------------
def format_demo_table(results: dict[str, float]) -> str:
    """sSC / sTC accuracy (%) in EN, FR, EN->FR, FR->EN and the alignment metrics."""
    header = f"{'':6}" + "".join(f"{c:>9}" for c in ("EN", "FR", "EN->FR", "FR->EN"))
    lines = [header]
    for kind, label in (("ssc", "sSC"), ("stc", "sTC")):
        cells = [results.get(f"{kind}_{p}") for p in LANG_PAIRS]
        lines.append(f"{label:6}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>9}" for v in cells))
    a = DEMO_ALIGNMENT
    if f"{a}/cos_parallel" in results:
        lines.append(f"alignment of parallel EN/FR stories (mean over layers): "
                     f"cos parallel {results[f'{a}/cos_parallel']:.3f}, cos random {results[f'{a}/cos_random']:.3f}, "
                     f"R@1 EN->FR {100 * results[f'{a}/r1_en_fr']:.1f}%, FR->EN {100 * results[f'{a}/r1_fr_en']:.1f}%")
    return "\n".join(lines)


def format_steps_table(by_step: dict[int, dict[str, float]]) -> str:
    """One row per metric, one column per checkpoint step."""
    steps = sorted(by_step)
    metrics = sorted({k for r in by_step.values() for k, v in r.items() if isinstance(v, float)})
    width = max([len(m) for m in metrics] + [9])
    lines = [f"{'step':{width}}" + "".join(f"{s:>10}" for s in steps)]
    for m in metrics:
        cells = [by_step[s].get(m) for s in steps]
        lines.append(f"{m:{width}}" + "".join(f"{'-' if v is None else f'{v:.4f}':>10}" for v in cells))
    return "\n".join(lines)
