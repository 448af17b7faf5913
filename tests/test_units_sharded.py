"""Sharded unit extraction (issue 16 item 1): `slm-jax units fit|encode` over many workers, each
with its own slice of the audio and its own output shard, and `units verify` over the shards."""
import json
import os
import random
import shutil

import numpy as np
import pytest
from scipy.io import wavfile

from slm_jax.cli import units as units_cli
from slm_jax.speech import frame_sample, kmeans, pipeline, verify, workers
from slm_jax.speech.workers import Worker

N_FILES = 7


@pytest.fixture
def wavs(tmp_path):
    """7 short WAVs (0.3 s, 16 kHz, so one featurizer shape) in two folders."""
    rng = np.random.default_rng(11)
    root = tmp_path / "wavs"
    for i in range(N_FILES):
        path = root / (f"spk{i % 2}") / f"utt{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(path, 16000, (rng.standard_normal(4800) * 3000).astype(np.int16))
    return root


@pytest.fixture
def km(tmp_path):
    path = str(tmp_path / "km.npy")
    kmeans.save_centroids(path, np.random.default_rng(0).standard_normal((6, 80)).astype(np.float32))
    return path


def encode(wavs, km, out, worker=None, **kw):
    return pipeline.encode_folder(str(wavs), km, str(out), progress=False, worker=worker, **kw)


def read_lines(path):
    with open(path) as f:
        return [line for line in f.read().splitlines() if line]


def ids_of(path):
    return [json.loads(line)["id"] for line in read_lines(path)]


# --- who owns which file --------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 5, 16, 40])
def test_worker_slices_are_disjoint_complete_and_independent_of_listing_order(count):
    files = [(f"spk{i % 3}/utt{i:03d}", f"/a/spk{i % 3}/utt{i:03d}.wav") for i in range(37)]
    slices = [workers.worker_files(files, Worker(i, count)) for i in range(count)]
    owned = [audio_id for s in slices for audio_id, _ in s]
    assert sorted(owned) == sorted(i for i, _ in files) and len(owned) == len(set(owned))  # complete, disjoint
    assert all(s == sorted(s) for s in slices)  # each worker takes its files in sorted id order
    shuffled = files[:]
    for seed in range(3):
        random.Random(seed).shuffle(shuffled)
        assert [workers.worker_files(shuffled, Worker(i, count)) for i in range(count)] == slices
    sizes = [len(s) for s in slices]
    if count == 40:
        assert 0 in sizes  # 37 files, 40 workers: some get nothing
    if count in (3, 5, 16):
        assert len(set(sizes)) > 1  # uneven, still complete
    # A file's worker depends on its id and the count alone: adding files moves none of the others.
    more = files + [(f"new/{i}", f"/a/new/{i}.wav") for i in range(10)]
    for i in range(count):
        assert set(workers.worker_files(files, Worker(i, count))) <= set(workers.worker_files(more, Worker(i, count)))


def test_worker_of_is_the_documented_sha256_rule():
    import hashlib
    for audio_id in ("a", "spk1/utt3", "é/ü"):
        want = int.from_bytes(hashlib.sha256(audio_id.encode()).digest()[:8], "big") % 7
        assert workers.worker_of(audio_id, 7) == want


def no_jax():
    pytest.fail("JAX consulted although flags or SLURM decide")


@pytest.mark.parametrize("env, flags, want", [
    ({}, (2, 4), (2, 4, "--worker_index/--num_workers")),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 3),
     (1, 3, "--worker_index")),  # flags beat SLURM
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"}, (None, None),
     (5, 8, "SLURM_ARRAY_TASK_ID=5")),
    ({"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "1"}, (None, None),
     (15, 16, "SLURM_ARRAY_TASK_MIN=1")),  # --array=1-16
    ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "2"}, (None, None), (7, 8, "SLURM_ARRAY_TASK_STEP=2")),  # --array=0-14:2
])
def test_resolve_worker_flags_then_slurm(env, flags, want):
    worker = workers.resolve_worker(*flags, env=env, jax_process_fn=no_jax)
    assert (worker.index, worker.count) == want[:2] and want[2] in worker.source


