"""Named benchmarks, a suite that loads them once, and an in-training scorer.

Names (`--benchmarks=a,b,...`):

    NAME                    a registered benchmark (`register_cloze` / `register_alignment`; the
                            spoken demo registers ssc_en ssc_fr ssc_en_fr ssc_fr_en, stc_*,
                            align_en_fr when `slm_jax_demo.tasks` is imported)
    SUITE                   a registered suite of names (the demo's `demo`)
    PATH.jsonl              any pair file (`cloze.py` formats)
    DIR                     a benchmark folder as published (needs --centroids): sSC / tSC
                            (<key>_correct.wav, <key>_incorrect.wav), slamkit's cross-modal
                            StoryCloze (<key>_{correct,incorrect,mutual}.{wav,txt}), ZeroSpeech
                            2021 sWUGGY / sBLIMP (lexical|syntactic/dev + gold.csv), a SALMon
                            part (sample_<i>_0.wav / sample_<i>_1.wav); or a parent of such
                            folders (a ZeroSpeech or SALMon root, sSC/ + tSC/ ...): one result
                            per benchmark folder, named DIR/<sub-folder>, never merged
                            (`benchmark_layouts.py` has the rules and their sources)

A cloze name may end in `:XY` with X the prompt's and Y the endings' modality, `s`
(speech, the default `:ss`) or `t` (text): `ssc_en:ts` scores spoken endings after a text
prompt (cross-modal; text needs a vocabulary with a SentencePiece model). Of the folder
layouts only the cross-modal StoryCloze takes a suffix. An alignment name may end in
`:sentence` (per aligned sentence) or `:utterance` (the default).

Results are flat `{name: value}` dicts: a cloze benchmark gives its accuracy under its
name (for a folder, the benchmark's official aggregation: ZeroSpeech averages the pairs of
an item over its voices, then over items), `<name>/pair_mean` the flat mean over pairs
(slamkit's), sWUGGY `<name>/in_vocab`; alignment gives `<name>/cos_parallel`,
`<name>/cos_random`, `<name>/r1_en_fr`, `<name>/r1_fr_en` (means over the transformer
layers). `run_detailed` adds `<name>/num_pairs` and `<name>/pairs`, every pair's id, both
scores and its published labels, so a result can be audited (and sBLIMP `<name>/by_type`,
`<name>/by_subtype`).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
from typing import Any, Callable, Sequence

from slm_jax.evaluation import alignment, benchmark_layouts, cloze
from slm_jax.evaluation.likelihood import LikelihoodScorer
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.evaluation.sequences import (SPEECH, TEXT, Segment, SequenceFormat, modality_of_ids, real_vocabulary,
                                         sentinel_mask)

log = logging.getLogger("slm_jax")
MODALITY_LETTERS = {"s": SPEECH, "t": TEXT}
RootFn = Callable[[str | None], str]  # data_dir (None: the default) -> the folder a source is relative to


class BenchmarkError(ValueError):
    """A benchmark name, option or source that cannot be used; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    kind: str  # "cloze" | "audio_cloze" | "alignment"
    source: str  # a file or folder, or a path relative to root_fn(data_dir)
    root_fn: RootFn | None = None  # e.g. the spoken demo's corpus (built on first use)
    prompt_modality: str = SPEECH
    ending_modality: str = SPEECH
    level: str = "utterance"
    layout: str = ""  # audio_cloze: one of benchmark_layouts.LAYOUTS


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
    data_dir: str | None = None  # passed to a registered benchmark's root_fn (default $SLM_JAX_DATA_DIR)
    # audio folders: the units pipeline the model's training data went through
    centroids: str | None = None
    features: str = "logmel"
    frame_stack: int | None = None
    rate_hz: float | None = None
    # where units are cached (`cloze.AudioUnitsEncoder`: one file per codebook / features key);
    # None: `<first benchmark folder>/.slm_jax_units` (`slm-jax eval`: MODEL_DIR/eval/units)
    units_cache_dir: str | None = None
    # score with the vocabulary's span-corruption sentinels inside the softmax (default: left out)
    score_sentinels: bool = False

    def __post_init__(self):
        if self.score not in cloze.SCORE_MODES:
            raise BenchmarkError(f"--score={self.score}: expected one of {', '.join(cloze.SCORE_MODES)}")
        if self.batch_size < 1:
            raise BenchmarkError(f"--batch_size={self.batch_size} must be >= 1")


