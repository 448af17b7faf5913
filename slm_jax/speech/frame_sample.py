"""The sample of feature frames a k-means codebook is fitted on, drawn by one or many workers.

Every frame gets a key in [0, 1) that depends only on (seed, audio id, frame index): the
frames of file `id` take their keys, in order, from numpy's PCG64 generator seeded with
[seed, first 8 bytes of sha256(id)]. The sample of `max_frames` is the frames with the
smallest keys (a uniform sample without replacement, Efraimidis-Spirakis with equal
weights), ordered by key. Because a key never depends on which worker read the file or in
which order, the union of the workers' samples holds the same frames as one process's:

- one process (`units fit` without workers) keeps the `max_frames` smallest keys;
- each of N workers (`units fit --num_workers=N ...`) keeps the `worker_max_frames`
  (default `max_frames`) smallest keys of ITS files and writes them with their keys to
  `CODEBOOK.frames-IIIII-of-NNNNN.npz`;
- the fit step (`units fit --from_samples`) keeps every frame whose key is at most the
  cutoff: the `max_frames`-th smallest key of all samples, lowered to the largest kept key
  of any worker whose own sample was full. With `worker_max_frames = max_frames` (the
  default) no full worker lowers it, and the result equals the one-process sample exactly,
  frame for frame and in the same order (so the same seed gives the same codebook). With a
  smaller `worker_max_frames` (to bound each worker's file: frames x dim x 4 bytes) the
  sample is still every frame under a cutoff, but may hold fewer than `max_frames` frames.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np

from slm_jax.speech import workers as workers_lib

SAMPLE_FORMAT = "slm_jax.frame_sample/1"
# What every worker's sample of one fit must share (else they are not one sample).
SAMPLE_KEY_FIELDS = ("format", "features", "frame_stack", "unit_rate_hz", "sample_rate_hz", "seed", "max_frames",
                     "worker_max_frames", "num_workers", "dim")


def frame_keys(audio_id: str, n_frames: int, seed: int) -> np.ndarray:
    """The sampling keys (float64 [n_frames] in [0, 1)) of a file's frames (see the module doc)."""
    id_hash = int.from_bytes(hashlib.sha256(audio_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([int(seed), id_hash]).random(n_frames)


class FrameSample:
    """The `capacity` frames with the smallest keys seen so far, in bounded memory (<= 2 x capacity)."""

    def __init__(self, capacity: int, dim: int):
        if capacity < 1:
            raise ValueError(f"max_frames={capacity}: must be >= 1")
        self.capacity, self.dim = int(capacity), int(dim)
        self.frames: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.size = 0
        self.full = False  # True once a frame was dropped: this sample's largest key is a cutoff

    def add(self, frames: np.ndarray, keys: np.ndarray) -> None:
        self.frames.append(np.asarray(frames, np.float32))
        self.keys.append(np.asarray(keys, np.float64))
        self.size += len(keys)
        if self.size > 2 * self.capacity:
            self._shrink()

    def _shrink(self) -> None:
        frames = np.concatenate(self.frames) if self.frames else np.zeros((0, self.dim), np.float32)
        keys = np.concatenate(self.keys) if self.keys else np.zeros((0,), np.float64)
        if len(keys) > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[:self.capacity]
            frames, keys, self.full = frames[keep], keys[keep], True
        self.frames, self.keys, self.size = [frames], [keys], len(keys)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames float32 [n, dim], keys float64 [n]), sorted by key."""
        self._shrink()
        order = np.argsort(self.keys[0], kind="stable")
        return self.frames[0][order], self.keys[0][order]


def sample_path(codebook_path: str, worker: workers_lib.Worker) -> str:
    """`km.npy` -> `km.npy.frames-00003-of-00016.npz`: worker 3's sample for that codebook."""
    return f"{os.fspath(codebook_path)}.frames-{worker.index:05d}-of-{worker.count:05d}.npz"


def write_sample(path: str, frames: np.ndarray, keys: np.ndarray, meta: dict) -> None:
    """Writes a worker's sample whole (temporary file + rename: never half-written)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, frames=np.asarray(frames, np.float32), keys=np.asarray(keys, np.float64),
                 meta=np.array(json.dumps(meta, sort_keys=True)))
    os.replace(tmp, path)


def read_sample(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(frames, keys, meta) of a sample file; ValueError naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            frames, keys, meta = data["frames"], data["keys"], json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a frame sample written by `slm-jax units fit` ({err})") from None
    if meta.get("format") != SAMPLE_FORMAT or frames.shape[0] != keys.shape[0]:
        raise ValueError(f"{path}: not a {SAMPLE_FORMAT} frame sample (format {meta.get('format')!r}, "
                         f"{frames.shape[0]} frames, {keys.shape[0]} keys)")
    return frames, keys, meta


def find_samples(codebook_path: str) -> list[str]:
    """Every worker sample file of `codebook_path`, sorted."""
    five = "[0-9]" * 5
    pattern = f"{glob.escape(os.fspath(codebook_path))}.frames-{five}-of-{five}.npz"
    return sorted(glob.glob(pattern))


def cutoff_merge(samples, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The frames of `samples` [(frames, keys, full), ...] whose key is <= the cutoff (module doc),
    sorted by key: (frames float32 [n, dim], keys float64 [n]), n <= max_frames."""
    frames = np.concatenate([s[0] for s in samples])
    keys = np.concatenate([s[1] for s in samples])
    cutoff = np.inf
    if len(keys) > max_frames:
        cutoff = np.partition(keys, max_frames - 1)[max_frames - 1]
    for _, k, full in samples:
        if full and len(k):
            cutoff = min(cutoff, float(k.max()))
    keep = np.flatnonzero(keys <= cutoff)
    keep = keep[np.argsort(keys[keep], kind="stable")][:max_frames]
    return frames[keep], keys[keep]


@dataclasses.dataclass
class MergedSample:
    frames: np.ndarray          # float32 [n, dim], sorted by key
    meta: dict                  # the shared settings (SAMPLE_KEY_FIELDS) of the samples
    files: int = 0              # files read by all workers
    frames_seen: int = 0
    bad_records: int = 0


def merge_samples(codebook_path: str, expected_ids=None) -> MergedSample:
    """Reads every worker's sample of `codebook_path` and merges them (module doc).

    Raises ValueError naming the files when there are none, when workers of runs with other
    worker counts or settings are mixed, when a worker's sample is missing, or (with
    `expected_ids`, the audio listing) when the samples did not read every listed file exactly
    once (missing / duplicated / unlisted ids named).
    """
    paths = find_samples(codebook_path)
    if not paths:
        raise ValueError(f"--out={codebook_path}: no worker samples {codebook_path}.frames-IIIII-of-NNNNN.npz; run "
                         f"`slm-jax units fit` with --num_workers (or a SLURM array / JAX processes) first")
    loaded = [(p, *read_sample(p)) for p in paths]
    first = loaded[0][3]
    for path, _, _, meta in loaded[1:]:
        diff = [f"{k}: {first.get(k)!r} in {os.path.basename(paths[0])}, {meta.get(k)!r} here"
                for k in SAMPLE_KEY_FIELDS if meta.get(k) != first.get(k)]
        if diff:
            raise ValueError(f"{path}: another run's sample ({'; '.join(diff)}); delete the stale samples and rerun "
                             f"the workers of one run")
    count = first["num_workers"]
    missing = [sample_path(codebook_path, workers_lib.Worker(i, count)) for i in
               sorted(set(range(count)) - {m["worker_index"] for *_, m in loaded})]
    if missing:
        raise ValueError(f"--out={codebook_path}: {len(missing)} of {count} worker samples missing "
                         f"(workers not run or not finished): {', '.join(missing[:20])}")
    if expected_ids is not None:
        account = workers_lib.account_ids(
            expected_ids, ((i, os.path.basename(p)) for p, *_, m in loaded for i in m["ids"] + m["bad_ids"]))
        if not account.ok:
            raise ValueError(f"--out={codebook_path}: the worker samples do not cover --audio exactly once: "
                             f"{len(account.missing)} files missing {account.missing[:20]}, "
                             f"{len(account.duplicated)} duplicated {list(account.duplicated.items())[:20]}, "
                             f"{len(account.extra)} not in --audio {account.extra[:20]}")
    frames, _ = cutoff_merge([(f, k, m["full"]) for _, f, k, m in loaded], first["max_frames"])
    return MergedSample(frames=frames, meta={k: first[k] for k in SAMPLE_KEY_FIELDS},
                        files=sum(len(m["ids"]) for *_, m in loaded),
                        frames_seen=sum(m["frames_seen"] for *_, m in loaded),
                        bad_records=sum(len(m["bad_ids"]) for *_, m in loaded))