def test_resolve_worker_then_jax_then_one_worker():
    assert workers.resolve_worker(env={}, jax_process_fn=lambda: (3, 4)) == Worker(
        3, 4, "JAX: jax.process_index()=3, jax.process_count()=4")
    single = workers.resolve_worker(env={"SLURM_JOB_ID": "7"}, jax_process_fn=lambda: (0, 1))  # a plain sbatch job
    assert (single.index, single.count) == (0, 1) and "one JAX process" in single.source
    # SLURM beats JAX
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}
    assert workers.resolve_worker(env=env, jax_process_fn=no_jax).index == 1


@pytest.mark.parametrize("flags, env, message", [
    ((1, None), {}, "give both or neither"),
    ((4, 4), {}, "worker_index=4"),
    ((0, 0), {}, "num_workers=0"),
    ((None, None), {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"},
     "not a range"),  # --array=1,3,7
    ((None, None), {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0"}, "SLURM_ARRAY_TASK_COUNT"),
])
def test_resolve_worker_refuses_bad_settings_naming_them(flags, env, message):
    with pytest.raises(ValueError, match=message):
        workers.resolve_worker(*flags, env=env, jax_process_fn=no_jax)


def test_shard_names():
    assert workers.shard_path("/d/units.jsonl", Worker(3, 16)) == "/d/units-00003-of-00016.jsonl"
    assert workers.shard_path("/d/units.jsonl", Worker()) == "/d/units.jsonl"


# --- encode on many workers -----------------------------------------------------------------

def encode_all(wavs, km, out, count):
    return [encode(wavs, km, out, Worker(i, count)) for i in range(count)]


@pytest.mark.parametrize("count", [3, 12])  # 12 workers for 7 files: some write an empty shard
def test_each_worker_writes_only_its_shard_and_the_union_equals_one_worker(tmp_path, wavs, km, count):
    out = tmp_path / "units" / "u.jsonl"
    listing = pipeline.list_audio(str(wavs))
    for i in range(count):
        before = set(os.listdir(out.parent)) if out.parent.exists() else set()
        stats = encode(wavs, km, out, Worker(i, count))
        shard = workers.shard_path(str(out), Worker(i, count))
        assert set(os.listdir(out.parent)) - before == {os.path.basename(shard), os.path.basename(shard) + ".meta.json"}
        mine = [audio_id for audio_id, _ in workers.worker_files(listing, Worker(i, count))]
        assert stats.out_path == shard and stats.encoded == stats.files == len(mine) and ids_of(shard) == mine
        meta = json.loads(open(pipeline.sidecar_path(shard)).read())
        assert (meta["worker_index"], meta["num_workers"]) == (i, count)
    if count == 12:
        assert any(not read_lines(workers.shard_path(str(out), Worker(i, count))) for i in range(count))
    single = tmp_path / "single.jsonl"
    encode(wavs, km, single)
    union = [line for i in range(count) for line in read_lines(workers.shard_path(str(out), Worker(i, count)))]
    assert len(union) == N_FILES and set(union) == set(read_lines(single))
    assert verify.verify_units(str(wavs), str(out)).ok


def test_resume_per_worker(tmp_path, wavs, km, monkeypatch):
    out, count = tmp_path / "u.jsonl", 2
    encode_all(wavs, km, out, count)
    shards = [workers.shard_path(str(out), Worker(i, count)) for i in range(count)]
    full = [open(s).read() for s in shards]
    lines = full[1].splitlines(keepends=True)
    assert len(lines) >= 3
    with open(shards[1], "w") as f:  # worker 1 killed after 1 record, mid-way through the 2nd
        f.write(lines[0] + lines[1][:20])
    encoded = []
    real_load = pipeline.audio.load_audio
    monkeypatch.setattr(pipeline.audio, "load_audio", lambda p: encoded.append(p) or real_load(p))
    stats = encode(wavs, km, out, Worker(1, count))
    assert (stats.encoded, stats.already_done) == (len(lines) - 1, 1) and len(encoded) == len(lines) - 1
    assert [open(s).read() for s in shards] == full  # worker 1 repaired, worker 0's shard untouched
    encoded.clear()
    assert encode(wavs, km, out, Worker(0, count)).encoded == 0 and encoded == []


# --- verify ----------------------------------------------------------------------------------

def run_verify(wavs, out, capsys):
    code = units_cli.units_main(["verify", f"--audio={wavs}", f"--out={out}"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_verify_passes_then_catches_missing_duplicated_unlisted_and_absent(tmp_path, wavs, km, capsys):
    out, count = tmp_path / "u.jsonl", 3
    encode_all(wavs, km, out, count)
    code, text = run_verify(wavs, out, capsys)
    assert code == 0 and "verify: OK" in text and f"{N_FILES} audio files, {N_FILES} records in 3 output(s)" in text
    shards = [workers.shard_path(str(out), Worker(i, count)) for i in range(count)]
    big = max(shards, key=lambda s: len(read_lines(s)))
    other = next(s for s in shards if s != big and read_lines(s))
    lines = read_lines(big)
    dropped, copied = json.loads(lines[0])["id"], json.loads(lines[1])["id"]
    with open(big, "w") as f:  # a missing file: its record removed by hand
        f.write("\n".join(lines[1:]) + "\n")
    with open(other, "a") as f:  # a duplicated id: a record copied into another shard
        f.write(lines[1] + "\n")
    code, text = run_verify(wavs, out, capsys)
    assert code == 1 and "FAILED" in text
    assert f"missing (1 files in --audio, in no shard): {dropped}" in text
    where_other = f"{os.path.basename(other)}:{len(read_lines(other))}"
    places = sorted([f"{os.path.basename(big)}:1", where_other])  # listed in shard order
    assert f"duplicated (1 ids in more than one place): {copied} ({places[0]} and {places[1]})" in text
    # An id in the shards whose audio is gone, and a worker whose shard is absent.
    gone = next(i for s in shards[1:] for i in ids_of(s) if i not in (dropped, copied))
    os.remove(wavs / f"{gone}.wav")
    shutil.move(shards[0], tmp_path / "elsewhere.jsonl")
    report = verify.verify_units(str(wavs), str(out))
    assert report.account.extra == [gone]
    assert any("1 of 3 shards absent" in p and os.path.basename(shards[0]) in p for p in report.problems)
    assert not report.ok


def test_verify_catches_a_codebook_mismatch_and_mixed_worker_counts(tmp_path, wavs, km, capsys):
    out, count = tmp_path / "u.jsonl", 2
    encode_all(wavs, km, out, count)
    other = str(tmp_path / "km_other.npy")
    kmeans.save_centroids(other, np.random.default_rng(1).standard_normal((6, 80)).astype(np.float32))
    encode(wavs, other, out, Worker(1, count), reencode=True)  # worker 1 redone with another codebook
    code, text = run_verify(wavs, out, capsys)
    shard1 = workers.shard_path(str(out), Worker(1, count))
    assert code == 1 and f"problem: {shard1}: made with other settings" in text and "codebook_sha256" in text
    assert "missing" not in text and "duplicated" not in text  # every file once: the codebook alone is wrong
    encode(wavs, km, out, Worker(1, count), reencode=True)
    assert run_verify(wavs, out, capsys)[0] == 0
    encode(wavs, km, out)  # a one-worker run beside the 2-worker shards
    code, text = run_verify(wavs, out, capsys)
    assert code == 1 and "different worker counts" in text and f"duplicated ({N_FILES} ids" in text


def test_verify_names_a_cut_off_last_line_and_no_outputs(tmp_path, wavs, km, capsys):
    out = tmp_path / "u.jsonl"
    encode_all(wavs, km, out, 2)
    shard = workers.shard_path(str(out), Worker(0, 2))
    text = open(shard).read()
    with open(shard, "w") as f:
        f.write(text[:-10])
    report = verify.verify_units(str(wavs), str(out))
    assert any("last line cut off" in p for p in report.problems) and len(report.account.missing) == 1
    assert open(shard).read() == text[:-10]  # verify never writes
    code, text = run_verify(wavs, tmp_path / "nothing.jsonl", capsys)
    assert code == 2 and "nothing-IIIII-of-NNNNN.jsonl" in text


def test_cli_encode_takes_the_worker_from_a_slurm_array_and_says_so(tmp_path, wavs, km, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    out = tmp_path / "u.jsonl"
    args = ["encode", f"--audio={wavs}", f"--centroids={km}", f"--out={out}", "--no_progress"]
    assert units_cli.units_main(args) == 0
    text = capsys.readouterr().out
    assert "worker 1 of 2 (from SLURM array: SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_MIN=1" in text
    assert os.path.exists(tmp_path / "u-00001-of-00002.jsonl") and not os.path.exists(out)
    assert units_cli.units_main(args + ["--worker_index=0", "--num_workers=2"]) == 0
    assert "worker 0 of 2 (from --worker_index/--num_workers)" in capsys.readouterr().out
    assert units_cli.units_main(["verify", f"--audio={wavs}", f"--out={out}"]) == 0


# --- fit on many workers ----------------------------------------------------------------------

FIT = dict(k=4, iters=5, seed=3, shard=False, progress=False)


def test_sharded_fit_equals_the_one_process_fit(tmp_path, wavs, capsys):
    single = str(tmp_path / "single.npy")
    pipeline.fit_codebook(str(wavs), single, max_frames=100, **FIT)
    km = str(tmp_path / "km.npy")
    for i in range(3):
        stats = pipeline.fit_codebook(str(wavs), km, max_frames=100, worker=Worker(i, 3), **FIT)
        assert stats.sample_path == frame_sample.sample_path(km, Worker(i, 3)) and not os.path.exists(km)
    again = pipeline.fit_codebook(str(wavs), km, max_frames=100, worker=Worker(2, 3), **FIT)
    assert again.skipped  # a rerun worker finds its sample done
    assert units_cli.units_main(["fit", "--from_samples", f"--out={km}", "--k=4", "--iters=5", "--no_shard",
                                 f"--audio={wavs}"]) == 0
    assert f"{N_FILES} files" in capsys.readouterr().out
    np.testing.assert_array_equal(kmeans.load_centroids(km), kmeans.load_centroids(single))
    meta = json.loads(open(pipeline.sidecar_path(km)).read())
    assert meta["frames_used"] == 100 and meta["num_workers"] == 3 and meta["seed"] == 3


def test_merged_sample_is_every_frame_under_the_cutoff(tmp_path, wavs):
    km = str(tmp_path / "km.npy")
    featurizer = pipeline.make_featurizer("logmel")
    files = pipeline.list_audio(str(wavs))
    frames, keys, _, _ = pipeline._sample_frames(files, featurizer, 3, 10 ** 6, "error", False)  # every frame
    for i in range(2):
        pipeline.fit_codebook(str(wavs), km, max_frames=120, worker_max_frames=40, worker=Worker(i, 2), **FIT)
    merged = frame_sample.merge_samples(km)
    n = merged.frames.shape[0]
    assert 0 < n <= 120
    np.testing.assert_array_equal(merged.frames, frames[:n])  # the n smallest keys of all frames, in key order


def test_fit_from_samples_refuses_incomplete_or_mixed_samples(tmp_path, wavs, capsys):
    km = str(tmp_path / "km.npy")
    pipeline.fit_codebook(str(wavs), km, max_frames=50, worker=Worker(0, 2), **FIT)
    with pytest.raises(ValueError, match=r"1 of 2 worker samples missing.*km.npy.frames-00001-of-00002.npz"):
        pipeline.fit_from_samples(km, k=4)
    pipeline.fit_codebook(str(wavs), km, max_frames=50, worker=Worker(1, 2), **FIT)
    wavfile.write(wavs / "late.wav", 16000, np.zeros(4800, np.int16))  # audio added after sampling
    with pytest.raises(ValueError, match=r"1 files missing \['late'\]"):
        pipeline.fit_from_samples(km, k=4, audio_source=str(wavs))
    with pytest.raises(pipeline.UnitsCacheMismatchError, match="seed: 3 there, 4 now"):
        pipeline.fit_codebook(str(wavs), km, max_frames=50, worker=Worker(1, 2), **{**FIT, "seed": 4})
    code = units_cli.units_main(["fit", "--from_samples", f"--out={km}", "--k=4", "--rate_hz=50"])
    assert code == 2 and "--rate_hz come from the workers' samples" in capsys.readouterr().err


def test_fit_with_workers_that_own_no_files(tmp_path, wavs):
    km, count = str(tmp_path / "km.npy"), 12  # 7 files, 12 workers
    kept = [pipeline.fit_codebook(str(wavs), km, max_frames=10 ** 6, worker=Worker(i, count), **FIT).files
            for i in range(count)]
    assert 0 in kept and sum(kept) == N_FILES
    single = str(tmp_path / "single.npy")
    pipeline.fit_codebook(str(wavs), single, max_frames=10 ** 6, **FIT)
    assert pipeline.fit_from_samples(km, k=4, iters=5, shard=False, audio_source=str(wavs)).files == N_FILES
    np.testing.assert_array_equal(kmeans.load_centroids(km), kmeans.load_centroids(single))
