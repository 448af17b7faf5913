"""`slm-jax prepare demo-corpus`: a small SPOKEN parallel EN/FR corpus built from scratch.

stories (seeded grammar) -> espeak-ng, word by word (exact word/sentence times)
-> log-mel at 25 Hz (4-frame stacks, per-utterance mean-normalised) -> k-means units
-> corpus TFRecords (speech + transcript + words + sentences + parallel id), paired
   EN/FR records for cross-lingual interleaving, a SentencePiece model of the
   transcripts, and spoken StoryCloze / TopicCloze pairs (EN, FR, EN->FR, FR->EN).

Splits: `num_stories` corpus stories, the last `heldout_fraction` of them held out
(`validation`: eval loss, EN/FR alignment benchmark), the rest `train`. The cloze pairs come
from `num_benchmark_stories` separate benchmark stories (own seed streams for text and
speech), none of which repeats a corpus story's prompt in either language
(`stories.BENCHMARK_EXCLUSION_RULE`; the count rejected is in `benchmark_stories.json`), so
each of the 8 cloze files has `num_benchmark_stories` pairs (400: an accuracy's 95% interval
is about +/-5 points). The train and validation splits do not depend on the benchmark
stories: for a seed they are those of VERSION 2 (same texts, times, units, centroids and
SentencePiece pieces; as between any two builds, only `word_token_model` differs, because
spm.model records the build's temp path).

Cloze pairs: the prompt (every sentence but the ending) and each ending (the correct one, the
StoryCloze wrong one, the TopicCloze one) are synthesised as separate utterances by the same
speaker and normalised by the prompt's mean features, so the correct and the wrong ending of
a pair are made the same way (VERSION 2 cut the correct ending out of the whole story but
synthesised the wrong one alone: only the wrong one began with silence).

Everything is deterministic for a seed and cached under the data dir (a completion
marker names the parameters; a different request rebuilds into a new temp dir and
renames atomically, so a killed build never leaves a half corpus behind).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np

from slm_jax.text_normalization import normalize_text
from slm_jax_demo.tts import EspeakError  # noqa: F401  (raised by build; `slm-jax prepare` reports it)

log = logging.getLogger(__name__)

VERSION = 3  # 2: words carry pre-tokenized SentencePiece ids; 3: cloze pairs from separate benchmark stories
LANGS = ("en", "fr")
UNIT_RATE_HZ = 25.0
FRAME_STACK = 4  # log-mel at 100 Hz -> 25 Hz, the mHuBERT rate SpiritLM uses
MARKER = "_COMPLETE.json"
BENCHMARK_REPORT = "benchmark_stories.json"  # stories.BenchmarkDraw.report() of the build
# Speech of the benchmark stories: its own stream (SeedSequence(seed, spawn_key=(2,))), apart from
# the corpus speech (default_rng(seed)) and the benchmark texts (stories.BENCHMARK_STREAM = 1).
BENCHMARK_SPEECH_STREAM = 2
NUM_STORIES_ENV = "SLM_JAX_DEMO_NUM_STORIES"
NUM_BENCHMARK_STORIES_ENV = "SLM_JAX_DEMO_NUM_BENCHMARK_STORIES"
CLOZE_KINDS = {"ssc": "wrong", "stc": "topic"}


@dataclasses.dataclass(frozen=True)
class DemoCorpusParams:
    num_stories: int = 400
    num_units: int = 100
    spm_vocab_size: int = 400
    heldout_fraction: float = 0.1
    voices_per_lang: int = 6
    seed: int = 0
    num_benchmark_stories: int = 400  # stories -> pairs in each cloze file


def default_root(data_dir: str | None = None, params: DemoCorpusParams | None = None) -> str:
    """Default parameters live in `spoken_demo_v{VERSION}`; any other request gets its own folder."""
    base = data_dir or os.environ.get("SLM_JAX_DATA_DIR") or os.path.expanduser("~/.cache/slm_jax/data")
    name = f"spoken_demo_v{VERSION}"
    if params is not None and params != DemoCorpusParams():
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(params), sort_keys=True).encode()).hexdigest()[:10]
        name += f"_{digest}"
    return os.path.join(base, name)


def is_complete(root: str, params: DemoCorpusParams) -> bool:
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f) == {"version": VERSION, **dataclasses.asdict(params)}
    except (OSError, ValueError):
        return False


# -- synthesis ---------------------------------------------------------------------------

def _synthesize_story(story, lang, voice, rng, tts, stories_lib):
    sentences = getattr(story, f"sentences_{lang}")
    return tts.synthesize_utterance([stories_lib.words(s) for s in sentences], voice, rng=rng)


def _normalised_features(featurizer, wave) -> np.ndarray:
    feats = featurizer(wave, 16000)
    return feats - feats.mean(axis=0, keepdims=True) if len(feats) else feats


def _synthesize_corpus(stories, split_of, voices, rng, featurizer, tts, stories_lib):
    """{(story id, lang): (features [frames, dim] float32, words, sentences)} of every corpus story.

    Draws from `rng` exactly as VERSION 2 did: validation stories then also synthesised their two
    alternative endings (the cloze pairs' wrong sides); those draws are skipped, not dropped
    (`tts.skip_utterance`), so every later draw (k-means sampling) and every unit is unchanged.
    """
    start, synth = time.time(), {}
    for i, story in enumerate(stories):
        for lang in LANGS:
            voice = voices[lang][int(rng.integers(len(voices[lang])))]
            wave, words, sentences = _synthesize_story(story, lang, voice, rng, tts, stories_lib)
            synth[(story.id, lang)] = (_normalised_features(featurizer, wave), words, sentences)
            if split_of[story.id] == "validation":
                for kind in ("wrong", "topic"):
                    tts.skip_utterance([stories_lib.words(getattr(story, f"{kind}_ending_{lang}"))], rng)
        if (i + 1) % 50 == 0:
            log.info("demo corpus: synthesized %d/%d stories (%.0f s)", i + 1, len(stories), time.time() - start)
    return synth


def _benchmark_units(stories, voices, seed, featurizer, to_units, tts, stories_lib):
    """{(story id, lang): {"prompt"|"correct"|"wrong"|"topic": units}} of the benchmark stories.

    Per story and language one speaker says the prompt (all sentences but the ending) and each
    ending as separate utterances; all four are normalised by the prompt's mean features (a
    speaker/channel normalisation, as a corpus story by its own mean), so the correct and the
    two wrong endings are made alike. Draws come from the benchmark speech stream only.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(BENCHMARK_SPEECH_STREAM,)))
    start, out = time.time(), {}
    for i, story in enumerate(stories):
        for lang in LANGS:
            voice = voices[lang][int(rng.integers(len(voices[lang])))]
            sentences = story.sentences(lang)
            prompt_wave, _, _ = tts.synthesize_utterance([stories_lib.words(s) for s in sentences[:-1]], voice,
                                                         rng=rng)
            prompt = featurizer(prompt_wave, 16000)
            mean = prompt.mean(axis=0, keepdims=True)
            sides = {"prompt": prompt}
            for side, text in (("correct", sentences[-1]), ("wrong", story.wrong_ending(lang)),
                               ("topic", story.topic_ending(lang))):
                wave, _, _ = tts.synthesize_utterance([stories_lib.words(text)], voice, rng=rng)
                sides[side] = featurizer(wave, 16000)
            out[(story.id, lang)] = {side: to_units(feats - mean) for side, feats in sides.items()}
        if (i + 1) % 50 == 0:
            log.info("demo corpus: benchmark stories %d/%d (%.0f s)", i + 1, len(stories), time.time() - start)
    return out