# --- registry ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Registered:
    kind: str  # "cloze" | "alignment"
    source: str
    root_fn: RootFn | None


_BENCHMARKS: dict[str, _Registered] = {}
_SUITES: dict[str, tuple[str, ...]] = {}
_TABLES: dict[str, Callable[[dict[str, float]], str]] = {}


def register_cloze(name: str, source: str, root_fn: RootFn | None = None) -> None:
    """Registers a pair benchmark: `source` is a pair JSONL (`cloze.py` formats), relative to
    `root_fn(data_dir)` when given. Re-registering a name replaces it."""
    _BENCHMARKS[name] = _Registered("cloze", source, root_fn)


def register_alignment(name: str, source: str, root_fn: RootFn | None = None) -> None:
    """Registers an EN/FR hidden-state alignment benchmark over paired records (a glob of
    `slm_jax.data.corpus` paired TFRecords, relative to `root_fn(data_dir)` when given)."""
    _BENCHMARKS[name] = _Registered("alignment", source, root_fn)


def register_suite(name: str, members: Sequence[str], table: Callable[[dict[str, float]], str] | None = None) -> None:
    """A name standing for several benchmarks; `table(results)` (optional) formats their results."""
    _SUITES[name] = tuple(members)
    if table is not None:
        _TABLES[name] = table


def registered_names() -> list[str]:
    return sorted(_BENCHMARKS)


def suite_tables(names: str | Sequence[str], results: dict[str, float]) -> list[tuple[str, str]]:
    """(suite, formatted table) for each requested suite that has a table."""
    return [(n, _TABLES[n](results)) for n in benchmark_names(names) if n in _TABLES]


def pair_file(name: str, data_dir: str | None = None) -> str:
    """A registered cloze benchmark's pair JSONL (its root built on first use), or `name` itself."""
    reg = _BENCHMARKS.get(name)
    if reg is None or reg.kind != "cloze":
        return name
    return os.path.join(reg.root_fn(data_dir), reg.source) if reg.root_fn else reg.source


def parse_benchmarks(value: str | Sequence[str]) -> list[BenchmarkSpec]:
    """`--benchmarks` -> specs; an unknown name is an error naming it and the known ones."""
    names = benchmark_names(value)
    if not names:
        raise BenchmarkError("--benchmarks: no benchmark given (e.g. --benchmarks=ssc_en,stc_en or demo)")
    specs = []
    for name in names:
        for member in _SUITES.get(name, [name]):
            specs += _parse_one(member)
    duplicated = sorted({s.name for s in specs if sum(t.name == s.name for t in specs) > 1})
    if duplicated:
        raise BenchmarkError(f"--benchmarks: {duplicated} given more than once")
    return specs


def benchmark_names(value: str | Sequence[str]) -> list[str]:
    return [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]


def _parse_one(name: str) -> list[BenchmarkSpec]:
    base, _, suffix = name.partition(":")
    reg = _BENCHMARKS.get(base)
    if reg is not None and reg.kind == "alignment":
        if suffix not in ("", *alignment.LEVELS):
            raise BenchmarkError(f"--benchmarks: {name!r}: the suffix of {base} is one of {alignment.LEVELS}")
        return [BenchmarkSpec(name, "alignment", reg.source, reg.root_fn, level=suffix or "utterance")]
    prompt, ending = _modalities(name, suffix)
    if reg is not None:
        return [BenchmarkSpec(name, "cloze", reg.source, reg.root_fn, prompt, ending)]
    if base.endswith((".jsonl", ".json")) and os.path.isfile(base):
        return [BenchmarkSpec(name, "cloze", base, None, prompt, ending)]
    if os.path.isdir(base):
        return _folder_specs(name, base, suffix, prompt, ending)
    known = ", ".join([*registered_names(), *sorted(_SUITES)]) or "(none registered)"
    raise BenchmarkError(f"--benchmarks: unknown benchmark {base!r}; known: {known}, a pair "
                         f"file (.jsonl) or a benchmark folder (sSC/tSC, sWUGGY, sBLIMP, SALMon, ...)")


