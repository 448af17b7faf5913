"""`SequenceFormat.encode` (the numpy writer of evaluation sequences) == the training tasks' TF
preprocessors, on random frame-level unit sequences with text and markers, for the vocabularies
the tasks use: speech-only `SpeechTextVocabulary` (demo SPEECH_VOCAB layout), one with a
SentencePiece model (TEXT_VOCAB layout), and the unit-only `UnitVocabulary` (register_unit_task)."""

import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax.data.preprocessors import common
from slm_jax.data.preprocessors import interleave as il
from slm_jax.data.preprocessors import task_formats
from slm_jax.data.preprocessors import word_interleave as wi
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from slm_jax.data.tokenizers.unit_vocab import UnitVocabulary
from slm_jax.evaluation.sequences import Segment, SequenceFormat
from tests.test_token_space import make_tiny_spm, tiny_sentences

NUM_UNITS = 12  # few unit types: random frames repeat, so dedup matters
LANGS = ("en", "fr")
TRIALS = 6


@pytest.fixture(scope="module")
def speech_vocab():
    return SpeechTextVocabulary(None, num_units=NUM_UNITS, langs=LANGS)


@pytest.fixture(scope="module")
def text_vocab(tmp_path_factory):
    return SpeechTextVocabulary(make_tiny_spm(tmp_path_factory.mktemp("spm")), num_units=NUM_UNITS, langs=LANGS)


def _units(rng, n=None):
    n = int(rng.integers(1, 40)) if n is None else n
    return rng.integers(0, NUM_UNITS, n).astype(np.int64)


def _text(rng):
    words = " ".join(tiny_sentences()).split()
    return " ".join(rng.choice(words, int(rng.integers(1, 8))))


def _targets(ds):
    return [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]


def _one(record):
    return tf.data.Dataset.from_tensors(record)


@pytest.mark.parametrize("dedup", [True, False])
def test_speech_only_speech_vocab(speech_vocab, dedup):
    rng = np.random.default_rng(0)
    records = [{"id": str(i), "units": _units(rng)} for i in range(TRIALS)]
    ds = tf.data.Dataset.from_generator(lambda: iter(records), output_signature={
        "id": tf.TensorSpec([], tf.string), "units": tf.TensorSpec([None], tf.int64)})
    want = _targets(il.speech_only(ds, speech_vocab, dedup=dedup, batch_records=4))
    fmt = SequenceFormat(speech_vocab, dedup=dedup)
    for r, w in zip(records, want, strict=True):
        cut = int(rng.integers(0, len(r["units"]) + 1))  # prompt/ending cut: one recording, one dedup
        got = fmt.encode([Segment.speech(r["units"][:cut], "en")], [Segment.speech(r["units"][cut:], "en")])
        assert got.ids.tolist() == w


def test_units_task_unit_vocabulary():
    """register_unit_task's chain: dedup_units -> units_to_targets (no markers, EOS)."""
    vocab = UnitVocabulary(NUM_UNITS)
    rng = np.random.default_rng(1)
    for _ in range(TRIALS):
        units = _units(rng)
        want = _targets(common.units_to_targets(common.dedup_units(_one({"units": units})), vocab))
        got = SequenceFormat(vocab).encode([Segment.speech(units)])
        assert got.ids.tolist() == want[0]


def test_text_only_text_vocab(text_vocab):
    rng = np.random.default_rng(2)
    for _ in range(TRIALS):
        text = _text(rng)
        (want,) = _targets(il.text_only(_one({"id": "t", "text": text}), text_vocab))
        words = text.split()
        cut = int(rng.integers(1, len(words) + 1))
        got = SequenceFormat(text_vocab).encode([Segment.text(" ".join(words[:cut]))],
                                                [Segment.text(" ".join(words[cut:]))] if cut < len(words) else [])
        assert got.ids.tolist() == want


@pytest.mark.parametrize("fmt_name", ["asr", "tts"])
def test_asr_tts_text_vocab(text_vocab, fmt_name):
    rng = np.random.default_rng(3)
    preprocessor = {"asr": task_formats.format_asr, "tts": task_formats.format_tts}[fmt_name]
    for _ in range(TRIALS):
        units, text = _units(rng), _text(rng)
        (want,) = _targets(preprocessor(_one({"id": "a", "units": units, "text": text}), text_vocab))
        speech, words = Segment.speech(units, "en"), Segment.text(text, "en")
        prompt, ending = (speech, words) if fmt_name == "asr" else (words, speech)
        got = SequenceFormat(text_vocab).encode([prompt], [ending])
        assert got.ids.tolist() == want


