"""A tiny synthetic speech-unit corpus, generated at run time (nothing binary in git).

Why synthetic: tests and the CPU demo run need a corpus that exists everywhere, costs
a few seconds to build, and is LEARNABLE, so a tiny LM's loss visibly falls within a
couple of hundred steps. The generator imitates the structure of real unit streams:

* 100 unit types at 50 Hz (before dedup);
* per language (en, fr) a lexicon of 150 "words", each a fixed random sequence of
  2-6 distinct-adjacent units;
* every unit lasts 1-4 frames (random durations, so run-length dedup matters);
* utterances are sentences of 8-30 words drawn from a seeded sparse bigram grammar
  (each word has a few likely successors), so units are predictable from context.

Records are `tf.train.Example`s with `id` (bytes, unique), `lang` (bytes), `units`
(int64 list, pre-dedup) and `unit_rate_hz` (float). Files are
`{split}-{lang}-{i:05d}-of-{n:05d}.tfrecord` under `<data_dir>/demo_units_v1/`.

Generation is deterministic (fixed seeds, deterministic proto serialization) and
atomic: everything is written into a temp dir beside the target and renamed into
place, with a completion marker holding the generator version and parameters. So
parallel pytest-xdist workers and repeated runs either reuse a complete corpus or
race harmlessly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid

import numpy as np
import tensorflow as tf

GENERATOR_VERSION = 1
CORPUS_SUBDIR = f"demo_units_v{GENERATOR_VERSION}"
MARKER_FILE = "_COMPLETE.json"
DATA_DIR_ENV = "SLM_JAX_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "slm_jax", "data")

# Parameters of the corpus; they are written into the marker, so changing any of
# them makes `ensure_demo_corpus` regenerate.
PARAMS = dict(
    seed=20240611,
    num_units=100,
    unit_rate_hz=50.0,
    langs=["en", "fr"],
    lexicon_size=150,
    word_units=[2, 6],  # inclusive range of units per word
    unit_frames=[1, 4],  # inclusive range of frames per unit (pre-dedup duration)
    sentence_words=[8, 30],  # inclusive range of words per utterance
    successors=[2, 5],  # inclusive range of likely next words per word
    start_words=20,  # words that may begin a sentence
    splits={"train": {"utterances": 2000, "shards": 4}, "validation": {"utterances": 100, "shards": 1}},
)
NUM_UNITS = PARAMS["num_units"]
LANGS = tuple(PARAMS["langs"])
SPLITS = tuple(PARAMS["splits"])

logger = logging.getLogger(__name__)


def default_data_dir() -> str:
    """`$SLM_JAX_DATA_DIR`, else `~/.cache/slm_jax/data` (read at call time)."""
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def shard_filename(split: str, lang: str, index: int, num_shards: int) -> str:
    return f"{split}-{lang}-{index:05d}-of-{num_shards:05d}.tfrecord"


def file_pattern(split: str, lang: str) -> str:
    """Glob (relative to the corpus dir) of one split+language."""
    return f"{split}-{lang}-*-of-*.tfrecord"


def _marker_payload() -> dict:
    return {"generator_version": GENERATOR_VERSION, "params": PARAMS}


def _is_complete(corpus_dir: str) -> bool:
    path = os.path.join(corpus_dir, MARKER_FILE)
    try:
        with open(path) as f:
            return json.load(f) == json.loads(json.dumps(_marker_payload()))
    except (OSError, ValueError):
        return False


# --- the generator ------------------------------------------------------------------
class _Language:
    """Lexicon + bigram grammar of one synthetic language (seeded by language index)."""

    def __init__(self, lang_index: int):
        p = PARAMS
        rng = np.random.default_rng([p["seed"], lang_index, 0])
        lo, hi = p["word_units"]
        self.words = []
        for _ in range(p["lexicon_size"]):
            n = int(rng.integers(lo, hi + 1))
            units = [int(rng.integers(NUM_UNITS))]
            while len(units) < n:  # adjacent units differ, so a word survives dedup intact
                u = int(rng.integers(NUM_UNITS))
                if u != units[-1]:
                    units.append(u)
            self.words.append(np.array(units, dtype=np.int64))
        v = p["lexicon_size"]
        self.start = rng.choice(v, size=p["start_words"], replace=False)
        slo, shi = p["successors"]
        self.next_words, self.next_cdf = [], []
        for _ in range(v):
            k = int(rng.integers(slo, shi + 1))
            self.next_words.append(rng.choice(v, size=k, replace=False))
            self.next_cdf.append(np.cumsum(rng.dirichlet(np.ones(k)))[:-1])

    def utterance(self, rng: np.random.Generator) -> np.ndarray:
        """One sentence as a pre-dedup frame-level unit sequence."""
        lo, hi = PARAMS["sentence_words"]
        flo, fhi = PARAMS["unit_frames"]
        n_words = int(rng.integers(lo, hi + 1))
        draws = rng.random(n_words)  # one uniform per word: inverse-CDF sampling is fast
        w = int(self.start[int(draws[0] * len(self.start))])
        units = [self.words[w]]
        for r in draws[1:]:
            w = int(self.next_words[w][np.searchsorted(self.next_cdf[w], r, side="right")])
            units.append(self.words[w])
        units = np.concatenate(units)
        durations = rng.integers(flo, fhi + 1, size=units.shape[0])
        return np.repeat(units, durations)


def _example(uid: str, lang: str, units: np.ndarray) -> bytes:
    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[uid.encode()])),
        "lang": tf.train.Feature(bytes_list=tf.train.BytesList(value=[lang.encode()])),
        "units": tf.train.Feature(int64_list=tf.train.Int64List(value=units.tolist())),
        "unit_rate_hz": tf.train.Feature(float_list=tf.train.FloatList(value=[PARAMS["unit_rate_hz"]])),
    }
    ex = tf.train.Example(features=tf.train.Features(feature=feature))
    # Features is a proto map: deterministic=True sorts keys, so bytes are reproducible.
    return ex.SerializeToString(deterministic=True)


def _write_corpus(out_dir: str) -> None:
    for lang_index, lang in enumerate(LANGS):
        language = _Language(lang_index)
        for split_index, split in enumerate(SPLITS):
            spec = PARAMS["splits"][split]
            rng = np.random.default_rng([PARAMS["seed"], lang_index, 1 + split_index])
            n, shards = spec["utterances"], spec["shards"]
            bounds = np.linspace(0, n, shards + 1).astype(int)  # contiguous, near-equal shards
            for s in range(shards):
                path = os.path.join(out_dir, shard_filename(split, lang, s, shards))
                with tf.io.TFRecordWriter(path) as w:
                    for i in range(bounds[s], bounds[s + 1]):
                        w.write(_example(f"{lang}-{split}-{i:06d}", lang, language.utterance(rng)))
    with open(os.path.join(out_dir, MARKER_FILE), "w") as f:
        json.dump(_marker_payload(), f, indent=1, sort_keys=True)


def ensure_demo_corpus(data_dir: str | None = None) -> str:
    """Returns `<data_dir>/demo_units_v1`, generating the corpus there if needed.

    Cached: when the completion marker matches this generator version and its
    parameters, nothing is done. Otherwise the corpus is written into a temp dir in
    the same parent and renamed into place; if another process wins that race, its
    (identical) corpus is kept and ours is discarded.
    """
    parent = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    corpus_dir = os.path.join(parent, CORPUS_SUBDIR)
    if _is_complete(corpus_dir):
        return corpus_dir
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{CORPUS_SUBDIR}.tmp-", dir=parent)
    try:
        _write_corpus(tmp)
        if os.path.isdir(corpus_dir) and not _is_complete(corpus_dir):
            # Stale (older params / interrupted by hand): move it aside, then delete it.
            stale = os.path.join(parent, f".{CORPUS_SUBDIR}.stale-{uuid.uuid4().hex}")
            try:
                os.rename(corpus_dir, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass  # someone else moved it; the rename below decides.
        try:
            os.rename(tmp, corpus_dir)
            logger.info("Generated demo unit corpus in %s", corpus_dir)
        except OSError:
            if not _is_complete(corpus_dir):
                raise RuntimeError(
                    f"Could not install the demo corpus at {corpus_dir}: the directory exists "
                    f"but has no valid {MARKER_FILE}. Remove it and retry."
                ) from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return corpus_dir
