"""Word-by-word speech synthesis with espeak-ng, with exact word and sentence times.

The interleaving and patching recipes (SEEDS.md sections 1-3) need speech with word
alignments; a forced aligner is a heavy dependency and only approximately right. Here each
word is synthesised on its own, its silences trimmed, and words are concatenated with
known gaps, so word and sentence boundaries are exact by construction. The prosody is that
of isolated words, which is fine for a small stand-in corpus of spoken stories.

espeak-ng is a Debian package (`make espeak`, or `apt-get install -y espeak-ng`); it
synthesises at 22050 Hz and its output is resampled to 16 kHz, the rate of the speech
encoders. Grammar vocabularies are small, so every (word, voice) waveform is cached: a corpus
of thousands of sentences costs one espeak-ng call per distinct word and voice.

Text: every word is normalised with `slm_jax.text_normalization.normalize_text` before it
reaches espeak-ng or the cache, so NFD and NFC spellings (or `ﬁ` and `fi`) are one word with
one waveform, and the returned word/sentence texts are normalised.

Errors: `EspeakError` (a RuntimeError) and its subclasses say what is missing and how to
install it, in one line: `EspeakNotFoundError` (no binary on PATH), `EspeakVoiceError` (also a
ValueError: the installed espeak-ng lacks a voice or variant, e.g. no French data), and
`EspeakError` itself when the binary fails (listing voices or synthesising).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import shutil
import struct
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np

from slm_jax.text_normalization import normalize_text

SAMPLE_RATE = 16000
ESPEAK = "espeak-ng"
INSTALL_HINT = "`make espeak`, or apt-get update && apt-get install -y espeak-ng"
VOICE_DATA_HINT = ("install the full voice data: apt-get install -y espeak-ng espeak-ng-data "
                   "(a minimal build may lack a language)")


class EspeakError(RuntimeError):
    """espeak-ng is missing, broken or lacks a voice; the message names what and how to fix it."""


class EspeakNotFoundError(EspeakError, FileNotFoundError):
    """No `espeak-ng` binary on PATH (a FileNotFoundError too: every `slm-jax` command that builds
    the demo corpus, not only `prepare`, then prints it in one line)."""


class EspeakVoiceError(EspeakError, ValueError):
    """The installed espeak-ng has no such voice or variant (a ValueError too: a bad voice name)."""

# Base espeak-ng voices per language (no mbrola voices: those need extra packages).
BASE_VOICES = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd"),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
}
# espeak-ng voice variants (!v directory): male and female timbres.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
RATE_RANGE = (130, 190)  # words per minute
PITCH_RANGE = (30, 70)  # espeak 0-99 scale

_TRIM_DB = -40.0  # frames this far below the loudest frame count as silence
_TRIM_FRAME_S = 0.005
_TRIM_MARGIN_S = 0.01  # kept around the voiced region so onsets and releases are not clipped


@dataclasses.dataclass(frozen=True)
class Voice:
    """An espeak-ng speaker: base voice (e.g. 'en-us'), optional variant ('m3', 'f2'), rate, pitch."""
    language: str
    name: str
    variant: str | None = None
    rate: int = 160
    pitch: int = 50

    def __post_init__(self):
        if self.language not in BASE_VOICES:
            raise ValueError(f"Voice language {self.language!r} not supported: "
                             f"expected one of {sorted(BASE_VOICES)}")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"Voice rate {self.rate} words/min outside espeak-ng's range 80-450")
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"Voice pitch {self.pitch} outside espeak-ng's range 0-99")

    @property
    def espeak_voice(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name


def ensure_espeak() -> str:
    """Path of the espeak-ng binary; EspeakNotFoundError with the install command when missing."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise EspeakNotFoundError(f"{ESPEAK} not found on PATH; the spoken demo synthesises its speech "
                                  f"with it. Install it with {INSTALL_HINT}")
    return path


def voices_for(lang: str, n: int, seed: int) -> list[Voice]:
    """`n` distinct speakers for `lang`: base voices x variants, each with its own rate and pitch.

    Speaker variety matters because units and models should not latch onto one voice; the
    (base, variant) pairs are drawn without replacement until exhausted, then reused with
    other rates and pitches.
    """
    if lang not in BASE_VOICES:
        raise ValueError(f"no voices for language {lang!r}: expected one of {sorted(BASE_VOICES)}")
    if n < 0:
        raise ValueError(f"number of voices must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    pairs = [(base, variant) for base in BASE_VOICES[lang] for variant in VARIANTS]
    voices: list[Voice] = []
    while len(voices) < n:
        for k in rng.permutation(len(pairs))[: n - len(voices)]:
            base, variant = pairs[int(k)]
            voices.append(Voice(lang, base, variant, rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
                                pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))))
    return voices