def _folder_specs(name: str, base: str, suffix: str, prompt: str, ending: str) -> list[BenchmarkSpec]:
    """One spec per benchmark folder found in `base` (named `base/<sub-folder>` when `base` is
    a parent); a layout that cannot take the modalities is refused now."""
    found = benchmark_layouts.find_benchmarks(base)
    for rel, why in found.skipped:
        log.warning("--benchmarks=%s: not reading %s: %s", name, rel, why)
    speech_only = [f"{os.path.normpath(os.path.join(base, rel))} ({layout})" for rel, layout in found.benchmarks if layout != "cm_storycloze"]
    if (prompt, ending) != (SPEECH, SPEECH) and speech_only:
        raise BenchmarkError(f"--benchmarks: {name!r}: the :{suffix} suffix needs slamkit's cross-modal StoryCloze "
                             f"layout; speech only here: {', '.join(speech_only)}")
    tail = f":{suffix}" if suffix else ""
    specs = []
    for rel, layout in found.benchmarks:
        spec_name = name if rel == "." else f"{base.rstrip('/')}/{rel}{tail}"
        specs.append(BenchmarkSpec(spec_name, "audio_cloze", os.path.join(base, rel), None, prompt, ending,
                                   layout=layout))
    return specs


def _modalities(name: str, suffix: str) -> tuple[str, str]:
    if not suffix:
        return SPEECH, SPEECH
    if len(suffix) != 2 or any(c not in MODALITY_LETTERS for c in suffix):
        raise BenchmarkError(f"--benchmarks: {name!r}: the modality suffix is two letters of s (speech) / t (text), "
                         f"prompt then ending, e.g. {name.split(':')[0]}:ts")
    return MODALITY_LETTERS[suffix[0]], MODALITY_LETTERS[suffix[1]]


def task_vocabulary(mixture_or_task_name: str):
    """The `targets` vocabulary of a registered SeqIO task or mixture (what the model was trained on)."""
    import seqio
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    return real_vocabulary(provider.output_features["targets"].vocabulary)


