"""Log-mel spectrogram and MFCC in JAX, batched, for k-means units without a pretrained model.

Conventions (chosen to be simple to reproduce with numpy; tests hold them exactly):
- 16 kHz input (other rates are resampled first, see `sample_rate`), 25 ms periodic Hann
  window (400 samples), 10 ms hop (160), each frame zero-padded to n_fft=512, power
  spectrum |rfft|^2. No pre-emphasis, dither or DC removal.
- Frames are NOT centred (Kaldi `snip_edges`, HuBERT's conv front end): frame t covers
  samples [t*hop, t*hop + win), so a clip of n samples gives max(0, 1 + (n - win) // hop)
  frames at 100 Hz, and frames never read padding.
- Mel scale: HTK (mel = 2595 log10(1 + f / 700)), triangular filters between 0 Hz and
  Nyquist, unnormalised (peak 1; torchaudio's `mel_scale='htk', norm=None`).
- log-mel = log(max(mel, 1e-10)); MFCC = orthonormal DCT-II of the log-mel, first 13.
Padded frames (beyond each example's `lengths`) are set to 0 in the outputs.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.speech import audio


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = audio.TARGET_SAMPLE_RATE
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    log_floor: float = 1e-10
    n_mfcc: int = 13

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop_length

    def validate(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"FeatureConfig: win_length={self.win_length} exceeds n_fft={self.n_fft}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"FeatureConfig: n_mfcc={self.n_mfcc} exceeds n_mels={self.n_mels}")


def hz_to_mel(hz):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular HTK filters (float64 on the host, built once per config)."""
    f_max = config.sample_rate / 2 if config.f_max is None else config.f_max
    mel_points = np.linspace(hz_to_mel(config.f_min), hz_to_mel(f_max), config.n_mels + 2)
    hz_points = mel_to_hz(mel_points)
    bins_hz = np.arange(config.n_fft // 2 + 1) * config.sample_rate / config.n_fft
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (bins_hz[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins_hz[:, None]) / (upper - centre)[None, :]
    return np.maximum(0.0, np.minimum(rising, falling))


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_in, n_out] orthonormal DCT-II basis: x @ M == scipy.fft.dct(x, 2, norm='ortho')[..., :n_out]."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))
    scale = np.where(k == 0, np.sqrt(1.0 / n_in), np.sqrt(2.0 / n_in))
    return basis * scale


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann (as torch.hann_window and scipy.signal.get_window('hann') use for spectra)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def num_frames(num_samples, config: FeatureConfig = FeatureConfig()):
    """Frame count for un-centred framing: max(0, 1 + (n - win) // hop); works on ints and arrays."""
    n = np.asarray(num_samples)
    frames = np.where(n >= config.win_length, 1 + (n - config.win_length) // config.hop_length, 0)
    return int(frames) if frames.ndim == 0 else frames.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("config",))
def _log_mel_jit(waves: jax.Array, frame_lengths: jax.Array, config: FeatureConfig) -> jax.Array:
    n_frames = num_frames(waves.shape[1], config)
    idx = (np.arange(n_frames)[:, None] * config.hop_length + np.arange(config.win_length)[None, :])
    frames = waves[:, idx] * jnp.asarray(hann_window(config.win_length), jnp.float32)  # [B, F, win]
    spec = jnp.fft.rfft(frames, n=config.n_fft, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.einsum("bfk,km->bfm", power, jnp.asarray(mel_filterbank(config), jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    logmel = jnp.log(jnp.maximum(mel, config.log_floor))
    valid = jnp.arange(n_frames)[None, :] < frame_lengths[:, None]
    return jnp.where(valid[..., None], logmel, 0.0)


@functools.partial(jax.jit, static_argnames=("config",))
def _mfcc_from_log_mel(logmel: jax.Array, config: FeatureConfig) -> jax.Array:
    basis = jnp.asarray(dct_matrix(config.n_mels, config.n_mfcc), jnp.float32)
    return jnp.einsum("bfm,mc->bfc", logmel, basis, precision=jax.lax.Precision.HIGHEST)


def _prepare(waves, lengths, sample_rate: int | None, config: FeatureConfig):
    """Validates shapes, resamples each example to config.sample_rate on the host; (waves, lengths)."""
    config.validate()
    waves = np.asarray(waves, dtype=np.float32) if not isinstance(waves, jax.Array) else waves
    if waves.ndim != 2:
        raise ValueError(f"waves: expected [batch, samples], got shape {tuple(waves.shape)}")
    batch, total = waves.shape
    lengths = np.full((batch,), total, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    if lengths.shape != (batch,) or (lengths < 0).any() or (lengths > total).any():
        raise ValueError(f"lengths: expected {batch} ints in [0, {total}], got {lengths.tolist()}")
    sample_rate = config.sample_rate if sample_rate is None else int(sample_rate)
    if sample_rate != config.sample_rate:
        host = np.asarray(waves)
        parts = [audio.resample(host[i, :lengths[i]], sample_rate, config.sample_rate) for i in range(batch)]
        lengths = np.array([len(p) for p in parts], np.int64)
        out = np.zeros((batch, int(lengths.max(initial=0))), np.float32)
        for i, p in enumerate(parts):
            out[i, :len(p)] = p
        waves = out
    return waves, lengths


def log_mel(waves, lengths=None, *, sample_rate: int | None = None,
            config: FeatureConfig = FeatureConfig()) -> tuple[jax.Array, np.ndarray]:
    """[batch, samples] waveforms -> ([batch, frames, n_mels] log-mel, [batch] int32 frame counts).

    `lengths` gives each example's valid sample count in a padded batch (default: all
    valid); frames past an example's count are 0. `sample_rate` (default config's 16 kHz)
    resamples each example first. Recompiles per distinct padded length, so callers that
    loop over files should pad to a few bucket sizes (see `pipeline`).
    """
    waves, lengths = _prepare(waves, lengths, sample_rate, config)
    frame_lengths = num_frames(lengths, config)
    feats = _log_mel_jit(jnp.asarray(waves, jnp.float32), jnp.asarray(frame_lengths), config)
    return feats, np.asarray(frame_lengths, np.int32)


def mfcc(waves, lengths=None, *, sample_rate: int | None = None,
         config: FeatureConfig = FeatureConfig()) -> tuple[jax.Array, np.ndarray]:
    """[batch, samples] -> ([batch, frames, n_mfcc] MFCC, [batch] frame counts); see `log_mel`."""
    logmel, frame_lengths = log_mel(waves, lengths, sample_rate=sample_rate, config=config)
    return _mfcc_from_log_mel(logmel, config), frame_lengths
