"""Task formats (ASR/TTS/S2TT/continuation, few-shot prompts) and LST patch ids: exact ids
and loss masks on hand-written records."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax.data.preprocessors.patch_ids import add_patch_ids, aligned_patch_ids, static_patch_ids
from slm_jax.data.preprocessors.task_formats import (
    banned_ids_for,
    fewshot_prompt,
    format_asr,
    format_continuation,
    format_s2tt,
    format_tts,
)
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from tests.test_token_space import make_tiny_spm, small_vocab

# Layout of `small_vocab` (60-piece SPM): [Text]=60 [Speech]=61 [Hu0..Hu9]=62..71
# [Pi0..Pi3]=72..75 [St0..St2]=76..78 [EN]=79 [FR]=80; 0 PAD, 1 EOS, 2 UNK.
TEXT, SPEECH, EOS, EN, FR = 60, 61, 1, 79, 80
RECORD = {
    "id": "r1",
    "lang": "en",
    "tgt_lang": "fr",
    "units": np.array([3, 3, 7, 7, 7, 2], np.int64),
    "text": "the cat",
}
UNITS_DEDUP = [65, 69, 64]  # units 3, 7, 2
UNITS_RAW = [65, 65, 69, 69, 69, 64]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return small_vocab(make_tiny_spm(tmp_path_factory.mktemp("spm")))


@pytest.fixture(scope="module")
def the_cat(vocab):
    ids = vocab.encode_text("the cat")
    assert ids and vocab.sp_processor.DecodeIds(ids) == "the cat"
    return ids


def run_one(preprocessor, record=RECORD, **kwargs) -> dict:
    ds = preprocessor(tf.data.Dataset.from_tensors(record), **kwargs)
    return {k: v.numpy() for k, v in next(iter(ds)).items()}


def ids_and_mask(out: dict):
    assert out["targets"].dtype == np.int32 and out["loss_mask"].dtype == np.int32
    assert out["targets"].shape == out["loss_mask"].shape
    return out["targets"].tolist(), out["loss_mask"].tolist()


# --- task formats ---------------------------------------------------------------------------
def test_asr(vocab, the_cat):
    out = run_one(format_asr, vocabulary=vocab)
    ids, mask = ids_and_mask(out)
    assert ids == [SPEECH] + UNITS_DEDUP + [TEXT] + the_cat + [EOS]
    assert mask == [0] * 5 + [1] * (len(the_cat) + 1)
    assert sorted(out) == ["id", "lang", "loss_mask", "targets", "tgt_lang"]  # units/text consumed
    assert out["id"] == b"r1"
    ids, mask = ids_and_mask(run_one(format_asr, vocabulary=vocab, dedup=False, loss_on_targets_only=False))
    assert ids == [SPEECH] + UNITS_RAW + [TEXT] + the_cat + [EOS]
    assert mask == [1] * len(ids)


def test_tts(vocab, the_cat):
    ids, mask = ids_and_mask(run_one(format_tts, vocabulary=vocab))
    assert ids == [TEXT] + the_cat + [SPEECH] + UNITS_DEDUP + [EOS]
    assert mask == [0] * (len(the_cat) + 2) + [1] * 4
    ids, mask = ids_and_mask(run_one(format_tts, vocabulary=vocab, loss_on_targets_only=False))
    assert mask == [1] * len(ids)


def test_s2tt(vocab, the_cat):
    out = run_one(format_s2tt, vocabulary=vocab, target_lang_key="tgt_lang")
    ids, mask = ids_and_mask(out)
    assert ids == [SPEECH] + UNITS_DEDUP + [TEXT, FR] + the_cat + [EOS]
    assert mask == [0] * 6 + [1] * (len(the_cat) + 1)
    assert "tgt_lang" not in out and out["lang"] == b"en"
    ids, mask = ids_and_mask(
        run_one(format_s2tt, vocabulary=vocab, target_lang="EN", loss_on_targets_only=False)
    )
    assert ids == [SPEECH] + UNITS_DEDUP + [TEXT, EN] + the_cat + [EOS]
    assert mask == [1] * len(ids)
    no_langs = SpeechTextVocabulary(vocab.sp_processor.serialized_model_proto(), num_units=10)
    ids, _ = ids_and_mask(run_one(format_s2tt, vocabulary=no_langs))
    assert ids == [61, 65, 69, 64, 60] + the_cat + [EOS]


def test_s2tt_errors(vocab):
    with pytest.raises(ValueError, match="target_lang_key"):
        format_s2tt(tf.data.Dataset.from_tensors(RECORD), vocab)
    bad = dict(RECORD, tgt_lang="de")
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown language"):
        run_one(format_s2tt, record=bad, vocabulary=vocab, target_lang_key="tgt_lang")
    with pytest.raises(ValueError, match="no feature 'speech'"):
        run_one(format_s2tt, vocabulary=vocab, speech_key="speech", target_lang="fr")


def test_continuation(vocab, the_cat):
    ids, mask = ids_and_mask(run_one(format_continuation, vocabulary=vocab))
    assert (ids, mask) == ([SPEECH] + UNITS_DEDUP + [EOS], [1] * 5)
    ids, mask = ids_and_mask(run_one(format_continuation, vocabulary=vocab, dedup=False))
    assert ids == [SPEECH] + UNITS_RAW + [EOS]
    out = run_one(format_continuation, vocabulary=vocab, modality="text")
    ids, mask = ids_and_mask(out)
    assert (ids, mask) == ([TEXT] + the_cat + [EOS], [1] * (len(the_cat) + 2))
    assert "units" in out and "text" not in out  # only the used feature is consumed
    unit_only = SpeechTextVocabulary(num_units=10)
    ids, _ = ids_and_mask(run_one(format_continuation, vocabulary=unit_only))
    assert ids == [4, 8, 12, 7, 1]
    with pytest.raises(ValueError, match="no sentencepiece_model"):
        format_continuation(tf.data.Dataset.from_tensors(RECORD), unit_only, modality="text")


def test_vocabulary_from_output_features_and_bad_units(vocab, the_cat):
    features = {"targets": seqio.Feature(vocabulary=vocab)}
    ids, _ = ids_and_mask(run_one(format_asr, output_features=features))
    assert ids == [SPEECH] + UNITS_DEDUP + [TEXT] + the_cat + [EOS]
    with pytest.raises(ValueError, match="must be a SpeechTextVocabulary"):
        format_asr(tf.data.Dataset.from_tensors(RECORD), seqio.PassThroughVocabulary(10))
    bad = dict(RECORD, units=np.array([1, 12], np.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unit out of range \[0, 10\)"):
        run_one(format_asr, record=bad, vocabulary=vocab)


# --- few-shot prompts ----------------------------------------------------------------------
def test_fewshot_asr_prompt(vocab):
    cat, dog, sun = (vocab.encode_text(t) for t in ("the cat", "the dog", "sun"))
    examples = [([1, 1, 2], "the cat"), ([4], "the dog")]
    ids = fewshot_prompt(examples, [5, 5, 6], "speech", "text", vocab)
    assert ids == (
        [SPEECH, 63, 64, TEXT] + cat + [EOS] + [SPEECH, 66, TEXT] + dog + [EOS] + [SPEECH, 67, 68, TEXT]
    )
    tts = fewshot_prompt([("sun", [0, 0, 9])], "the dog", "text", "speech", vocab, dedup=False)
    assert tts == [TEXT] + sun + [SPEECH, 62, 62, 71, EOS, TEXT] + dog + [SPEECH]
    with pytest.raises(ValueError, match=r"examples\[0\] input should be speech units"):
        fewshot_prompt([("oops", "the cat")], [1], "speech", "text", vocab)
    with pytest.raises(ValueError, match="output_modality must be one of"):
        fewshot_prompt([], [1], "speech", "audio", vocab)


def test_banned_ids(vocab):
    assert banned_ids_for("text", vocab).tolist() == [SPEECH] + list(range(62, 79))
    assert banned_ids_for("speech", vocab).tolist() == list(range(2, 61)) + [EN, FR]
    assert EOS not in banned_ids_for("speech", vocab)


# --- LST patch ids ---------------------------------------------------------------------------
def test_static_patch_ids():
    assert static_patch_ids(10, 4).numpy().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert static_patch_ids(0, 4).numpy().tolist() == []
    with pytest.raises(ValueError, match="k must be a positive int"):
        static_patch_ids(4, 0)


def test_aligned_patch_ids_silences_and_gaps():
    # 10 Hz, 2 s: silence 0.0-0.3, word 0.3-0.7, gap 0.7-0.9, words 0.9-1.2 and 1.2-1.5 (adjacent), silence.
    got = aligned_patch_ids(20, 10.0, [0.3, 0.9, 1.2], [0.7, 1.2, 1.5]).numpy().tolist()
    assert got == [0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 5]
    # float32 times at 25 Hz land on their frames: 0.2 s -> frame 5, 0.36 s -> frame 9 (exclusive).
    times = np.array([0.2, 0.36], np.float32)
    got = aligned_patch_ids(10, tf.constant(25.0), times[:1], times[1:]).numpy().tolist()
    assert got == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    # A word from the first frame to the last: one patch; no words: one silence patch.
    assert aligned_patch_ids(4, 10.0, [0.0], [0.4]).numpy().tolist() == [0, 0, 0, 0]
    assert (
        aligned_patch_ids(3, 10.0, np.zeros([0], np.float32), np.zeros([0], np.float32)).numpy().tolist()
        == [0] * 3
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="sorted and not overlap"):
        aligned_patch_ids(10, 10.0, [0.5, 0.1], [0.6, 0.3])


def test_add_patch_ids_preprocessor():
    record = {
        "units": np.array([5, 5, 5, 1, 1, 2, 2, 2, 9], np.int64),
        "unit_rate_hz": np.float32(10.0),
        "word_start": np.array([0.1, 0.4], np.float32),
        "word_end": np.array([0.3, 0.8], np.float32),
    }
    static = run_one(add_patch_ids, record=record, strategy="static", k=4)
    assert static["patch_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert static["units"].tolist() == record["units"].tolist()  # before dedup: one id per frame
    aligned = run_one(add_patch_ids, record=record, strategy="aligned")
    assert aligned["patch_ids"].tolist() == [0, 1, 1, 2, 3, 3, 3, 3, 4]
    with pytest.raises(ValueError, match=r"no feature\(s\) \['word_start', 'word_end'\]"):
        run_one(add_patch_ids, record={"units": record["units"], "unit_rate_hz": 10.0}, strategy="aligned")
    with pytest.raises(ValueError, match="strategy must be one of"):
        add_patch_ids(tf.data.Dataset.from_tensors(record), strategy="mixed")
