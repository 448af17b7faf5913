"""`slm-jax prepare demo-corpus`: a small SPOKEN parallel EN/FR corpus built from scratch.

stories (seeded grammar) -> espeak-ng, word by word (exact word/sentence times)
-> log-mel at 25 Hz (4-frame stacks, per-utterance mean-normalised) -> k-means units
-> corpus TFRecords (speech + transcript + words + sentences + parallel id), paired
   EN/FR records for cross-lingual interleaving, a SentencePiece model of the
   transcripts, and spoken StoryCloze / TopicCloze pairs (EN, FR, EN->FR, FR->EN).

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

VERSION = 2  # 2: words carry pre-tokenized SentencePiece ids
LANGS = ("en", "fr")
UNIT_RATE_HZ = 25.0
FRAME_STACK = 4  # log-mel at 100 Hz -> 25 Hz, the mHuBERT rate SpiritLM uses
MARKER = "_COMPLETE.json"
CLOZE_KINDS = {"ssc": "wrong", "stc": "topic"}


@dataclasses.dataclass(frozen=True)
class DemoCorpusParams:
    num_stories: int = 400
    num_units: int = 100
    spm_vocab_size: int = 400
    heldout_fraction: float = 0.1
    voices_per_lang: int = 6
    seed: int = 0


def default_root(data_dir: str | None = None, params: DemoCorpusParams | None = None) -> str:
    """Default parameters live in `spoken_demo_v1`; any other request gets its own folder."""
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


def _synthesize_sentence(sentence, voice, rng, tts, stories_lib):
    wave, _, _ = tts.synthesize_utterance([stories_lib.words(sentence)], voice, rng=rng)
    return wave


def _normalised_features(featurizer, wave) -> np.ndarray:
    feats = featurizer(wave, 16000)
    return feats - feats.mean(axis=0, keepdims=True) if len(feats) else feats


# -- build -------------------------------------------------------------------------------

def build(root: str, params: DemoCorpusParams) -> None:
    """Builds the corpus into `root` (atomically). Minutes on 2 CPU cores.

    EspeakError (before any work) when espeak-ng is missing, broken or lacks a voice. Texts
    are written normalised (`normalize_text`; the story grammar already emits normalised
    text, so this changes no string of the demo)."""
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
    featurizer = make_featurizer("logmel", frame_stack=FRAME_STACK)

    # 1. Speech for every story and language, plus the alternative endings of held-out stories.
    synth = {}  # (story id, lang) -> (features, words, sentences)
    endings = {}  # (story id, lang, kind) -> features of the ending sentence alone
    for i, story in enumerate(stories):
        for lang in LANGS:
            voice = voices[lang][int(rng.integers(len(voices[lang])))]
            wave, words, sentences = _synthesize_story(story, lang, voice, rng, tts, stories_lib)
            synth[(story.id, lang)] = (_normalised_features(featurizer, wave), words, sentences)
            if split_of[story.id] == "validation":
                for kind in ("wrong", "topic"):
                    sentence = getattr(story, f"{kind}_ending_{lang}")
                    endings[(story.id, lang, kind)] = _normalised_features(
                        featurizer, _synthesize_sentence(sentence, voice, rng, tts, stories_lib))
        if (i + 1) % 50 == 0:
            log.info("demo corpus: synthesized %d/%d stories (%.0f s)", i + 1, len(stories), time.time() - start)

    # 2. Units: k-means on training frames, then every utterance.
    train_frames = np.concatenate([f for (sid, _), (f, _, _) in synth.items() if split_of[sid] == "train"])
    sample = train_frames[rng.permutation(len(train_frames))[:200_000]]
    centroids = kmeans.fit_kmeans(sample, params.num_units, seed=params.seed, iters=30)
    to_units = lambda feats: np.asarray(kmeans.assign(feats, centroids)).tolist()  # noqa: E731
    log.info("demo corpus: k-means on %d frames done (%.0f s)", len(sample), time.time() - start)

    tmp = tempfile.mkdtemp(prefix=".spoken_demo_tmp_", dir=os.path.dirname(root))
    try:
        kmeans.save_centroids(os.path.join(tmp, "centroids.npy"), centroids)
        transcripts = [_joined(getattr(s, f"sentences_{lang}")) for s in stories if split_of[s.id] == "train"
                       for lang in LANGS]
        spm_path = spm.train_sentencepiece(transcripts, os.path.join(tmp, "spm"), params.spm_vocab_size)
        word_ids, spm_digest = _word_tokenizer(spm_path)
        utts = {split: {lang: [] for lang in LANGS} for split in ("train", "validation")}
        units_of = {}
        for story in stories:
            for lang in LANGS:
                feats, words, sentences = synth[(story.id, lang)]
                units = to_units(feats)
                units_of[(story.id, lang)] = (units, sentences)
                utts[split_of[story.id]][lang].append(corpus.Utterance(
                    id=f"{story.id}-{lang}", lang=lang, units=units, unit_rate_hz=UNIT_RATE_HZ,
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
        _write_cloze(os.path.join(tmp, "cloze"), stories, split_of, units_of, endings, to_units)
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


def _split_units(units, sentences, upto):
    """Units of sentences [0, upto) and of sentence `upto` (by the exact synthesis times)."""
    cut = int(round(sentences[upto][0] * UNIT_RATE_HZ)) if upto < len(sentences) else len(units)
    return units[:cut], units[cut:]


def _write_cloze(out_dir, stories, split_of, units_of, endings, to_units) -> None:
    """Spoken StoryCloze (original wrong ending) and TopicCloze (ending of another topic)."""
    os.makedirs(out_dir, exist_ok=True)
    heldout = [s for s in stories if split_of[s.id] == "validation"]
    for bench, kind in CLOZE_KINDS.items():
        for prompt_lang in LANGS:
            for ending_lang in LANGS:
                name = f"{bench}_{prompt_lang}" if prompt_lang == ending_lang else f"{bench}_{prompt_lang}_{ending_lang}"
                with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
                    for story in heldout:
                        p_units, p_sents = units_of[(story.id, prompt_lang)]
                        e_units, e_sents = units_of[(story.id, ending_lang)]
                        last = len(p_sents) - 1
                        prompt, _ = _split_units(p_units, p_sents, last)
                        _, correct = _split_units(e_units, e_sents, len(e_sents) - 1)
                        wrong = to_units(endings[(story.id, ending_lang, kind)])
                        p_text = _joined(getattr(story, f"sentences_{prompt_lang}")[:-1])
                        record = {"id": story.id, "topic": story.topic,
                                  "prompt": _side(prompt_lang, prompt, p_text),
                                  "correct": _side(ending_lang, correct, getattr(story, f"sentences_{ending_lang}")[-1]),
                                  "wrong": _side(ending_lang, wrong, getattr(story, f"{kind}_ending_{ending_lang}"))}
                        f.write(json.dumps(record) + "\n")


def ensure_spoken_demo_corpus(data_dir: str | None = None, params: DemoCorpusParams | None = None) -> str:
    """The corpus root, built on first use (cached afterwards).

    `SLM_JAX_DEMO_NUM_STORIES` shrinks the default corpus (tests and CI use a few dozen
    stories); it gets its own folder, so it never replaces the full one.
    """
    if params is None:
        stories = os.environ.get("SLM_JAX_DEMO_NUM_STORIES")
        params = DemoCorpusParams(num_stories=int(stories)) if stories else DemoCorpusParams()
    root = default_root(data_dir, params)
    if not is_complete(root, params):
        os.makedirs(os.path.dirname(root), exist_ok=True)
        build(root, params)
    return root


def demo_corpus_main(argv) -> int:
    p = argparse.ArgumentParser(prog="slm-jax prepare demo-corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=None, help="default: $SLM_JAX_DATA_DIR or ~/.cache/slm_jax/data")
    p.add_argument("--num_stories", type=int, default=DemoCorpusParams.num_stories)
    p.add_argument("--num_units", type=int, default=DemoCorpusParams.num_units)
    p.add_argument("--seed", type=int, default=DemoCorpusParams.seed)
    args = p.parse_args(argv)
    params = DemoCorpusParams(num_stories=args.num_stories, num_units=args.num_units, seed=args.seed)
    root = ensure_spoken_demo_corpus(args.data_dir, params)
    print(f"demo corpus: {root}")
    for sub in ("speech", "paired", "cloze"):
        files = sorted(os.listdir(os.path.join(root, sub)))
        print(f"  {sub}/: {len(files)} files ({', '.join(files[:4])}{', ...' if len(files) > 4 else ''})")
    return 0
