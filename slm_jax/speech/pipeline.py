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

from slm_jax.speech import audio, kmeans

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


class _Reservoir:
    """A uniform sample of at most `capacity` frames from a stream, in bounded memory.

    Each frame draws a random key; the frames with the smallest keys are kept (a uniform
    sample without replacement, fixed by the seed and the file order).
    """

    def __init__(self, capacity: int, seed: int):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.frames: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.size = 0

    def add(self, frames: np.ndarray) -> None:
        self.frames.append(frames)
        self.keys.append(self.rng.random(frames.shape[0]))
        self.size += frames.shape[0]
        if self.size > 2 * self.capacity:
            self._shrink()

    def _shrink(self) -> None:
        frames, keys = np.concatenate(self.frames), np.concatenate(self.keys)
        if len(keys) > self.capacity:
            keep = np.sort(np.argpartition(keys, self.capacity)[:self.capacity])
            frames, keys = frames[keep], keys[keep]
        self.frames, self.keys, self.size = [frames], [keys], len(keys)

    def result(self) -> np.ndarray:
        self._shrink()
        return self.frames[0]


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
                 on_bad_record: str = "error", device: str | None = None, progress: bool = True) -> FitStats:
    """Features of every file -> a seeded uniform sample of <= max_frames frames -> k-means -> .npy."""
    _check_policy(on_bad_record)
    if not str(out_path).endswith(".npy"):
        raise ValueError(f"--out={out_path}: the codebook file must end in .npy")
    files = list_audio(audio_source)
    featurizer = make_featurizer(features, frame_stack=frame_stack, rate_hz=rate_hz, device=device)
    stats, sample = FitStats(), _Reservoir(max_frames, seed)
    for _, path in _progress(files, "units fit", progress):
        loaded = _load_or_skip(path, on_bad_record)
        if loaded is None:
            stats.bad_records += 1
            continue
        frames = featurizer(*loaded)
        stats.files += 1
        stats.frames_seen += frames.shape[0]
        if frames.shape[0]:
            sample.add(frames)
    if stats.frames_seen < k:
        raise ValueError(f"--audio={audio_source}: only {stats.frames_seen} feature frames, "
                         f"fewer than --k={k}")
    data = sample.result()
    stats.frames_used = data.shape[0]
    centroids = kmeans.fit_kmeans(data, k, seed=seed, iters=iters, batch_size=batch_size, mesh=_mesh(shard))
    kmeans.save_centroids(out_path, centroids)
    write_sidecar(out_path, {"format": CODEBOOK_FORMAT, **featurizer_settings(features, featurizer), "k": k,
                             "seed": seed, "codebook_sha256": codebook_digest(kmeans.load_centroids(out_path)),
                             "max_frames": max_frames, "frames_used": stats.frames_used})
    return stats


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
                  device: str | None = None, progress: bool = True, reencode: bool = False) -> EncodeStats:
    """Encodes every audio file not yet in `out_path` to a units line (see the module doc).

    Before any audio is read: the codebook's own sidecar must agree with the featurizer, and
    an existing `out_path` must have been made with the same codebook (sha256 of its values),
    features, frame stack, unit rate and sample rate (`OUT.meta.json`), else
    UnitsCacheMismatchError naming each difference. `reencode=True` deletes `out_path` and
    its sidecar first and encodes every file.
    """
    _check_policy(on_bad_record)
    files = list_audio(audio_source)
    centroids = kmeans.load_centroids(centroids_path)
    featurizer = make_featurizer(features, frame_stack=frame_stack, rate_hz=rate_hz, device=device)
    if centroids.shape[1] != featurizer.dim:
        raise ValueError(f"--centroids={centroids_path}: dim {centroids.shape[1]} does not match "
                         f"--features={features} (dim {featurizer.dim})")
    settings = featurizer_settings(features, featurizer)
    check_codebook_settings(centroids_path, settings)
    header = {"format": UNITS_FORMAT, **settings, "codebook_sha256": codebook_digest(centroids),
              "codebook_shape": list(centroids.shape), "codebook_path": os.path.abspath(centroids_path)}
    if reencode:
        for stale in (out_path, sidecar_path(out_path)):
            if os.path.exists(stale):
                os.remove(stale)
    done = read_done_ids(out_path)
    check_units_resume(out_path, header, len(done))
    todo = [(i, p) for i, p in files if i not in done]
    stats = EncodeStats(already_done=len(files) - len(todo))
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
