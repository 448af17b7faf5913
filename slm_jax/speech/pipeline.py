"""Audio files -> features -> k-means codebook (`fit`) and -> units JSONL (`encode`).

    slm-jax units fit    --audio=DIR|GLOB --out=km.npy [--features=logmel] [--k=500] [--rate_hz=50]
    slm-jax units encode --audio=DIR|GLOB --centroids=km.npy --out=units.jsonl [--features=logmel]

Features (`--features`): `logmel` (80-dim, 100 Hz), `mfcc` (13-dim, 100 Hz),
`hubert:PATH:LAYER` (e.g. 50 Hz for HuBERT/mHuBERT), `whisper:PATH[:LAYER]` (50 Hz); the
last two need the `[hf]` extra and a local model directory. `--frame_stack=N` averages N
consecutive frames (the last, partial group too), or `--rate_hz=R` picks N = rate / R, so
units come out at 50 or 25 Hz like HuBERT / mHuBERT.

Units JSONL, one line per audio file, in sorted file order:
    {"id": "spk1/utt3", "units": [12, 12, 7, ...], "unit_rate_hz": 100.0, "duration": 3.52}
`id` is the file path relative to the folder (or to the glob's fixed prefix) without its
extension; `duration` is in seconds; units are NOT deduplicated (see `speech.units`).
Encoding is resumable: ids already in the output are skipped, each new line is flushed as
soon as its file is done, and a line cut off by a kill is removed before appending.

What made the units is kept beside them, in a sidecar `OUT.meta.json` (the JSONL lines stay
plain units records, so every JSONL reader is unaffected):
    {"format": "slm_jax.units/1", "features": "logmel", "frame_stack": 2, "unit_rate_hz": 50.0,
     "sample_rate_hz": 16000, "codebook_sha256": "...", "codebook_shape": [500, 80],
     "codebook_path": "/abs/km.npy"}
A resume compares every field but `codebook_path` with this run's and stops with a
`UnitsCacheMismatchError` naming each difference (another codebook, feature type, frame rate
or sample rate) unless `reencode=True` (`--reencode`), which starts the output over. An
output with records but no sidecar (written before sidecars existed) is refused the same way.
`fit` writes `km.npy.meta.json` (features, frame stack, rates, k, seed); `encode` refuses a
codebook whose sidecar names other features or another rate than the run's (same dims do not
mean same features: HuBERT layer 6 vs 11, logmel at 50 vs 25 Hz).

Many workers (`worker=`, see `speech.workers`): `encode` reads only the worker's files and
writes its own shard `OUT-IIIII-of-NNNNN.jsonl` (with its own sidecar, resumed as above);
`fit` writes the worker's frame sample and `fit_from_samples` fits on all of them
(`speech.frame_sample`); `speech.verify` checks the shards together.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import sys

import numpy as np

from slm_jax.speech import audio, frame_sample, kmeans
from slm_jax.speech import workers as workers_lib

log = logging.getLogger(__name__)

BAD_RECORD_POLICIES = ("error", "skip")


# --- listing audio -------------------------------------------------------------------------

def list_audio(source: str) -> list[tuple[str, str]]:
    """(id, path) pairs, sorted by id, for a folder (every *.wav below it), a glob, or one file."""
    source = os.fspath(source)
    if os.path.isdir(source):
        root = source
        paths = [os.path.join(d, f) for d, _, files in os.walk(source)
                 for f in files if f.lower().endswith(".wav")]
    elif glob.has_magic(source):
        root = _glob_root(source)
        paths = [p for p in glob.glob(source, recursive=True) if os.path.isfile(p)]
    elif os.path.isfile(source):
        root, paths = os.path.dirname(source) or ".", [source]
    else:
        raise FileNotFoundError(f"--audio={source}: no such folder or file, and not a glob pattern")
    if not paths:
        raise ValueError(f"--audio={source}: no audio files found (folders are searched for *.wav)")
    pairs = sorted((_audio_id(p, root), p) for p in paths)
    for (a, pa), (b, pb) in zip(pairs, pairs[1:]):
        if a == b:
            raise ValueError(f"--audio={source}: {pa} and {pb} both map to id {a!r}")
    return pairs


def _glob_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard (ids are relative to it)."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or ("/" if pattern.startswith("/") else ".")


def _audio_id(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


# --- featurizers ---------------------------------------------------------------------------

def _bucket_length(n: int) -> int:
    """Padded sample count: at most 12.5% padding, ~8 distinct shapes per octave (bounded recompiles)."""
    if n <= audio.TARGET_SAMPLE_RATE:
        return audio.TARGET_SAMPLE_RATE
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


class SpectralFeatures:
    """log-mel (`kind='logmel'`) or MFCC (`kind='mfcc'`) of one waveform, via the batched JAX code."""

    def __init__(self, kind: str = "logmel"):
        from slm_jax.speech import features
        if kind not in ("logmel", "mfcc"):
            raise ValueError(f"--features={kind}: expected logmel or mfcc")
        self._features = features
        self.kind = kind
        self.config = features.FeatureConfig()
        self.rate_hz = self.config.frame_rate_hz
        self.dim = self.config.n_mels if kind == "logmel" else self.config.n_mfcc

    def __call__(self, wave, sample_rate: int) -> np.ndarray:
        wave = audio.resample(np.asarray(wave, np.float32), sample_rate, self.config.sample_rate)
        padded = np.zeros((1, _bucket_length(len(wave))), np.float32)
        padded[0, :len(wave)] = wave
        fn = self._features.log_mel if self.kind == "logmel" else self._features.mfcc
        feats, n_frames = fn(padded, [len(wave)], config=self.config)
        return np.asarray(feats)[0, :int(n_frames[0])]


class FrameStack:
    """Averages groups of `n` consecutive frames (the last group may be shorter): rate / n."""

    def __init__(self, inner, n: int):
        self.inner, self.n = inner, int(n)
        self.rate_hz = inner.rate_hz / self.n
        self.dim = inner.dim

    def __call__(self, wave, sample_rate: int) -> np.ndarray:
        x = self.inner(wave, sample_rate)
        if self.n == 1 or x.shape[0] == 0:
            return x
        groups = -(-x.shape[0] // self.n)
        padded = np.zeros((groups * self.n, x.shape[1]), np.float32)
        padded[:x.shape[0]] = x
        counts = np.minimum(self.n, x.shape[0] - np.arange(groups) * self.n).astype(np.float32)
        return padded.reshape(groups, self.n, -1).sum(axis=1) / counts[:, None]


def make_featurizer(spec: str, *, frame_stack: int | None = None, rate_hz: float | None = None,
                    device: str | None = None):
    """Builds the featurizer named by `--features` (see the module doc), with optional frame stacking."""
    kind, _, rest = spec.partition(":")
    if kind in ("logmel", "mfcc") and not rest:
        base = SpectralFeatures(kind)
    elif kind == "hubert":
        path, sep, layer = rest.rpartition(":")
        if not sep or not path or not layer.isdigit():
            raise ValueError(f"--features={spec}: expected hubert:PATH:LAYER (e.g. hubert:/m/mhubert:11)")
        from slm_jax.speech.encoders import HubertFeatures
        base = HubertFeatures(path, int(layer), device=device)
    elif kind == "whisper" and rest:
        path, layer = rest, None
        head, sep, tail = rest.rpartition(":")
        if sep and tail.isdigit() and head:
            path, layer = head, int(tail)
        from slm_jax.speech.encoders import WhisperEncoderFeatures
        base = WhisperEncoderFeatures(path, layer, device=device)
    else:
        raise ValueError(f"--features={spec}: expected logmel, mfcc, hubert:PATH:LAYER "
                         f"or whisper:PATH[:LAYER]")
    return _stacked(base, frame_stack, rate_hz)


def _stacked(base, frame_stack: int | None, rate_hz: float | None):
    if frame_stack is not None and rate_hz is not None:
        raise ValueError("--frame_stack and --rate_hz: give at most one")
    if rate_hz is not None:
        ratio = base.rate_hz / rate_hz if rate_hz > 0 else 0.0
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"--rate_hz={rate_hz}: must be the feature rate {base.rate_hz} Hz divided by "
                             f"a whole number (e.g. {base.rate_hz / 2:g} or {base.rate_hz / 4:g})")
        frame_stack = int(round(ratio))
    if frame_stack is not None and frame_stack < 1:
        raise ValueError(f"--frame_stack={frame_stack}: must be >= 1")
    return base if not frame_stack or frame_stack == 1 else FrameStack(base, frame_stack)


# --- bad records ---------------------------------------------------------------------------

def _check_policy(on_bad_record: str) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"--on_bad_record={on_bad_record}: expected one of {', '.join(BAD_RECORD_POLICIES)}")


def _load_or_skip(path: str, on_bad_record: str):
    """(wave, sample_rate), or None for an undecodable file under --on_bad_record=skip."""
    try:
        return audio.load_audio(path)
    except ValueError as err:
        if on_bad_record == "error":
            raise
        log.warning("skipping bad record: %s", err)
        return None


# --- fit -----------------------------------------------------------------------------------

@dataclasses.dataclass
class FitStats:
    files: int = 0
    frames_seen: int = 0
    frames_used: int = 0
    bad_records: int = 0
    sample_path: str | None = None   # a worker's sample file (fit of one worker of many), else None
    skipped: bool = False            # that sample already existed with these settings and files
    ids: list = dataclasses.field(default_factory=list, repr=False)      # files read
    bad_ids: list = dataclasses.field(default_factory=list, repr=False)  # files skipped as bad records


# --- what made a codebook / a units file (sidecars) ----------------------------------------

UNITS_FORMAT = "slm_jax.units/1"
CODEBOOK_FORMAT = "slm_jax.codebook/1"
# Fields of a units sidecar that must match for a resume (codebook_path is informational).
UNITS_KEY_FIELDS = ("format", "features", "frame_stack", "unit_rate_hz", "sample_rate_hz", "codebook_sha256",
                    "codebook_shape")
# Fields of a codebook sidecar that an encode run must share with its fit run.
CODEBOOK_KEY_FIELDS = ("features", "frame_stack", "unit_rate_hz", "sample_rate_hz")


class UnitsCacheMismatchError(ValueError):
    """Existing units (or a codebook) were made with other settings than this run's; the
    message names every differing field, both values, and the way out (`--reencode`)."""


def sidecar_path(path: str) -> str:
    """`PATH.meta.json`: where the settings that made `path` are recorded."""
    return f"{os.fspath(path)}.meta.json"


def codebook_digest(centroids: np.ndarray) -> str:
    """sha256 (hex) of a codebook's float32 values and shape: the same codebook from any path
    or file format gives the same digest; any changed value gives another."""
    c = np.ascontiguousarray(np.asarray(centroids, np.float32))
    h = hashlib.sha256(f"{c.shape}".encode())
    h.update(c.tobytes())
    return h.hexdigest()


def canonical_features(spec: str) -> str:
    """`--features` with a model path made absolute (the same model from another working
    directory is the same features): `hubert:m/h:11` -> `hubert:/abs/m/h:11`."""
    kind, _, rest = spec.partition(":")
    if kind == "hubert" and rest:
        path, sep, layer = rest.rpartition(":")
        return f"{kind}:{os.path.abspath(path)}{sep}{layer}" if path else spec
    if kind == "whisper" and rest:
        head, sep, tail = rest.rpartition(":")
        if sep and tail.isdigit() and head:
            return f"{kind}:{os.path.abspath(head)}:{tail}"
        return f"{kind}:{os.path.abspath(rest)}"
    return spec


def featurizer_settings(features: str, featurizer) -> dict:
    """The settings of a featurizer that decide its frames: canonical `features`, frame stack,
    unit rate (Hz) and the sample rate (Hz) audio is resampled to before featurizing."""
    inner = getattr(featurizer, "inner", featurizer)
    config = getattr(inner, "config", None)
    sample_rate = getattr(inner, "sample_rate", None) or getattr(config, "sample_rate", None)
    return {"features": canonical_features(features), "frame_stack": int(getattr(featurizer, "n", 1)),
            "unit_rate_hz": float(featurizer.rate_hz), "sample_rate_hz": int(sample_rate) if sample_rate else None}


def read_sidecar(path: str) -> dict | None:
    """The sidecar of `path` as a dict, None when there is none; ValueError naming the file
    when it does not parse."""
    meta = sidecar_path(path)
    if not os.path.exists(meta):
        return None
    try:
        with open(meta, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:
        raise ValueError(f"{meta}: not valid JSON ({err}); delete it or pass --reencode") from None
    if not isinstance(data, dict):
        raise ValueError(f"{meta}: expected a JSON object")
    return data


def write_sidecar(path: str, data: dict) -> None:
    """Writes `PATH.meta.json` whole (temporary file + rename: never half-written)."""
    meta = sidecar_path(path)
    tmp = f"{meta}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)  # one line: a `DIR/*` import glob names it as one bad record
        f.write("\n")
    os.replace(tmp, meta)


def _differences(saved: dict, wanted: dict, fields) -> list[str]:
    return [f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in fields if saved.get(k) != wanted.get(k)]


def check_codebook_settings(centroids_path: str, settings: dict) -> None:
    """UnitsCacheMismatchError when the codebook's sidecar (from `units fit`) names other
    features, frame stack, unit rate or sample rate than `settings`; nothing to check for a
    codebook without one (e.g. an exported textlesslib/SpiritLM codebook)."""
    saved = read_sidecar(centroids_path)
    if saved is None:
        return
    diff = _differences(saved, settings, CODEBOOK_KEY_FIELDS)
    if diff:
        raise UnitsCacheMismatchError(f"--centroids={centroids_path} was fitted on other features than this run's "
                                      f"({'; '.join(diff)}); pass the --features/--frame_stack/--rate_hz it was "
                                      f"fitted with, or fit a codebook for these")


def check_units_resume(out_path: str, header: dict, n_records: int) -> None:
    """UnitsCacheMismatchError when `out_path` already holds units made with other settings
    than `header` (every UNITS_KEY_FIELDS difference named), or holds records without a
    sidecar (nothing says what made them)."""
    saved = read_sidecar(out_path)
    if saved is None:
        if n_records:
            raise UnitsCacheMismatchError(
                f"--out={out_path} holds {n_records} units records but no {os.path.basename(sidecar_path(out_path))}: "
                f"nothing says which codebook and features made them; pass --reencode to encode everything again "
                f"with this run's settings, or choose another --out")
        return
    diff = _differences(saved, header, UNITS_KEY_FIELDS)
    if diff and n_records:
        was = saved.get("codebook_path")
        raise UnitsCacheMismatchError(
            f"--out={out_path} holds {n_records} units made with other settings ({'; '.join(diff)}"
            f"{f'; codebook then: {was}' if was else ''}); resuming would mix them. Pass --reencode to encode "
            f"everything again, or choose another --out")


def fit_codebook(audio_source: str, out_path: str, *, features: str = "logmel", k: int = 500,
                 frame_stack: int | None = None, rate_hz: float | None = None, max_frames: int = 1_000_000,
                 seed: int = 0, iters: int = 100, batch_size: int | None = None, shard: bool = True,
                 on_bad_record: str = "error", device: str | None = None, progress: bool = True,
                 worker: workers_lib.Worker | None = None, worker_max_frames: int | None = None) -> FitStats:
    """Features of every file -> a seeded uniform sample of <= max_frames frames -> k-means -> .npy.

    The sample is the frames with the smallest keys (`speech.frame_sample`). With a `worker`
    of many, only that worker's files are read (`speech.workers`) and its sample of up to
    `worker_max_frames` (default `max_frames`) frames is written to
    `OUT.frames-IIIII-of-NNNNN.npz` instead of fitting; `fit_from_samples` then fits on all
    workers' samples. A worker whose sample already exists for the same settings and files
    skips its work (`skipped=True`); one made with other settings raises
    UnitsCacheMismatchError naming each difference.
    """
    _check_policy(on_bad_record)
    if not str(out_path).endswith(".npy"):
        raise ValueError(f"--out={out_path}: the codebook file must end in .npy")
    worker = worker or workers_lib.Worker()
    if worker_max_frames is not None and worker.count == 1:
        raise ValueError(f"--worker_max_frames={worker_max_frames}: only for a fit over several workers "
                         f"(one worker keeps --max_frames)")
    files = workers_lib.worker_files(list_audio(audio_source), worker)
    featurizer = make_featurizer(features, frame_stack=frame_stack, rate_hz=rate_hz, device=device)
    settings = featurizer_settings(features, featurizer)
    if worker.count == 1:
        frames, keys, full, stats = _sample_frames(files, featurizer, seed, max_frames, on_bad_record, progress)
        data, _ = frame_sample.cutoff_merge([(frames, keys, full)], max_frames)
        _fit_and_save(data, out_path, settings, k=k, seed=seed, iters=iters, batch_size=batch_size, shard=shard,
                      max_frames=max_frames, frames_seen=stats.frames_seen, source=f"--audio={audio_source}")
        stats.frames_used = data.shape[0]
        return stats
    path = frame_sample.sample_path(out_path, worker)
    meta = {"format": frame_sample.SAMPLE_FORMAT, **settings, "seed": seed, "max_frames": max_frames,
            "worker_max_frames": worker_max_frames or max_frames, "num_workers": worker.count,
            "dim": int(featurizer.dim), "worker_index": worker.index}
    done = _existing_sample(path, meta, [i for i, _ in files])
    if done is not None:
        return done
    frames, keys, full, stats = _sample_frames(files, featurizer, seed, meta["worker_max_frames"], on_bad_record,
                                               progress)
    meta.update(full=full, frames_seen=stats.frames_seen, ids=stats.ids, bad_ids=stats.bad_ids)
    frame_sample.write_sample(path, frames, keys, meta)
    stats.frames_used, stats.sample_path = frames.shape[0], path
    return stats


def _existing_sample(path: str, meta: dict, ids: list[str]) -> FitStats | None:
    """FitStats of a worker sample already at `path` for these settings and files; None when
    there is none or its files differ (the audio changed: sample again)."""
    if not os.path.exists(path):
        return None
    frames, _, saved = frame_sample.read_sample(path)
    diff = _differences(saved, meta, frame_sample.SAMPLE_KEY_FIELDS + ("worker_index",))
    if diff:
        raise UnitsCacheMismatchError(f"{path} was sampled with other settings ({'; '.join(diff)}); delete it "
                                      f"(and the other workers' samples of that run) to sample again")
    if sorted(saved["ids"] + saved["bad_ids"]) != sorted(ids):
        log.info("%s: sampled from other files than this worker's now; sampling again", path)
        return None
    return FitStats(files=len(saved["ids"]), frames_seen=saved["frames_seen"], frames_used=frames.shape[0],
                    bad_records=len(saved["bad_ids"]), sample_path=path, skipped=True)


def _sample_frames(files, featurizer, seed: int, capacity: int, on_bad_record: str, progress: bool):
    """(frames, keys, full, FitStats with ids / bad_ids) of the `capacity` smallest-key frames of `files`."""
    stats, sample = FitStats(), frame_sample.FrameSample(capacity, featurizer.dim)
    for audio_id, path in _progress(files, "units fit", progress):
        loaded = _load_or_skip(path, on_bad_record)
        if loaded is None:
            stats.bad_records += 1
            stats.bad_ids.append(audio_id)
            continue
        frames = featurizer(*loaded)
        stats.files += 1
        stats.ids.append(audio_id)
        stats.frames_seen += frames.shape[0]
        if frames.shape[0]:
            sample.add(frames, frame_sample.frame_keys(audio_id, frames.shape[0], seed))
    frames, keys = sample.result()
    return frames, keys, sample.full, stats


def _fit_and_save(data: np.ndarray, out_path: str, settings: dict, *, k: int, seed: int, iters: int,
                  batch_size: int | None, shard: bool, max_frames: int, frames_seen: int, source: str,
                  extra: dict | None = None) -> None:
    if data.shape[0] < k:
        raise ValueError(f"{source}: only {data.shape[0]} feature frames to fit on ({frames_seen} seen), "
                         f"fewer than --k={k}")
    centroids = kmeans.fit_kmeans(data, k, seed=seed, iters=iters, batch_size=batch_size, mesh=_mesh(shard))
    kmeans.save_centroids(out_path, centroids)
    write_sidecar(out_path, {"format": CODEBOOK_FORMAT, **settings, "k": k, "seed": seed,
                             "codebook_sha256": codebook_digest(kmeans.load_centroids(out_path)),
                             "max_frames": max_frames, "frames_used": int(data.shape[0]), **(extra or {})})


def fit_from_samples(out_path: str, *, k: int = 500, iters: int = 100, batch_size: int | None = None,
                     shard: bool = True, audio_source: str | None = None) -> FitStats:
    """Fits the codebook `out_path` on the merged samples of every worker (`frame_sample.merge_samples`),
    with the seed, features and sample size the workers used (recorded in their samples).

    With `audio_source`, first checks that the workers read every listed file exactly once.
    Raises ValueError naming the missing / mismatched samples or files.
    """
    if not str(out_path).endswith(".npy"):
        raise ValueError(f"--out={out_path}: the codebook file must end in .npy")
    expected = None if audio_source is None else [i for i, _ in list_audio(audio_source)]
    merged = frame_sample.merge_samples(out_path, expected)
    meta = merged.meta
    settings = {key: meta[key] for key in CODEBOOK_KEY_FIELDS}
    _fit_and_save(merged.frames, out_path, settings, k=k, seed=meta["seed"], iters=iters, batch_size=batch_size,
                  shard=shard, max_frames=meta["max_frames"], frames_seen=merged.frames_seen,
                  source=f"--out={out_path} (samples of {meta['num_workers']} workers)",
                  extra={"num_workers": meta["num_workers"], "worker_max_frames": meta["worker_max_frames"]})
    return FitStats(files=merged.files, frames_seen=merged.frames_seen, frames_used=merged.frames.shape[0],
                    bad_records=merged.bad_records)


def _mesh(shard: bool):
    """A 1-D mesh over every local device (None when sharding is off or there is one device)."""
    import jax
    if not shard or jax.local_device_count() == 1:
        return None
    return jax.make_mesh((jax.local_device_count(),), ("data",), devices=jax.local_devices())


def _progress(items, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="file", disable=not enabled, file=sys.stderr)


# --- encode --------------------------------------------------------------------------------

@dataclasses.dataclass
class EncodeStats:
    encoded: int = 0
    already_done: int = 0
    bad_records: int = 0
    files: int = 0                 # this worker's files (all files for one worker)
    out_path: str | None = None    # this worker's output (a shard of --out for one worker of many)


def read_done_ids(out_path: str) -> set[str]:
    """Ids already in a units JSONL. Repairs the end of a file left by a killed run.

    Lines are written whole and flushed, so only the LAST line can be cut off: if it does
    not parse it is truncated away (and its file re-encoded); a complete last line missing
    its newline gets one. A bad line anywhere else is an error: appending to a file we
    cannot read could hide a problem.
    """
    if not os.path.exists(out_path):
        return set()
    done, good_end, needs_newline = set(), 0, False
    with open(out_path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            complete = line.endswith(b"\n")
            if not line.strip():
                good_end += len(line)
                continue
            try:
                done.add(_record_id(line))
            except ValueError as err:
                if complete:
                    raise ValueError(f"{out_path}:{line_no}: {err}; not appending to this file") from None
                log.warning("%s:%d: removing a truncated last line (an interrupted run)", out_path, line_no)
                break
            good_end += len(line)
            needs_newline = not complete
    if good_end < os.path.getsize(out_path):
        os.truncate(out_path, good_end)
    if needs_newline:
        with open(out_path, "ab") as f:
            f.write(b"\n")
    return done


def _record_id(line: bytes) -> str:
    try:
        record = json.loads(line)
    except ValueError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise ValueError("not a units record with a string 'id'")
    return record["id"]


def count_records(out_path: str) -> int:
    """Non-empty lines of a units JSONL (0 when it does not exist)."""
    if not os.path.exists(out_path):
        return 0
    with open(out_path, "rb") as f:
        return sum(1 for line in f if line.strip())


def encode_folder(audio_source: str, centroids_path: str, out_path: str, *, features: str = "logmel",
                  frame_stack: int | None = None, rate_hz: float | None = None, on_bad_record: str = "error",
                  device: str | None = None, progress: bool = True, reencode: bool = False,
                  worker: workers_lib.Worker | None = None) -> EncodeStats:
    """Encodes every audio file not yet in `out_path` to a units line (see the module doc).

    With a `worker` of many, only that worker's files (`speech.workers`) are encoded, into its
    own shard `workers.shard_path(out_path, worker)` with its own sidecar; everything below
    then applies to that shard alone (`verify_units` checks the shards together).

    Before any audio is read: the codebook's own sidecar must agree with the featurizer, and
    an existing `out_path` must have been made with the same codebook (sha256 of its values),
    features, frame stack, unit rate and sample rate (`OUT.meta.json`), else
    UnitsCacheMismatchError naming each difference. `reencode=True` deletes `out_path` and
    its sidecar first and encodes every file.
    """
    _check_policy(on_bad_record)
    worker = worker or workers_lib.Worker()
    files = workers_lib.worker_files(list_audio(audio_source), worker)
    out_path = workers_lib.shard_path(out_path, worker)
    centroids = kmeans.load_centroids(centroids_path)
    featurizer = make_featurizer(features, frame_stack=frame_stack, rate_hz=rate_hz, device=device)
    if centroids.shape[1] != featurizer.dim:
        raise ValueError(f"--centroids={centroids_path}: dim {centroids.shape[1]} does not match "
                         f"--features={features} (dim {featurizer.dim})")
    settings = featurizer_settings(features, featurizer)
    check_codebook_settings(centroids_path, settings)
    header = {"format": UNITS_FORMAT, **settings, "codebook_sha256": codebook_digest(centroids),
              "codebook_shape": list(centroids.shape), "codebook_path": os.path.abspath(centroids_path)}
    if worker.count > 1:  # informational (the file name says it too); not compared on resume
        header.update(worker_index=worker.index, num_workers=worker.count)
    if reencode:
        for stale in (out_path, sidecar_path(out_path)):
            if os.path.exists(stale):
                os.remove(stale)
    done = read_done_ids(out_path)
    check_units_resume(out_path, header, len(done))
    todo = [(i, p) for i, p in files if i not in done]
    stats = EncodeStats(already_done=len(files) - len(todo), files=len(files), out_path=out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_sidecar(out_path, header)  # before the first record: a killed run leaves a resumable pair
    with open(out_path, "a", encoding="utf-8") as out:
        for rec_id, path in _progress(todo, "units encode", progress):
            loaded = _load_or_skip(path, on_bad_record)
            if loaded is None:
                stats.bad_records += 1
                continue
            wave, sample_rate = loaded
            units = kmeans.assign(featurizer(wave, sample_rate), centroids)
            record = {"id": rec_id, "units": units.tolist(), "unit_rate_hz": float(featurizer.rate_hz),
                      "duration": round(len(wave) / sample_rate, 6)}
            out.write(json.dumps(record) + "\n")
            out.flush()
            stats.encoded += 1
    return stats
