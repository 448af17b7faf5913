"""speech/: audio I/O, log-mel/MFCC vs numpy, k-means (sharded too), dedup, pitch/style, encoders, CLI."""
import json
import os

import jax
import numpy as np
import pytest
import scipy.fft
from scipy.io import wavfile

from slm_jax.cli import units as units_cli
from slm_jax.speech import audio, features, kmeans, pipeline, prosody, units

SR = 16000


def _harmonic(f0, seconds, sr=SR, amps=(1.0, 0.5, 0.25)):
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * sum(a * np.sin(2 * np.pi * f0 * (i + 1) * t) for i, a in enumerate(amps))
    return wave.astype(np.float32)


def _write_wav(path, wave, sr=SR, dtype=np.int16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.clip(wave, -1, 1)
    if dtype == np.int16:
        data = np.round(data * 32767).astype(np.int16)
    wavfile.write(path, sr, np.asarray(data, dtype=dtype))


# --- audio -----------------------------------------------------------------------------------

def test_load_audio_formats_and_errors(tmp_path):
    x = np.array([0, 16384, -32768, 32767], np.int16)
    wavfile.write(tmp_path / "mono.wav", 8000, x)
    wave, sr = audio.load_audio(tmp_path / "mono.wav")
    assert sr == 8000 and wave.dtype == np.float32
    np.testing.assert_allclose(wave, [0, 0.5, -1, 32767 / 32768])
    stereo = np.stack([np.full(5, 0.5, np.float32), np.full(5, -0.25, np.float32)], axis=1)
    wavfile.write(tmp_path / "stereo.wav", 16000, stereo)
    wave, _ = audio.load_audio(tmp_path / "stereo.wav")
    np.testing.assert_allclose(wave, np.full(5, 0.125))
    wavfile.write(tmp_path / "i32.wav", 16000, np.array([2 ** 30, -2 ** 31], np.int32))
    np.testing.assert_allclose(audio.load_audio(tmp_path / "i32.wav")[0], [0.5, -1.0])
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    with pytest.raises(ValueError, match="bad.wav"):
        audio.load_audio(tmp_path / "bad.wav")
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        audio.load_audio(tmp_path / "missing.wav")


def test_resample():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert audio.resample(x, SR, SR) is x
    tone = _harmonic(440, 1.0, sr=44100, amps=(1.0,))
    y = audio.resample(tone, 44100, SR)
    assert y.dtype == np.float32 and len(y) == SR
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * SR / len(y)
    assert abs(peak_hz - 440) <= 1


# --- features --------------------------------------------------------------------------------

def _numpy_log_mel(x, sr=SR, win=400, hop=160, n_fft=512, n_mels=80):
    """Independent float64 reference: frames, periodic Hann, |rfft|^2, HTK triangles, log floor."""
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop:i * hop + win] for i in range(n)]).astype(np.float64)
    window = np.hanning(win + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=n_fft)) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = inv(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m:m + 3]
        fb[:, m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return np.log(np.maximum(power @ fb, 1e-10))


def test_log_mel_and_mfcc_match_numpy_reference():
    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal(4000)).astype(np.float32)
    b = (0.1 * rng.standard_normal(2500)).astype(np.float32)
    batch = np.zeros((2, 4000), np.float32)
    batch[0], batch[1, :2500] = a, b
    feats, n_frames = features.log_mel(batch, [4000, 2500])
    assert feats.shape == (2, 23, 80) and n_frames.tolist() == [23, 14]
    ref_a, ref_b = _numpy_log_mel(a), _numpy_log_mel(b)
    np.testing.assert_allclose(np.asarray(feats[0]), ref_a, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(feats[1, :14]), ref_b, atol=2e-4, rtol=1e-4)
    assert np.all(np.asarray(feats[1, 14:]) == 0)
    mf, mf_frames = features.mfcc(batch, [4000, 2500])
    assert mf.shape == (2, 23, 13) and mf_frames.tolist() == [23, 14]
    np.testing.assert_allclose(np.asarray(mf[0]), scipy.fft.dct(ref_a, type=2, norm="ortho")[:, :13],
                               atol=2e-3, rtol=1e-4)
    # Silence hits the log floor exactly.
    silent, _ = features.log_mel(np.zeros((1, 800), np.float32))
    np.testing.assert_allclose(np.asarray(silent), np.log(1e-10), rtol=1e-6)


