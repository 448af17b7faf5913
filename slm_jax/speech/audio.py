"""Audio I/O: WAV files to float32 mono waveforms, and polyphase resampling.

Only WAV is read (through `scipy.io.wavfile`), so the speech path needs no audio codec
library; convert other formats beforehand (e.g. `ffmpeg -i x.flac -ar 16000 x.wav`).
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

TARGET_SAMPLE_RATE = 16000

# Integer PCM full-scale values: samples are divided by these so every format lands in [-1, 1).
_INT_SCALE = {np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a WAV file as a float32 mono waveform in [-1, 1] and its sample rate.

    int16/int32 PCM are scaled to full scale, uint8 is re-centred, float WAVs are kept as
    they are; multi-channel audio is averaged to mono. Anything scipy cannot decode (not a
    WAV, truncated header, 24-bit packed oddities, ...) or an empty file raises ValueError
    naming the file, so a bad record in a corpus is reported, never silently dropped.
    """
    from scipy.io import wavfile
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wavfile.WavFileWarning)  # unknown chunks: harmless metadata
            sample_rate, data = wavfile.read(path)
    except Exception as err:  # scipy raises ValueError, EOFError, struct.error, ... for bad files
        raise ValueError(f"{path}: cannot decode as WAV ({type(err).__name__}: {err})") from err
    wave = _to_float(np.asarray(data), path)
    if wave.ndim == 2:
        wave = wave.mean(axis=1, dtype=np.float64).astype(np.float32)
    elif wave.ndim != 1:
        raise ValueError(f"{path}: expected 1-D (mono) or 2-D (samples, channels) audio, "
                         f"got shape {wave.shape}")
    if wave.size == 0:
        raise ValueError(f"{path}: WAV file holds no samples")
    if sample_rate <= 0:
        raise ValueError(f"{path}: invalid sample rate {sample_rate}")
    return wave, int(sample_rate)


def _to_float(data: np.ndarray, path: str) -> np.ndarray:
    """PCM or float samples -> float32 at full scale 1.0."""
    if data.dtype in _INT_SCALE:
        return (data.astype(np.float64) / _INT_SCALE[data.dtype]).astype(np.float32)
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if data.dtype.kind == "f":
        return data.astype(np.float32)
    raise ValueError(f"{path}: unsupported WAV sample type {data.dtype} "
                     f"(expected int16, int32, uint8 or float)")


def resample(wave: np.ndarray, from_sr: int, to_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Resamples the last axis from `from_sr` to `to_sr` Hz with a polyphase filter.

    The up/down factors are reduced by their gcd (44.1 kHz -> 16 kHz is 160/441), which
    keeps the filter short. Equal rates return the input unchanged (no filtering, no copy
    beyond the float32 cast), so 16 kHz corpora are bit-exact through this step. The output
    has ceil(n * to_sr / from_sr) samples.
    """
    if from_sr <= 0 or to_sr <= 0:
        raise ValueError(f"sample rates must be positive, got from_sr={from_sr}, to_sr={to_sr}")
    wave = np.asarray(wave, dtype=np.float32)
    if from_sr == to_sr:
        return wave
    from scipy.signal import resample_poly
    g = math.gcd(int(from_sr), int(to_sr))
    up, down = int(to_sr) // g, int(from_sr) // g
    return resample_poly(wave, up, down, axis=-1).astype(np.float32)
