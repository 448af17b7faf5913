"""`slm-jax units encode` output is keyed by what made it (issue 13 kind 7): the sidecar
OUT.meta.json holds the codebook digest, features, frame stack, unit rate and sample rate;
a resume with any other setting stops naming the difference, or starts over on --reencode;
`units fit` records its features so `encode` refuses a codebook fitted on others."""
import json
import os
import shutil

import numpy as np
import pytest
from scipy.io import wavfile

from slm_jax.cli import units as units_cli
from slm_jax.speech import audio, kmeans, pipeline

RECORD_KEYS = {"id", "units", "unit_rate_hz", "duration"}


@pytest.fixture
def wavs(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "wavs"
    (root / "spk").mkdir(parents=True)
    for name, seconds, sr in (("a", 0.4, 16000), ("spk/b", 0.3, 8000), ("spk/c", 0.5, 16000)):
        wave = (rng.standard_normal(int(seconds * sr)) * 3000).astype(np.int16)
        wavfile.write(root / f"{name}.wav", sr, wave)
    return root


def codebook(path, seed, k=6, dim=80):
    kmeans.save_centroids(path, np.random.default_rng(seed).standard_normal((k, dim)).astype(np.float32))
    return str(path)


def lines(path):
    with open(path) as f:
        return f.read()


def encode(wavs, km, out, **kw):
    return pipeline.encode_folder(str(wavs), km, str(out), progress=False, **kw)


def test_sidecar_records_what_made_the_units_and_lines_stay_plain(tmp_path, wavs):
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "u.jsonl"
    assert encode(wavs, km, out, rate_hz=50).encoded == 3
    meta = json.loads(lines(pipeline.sidecar_path(str(out))))
    assert meta == {"format": "slm_jax.units/1", "features": "logmel", "frame_stack": 2, "unit_rate_hz": 50.0,
                    "sample_rate_hz": 16000, "codebook_sha256": pipeline.codebook_digest(kmeans.load_centroids(km)),
                    "codebook_shape": [6, 80], "codebook_path": os.path.abspath(km)}
    records = [json.loads(line) for line in lines(out).splitlines()]
    assert [set(r) for r in records] == [RECORD_KEYS] * 3 and [r["id"] for r in records] == ["a", "spk/b", "spk/c"]


def test_codebook_digest_is_the_values_not_the_path():
    c = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    assert pipeline.codebook_digest(c) == pipeline.codebook_digest(c.astype(np.float64))
    d = c.copy()
    d[2, 1] = np.nextafter(d[2, 1], np.float32(np.inf))
    assert pipeline.codebook_digest(d) != pipeline.codebook_digest(c)
    assert pipeline.codebook_digest(c.reshape(3, 4)) != pipeline.codebook_digest(c)


@pytest.mark.parametrize("change, named", [
    (dict(km_seed=1), ["codebook_sha256"]),
    (dict(rate_hz=25), ["frame_stack: 2 there, 4 now", "unit_rate_hz: 50.0 there, 25.0 now"]),
    (dict(features="mfcc"), ["features: 'logmel' there, 'mfcc' now", "codebook_shape"]),
])
def test_a_resume_with_other_settings_stops_naming_the_difference(tmp_path, wavs, change, named):
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "u.jsonl"
    encode(wavs, km, out, rate_hz=50)
    before = lines(out)
    os.remove(wavs / "spk" / "c.wav")  # so that a silent resume would have had nothing to encode either
    kw = {"rate_hz": change.get("rate_hz", 50), "features": change.get("features", "logmel")}
    other = codebook(tmp_path / "other.npy", change.get("km_seed", 0), dim=13 if kw["features"] == "mfcc" else 80)
    with pytest.raises(pipeline.UnitsCacheMismatchError) as info:
        encode(wavs, other, out, **kw)
    message = str(info.value)
    assert all(n in message for n in named), message
    assert "3 units" in message and "--reencode" in message and str(out) in message
    assert lines(out) == before  # nothing appended, nothing removed


def test_another_sample_rate_in_the_sidecar_is_refused(tmp_path, wavs):
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "u.jsonl"
    encode(wavs, km, out)
    meta = json.loads(lines(pipeline.sidecar_path(str(out))))
    meta["sample_rate_hz"] = 24000  # e.g. units made by an encoder fed 24 kHz audio
    pipeline.write_sidecar(str(out), meta)
    with pytest.raises(pipeline.UnitsCacheMismatchError, match="sample_rate_hz: 24000 there, 16000 now"):
        encode(wavs, km, out)


def test_the_same_codebook_from_another_path_resumes(tmp_path, wavs):
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "u.jsonl"
    os.remove(wavs / "a.wav")
    encode(wavs, km, out)
    copy = str(tmp_path / "copy" / "km.npy")
    os.makedirs(os.path.dirname(copy))
    shutil.copy(km, copy)
    wavfile.write(wavs / "a.wav", 16000, (np.random.default_rng(3).standard_normal(4000) * 3000).astype(np.int16))
    stats = encode(wavs, copy, out)
    assert (stats.encoded, stats.already_done) == (1, 2)


def test_reencode_starts_over_with_the_new_settings(tmp_path, wavs, capsys):
    km1, km2 = codebook(tmp_path / "km1.npy", 0), codebook(tmp_path / "km2.npy", 1)
    out, fresh = tmp_path / "u.jsonl", tmp_path / "fresh.jsonl"
    encode(wavs, km1, out)
    base = ["encode", f"--audio={wavs}", f"--centroids={km2}", f"--out={out}", "--no_progress"]
    assert units_cli.units_main(base) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("slm-jax units encode: UnitsCacheMismatchError: ")
    assert units_cli.units_main(base + ["--reencode"]) == 0
    assert "3 files encoded, 0 already" in capsys.readouterr().out
    encode(wavs, km2, fresh)
    assert lines(out) == lines(fresh)
    assert json.loads(lines(pipeline.sidecar_path(str(out))))["codebook_sha256"] == \
        pipeline.codebook_digest(kmeans.load_centroids(km2))


def test_records_without_a_sidecar_are_refused_and_an_empty_file_is_not(tmp_path, wavs):
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "u.jsonl"
    encode(wavs, km, out)
    os.remove(pipeline.sidecar_path(str(out)))
    with pytest.raises(pipeline.UnitsCacheMismatchError, match="3 units records but no u.jsonl.meta.json"):
        encode(wavs, km, out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert encode(wavs, km, empty).encoded == 3


def test_a_mismatch_is_found_before_any_audio_is_read(tmp_path, wavs, monkeypatch):
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "u.jsonl"
    encode(wavs, km, out)
    monkeypatch.setattr(audio, "load_audio", lambda path: pytest.fail(f"read {path} before the check"))
    with pytest.raises(pipeline.UnitsCacheMismatchError):
        encode(wavs, codebook(tmp_path / "km2.npy", 5), out)


def test_fit_records_its_features_and_encode_refuses_others(tmp_path, wavs):
    km = str(tmp_path / "km.npy")
    pipeline.fit_codebook(str(wavs), km, k=4, iters=3, rate_hz=50, progress=False, shard=False)
    meta = json.loads(lines(pipeline.sidecar_path(km)))
    assert {k: meta[k] for k in ("features", "frame_stack", "unit_rate_hz", "sample_rate_hz", "k", "seed")} == \
        {"features": "logmel", "frame_stack": 2, "unit_rate_hz": 50.0, "sample_rate_hz": 16000, "k": 4, "seed": 0}
    assert meta["codebook_sha256"] == pipeline.codebook_digest(kmeans.load_centroids(km))
    # Same dim (80), other rate: the codebook was not fitted on these frames.
    with pytest.raises(pipeline.UnitsCacheMismatchError, match="frame_stack: 2 there, 1 now"):
        encode(wavs, km, tmp_path / "u100.jsonl")
    assert encode(wavs, km, tmp_path / "u50.jsonl", rate_hz=50).encoded == 3
    # An exported codebook (no sidecar) is taken as it is.
    bare = codebook(tmp_path / "exported.npy", 2)
    assert encode(wavs, bare, tmp_path / "u_bare.jsonl").encoded == 3


def test_canonical_features_makes_model_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pipeline.canonical_features("hubert:models/mhubert:11") == f"hubert:{tmp_path}/models/mhubert:11"
    assert pipeline.canonical_features("whisper:w") == f"whisper:{tmp_path}/w"
    assert pipeline.canonical_features("whisper:w:4") == f"whisper:{tmp_path}/w:4"
    assert pipeline.canonical_features("logmel") == "logmel"


def test_encode_output_still_imports_with_the_sidecar_beside_it(tmp_path, wavs):
    """`prepare import --format=slamkit` of `units encode` output (glob *.jsonl) is unaffected."""
    from slm_jax.data.corpus import importers, io
    km, out = codebook(tmp_path / "km.npy", 0), tmp_path / "units" / "u.jsonl"
    encode(wavs, km, out, rate_hz=50)
    result = importers.import_to_tfrecord("slamkit", str(tmp_path / "units" / "*.jsonl"),
                                          str(tmp_path / "corpus" / "units"))
    assert result["written"] == 3 and result["skipped"] == 0
    got = [io.from_example(b) for _, b in io.iter_tfrecord_bytes(result["shards"])]
    want = [json.loads(line) for line in lines(out).splitlines()]
    # ids and units; the record's unit_rate_hz is the importer's part (issue 13 kind 1, other branch)
    assert sorted((u.id, list(u.units)) for u in got) == sorted((r["id"], r["units"]) for r in want)