# -- build -------------------------------------------------------------------------------

def build(root: str, params: DemoCorpusParams) -> None:
    """Builds the corpus into `root` (atomically). Minutes on 2 CPU cores.

    EspeakError (before any work) when espeak-ng is missing, broken or lacks a voice; ValueError
    when the grammar cannot give `num_benchmark_stories` benchmark stories. Texts are written
    normalised (`normalize_text`; the story grammar already emits normalised text, so this
    changes no string of the demo)."""
    from slm_jax.data import corpus
    from slm_jax.data.tokenizers import spm
    from slm_jax_demo import stories as stories_lib
    from slm_jax.speech import kmeans
    from slm_jax_demo import tts
    from slm_jax.speech.pipeline import make_featurizer

    tts.ensure_espeak()
    voices = {lang: tts.voices_for(lang, params.voices_per_lang, params.seed) for lang in LANGS}
    tts.check_voices(v for lang in LANGS for v in voices[lang])  # every voice before any synthesis
    start = time.time()
    rng = np.random.default_rng(params.seed)
    stories = stories_lib.generate_stories(params.num_stories, params.seed)
    num_heldout = max(2, int(round(params.num_stories * params.heldout_fraction)))
    split_of = {s.id: ("validation" if i >= len(stories) - num_heldout else "train") for i, s in enumerate(stories)}
    draw = stories_lib.generate_benchmark_stories(params.num_benchmark_stories, params.seed, exclude=stories)
    log.info("demo corpus: %d benchmark stories from %d candidates (%d repeated a corpus story's prompt, "
             "%d an earlier benchmark story's)", len(draw.stories), draw.candidates, draw.rejected_excluded,
             draw.rejected_duplicate)
    featurizer = make_featurizer("logmel", frame_stack=FRAME_STACK)

    # 1. Speech for every corpus story and language.
    synth = _synthesize_corpus(stories, split_of, voices, rng, featurizer, tts, stories_lib)

    # 2. Units: k-means on training frames, then every utterance.
    train_frames = np.concatenate([f for (sid, _), (f, _, _) in synth.items() if split_of[sid] == "train"])
    sample = train_frames[rng.permutation(len(train_frames))[:200_000]]
    centroids = kmeans.fit_kmeans(sample, params.num_units, seed=params.seed, iters=30)
    to_units = lambda feats: np.asarray(kmeans.assign(feats, centroids)).tolist()  # noqa: E731
    log.info("demo corpus: k-means on %d frames done (%.0f s)", len(sample), time.time() - start)

    # 3. Speech of the benchmark stories, straight to units.
    bench_units = _benchmark_units(draw.stories, voices, params.seed, featurizer, to_units, tts, stories_lib)

    tmp = tempfile.mkdtemp(prefix=".spoken_demo_tmp_", dir=os.path.dirname(root))
    try:
        kmeans.save_centroids(os.path.join(tmp, "centroids.npy"), centroids)
        transcripts = [_joined(getattr(s, f"sentences_{lang}")) for s in stories if split_of[s.id] == "train"
                       for lang in LANGS]
        spm_path = spm.train_sentencepiece(transcripts, os.path.join(tmp, "spm"), params.spm_vocab_size)
        word_ids, spm_digest = _word_tokenizer(spm_path)
        utts = {split: {lang: [] for lang in LANGS} for split in ("train", "validation")}
        for story in stories:
            for lang in LANGS:
                feats, words, sentences = synth[(story.id, lang)]
                utts[split_of[story.id]][lang].append(corpus.Utterance(
                    id=f"{story.id}-{lang}", lang=lang, units=to_units(feats), unit_rate_hz=UNIT_RATE_HZ,
                    text=_joined(getattr(story, f"sentences_{lang}")),
                    words=[(w, float(s), float(e)) for w, s, e in words],
                    sentences=[(float(s), float(e), t) for s, e, t in sentences],
                    parallel_id=story.id,
                    word_token_ids=[word_ids(w) for w, _, _ in words], word_token_model=spm_digest))
        for split, by_lang in utts.items():
            for lang, items in by_lang.items():
                corpus.write_tfrecord_shards(os.path.join(tmp, "speech"), f"{split}-{lang}", items,
                                             num_shards=4 if split == "train" else 1)
            paired = corpus.pair_parallel(by_lang["en"] + by_lang["fr"], "en", "fr")
            corpus.write_paired_tfrecord_shards(os.path.join(tmp, "paired"), split, paired,
                                                num_shards=4 if split == "train" else 1)
        _write_cloze(os.path.join(tmp, "cloze"), draw.stories, bench_units)
        with open(os.path.join(tmp, BENCHMARK_REPORT), "w") as f:
            json.dump(draw.report(), f, indent=1)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"version": VERSION, **dataclasses.asdict(params)}, f)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo corpus: built in %s (%.0f s)", root, time.time() - start)


