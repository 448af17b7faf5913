"""Expressive streams (SpiritLM-style): pitch tokens at 12.5 Hz and style tokens at 1 Hz.

Pitch: a YIN F0 tracker (numpy; cumulative-mean-normalised difference, absolute
threshold, parabolic interpolation) at `frame_rate_hz`, pooled to `token_rate_hz` (median
log-F0 of the voiced frames of each token window; the window is unvoiced when fewer than
half its frames are voiced), then quantised. Code layout (so 64 codes fit SpiritLM's
`[Pi0..Pi63]`): code 0 = unvoiced / silence; codes 1..n_codes-1 are uniform bins of log-F0
over [log fmin, log fmax] (F0 outside the range is clipped into the end bins).

Style: features mean-pooled over 1 s windows, then a k-means codebook (100 codes by default,
`kmeans.fit_kmeans`) turns each window into one token.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from slm_jax.speech import kmeans

UNVOICED_CODE = 0


@dataclasses.dataclass(frozen=True)
class PitchConfig:
    fmin: float = 50.0
    fmax: float = 500.0
    frame_rate_hz: float = 100.0
    token_rate_hz: float = 12.5
    n_codes: int = 64             # including the unvoiced code 0
    threshold: float = 0.15       # YIN absolute threshold on the normalised difference
    silence_db: float = -50.0     # frames quieter than this RMS (dBFS) are unvoiced

    def validate(self, sample_rate: int) -> None:
        if not 0 < self.fmin < self.fmax < sample_rate / 2:
            raise ValueError(f"PitchConfig: need 0 < fmin={self.fmin} < fmax={self.fmax} < Nyquist "
                             f"({sample_rate / 2} Hz)")
        if self.n_codes < 2:
            raise ValueError(f"PitchConfig: n_codes={self.n_codes} must be >= 2 (code 0 is unvoiced)")
        if not 0 < self.token_rate_hz <= self.frame_rate_hz:
            raise ValueError(f"PitchConfig: need 0 < token_rate_hz={self.token_rate_hz} <= "
                             f"frame_rate_hz={self.frame_rate_hz}")


def _frames(wave: np.ndarray, sample_rate: int, config: PitchConfig):
    """[F, frame_len] analysis frames centred at (i + 0.5) / frame_rate seconds (zero-padded edges)."""
    tau_max = int(np.ceil(sample_rate / config.fmin))
    frame_len = 2 * tau_max  # integration window tau_max + the largest lag
    hop = sample_rate / config.frame_rate_hz
    n_frames = int(len(wave) // hop)
    centres = np.round((np.arange(n_frames) + 0.5) * hop).astype(np.int64)
    padded = np.concatenate([np.zeros(frame_len), wave.astype(np.float64), np.zeros(frame_len)])
    starts = centres - frame_len // 2 + frame_len
    return padded[starts[:, None] + np.arange(frame_len)[None, :]], tau_max


def _cmnd(frames: np.ndarray, tau_max: int) -> np.ndarray:
    """YIN's cumulative-mean-normalised difference d'(tau), tau = 0..tau_max, per frame."""
    width = tau_max
    head = frames[:, :width]
    nfft = 1 << int(np.ceil(np.log2(frames.shape[1] + width)))
    acf = np.fft.irfft(np.conj(np.fft.rfft(head, nfft)) * np.fft.rfft(frames, nfft), nfft)[:, :tau_max + 1]
    csum = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_lag = csum[:, taus + width] - csum[:, taus]
    diff = np.maximum(csum[:, width:width + 1] + energy_lag - 2.0 * acf, 0.0)
    running = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[None, 1:] / np.maximum(running, 1e-20)
    return cmnd


def estimate_f0(wave, sample_rate: int, config: PitchConfig = PitchConfig()) -> tuple[np.ndarray, np.ndarray]:
    """YIN F0 per frame at `config.frame_rate_hz`: (f0 Hz float32 [F], 0 where unvoiced; voiced bool [F]).

    F = floor(len(wave) / hop); frame i is centred at (i + 0.5) * hop samples.
    """
    config.validate(sample_rate)
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"estimate_f0: expected a mono 1-D waveform, got shape {wave.shape}")
    frames, tau_max = _frames(wave, sample_rate, config)
    if frames.shape[0] == 0:
        return np.zeros((0,), np.float32), np.zeros((0,), bool)
    tau_min = max(2, int(np.floor(sample_rate / config.fmax)))
    cmnd = _cmnd(frames, tau_max)
    search = cmnd[:, tau_min:tau_max]  # candidates tau_min .. tau_max-1 (tau+1 exists for interpolation)
    below = search < config.threshold
    has_dip = below.any(axis=1)
    first = np.argmax(below, axis=1)
    # Walk from the first dip down to its local minimum: the first j >= first with d'(j+1) >= d'(j).
    rising = np.concatenate([search[:, 1:] >= search[:, :-1], np.ones((search.shape[0], 1), bool)], axis=1)
    after = np.arange(search.shape[1])[None, :] >= first[:, None]
    tau = tau_min + np.argmax(rising & after, axis=1)
    rows = np.arange(len(tau))
    left, mid, right = cmnd[rows, tau - 1], cmnd[rows, tau], cmnd[rows, tau + 1]
    curvature = left - 2.0 * mid + right
    offset = np.where(curvature > 0, 0.5 * (left - right) / np.where(curvature > 0, curvature, 1.0), 0.0)
    period = tau + np.clip(offset, -1.0, 1.0)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    voiced = has_dip & (20.0 * np.log10(np.maximum(rms, 1e-12)) > config.silence_db)
    f0 = np.where(voiced, sample_rate / period, 0.0)
    return f0.astype(np.float32), voiced


def quantize_log_f0(f0, config: PitchConfig = PitchConfig()) -> np.ndarray:
    """F0 in Hz (<= 0 means unvoiced) -> int32 codes: 0 unvoiced, 1 + uniform log-F0 bin otherwise."""
    f0 = np.asarray(f0, dtype=np.float64)
    n_bins = config.n_codes - 1
    lo, hi = np.log(config.fmin), np.log(config.fmax)
    pos = (np.log(np.maximum(f0, 1e-6)) - lo) / (hi - lo) * n_bins
    bins = np.clip(np.floor(pos), 0, n_bins - 1).astype(np.int32)
    return np.where(f0 > 0, 1 + bins, UNVOICED_CODE).astype(np.int32)


def pitch_bin_edges(config: PitchConfig = PitchConfig()) -> np.ndarray:
    """The n_codes edges (Hz) of the voiced bins: code c (>= 1) covers [edges[c-1], edges[c])."""
    return np.exp(np.linspace(np.log(config.fmin), np.log(config.fmax), config.n_codes))


def pool_f0(f0, voiced, config: PitchConfig = PitchConfig()) -> np.ndarray:
    """Frame F0 -> token-rate F0 (Hz, 0 = unvoiced): median log-F0 of voiced frames, majority voicing."""
    f0 = np.asarray(f0, np.float64)
    voiced = np.asarray(voiced, bool)
    if f0.size == 0:
        return np.zeros((0,), np.float32)
    ratio = config.token_rate_hz / config.frame_rate_hz
    token_of = np.floor((np.arange(f0.size) + 0.5) * ratio).astype(np.int64)
    out = np.zeros((int(token_of[-1]) + 1,), np.float32)
    bounds = np.flatnonzero(np.diff(token_of)) + 1  # token_rate <= frame_rate: no token index is skipped
    for j, (fs, vs) in enumerate(zip(np.split(f0, bounds), np.split(voiced, bounds))):
        if vs.mean() >= 0.5:
            out[j] = np.exp(np.median(np.log(fs[vs])))
    return out


def pitch_tokens(wave, sample_rate: int, config: PitchConfig = PitchConfig()) -> np.ndarray:
    """Waveform -> int32 pitch codes at `config.token_rate_hz` (12.5 Hz: one per 80 ms)."""
    f0, voiced = estimate_f0(wave, sample_rate, config)
    return quantize_log_f0(pool_f0(f0, voiced, config), config)


# --- style tokens --------------------------------------------------------------------------

def pool_windows(features, frame_rate_hz: float, window_s: float = 1.0) -> np.ndarray:
    """[F, D] frame features -> [ceil(F / w), D] window means, w = round(frame_rate * window_s).

    The last, partial window is kept (mean of its frames) so every second of speech gets a token.
    """
    x = np.asarray(features, np.float32)
    if x.ndim != 2:
        raise ValueError(f"features: expected [frames, dim], got shape {x.shape}")
    w = max(1, int(round(frame_rate_hz * window_s)))
    n = -(-x.shape[0] // w)
    padded = np.zeros((n * w, x.shape[1]), np.float32)
    padded[:x.shape[0]] = x
    counts = np.minimum(w, x.shape[0] - np.arange(n) * w).astype(np.float32)
    return padded.reshape(n, w, -1).sum(axis=1) / counts[:, None]


def fit_style_codebook(feature_list, frame_rate_hz: float, *, k: int = 100, window_s: float = 1.0,
                       seed: int = 0, **kmeans_kwargs) -> np.ndarray:
    """k-means (k=100 by default) over the 1 s window means of every utterance's features."""
    pooled = [pool_windows(f, frame_rate_hz, window_s) for f in feature_list]
    return kmeans.fit_kmeans(np.concatenate(pooled), k, seed=seed, **kmeans_kwargs)


def style_tokens(features, frame_rate_hz: float, centroids, window_s: float = 1.0) -> np.ndarray:
    """[F, D] features -> int32 style codes, one per `window_s` window."""
    return kmeans.assign(pool_windows(features, frame_rate_hz, window_s), centroids)