# ----------------------------------------------------------------------------- one word

# LRU cache of trimmed word waveforms. One entry is ~0.4 s of float32 (~25 kB), so the
# default bound keeps it under ~0.5 GB even when every story has its own voice.
DEFAULT_CACHE_ENTRIES = 20000
_CACHE: collections.OrderedDict[tuple[str, Voice], np.ndarray] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_cache_limit = DEFAULT_CACHE_ENTRIES


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def cache_size() -> int:
    return len(_CACHE)


def set_cache_limit(max_entries: int) -> None:
    """Bounds the (word, voice) cache; the least recently used entries are dropped first."""
    global _cache_limit
    if max_entries < 1:
        raise ValueError(f"cache limit must be >= 1 entry, got {max_entries}")
    with _CACHE_LOCK:
        _cache_limit = max_entries
        _evict()


def _evict() -> None:
    while len(_CACHE) > _cache_limit:
        _CACHE.popitem(last=False)


def _cache_get(key: tuple[str, Voice]) -> np.ndarray | None:
    with _CACHE_LOCK:
        wave = _CACHE.get(key)
        if wave is not None:
            _CACHE.move_to_end(key)
        return wave


def _cache_put(key: tuple[str, Voice], wave: np.ndarray) -> np.ndarray:
    with _CACHE_LOCK:
        wave = _CACHE.setdefault(key, wave)  # a concurrent prefetch may have stored it first
        _CACHE.move_to_end(key)
        _evict()
        return wave


def synthesize_word(word: str, voice: Voice) -> np.ndarray:
    """float32 waveform at 16 kHz of one word, silences trimmed; cached per (normalised word, voice).

    The word is normalised first (`normalize_text`), so NFD/NFC spellings share one entry.
    The cached array is returned itself (read-only), so repeated words cost nothing and
    cannot be corrupted by a caller writing into them. ValueError: empty, or more than one
    word after normalisation; EspeakError: espeak-ng missing, broken or without the voice.
    """
    key = (_word_key(word), voice)
    cached = _cache_get(key)
    if cached is not None:
        return cached
    word = key[0]
    if not word or " " in word:
        raise ValueError(f"synthesize_word needs one non-empty word without spaces, got {word!r}")
    wave = trim_silence(_resample(*_run_espeak(word, voice)))
    if wave.size == 0:
        raise EspeakError(f"{ESPEAK} produced only silence for {word!r} with voice {voice.espeak_voice}")
    wave.flags.writeable = False
    return _cache_put(key, wave)


def prefetch(words: Iterable[str], voice: Voice, workers: int = 2) -> None:
    """Synthesises the distinct uncached `words` with `workers` espeak-ng processes in parallel.

    espeak-ng runs in its own process, so threads overlap the calls; with 2 cores this
    roughly halves the time of a corpus's first pass over its vocabulary.
    """
    todo = sorted({w for w in map(_word_key, words) if (w, voice) not in _CACHE})
    if workers <= 1 or len(todo) < 2:
        for w in todo:
            synthesize_word(w, voice)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda w: synthesize_word(w, voice), todo))


def _word_key(word: str) -> str:
    """The word as espeak-ng and the cache see it (`normalize_text`); TypeError if not a str."""
    return normalize_text(word)


@functools.cache
def _installed_voices() -> tuple[frozenset[str], frozenset[str]]:
    """(voice/language names, variant names) known to the installed espeak-ng; EspeakError
    when it cannot list them (a broken install)."""
    names, variants = set(), set()
    for option, target in (("--voices", names), ("--voices=variant", variants)):
        cmd = [ensure_espeak(), option]
        try:
            proc = subprocess.run(cmd, capture_output=True, check=False)
        except OSError as e:
            raise EspeakError(f"`{' '.join(cmd)}` cannot run ({e}); reinstall it with {INSTALL_HINT}") from e
        if proc.returncode != 0:
            raise EspeakError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}: "
                              f"{proc.stderr.decode('utf-8', 'replace').strip()[:200]}); "
                              f"reinstall it with {INSTALL_HINT}")
        out = proc.stdout
        for line in out.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4:
                target.add(fields[1].lower())
                target.update(f.rsplit("/", 1)[1].lower() for f in fields if f.startswith("!v/"))
                if option == "--voices":
                    target.add(fields[3].lower())
    return frozenset(names), frozenset(variants)