def _word_tokenizer(spm_path: str):
    """(word -> SentencePiece ids, cached; sha256 of the model) for pre-tokenized words."""
    import sentencepiece

    with open(spm_path, "rb") as f:
        model = f.read()
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    cache: dict[str, list[int]] = {}

    def word_ids(word: str) -> list[int]:
        if word not in cache:
            cache[word] = processor.encode(normalize_text(word))
        return cache[word]

    return word_ids, hashlib.sha256(model).hexdigest()


def _joined(sentences) -> str:
    """A transcript: sentences joined by a space, normalised (`normalize_text`)."""
    return normalize_text(" ".join(sentences))


def _side(lang, units, text):
    return {"lang": lang, "units": [int(u) for u in units], "text": normalize_text(text)}


def cloze_file_name(bench: str, prompt_lang: str, ending_lang: str) -> str:
    """'ssc_en' (one language) or 'ssc_en_fr' (prompt in EN, endings in FR), without '.jsonl'."""
    return f"{bench}_{prompt_lang}" if prompt_lang == ending_lang else f"{bench}_{prompt_lang}_{ending_lang}"


def _write_cloze(out_dir, stories, units) -> None:
    """Spoken StoryCloze (the story's wrong ending) and TopicCloze (the ending of a story of
    another topic): one record per benchmark story in each of the 8 files `cloze_file_name`
    names, {"id", "topic", "prompt", "correct", "wrong"} with each side {"lang", "units", "text"}.
    `units[(story id, lang)]` holds the "prompt", "correct", "wrong" and "topic" unit lists."""
    os.makedirs(out_dir, exist_ok=True)
    for bench, kind in CLOZE_KINDS.items():
        for prompt_lang in LANGS:
            for ending_lang in LANGS:
                path = os.path.join(out_dir, cloze_file_name(bench, prompt_lang, ending_lang) + ".jsonl")
                with open(path, "w") as f:
                    for story in stories:
                        prompt, ending = units[(story.id, prompt_lang)], units[(story.id, ending_lang)]
                        wrong_text = story.wrong_ending(ending_lang) if kind == "wrong" else story.topic_ending(
                            ending_lang)
                        record = {"id": story.id, "topic": story.topic,
                                  "prompt": _side(prompt_lang, prompt["prompt"],
                                                  _joined(story.sentences(prompt_lang)[:-1])),
                                  "correct": _side(ending_lang, ending["correct"], story.sentences(ending_lang)[-1]),
                                  "wrong": _side(ending_lang, ending[kind], wrong_text)}
                        f.write(json.dumps(record) + "\n")