def test_log_mel_resamples_other_rates():
    x = _harmonic(200, 0.5, sr=8000)
    got, n = features.log_mel(x[None], sample_rate=8000)
    want, m = features.log_mel(audio.resample(x, 8000, SR)[None])
    assert n.tolist() == m.tolist() == [features.num_frames(SR // 2)]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    with pytest.raises(ValueError, match="lengths"):
        features.log_mel(np.zeros((2, 100), np.float32), [100, 101])


# --- k-means ---------------------------------------------------------------------------------

def _planted(k=7, per=97, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 20, (k, dim)).astype(np.float32)
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + 0.3 * rng.standard_normal((k * per, dim)).astype(np.float32)
    perm = rng.permutation(len(x))
    return x[perm], labels[perm], centres


def _perm_accuracy(true, pred, k):
    """Accuracy under the one-to-one relabelling by majority (well separated: it must be a bijection)."""
    mapping = {t: np.bincount(pred[true == t], minlength=k).argmax() for t in range(k)}
    if len(set(mapping.values())) < k:
        return 0.0
    return float(np.mean(np.array([mapping[t] for t in true]) == pred))


def test_kmeans_recovers_planted_clusters_unsharded_and_sharded():
    x, labels, _ = _planted()
    k = 7
    plain = kmeans.fit_kmeans(x, k, seed=1, iters=30)
    assert plain.shape == (k, 5) and plain.dtype == np.float32
    assert _perm_accuracy(labels, kmeans.assign(x, plain), k) == 1.0
    mesh = jax.make_mesh((8,), ("data",))
    # 679 rows over 8 devices in chunks of 32: exercises padding and chunking.
    sharded = kmeans.fit_kmeans(x, k, seed=1, iters=30, mesh=mesh, chunk_size=32)
    np.testing.assert_allclose(sharded, plain, atol=1e-5)
    mini = kmeans.fit_kmeans(x, k, seed=1, iters=40, batch_size=128, mesh=mesh)
    assert _perm_accuracy(labels, kmeans.assign(x, mini), k) == 1.0
    np.testing.assert_allclose(mini, kmeans.fit_kmeans(x, k, seed=1, iters=40, batch_size=128), atol=1e-5)


def test_centroid_files_and_validation(tmp_path):
    c = np.random.default_rng(0).standard_normal((500, 6))  # float64, like sklearn cluster_centers_
    np.save(tmp_path / "km500.npy", c)
    loaded = kmeans.load_centroids(tmp_path / "km500.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (500, 6)
    kmeans.save_centroids(tmp_path / "ours.npy", loaded)
    np.testing.assert_array_equal(kmeans.load_centroids(tmp_path / "ours.npy"), loaded)
    ids = kmeans.assign(loaded[[3, 3, 499, 0]] + 1e-4, loaded)
    assert ids.dtype == np.int32 and ids.tolist() == [3, 3, 499, 0]
    with pytest.raises(ValueError, match="dim 6 but the features have dim 4"):
        kmeans.assign(np.zeros((3, 4), np.float32), loaded)
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(ValueError, match="flat.npy.*2-D"):
        kmeans.load_centroids(tmp_path / "flat.npy")
    np.save(tmp_path / "ints.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="ints.npy.*float"):
        kmeans.load_centroids(tmp_path / "ints.npy")
    (tmp_path / "junk.npy").write_text("nope")
    with pytest.raises(ValueError, match="junk.npy"):
        kmeans.load_centroids(tmp_path / "junk.npy")


# --- units -----------------------------------------------------------------------------------

def test_dedup_with_durations_and_inverse():
    u, d = units.dedup_with_durations([5, 5, 7, 5, 5, 5, 0])
    assert u.tolist() == [5, 7, 5, 0] and d.tolist() == [2, 1, 3, 1]
    assert units.expand_durations(u, d).tolist() == [5, 5, 7, 5, 5, 5, 0]
    assert units.dedup_start_indices([5, 5, 7, 5, 5, 5, 0]).tolist() == [0, 2, 3, 6]
    u, d = units.dedup_with_durations([])
    assert u.tolist() == [] and d.tolist() == [] and units.expand_durations(u, d).tolist() == []
    assert [x.tolist() for x in units.dedup_with_durations([9])] == [[9], [1]]
    with pytest.raises(ValueError, match="durations must be >= 1"):
        units.expand_durations([1, 2], [1, 0])
    with pytest.raises(ValueError, match="differ in length"):
        units.expand_durations([1, 2], [1])


# --- prosody ---------------------------------------------------------------------------------

def test_pitch_f0_bins_and_silence():
    wave = np.concatenate([_harmonic(120, 0.64), _harmonic(240, 0.64), np.zeros(int(0.64 * SR), np.float32)])
    f0, voiced = prosody.estimate_f0(wave, SR)
    assert len(f0) == 192
    first, second, silence = (slice(8, 56), slice(72, 120), slice(136, 192))  # away from the joins
    assert voiced[first].all() and voiced[second].all() and not voiced[silence].any()
    np.testing.assert_allclose(f0[first], 120, rtol=0.03)
    np.testing.assert_allclose(f0[second], 240, rtol=0.03)
    tokens = prosody.pitch_tokens(wave, SR)
    assert tokens.dtype == np.int32 and len(tokens) == 24  # 1.92 s at 12.5 Hz
    low, high = tokens[1:7], tokens[9:15]
    assert len(set(low.tolist())) == 1 and len(set(high.tolist())) == 1 and 0 < low[0] < high[0] < 64
    assert (tokens[17:] == prosody.UNVOICED_CODE).all()
    edges = prosody.pitch_bin_edges()
    assert edges[low[0] - 1] <= 120 < edges[low[0]] and edges[high[0] - 1] <= 240 < edges[high[0]]
    # 8 kHz input works without resampling.
    f0_8k, _ = prosody.estimate_f0(_harmonic(150, 0.5, sr=8000), 8000)
    np.testing.assert_allclose(f0_8k[5:-5], 150, rtol=0.03)


def test_style_tokens():
    rng = np.random.default_rng(0)
    utts = [np.concatenate([rng.normal(m, 0.1, (250, 4)), rng.normal(-m, 0.1, (130, 4))]).astype(np.float32)
            for m in (3.0, 3.5)]
    pooled = prosody.pool_windows(utts[0], 100.0)
    assert pooled.shape == (4, 4)
    np.testing.assert_allclose(pooled[3], utts[0][300:].mean(0), rtol=1e-5)
    codebook = prosody.fit_style_codebook(utts, 100.0, k=2, seed=0)
    tok = prosody.style_tokens(utts[0], 100.0, codebook)
    assert tok.shape == (4,) and tok[0] == tok[1] and tok[3] != tok[0]


# --- pipeline + CLI --------------------------------------------------------------------------

@pytest.fixture
def wav_folder(tmp_path):
    root = tmp_path / "wavs"
    _write_wav(str(root / "a.wav"), _harmonic(120, 0.5))
    _write_wav(str(root / "spk" / "b.wav"), _harmonic(220, 0.3, sr=8000), sr=8000)
    stereo = np.stack([_harmonic(300, 0.4), 0.5 * _harmonic(300, 0.4)], axis=1)
    _write_wav(str(root / "spk" / "c.wav"), stereo, dtype=np.float32)
    return root


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_units_fit_and_encode_resumable(tmp_path, wav_folder, capsys):
    km = str(tmp_path / "km.npy")
    assert units_cli.units_main(["fit", f"--audio={wav_folder}", f"--out={km}", "--k=8", "--iters=10",
                                "--no_progress"]) == 0
    assert kmeans.load_centroids(km).shape == (8, 80)
    out = str(tmp_path / "units.jsonl")
    args = ["encode", f"--audio={wav_folder}", f"--centroids={km}", f"--out={out}", "--no_progress"]
    assert units_cli.units_main(args) == 0
    rows = _read_jsonl(out)
    assert [r["id"] for r in rows] == ["a", "spk/b", "spk/c"]
    assert [len(r["units"]) for r in rows] == [features.num_frames(n) for n in (8000, 4800, 6400)]
    assert [r["duration"] for r in rows] == [0.5, 0.3, 0.4] and all(r["unit_rate_hz"] == 100.0 for r in rows)
    assert all(0 <= u < 8 for r in rows for u in r["units"])
    assert "3 files encoded, 0 already" in capsys.readouterr().out
    # Second run: nothing new.
    assert units_cli.units_main(args) == 0
    assert "0 files encoded, 3 already" in capsys.readouterr().out and _read_jsonl(out) == rows
    # A kill mid-write leaves a partial last line: it is dropped and that file re-encoded.
    with open(out) as f:
        lines = f.readlines()
    with open(out, "w") as f:
        f.writelines(lines[:2] + [lines[2][:15]])
    stats = pipeline.encode_folder(str(wav_folder), km, out, progress=False)
    assert (stats.encoded, stats.already_done) == (1, 2) and _read_jsonl(out) == rows
    # A whole last line without its newline is kept; a bad line before the end is an error.
    with open(out, "w") as f:
        f.writelines(lines[:2] + [lines[2].rstrip("\n")])
    assert pipeline.read_done_ids(out) == {"a", "spk/b", "spk/c"} and _read_jsonl(out) == rows
    with open(out, "w") as f:
        f.writelines([lines[0], "garbage\n", lines[2]])
    with pytest.raises(ValueError, match="units.jsonl:2: not JSON"):
        pipeline.encode_folder(str(wav_folder), km, out, progress=False)


def test_encode_rate_and_glob(tmp_path, wav_folder):
    km = str(tmp_path / "km.npy")
    kmeans.save_centroids(km, np.random.default_rng(0).standard_normal((5, 80)).astype(np.float32))
    out = str(tmp_path / "u25.jsonl")
    stats = pipeline.encode_folder(str(wav_folder / "spk" / "*.wav"), km, out, rate_hz=25, progress=False)
    rows = _read_jsonl(out)
    assert stats.encoded == 2 and [r["id"] for r in rows] == ["b", "c"]
    assert rows[0]["unit_rate_hz"] == 25.0 and len(rows[0]["units"]) == -(-features.num_frames(4800) // 4)
    with pytest.raises(ValueError, match="--rate_hz=30"):
        pipeline.encode_folder(str(wav_folder), km, out, rate_hz=30, progress=False)
    with pytest.raises(ValueError, match="km.npy.*dim 80 does not match --features=mfcc"):
        pipeline.encode_folder(str(wav_folder), km, out, features="mfcc", progress=False)


def test_encode_bad_record_error_and_skip(tmp_path, wav_folder, capsys):
    (wav_folder / "spk" / "broken.wav").write_bytes(b"this is not audio")
    km = str(tmp_path / "km.npy")
    kmeans.save_centroids(km, np.random.default_rng(0).standard_normal((5, 80)).astype(np.float32))
    out = str(tmp_path / "units.jsonl")
    with pytest.raises(ValueError, match="broken.wav"):
        pipeline.encode_folder(str(wav_folder), km, out, progress=False)
    base = ["encode", f"--audio={wav_folder}", f"--centroids={km}", f"--out={out}", "--no_progress"]
    assert units_cli.units_main(base) == 2
    assert "broken.wav" in capsys.readouterr().err
    assert units_cli.units_main(base + ["--on_bad_record=skip"]) == 0
    assert "bad records skipped: 1" in capsys.readouterr().out
    assert [r["id"] for r in _read_jsonl(out)] == ["a", "spk/b", "spk/c"]


# --- encoders (optional [hf] extra) ----------------------------------------------------------

def test_encoders_import_error_names_extra(monkeypatch):
    from slm_jax.speech import encoders
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[hf\]'"):
        encoders.HubertFeatures("/nonexistent", 1)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = transformers.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=37, conv_dim=(32, 32), conv_stride=(5, 2),
                                    conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                    num_conv_pos_embedding_groups=2, vocab_size=10)
    path = tmp_path_factory.mktemp("tiny_hubert")
    transformers.HubertModel(cfg).save_pretrained(path)
    return str(path)


def test_hubert_features(tiny_hubert):
    import torch
    from transformers import HubertModel
    from slm_jax.speech.encoders import HubertFeatures
    enc = HubertFeatures(tiny_hubert, layer=1, device="cpu")
    assert enc.rate_hz == 1600.0 and enc.dim == 32
    x = _harmonic(150, 0.05)
    got = enc(x, SR)
    model = HubertModel.from_pretrained(tiny_hubert).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[1][0].numpy()
    assert got.shape == want.shape == (79, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert enc(audio.resample(x, SR, 8000), 8000).shape[0] > 70
    with pytest.raises(ValueError, match="layer=3 out of range"):
        HubertFeatures(tiny_hubert, layer=3)


def test_hubert_units_pipeline(tmp_path, tiny_hubert, wav_folder):
    km, out = str(tmp_path / "km.npy"), str(tmp_path / "u.jsonl")
    spec = f"hubert:{tiny_hubert}:2"
    stats = pipeline.fit_codebook(str(wav_folder), km, features=spec, k=4, iters=5, frame_stack=2,
                                  progress=False)
    assert stats.files == 3 and kmeans.load_centroids(km).shape == (4, 32)
    pipeline.encode_folder(str(wav_folder), km, out, features=spec, frame_stack=2, progress=False)
    rows = _read_jsonl(out)
    assert len(rows) == 3 and rows[0]["unit_rate_hz"] == 800.0 and len(rows[0]["units"]) == 400


def test_whisper_encoder_features(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from slm_jax.speech.encoders import WhisperEncoderFeatures
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=37, decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=50,
        max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3, begin_suppress_tokens=None, suppress_tokens=None)
    transformers.WhisperModel(cfg).save_pretrained(tmp_path)
    transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(tmp_path)
    enc = WhisperEncoderFeatures(str(tmp_path), device="cpu")
    assert enc.rate_hz == 50.0 and enc.dim == 32
    out = enc(_harmonic(200, 1.5), SR)  # two 1 s windows: 50 + 25 frames
    assert out.shape == (75, 32) and np.isfinite(out).all()
    layer1 = WhisperEncoderFeatures(str(tmp_path), layer=1, device="cpu")(_harmonic(200, 0.5), SR)
    assert layer1.shape == (25, 32) and not np.allclose(layer1, out[:25])