class BenchmarkSuite:
    """Benchmarks read and tokenized once, then run on any number of checkpoints.

    Loading has two phases: every benchmark is read and checked first (pair files, folder
    layouts and pairing, text tokenization, the codebook against the features), and only
    then is any audio encoded, so a broken benchmark fails in seconds whatever its size.
    `audio_encoder` (`paths -> {path: units}`) replaces the default
    `cloze.AudioUnitsEncoder(options.centroids, ...)`, e.g. in tests.
    """

    def __init__(self, specs: Sequence[BenchmarkSpec], vocabulary, options: EvalOptions = EvalOptions(),
                 audio_encoder: Callable[[Sequence[str]], dict[str, list[int]]] | None = None):
        self.specs, self.options = list(specs), options
        self.vocabulary = real_vocabulary(vocabulary)
        self.fmt = SequenceFormat(self.vocabulary, dedup=options.dedup, markers=options.markers,
                                  lang_tags=options.lang_tags)
        read = {spec.name: self._read(spec) for spec in self.specs}
        self.layouts = {name: r for name, r in read.items() if isinstance(r, benchmark_layouts.BenchmarkLayout)}
        if audio_encoder is None and any(layout.audio_files() for layout in self.layouts.values()):
            audio_encoder = self._default_encoder()
        self.items = {name: self._pairs_from_layout(r, audio_encoder) if name in self.layouts else r
                      for name, r in read.items()}

    def _source(self, spec: BenchmarkSpec) -> str:
        return os.path.join(spec.root_fn(self.options.data_dir), spec.source) if spec.root_fn else spec.source

    def _read(self, spec: BenchmarkSpec):
        """Phase 1: everything that needs no audio encoded."""
        o, source = self.options, self._source(spec)
        if spec.kind == "alignment":
            if not glob.glob(source):
                raise BenchmarkError(f"--benchmarks={spec.name}: no paired records at {source}")
            return alignment.load_parallel(source, level=spec.level, max_items=o.max_pairs)
        if spec.kind == "audio_cloze":
            layout = benchmark_layouts.read_layout(source, spec.layout or None, spec.prompt_modality,
                                                   spec.ending_modality).head(o.max_pairs)
            self._check_texts(spec, layout)
            return layout
        if not os.path.isfile(source):
            raise BenchmarkError(f"--benchmarks={spec.name}: no pair file at {source}")
        pairs = cloze.load_pairs_jsonl(source, spec.prompt_modality, spec.ending_modality, o.max_pairs)
        cloze.encode_pairs(pairs[:1], self.fmt)  # tokenization errors (text without a text model...) now
        return pairs

    def _check_texts(self, spec: BenchmarkSpec, layout: benchmark_layouts.BenchmarkLayout) -> None:
        """Text sides tokenize (e.g. a text model exists) before any audio is encoded."""
        pair = layout.pairs[0]
        for side in (pair.prompt, pair.correct, pair.wrong):
            if side is not None and side.text is not None:
                try:
                    self.fmt.encode((), (Segment.text(side.text),))
                except ValueError as err:
                    raise BenchmarkError(f"--benchmarks={spec.name}: pair {pair.id!r}: {err}") from err

    def _default_encoder(self):
        o = self.options
        if not o.centroids:
            raise BenchmarkError(f"--benchmarks={', '.join(self.layouts)}: a benchmark folder needs --centroids (the "
                                 f"codebook of the model's units) and the same --features/--frame_stack as its corpus")
        cache_dir = o.units_cache_dir
        if cache_dir is None:  # library default: beside the first benchmark folder
            cache_dir = os.path.join(next(iter(self.layouts.values())).folder, ".slm_jax_units")
        try:
            return cloze.AudioUnitsEncoder(o.centroids, o.features, o.frame_stack, o.rate_hz, cache_dir)
        except ValueError as err:  # codebook unreadable or of another dim than the features
            raise BenchmarkError(f"--centroids={o.centroids} --features={o.features}: {err}") from err

    @staticmethod
    def _pairs_from_layout(layout: benchmark_layouts.BenchmarkLayout, encoder) -> list[cloze.ClozePair]:
        """Phase 2: units of every audio side (one encoder call per benchmark) -> ClozePairs."""
        files = layout.audio_files()
        units = encoder(files) if files else {}  # text-only (cross-modal :tt) needs no codebook

        def segment(side):
            if side.text is not None:
                return (Segment.text(side.text),)
            found = units.get(os.path.abspath(side.audio))
            if found is None:
                raise BenchmarkError(f"{layout.folder}: the audio encoder returned no units for {side.audio}")
            if not found:
                raise cloze.BadPairError(f"{side.audio}: encodes to no units (empty or too short audio)")
            return (Segment.speech(found),)

        return [cloze.ClozePair(p.id, segment(p.prompt) if p.prompt else (), segment(p.correct), segment(p.wrong))
                for p in layout.pairs]

    def run(self, runner: ModelRunner) -> dict[str, float]:
        """Flat metrics (module docstring)."""
        return {k: v for k, v in self.run_detailed(runner).items() if isinstance(v, float)}

    def run_detailed(self, runner: ModelRunner) -> dict[str, Any]:
        """Flat metrics plus `<alignment name>/per_layer` lists, pair counts and every pair's scores."""
        o = self.options
        kinds = modality_of_ids(self.vocabulary, runner.config.vocab_size)
        excluded = None if o.score_sentinels else sentinel_mask(self.vocabulary, runner.config.vocab_size)
        scorer = LikelihoodScorer(runner, kinds, batch_size=o.batch_size, excluded_ids=excluded)
        out: dict[str, Any] = {}
        for spec in self.specs:
            items = self.items[spec.name]
            if spec.kind == "alignment":
                result = alignment.evaluate_alignment(runner, self.fmt, items, o.batch_size)
                out.update({f"{spec.name}/{k}": v for k, v in result.items()})
                continue
            result = cloze.evaluate_pairs(scorer, items, self.fmt, o.score, o.renormalize)
            out.update(self._cloze_outputs(spec.name, result))
        return out

    def _cloze_outputs(self, name: str, result: cloze.ClozeResult) -> dict[str, Any]:
        """The accuracy (a folder's: its official aggregation) and the audit trail of one benchmark."""
        layout = self.layouts.get(name)
        labels = [dict(p.labels) for p in layout.pairs] if layout else [{}] * result.num_pairs
        out: dict[str, Any] = {name: result.accuracy, f"{name}/num_pairs": result.num_pairs}
        out[f"{name}/pairs"] = [{"id": pid, "correct": float(c), "wrong": float(w), **extra}
                                for pid, c, w, extra in zip(result.ids, result.correct_scores,
                                                            result.wrong_scores, labels)]
        if layout is not None:
            metrics, details = benchmark_layouts.aggregate(
                layout, cloze.pair_wins(result.correct_scores, result.wrong_scores))
            out.update({(f"{name}/{k}" if k else name): v for k, v in metrics.items()})
            out.update({f"{name}/{k}": v for k, v in details.items()})
            out[f"{name}/layout"] = layout.layout
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