def params_from_env() -> DemoCorpusParams:
    """The default parameters, shrunk by the environment (tests and CI build a small corpus).

    `SLM_JAX_DEMO_NUM_STORIES=N`: N corpus stories and min(N, default) benchmark stories;
    `SLM_JAX_DEMO_NUM_BENCHMARK_STORIES=M`: M benchmark stories (whatever N). ValueError naming
    the variable when a value is not an integer >= 0 (>= 1 for the number of stories)."""
    num_stories = _env_int(NUM_STORIES_ENV, DemoCorpusParams.num_stories, minimum=1)
    return DemoCorpusParams(num_stories=num_stories, num_benchmark_stories=default_num_benchmark_stories(num_stories))


def default_num_benchmark_stories(num_stories: int) -> int:
    """`SLM_JAX_DEMO_NUM_BENCHMARK_STORIES` when set, else min(`num_stories`, 400): a small corpus
    (tests) gets a small benchmark. ValueError naming the variable on a bad value."""
    return _env_int(NUM_BENCHMARK_STORIES_ENV, min(num_stories, DemoCorpusParams.num_benchmark_stories), minimum=0)


def _env_int(name: str, default: int, minimum: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer >= {minimum}")
    return number


def ensure_spoken_demo_corpus(data_dir: str | None = None, params: DemoCorpusParams | None = None) -> str:
    """The corpus root, built on first use (cached afterwards).

    `params` None: `params_from_env()` (`SLM_JAX_DEMO_NUM_STORIES` and
    `SLM_JAX_DEMO_NUM_BENCHMARK_STORIES` shrink the default corpus; tests and CI use a few dozen
    stories); other parameters get their own folder, so they never replace the full corpus.
    """
    if params is None:
        params = params_from_env()
    root = default_root(data_dir, params)
    if not is_complete(root, params):
        os.makedirs(os.path.dirname(root), exist_ok=True)
        build(root, params)
    return root


def demo_corpus_main(argv) -> int:
    defaults = params_from_env()  # so the command builds the corpus `train` and `eval` will read
    p = argparse.ArgumentParser(prog="slm-jax prepare demo-corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="default: $SLM_JAX_DATA_DIR or ~/.cache/slm_jax/data")
    p.add_argument("--num_stories", type=int, default=defaults.num_stories,
                   help=f"corpus stories (train + validation; default ${NUM_STORIES_ENV} or %(default)s)")
    p.add_argument("--num_benchmark_stories", type=int, default=None,
                   help=f"benchmark stories = pairs in each cloze file (default ${NUM_BENCHMARK_STORIES_ENV}, "
                        f"else min(--num_stories, {DemoCorpusParams.num_benchmark_stories}))")
    p.add_argument("--num_units", type=int, default=defaults.num_units)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    num_benchmark = args.num_benchmark_stories
    if num_benchmark is None:
        num_benchmark = default_num_benchmark_stories(args.num_stories)
    params = dataclasses.replace(defaults, num_stories=args.num_stories, num_benchmark_stories=num_benchmark,
                                 num_units=args.num_units, seed=args.seed)
    root = ensure_spoken_demo_corpus(args.data_dir, params)
    print(f"demo corpus: {root}")
    for sub in ("speech", "paired", "cloze"):
        files = sorted(os.listdir(os.path.join(root, sub)))
        print(f"  {sub}/: {len(files)} files ({', '.join(files[:4])}{', ...' if len(files) > 4 else ''})")
    with open(os.path.join(root, BENCHMARK_REPORT)) as f:
        report = json.load(f)
    print(f"  cloze pairs per file: {report['num_stories']} benchmark stories from {report['candidates']} "
          f"candidates ({report['rejected_excluded']} rejected: prompt of a corpus story; "
          f"{report['rejected_duplicate']}: of an earlier benchmark story)")
    return 0