def check_voice(voice: Voice) -> None:
    """Raises EspeakVoiceError (a ValueError) if espeak-ng does not know the voice or variant.

    Needed because espeak-ng reading stdin silently falls back to its default voice on an
    unknown name, which would quietly turn a whole corpus into one speaker.
    """
    names, variants = _installed_voices()
    if voice.name.lower() not in names:
        raise EspeakVoiceError(f"{ESPEAK} has no voice {voice.name!r} for language {voice.language!r} "
                               f"(see `{ESPEAK} --voices`); {VOICE_DATA_HINT}")
    if voice.variant is not None and voice.variant.lower() not in variants:
        raise EspeakVoiceError(f"{ESPEAK} has no variant {voice.variant!r} (see `{ESPEAK} --voices=variant`); "
                               f"{VOICE_DATA_HINT}")


def check_voices(voices: Iterable[Voice]) -> None:
    """`check_voice` on each voice: run before synthesising a corpus, so a missing voice
    (e.g. no French data) stops the build at once, naming it, not after the first language."""
    for voice in voices:
        check_voice(voice)


def _run_espeak(word: str, voice: Voice) -> tuple[np.ndarray, int]:
    """Runs espeak-ng on `word` (through stdin, so no word is read as an option)."""
    check_voice(voice)
    cmd = [ensure_espeak(), "-v", voice.espeak_voice, "-s", str(voice.rate), "-p", str(voice.pitch),
           "--stdout"]
    try:
        proc = subprocess.run(cmd, input=word.encode("utf-8"), capture_output=True, check=False)
    except OSError as e:
        raise EspeakError(f"`{' '.join(cmd)}` cannot run ({e}); reinstall it with {INSTALL_HINT}") from e
    if proc.returncode != 0:
        raise EspeakError(f"{' '.join(cmd)} failed on {word!r} (exit {proc.returncode}): "
                          f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    return parse_wav_bytes(proc.stdout, what=f"{ESPEAK} output for {word!r}")


def parse_wav_bytes(data: bytes, what: str = "WAV data") -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (float32 mono waveform in [-1, 1), sample rate).

    espeak-ng writes WAV to a pipe, so its RIFF and data sizes are placeholders
    (0x7ffff...); the data chunk is therefore read to the end of the bytes, not to its size.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{what}: not a RIFF/WAVE stream ({len(data)} bytes)")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk == b"data":
            if fmt is None:
                raise ValueError(f"{what}: data chunk before fmt chunk")
            return _pcm16_to_float(data[body:], fmt, what)
        pos = body + size + (size & 1)
    raise ValueError(f"{what}: no data chunk")


def _pcm16_to_float(payload: bytes, fmt: tuple[int, ...], what: str) -> tuple[np.ndarray, int]:
    audio_format, channels, sample_rate, _, _, bits = fmt
    if audio_format != 1 or bits != 16:
        raise ValueError(f"{what}: expected 16-bit PCM, got format {audio_format} with {bits} bits")
    usable = len(payload) - len(payload) % (2 * channels)
    samples = np.frombuffer(payload[:usable], dtype="<i2").reshape(-1, channels).mean(axis=1)
    return (samples / 32768.0).astype(np.float32), int(sample_rate)


def _resample(wave: np.ndarray, from_sr: int) -> np.ndarray:
    if from_sr == SAMPLE_RATE:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly
    g = math.gcd(from_sr, SAMPLE_RATE)
    return resample_poly(wave, SAMPLE_RATE // g, from_sr // g).astype(np.float32)


def trim_silence(wave: np.ndarray, sample_rate: int = SAMPLE_RATE,
                 threshold_db: float = _TRIM_DB) -> np.ndarray:
    """Cuts leading and trailing frames quieter than `threshold_db` below the loudest frame.

    The threshold is relative so quiet and loud voices trim alike; a 10 ms margin is kept
    so that weak onsets (f, h) and final releases survive. All-silent input returns empty.
    """
    frame = max(1, round(_TRIM_FRAME_S * sample_rate))
    n_frames = len(wave) // frame
    if n_frames == 0:
        return wave[:0].astype(np.float32)
    frames = wave[:n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    rms = np.sqrt(np.mean(np.square(frames), axis=1))
    peak = rms.max()
    if peak <= 1e-6:
        return wave[:0].astype(np.float32)
    loud = np.flatnonzero(rms >= peak * 10.0 ** (threshold_db / 20.0))
    margin = round(_TRIM_MARGIN_S * sample_rate)
    start = max(0, loud[0] * frame - margin)
    end = min(len(wave), (loud[-1] + 1) * frame + margin)
    return np.ascontiguousarray(wave[start:end], dtype=np.float32)


# ----------------------------------------------------------------------------- utterances

def synthesize_utterance(sentences_words: Sequence[Sequence[str]], voice: Voice, word_gap_s: float = 0.05,
                         sentence_gap_s: float = 0.3, rng: np.random.Generator | None = None,
                         pad_s: float = 0.1):
    """Speaks sentences of words; returns (wave, words, sentences) with exact times in seconds.

    `words` is [(word, start_s, end_s)] (each word normalised, as `synthesize_word` speaks it)
    and `sentences` is [(start_s, end_s, text)], text being those words joined by spaces;
    times are sample positions / 16000 in the returned
    waveform, so they are exact, not estimated. Gaps are silence; with `rng` each gap is
    scaled by a factor in [0.7, 1.3] so a corpus does not have metronomic timing.
    """
    if not sentences_words or any(len(s) == 0 for s in sentences_words):
        raise ValueError("synthesize_utterance needs non-empty sentences, "
                         f"got {list(map(list, sentences_words))}")
    if min(word_gap_s, sentence_gap_s, pad_s) < 0:
        raise ValueError(f"gaps must be >= 0, got word_gap_s={word_gap_s}, sentence_gap_s={sentence_gap_s}, "
                         f"pad_s={pad_s}")
    pieces = [_silence(pad_s)]
    cursor = len(pieces[0])
    words_out, sentences_out = [], []
    for i, sentence in enumerate(sentences_words):
        if i > 0:
            cursor = _append(pieces, _silence(_jitter(sentence_gap_s, rng)), cursor)
        sentence_start = cursor
        sentence = [_word_key(w) for w in sentence]
        for j, word in enumerate(sentence):
            if j > 0:
                cursor = _append(pieces, _silence(_jitter(word_gap_s, rng)), cursor)
            start = cursor
            cursor = _append(pieces, synthesize_word(word, voice), cursor)
            words_out.append((word, start / SAMPLE_RATE, cursor / SAMPLE_RATE))
        sentences_out.append((sentence_start / SAMPLE_RATE, cursor / SAMPLE_RATE, " ".join(sentence)))
    pieces.append(_silence(pad_s))
    return np.concatenate(pieces).astype(np.float32), words_out, sentences_out


def skip_utterance(sentences_words: Sequence[Sequence[str]], rng: np.random.Generator) -> None:
    """Advances `rng` exactly as `synthesize_utterance(sentences_words, voice, rng=rng)` would,
    without synthesising anything (no espeak-ng call).

    A corpus that stops synthesising an utterance it no longer needs keeps every later draw
    of its stream, hence every later utterance's timing, unchanged. `synthesize_utterance`
    draws one gap jitter before every word but the first of a sentence and one before every
    sentence but the first. ValueError: as `synthesize_utterance` (an empty sentence).
    """
    if not sentences_words or any(len(s) == 0 for s in sentences_words):
        raise ValueError("skip_utterance needs non-empty sentences, "
                         f"got {list(map(list, sentences_words))}")
    gaps = sum(len(s) for s in sentences_words) - 1  # (words - 1) per sentence + (sentences - 1)
    for _ in range(gaps):
        _jitter(0.0, rng)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def _jitter(seconds: float, rng: np.random.Generator | None) -> float:
    return seconds if rng is None else seconds * float(rng.uniform(0.7, 1.3))


def _append(pieces: list[np.ndarray], piece: np.ndarray, cursor: int) -> int:
    pieces.append(piece)
    return cursor + len(piece)