def in_training_scorer(benchmarks: str | Sequence[str], mixture_or_task_name: str,
                       options: EvalOptions = EvalOptions()) -> Callable[[Any, Any], dict[str, float]]:
    """`benchmark_fn(trainer, params)` for `slm_jax.training.train.run_training`.

    Names are parsed and the task's vocabulary looked up NOW, so an unknown benchmark or
    task fails before anything compiles (BenchmarkError / ValueError naming it).
    """
    parse_benchmarks(benchmarks)
    vocabulary = task_vocabulary(mixture_or_task_name)
    return lambda trainer, params: run_benchmarks(trainer, params, benchmarks, vocabulary, options)


def checked_task_vocabulary(mixture_or_task_name: str, model_vocab_size: int):
    """The task's vocabulary, refused (BenchmarkError) when it has more ids than the model's embedding."""
    vocabulary = task_vocabulary(mixture_or_task_name)
    if vocabulary.vocab_size > model_vocab_size:
        raise BenchmarkError(f"the task vocabulary has {vocabulary.vocab_size} ids but the model only "
                             f"{model_vocab_size} (DecoderConfig.vocab_size)")
    return vocabulary


# --- reporting -----------------------------------------------------------------------------
CI_SUFFIXES = ("/ci_low", "/ci_high")  # `results.interval_metrics` keys
INTERVAL_NOTE = ("accuracy % [95% percentile-bootstrap interval over pairs]; alignment cos_parallel / cos_gap "
                 "[95% interval over items]; other metrics as computed")


def format_with_interval(value: float, low: float | None = None, high: float | None = None) -> str:
    """A fraction as `82.5 [71.3, 92.5]` (percent, one decimal), or `82.5` without an interval."""
    if low is None or high is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def format_metric_cell(results: dict[str, float], metric: str) -> str:
    """One table cell: `-` when absent, the value with its interval (in %; alignment cosines as
    they are) when the results hold `<metric>/ci_low` and `/ci_high`, else the value (4 decimals)."""
    value = results.get(metric)
    if value is None:
        return "-"
    low, high = results.get(f"{metric}{CI_SUFFIXES[0]}"), results.get(f"{metric}{CI_SUFFIXES[1]}")
    if low is None or high is None:
        return f"{value:.4f}"
    if metric.endswith(("/cos_parallel", "/cos_gap")):  # cosines, not accuracies: no percent
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return format_with_interval(value, low, high)


def format_steps_table(by_step: dict[int, dict[str, float]]) -> str:
    """One row per metric, one column per checkpoint step; a metric with an interval
    (`<metric>/ci_low`, `/ci_high`) is shown in % as `82.5 [71.3, 92.5]`, with a note below."""
    steps = sorted(by_step)
    metrics = sorted({k for r in by_step.values() for k, v in r.items()
                      if isinstance(v, float) and not k.endswith(CI_SUFFIXES)})
    rows = [[format_metric_cell(by_step[s], m) for s in steps] for m in metrics]
    width = max([len(m) for m in metrics] + [9])
    cols = [max([10, len(str(s)) + 2] + [len(r[j]) + 2 for r in rows]) for j, s in enumerate(steps)]
    lines = [f"{'step':{width}}" + "".join(f"{s:>{c}}" for s, c in zip(steps, cols))]
    lines += [f"{m:{width}}" + "".join(f"{cell:>{c}}" for cell, c in zip(row, cols)) for m, row in zip(metrics, rows)]
    if any(k.endswith(CI_SUFFIXES) for r in by_step.values() for k in r):
        lines.append(INTERVAL_NOTE)
    return "\n".join(lines)