def _frames(start, end, rate, n):
    """common.word_frames's rule: frames starting in [start, end), else the frame it lies in."""
    start, end = float(np.float32(start)), float(np.float32(end))
    lo = min(max(math.ceil(start * rate - il.FRAME_SNAP), 0), n)
    hi = max(min(max(math.ceil(end * rate - il.FRAME_SNAP), 0), n), lo)
    if hi == lo and n > 0:
        lo = min(max(math.floor(start * rate + il.FRAME_SNAP), 0), n - 1)
        hi = lo + 1
    return lo, hi


@pytest.mark.parametrize("lang_tags", [False, True])
@pytest.mark.parametrize("start,switch_prob", [("a", 1.0), ("b", 1.0), ("a", 0.0)])
def test_crosslingual_speech_vocab(speech_vocab, lang_tags, start, switch_prob):
    rng = np.random.default_rng(4)
    rate = 10.0
    for _ in range(TRIALS):
        num = int(rng.integers(1, 6))
        record, bounds = {"id": "p", "unit_rate_hz": np.float32(rate)}, {}
        for side, lang in zip("ab", LANGS):
            cuts = np.sort(rng.integers(0, 30, num + 1)) / rate  # sentence i: [cuts[i], cuts[i+1])
            units = _units(rng, int(cuts[-1] * rate) + int(rng.integers(0, 5)))
            record.update({f"{side}_lang": lang, f"{side}_units": units,
                           f"{side}_sentence_start": cuts[:-1].astype(np.float32),
                           f"{side}_sentence_end": cuts[1:].astype(np.float32)})
            bounds[side] = [_frames(cuts[i], cuts[i + 1], rate, len(units)) for i in range(num)]
        (want,) = _targets(il.crosslingual_interleave(_one(record), speech_vocab, switch_prob=switch_prob,
                                                      start=start, lang_tags=lang_tags))
        other = {"a": "b", "b": "a"}
        sides = [start if switch_prob == 0.0 or i % 2 == 0 else other[start] for i in range(num)]
        segments = []
        for i, side in enumerate(sides):
            lo, hi = bounds[side][i]
            segments.append(Segment.speech(record[f"{side}_units"][lo:hi], LANGS["ab".index(side)]))
        got = SequenceFormat(speech_vocab, lang_tags=lang_tags).encode(segments[:1], segments[1:])
        assert got.ids.tolist() == want


def test_word_interleaving_text_vocab(text_vocab):
    """Speech and text spans with markers where the modality changes: `interleave_rows` (what
    `word_interleave_batches` renders once the speech words are drawn) == the segments' encoding."""
    rng = np.random.default_rng(5)
    rate = 25.0
    for _ in range(TRIALS):
        words = _text(rng).split() + _text(rng).split()
        n = len(words)
        starts = np.cumsum(rng.integers(1, 6, n)) / rate
        ends = starts + rng.integers(1, 4, n) / rate
        units = _units(rng, int(ends[-1] * rate) + 2)
        speech = rng.random(n) < 0.5
        row = lambda x, dtype: tf.RaggedTensor.from_tensor(tf.constant([x], dtype))  # noqa: E731
        body = wi.interleave_rows(row(words, tf.string), row(starts, tf.float32), row(ends, tf.float32),
                                  tf.constant(speech), row(units, tf.int64), tf.constant([rate], tf.float64),
                                  text_vocab, dedup=True, eos=True)
        segments, i = [], 0
        while i < n:  # spans: maximal runs of one modality
            j = i
            while j + 1 < n and speech[j + 1] == speech[i]:
                j += 1
            if speech[i]:
                ranges = [_frames(starts[w], ends[w], rate, len(units)) for w in range(i, j + 1)]
                lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
                segments.append(Segment.speech(units[lo:hi], "en"))
            else:
                segments.append(Segment.text(" ".join(words[i:j + 1]), "en"))
            i = j + 1
        got = SequenceFormat(text_vocab).encode(segments)
        assert got.ids.tolist() == body.flat_values.numpy().tolist()


def test_pipeline_word_interleave_with_pinned_modalities(text_vocab):
    """The preprocessor itself, with every word speech (speech_ratio=1) or text (0)."""
    rng = np.random.default_rng(6)
    words = _text(rng).split()
    starts = (np.arange(len(words)) * 4 / 25.0).astype(np.float32)
    ends = starts + np.float32(3 / 25.0)
    units = _units(rng, 4 * len(words))
    record = {"id": "w", "units": units, "unit_rate_hz": np.float32(25.0), "word_text": words,
              "word_start": starts, "word_end": ends}
    for ratio, segment in ((1.0, Segment.speech(units[:_frames(starts[0], ends[-1], 25.0, len(units))[1]])),
                           (0.0, Segment.text(" ".join(words)))):
        with seqio.map_seed_manager(3):
            (want,) = _targets(wi.word_interleave(_one(record), text_vocab, policy="random", speech_ratio=ratio))
        assert SequenceFormat(text_vocab).encode([segment]).ids.tolist() == want
