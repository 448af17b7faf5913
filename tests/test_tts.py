"""Tests for espeak-ng word-by-word synthesis (slm_jax_demo.tts)."""
import io
import shutil
import wave as wavmod

import numpy as np
import pytest

from slm_jax_demo.stories import words
from slm_jax_demo import tts

_skip_without_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng not installed (apt-get install -y espeak-ng; CI installs it)")


def needs_espeak(test):
    """Tier `espeak` (see setup.cfg), skipped where espeak-ng is missing."""
    return pytest.mark.espeak(_skip_without_espeak(test))

EN = tts.Voice("en", "en-us", "f2", rate=160, pitch=55)
FR = tts.Voice("fr", "fr-fr", "m3", rate=150, pitch=45)


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wavmod.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def test_parse_wav_bytes_reads_past_placeholder_sizes():
    samples = np.array([0, 16384, -16384, 32767], dtype=np.int16)
    data = bytearray(_wav_bytes(samples, 22050))
    data[4:8] = data[40:44] = b"\xf0\xff\xff\x7f"  # espeak-ng's piped-output placeholders
    wave, rate = tts.parse_wav_bytes(bytes(data))
    assert rate == 22050
    np.testing.assert_allclose(wave, samples / 32768.0)
    with pytest.raises(ValueError, match="not a RIFF/WAVE"):
        tts.parse_wav_bytes(b"hello", what="x")


def test_trim_silence_keeps_the_loud_part():
    sr = tts.SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(sr // 4) / sr).astype(np.float32)
    padded = np.concatenate([np.zeros(sr // 2, np.float32), tone, np.zeros(sr // 2, np.float32)])
    trimmed = tts.trim_silence(padded)
    assert abs(len(trimmed) - len(tone)) <= 0.03 * sr
    assert tts.trim_silence(np.zeros(1000, np.float32)).size == 0


def test_voices_for_gives_distinct_speakers():
    voices = tts.voices_for("fr", 10, seed=0)
    assert len(set(voices)) == 10 and all(v.language == "fr" for v in voices)
    assert len({(v.name, v.variant) for v in voices}) == 10
    assert voices == tts.voices_for("fr", 10, seed=0)
    assert all(tts.RATE_RANGE[0] <= v.rate <= tts.RATE_RANGE[1] for v in voices)
    with pytest.raises(ValueError, match="no voices for language 'de'"):
        tts.voices_for("de", 1, seed=0)
    with pytest.raises(ValueError, match="pitch"):
        tts.Voice("en", "en-us", pitch=120)


def test_ensure_espeak_names_install_command(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng"):
        tts.ensure_espeak()


@needs_espeak
@pytest.mark.parametrize("word,voice", [("starfish", EN), ("l'écureuil", FR), ("œuf", FR)])
def test_word_is_speech_of_plausible_length(word, voice):
    wave = tts.synthesize_word(word, voice)
    assert wave.dtype == np.float32
    assert 0.1 <= len(wave) / tts.SAMPLE_RATE <= 1.5
    assert np.sqrt(np.mean(wave ** 2)) > 0.01


@needs_espeak
def test_word_cache_returns_identical_array():
    first = tts.synthesize_word("forest", EN)
    assert tts.synthesize_word("forest", EN) is first
    assert not first.flags.writeable
    assert tts.synthesize_word("forest", tts.Voice("en", "en-gb", "m1")) is not first


@needs_espeak
def test_word_cache_is_bounded():
    try:
        tts.set_cache_limit(2)
        for word in ("one", "two", "three"):
            tts.synthesize_word(word, EN)
        assert tts.cache_size() == 2
    finally:
        tts.set_cache_limit(tts.DEFAULT_CACHE_ENTRIES)


@needs_espeak
def test_unknown_voice_or_variant_is_rejected():
    with pytest.raises(ValueError, match="no voice 'no-such-voice'"):
        tts.synthesize_word("hello", tts.Voice("en", "no-such-voice"))
    with pytest.raises(ValueError, match="no variant 'zz9'"):
        tts.synthesize_word("hello", tts.Voice("en", "en-us", "zz9"))
    for lang, bases in tts.BASE_VOICES.items():
        for base in bases:
            for variant in tts.VARIANTS:
                tts.check_voice(tts.Voice(lang, base, variant))


@needs_espeak
@pytest.mark.parametrize("voice,text", [
    (EN, ["One day, Tom went to the beach.", "He found an orange shell."]),
    (FR, ["Un jour, Tom est allé à la plage.", "Il a trouvé un coquillage orange près de l'arbre."]),
])
def test_utterance_times_are_exact(voice, text):
    sentences = [words(t) for t in text]
    rng = np.random.default_rng(0)
    wave, word_times, sentence_times = tts.synthesize_utterance(sentences, voice, rng=rng)
    duration = len(wave) / tts.SAMPLE_RATE
    assert [w for w, _, _ in word_times] == [w for s in sentences for w in s]
    previous_end = 0.0
    for word, start, end in word_times:
        assert previous_end < start < end < duration
        a, b = round(start * tts.SAMPLE_RATE), round(end * tts.SAMPLE_RATE)
        np.testing.assert_array_equal(wave[a:b], tts.synthesize_word(word, voice))  # exact boundaries
        previous_end = end
    assert [t for _, _, t in sentence_times] == [" ".join(s) for s in sentences]
    spans = iter(word_times)
    for sentence, (start, end, _) in zip(sentences, sentence_times):
        inside = [next(spans) for _ in sentence]
        assert start == inside[0][1] and end == inside[-1][2]
    assert sentence_times[1][0] - sentence_times[0][1] > 0.2  # the sentence gap, jittered
    assert word_times[0][1] == pytest.approx(0.1)


def test_utterance_rejects_empty_sentence():
    with pytest.raises(ValueError, match="non-empty sentences"):
        tts.synthesize_utterance([["hello"], []], EN)


@pytest.mark.parametrize("sentences", [[["one"]], [["one", "day", "tom"], ["he"], ["found", "a", "shell"]]])
def test_skip_utterance_draws_what_synthesize_utterance_draws(monkeypatch, sentences):
    """The corpus skips utterances it no longer needs; the rest of its random stream must not move."""
    monkeypatch.setattr(tts, "synthesize_word", lambda word, voice: np.full(80, 0.5, np.float32))
    synthesized, skipped = np.random.default_rng(5), np.random.default_rng(5)
    tts.synthesize_utterance(sentences, EN, rng=synthesized)
    tts.skip_utterance(sentences, skipped)
    assert skipped.bit_generator.state == synthesized.bit_generator.state
    gaps = sum(map(len, sentences)) - 1
    assert (np.random.default_rng(5).bit_generator.state == skipped.bit_generator.state) == (gaps == 0)
    with pytest.raises(ValueError, match="non-empty sentences"):
        tts.skip_utterance([["hello"], []], skipped)
