"""Pretrained speech encoders (HuBERT / mHuBERT, Whisper) from LOCAL weights, through the `[hf]` extra.

These feed k-means codebooks like the published ones: SpiritLM / textlesslib units are
k-means over a HuBERT layer's hidden states; DMLM's best codebook is k-means over Whisper
encoder activations. Models are read from a local directory (`save_pretrained` layout:
config.json + weights [+ preprocessor_config.json]); nothing is downloaded here.
torch and transformers are imported only when an encoder is built, so the rest of slm_jax
runs without them. Inference runs in torch (CPU, or CUDA when available) and returns numpy.

Every encoder exposes `rate_hz` (frames per second), `dim`, and
`__call__(wave, sample_rate) -> float32 [frames, dim]` (any input rate; resampled to 16 kHz).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from slm_jax.speech import audio

_INSTALL_HINT = "install the optional extra: pip install -e '.[hf]' (torch and transformers)"


def _import_hf():
    """(torch, transformers), or an ImportError that says which extra to install."""
    try:
        import torch
        import transformers
    except ImportError as err:
        raise ImportError(f"slm_jax.speech.encoders needs torch and transformers ({err}); "
                          f"{_INSTALL_HINT}") from err
    return torch, transformers


def _check_model_dir(path: str, kind: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: not a local {kind} model directory (no config.json); save one with "
                                f"`{kind}Model.from_pretrained(...).save_pretrained(DIR)` where the hub "
                                f"is reachable")
    return path


def _pick_device(torch, device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _chunks(wave: np.ndarray, size: int):
    for start in range(0, len(wave), size):
        yield wave[start:start + size]


class HubertFeatures:
    """Hidden states of transformer layer `layer` (1-based; 0 = the input of the first layer).

    `layer` indexes `output_hidden_states`, which matches fairseq/textlesslib `output_layer`
    (e.g. layer 6 of HuBERT base for 50/100/200-unit GSLM codebooks, 11 for mHuBERT-147).
    The waveform is normalised (zero mean, unit variance) when the model's
    preprocessor_config.json says `do_normalize` (large models). Long files are encoded in
    `max_chunk_s` pieces whose frames are concatenated (as textlesslib does).
    """

    def __init__(self, path: str, layer: int, *, device: str | None = None, max_chunk_s: float = 100.0):
        torch, transformers = _import_hf()
        self._torch = torch
        path = _check_model_dir(path, "Hubert")
        self.model = transformers.HubertModel.from_pretrained(path).eval()
        n_layers = self.model.config.num_hidden_layers
        if not 0 <= int(layer) <= n_layers:
            raise ValueError(f"{path}: layer={layer} out of range; this model has layers 0..{n_layers}")
        self.layer = int(layer)
        self.device = _pick_device(torch, device)
        self.model.to(self.device)
        self.sample_rate = audio.TARGET_SAMPLE_RATE
        self.rate_hz = self.sample_rate / math.prod(self.model.config.conv_stride)
        self.dim = self.model.config.hidden_size
        self.normalize = _read_do_normalize(path)
        self.max_chunk = int(max_chunk_s * self.sample_rate)

    def __call__(self, wave, sample_rate: int) -> np.ndarray:
        wave = audio.resample(np.asarray(wave, np.float32), sample_rate, self.sample_rate)
        outs = [self._encode(chunk) for chunk in _chunks(wave, self.max_chunk)]
        outs = [o for o in outs if o.shape[0]]
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    def _encode(self, chunk: np.ndarray) -> np.ndarray:
        torch = self._torch
        if self.normalize:
            chunk = (chunk - chunk.mean()) / np.sqrt(chunk.var() + 1e-7)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chunk, np.float32))[None].to(self.device)
            out = self.model(x, output_hidden_states=True)
            return out.hidden_states[self.layer][0].float().cpu().numpy()


def _read_do_normalize(path: str) -> bool:
    cfg = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return bool(json.load(f).get("do_normalize", False))


class WhisperEncoderFeatures:
    """Whisper encoder activations (DMLM's codebook input), 50 Hz for the standard models.

    `layer=None` gives the encoder output (after its final layer norm); an int picks
    `hidden_states[layer]` (0 = after the conv/positional front end). Audio is cut into the
    feature extractor's 30 s windows (`n_samples`); each window is padded as Whisper
    expects and only the frames that cover real audio are kept.
    """

    def __init__(self, path: str, layer: int | None = None, *, device: str | None = None):
        torch, transformers = _import_hf()
        self._torch = torch
        path = _check_model_dir(path, "Whisper")
        if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            raise FileNotFoundError(f"{path}: no preprocessor_config.json; save the WhisperFeatureExtractor "
                                    f"(or WhisperProcessor) into the model directory too")
        self.extractor = transformers.WhisperFeatureExtractor.from_pretrained(path)
        full = transformers.WhisperModel.from_pretrained(path)
        self.encoder = full.get_encoder().eval()
        del full  # the decoder is not needed
        n_layers = self.encoder.config.encoder_layers
        if layer is not None and not 0 <= int(layer) <= n_layers:
            raise ValueError(f"{path}: layer={layer} out of range; this encoder has layers 0..{n_layers}")
        self.layer = None if layer is None else int(layer)
        self.device = _pick_device(torch, device)
        self.encoder.to(self.device)
        self.sample_rate = int(self.extractor.sampling_rate)
        stride = self.extractor.hop_length * 2  # conv2 of the encoder has stride 2
        self.samples_per_frame = stride
        self.rate_hz = self.sample_rate / stride
        self.dim = self.encoder.config.d_model

    def __call__(self, wave, sample_rate: int) -> np.ndarray:
        wave = audio.resample(np.asarray(wave, np.float32), sample_rate, self.sample_rate)
        outs = [self._encode(chunk) for chunk in _chunks(wave, self.extractor.n_samples)]
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)

    def _encode(self, chunk: np.ndarray) -> np.ndarray:
        torch = self._torch
        feats = self.extractor(chunk, sampling_rate=self.sample_rate, return_tensors="pt").input_features
        with torch.inference_mode():
            out = self.encoder(feats.to(self.device), output_hidden_states=self.layer is not None)
            hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        n_valid = min(hidden.shape[1], math.ceil(len(chunk) / self.samples_per_frame))
        return hidden[0, :n_valid].float().cpu().numpy()
