"""Which worker this process is, which audio files are its own, and where its output goes.

Many workers (a SLURM array, the hosts of a TPU VM slice, or processes started by hand)
run `slm-jax units fit|encode` on the same `--audio`; each reads only its own files and
writes only its own output shard, so they need no coordination and resume independently.

Who am I (`resolve_worker`), first match wins:
    1. `--worker_index` / `--num_workers` (both or neither);
    2. a SLURM array task: index = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP,
       count = SLURM_ARRAY_TASK_COUNT (so `--array=0-15`, `--array=1-16` and `--array=0-30:2`
       all give workers 0..15 of 16; a list like `--array=1,3,7` is refused: use a range);
    3. the JAX process index / count when JAX runs more than one process (the hosts of a
       multi-host TPU VM slice: libtpu knows them without `jax.distributed.initialize`);
    4. else one worker (index 0 of 1).

Which files are mine (`worker_of`, `worker_files`): file `id` belongs to worker
    int(sha256(id as UTF-8)[:8 bytes], big-endian) mod num_workers
and each worker takes its files in sorted id order. The rule depends on nothing but the id
and the count: not on the listing order, the machine or the other files, so audio added
later goes to a worker without moving any file already encoded (a rerun with the same
count encodes only the new files, each in its own worker's shard). Workers get
num_files / num_workers files each on average (binomial spread: 1M files on 64 workers
give 15625 +- ~125); with few files some workers may get none, and they still write an
(empty) shard.

Where my output goes (`shard_path`): `units.jsonl` -> `units-00003-of-00016.jsonl` (one
worker: the path itself), each with its own `.meta.json` sidecar.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
from typing import Callable, Mapping, Sequence

SLURM_ARRAY_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
MAX_WORKERS = 99_999  # five digits in shard names


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's share of the work: worker `index` of `count`; `source` says where that came from."""

    index: int = 0
    count: int = 1
    source: str = "single worker"

    def __post_init__(self):
        if not (isinstance(self.count, int) and 1 <= self.count <= MAX_WORKERS):
            raise ValueError(f"num_workers={self.count!r} ({self.source}): must be an int in [1, {MAX_WORKERS}]")
        if not (isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ValueError(f"worker_index={self.index!r} ({self.source}): must be an int in [0, {self.count})")

    def describe(self) -> str:
        return f"worker {self.index} of {self.count} (from {self.source})"


def _int_var(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise ValueError(f"${name}={env.get(name)!r}: expected an integer (SLURM array task variables)") from None


def _slurm_array_worker(env: Mapping[str, str]) -> Worker | None:
    if not env.get("SLURM_ARRAY_TASK_ID"):
        return None
    task, count, first = (_int_var(env, name) for name in SLURM_ARRAY_VARS)
    step = _int_var(env, "SLURM_ARRAY_TASK_STEP") if env.get("SLURM_ARRAY_TASK_STEP") else 1
    source = (f"SLURM array: SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_MIN={first}, "
              f"SLURM_ARRAY_TASK_STEP={step}, SLURM_ARRAY_TASK_COUNT={count}")
    offset = task - first
    if step < 1 or offset % step or not 0 <= offset // step < count:
        raise ValueError(f"{source}: the tasks are not a range MIN, MIN+STEP, ... (e.g. sbatch --array=0-{count - 1}); "
                         f"submit a range, or pass --worker_index/--num_workers")
    return Worker(offset // step, count, source)


def jax_process() -> tuple[int, int]:
    """(jax.process_index(), jax.process_count()); starts JAX's backends."""
    import jax
    return jax.process_index(), jax.process_count()


def resolve_worker(worker_index: int | None = None, num_workers: int | None = None, *,
                   env: Mapping[str, str] | None = None,
                   jax_process_fn: Callable[[], tuple[int, int]] = jax_process) -> Worker:
    """This process's Worker, from the flags, a SLURM array, or JAX (see the module doc).

    Raises ValueError naming the flag or variable when only one of the two flags is given, an
    index is outside [0, count), or a SLURM array is not a range.
    """
    env = os.environ if env is None else env
    if (worker_index is None) != (num_workers is None):
        raise ValueError(f"--worker_index={worker_index} --num_workers={num_workers}: give both or neither")
    if num_workers is not None:
        return Worker(worker_index, num_workers, "--worker_index/--num_workers")
    slurm = _slurm_array_worker(env)
    if slurm is not None:
        return slurm
    index, count = jax_process_fn()
    if count > 1:
        return Worker(index, count, f"JAX: jax.process_index()={index}, jax.process_count()={count}")
    return Worker(0, 1, "no flags, no SLURM array, one JAX process")


def worker_of(audio_id: str, num_workers: int) -> int:
    """The worker (0-based) that owns `audio_id` among `num_workers` (the module doc's rule)."""
    digest = hashlib.sha256(audio_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_workers


def worker_files(files: Sequence[tuple[str, str]], worker: Worker) -> list[tuple[str, str]]:
    """The (id, path) pairs of `files` that `worker` owns, sorted by id."""
    return sorted((i, p) for i, p in files if worker_of(i, worker.count) == worker.index)


# --- shard names ---------------------------------------------------------------------------

_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})$")


def shard_path(path: str, worker: Worker) -> str:
    """`DIR/units.jsonl` -> `DIR/units-00003-of-00016.jsonl` for worker 3 of 16; one worker: `path`."""
    path = os.fspath(path)
    if worker.count == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}-{worker.index:05d}-of-{worker.count:05d}{ext}"


@dataclasses.dataclass
class IdAccount:
    """Ids expected (the audio listing) vs ids found (in outputs), each found id with where it was."""

    missing: list[str]                 # listed, found nowhere; sorted
    duplicated: dict[str, list[str]]   # found more than once -> every place (e.g. 'units-00001-of-00004.jsonl:7')
    extra: list[str]                   # found, not listed; sorted

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.extra)


def account_ids(expected, found) -> IdAccount:
    """Checks that every id of `expected` is `found` exactly once and nothing else is.

    `found` is an iterable of (id, place) pairs; places name where each copy is.
    """
    places: dict[str, list[str]] = {}
    for audio_id, place in found:
        places.setdefault(audio_id, []).append(place)
    expected = set(expected)
    return IdAccount(missing=sorted(expected - places.keys()),
                     duplicated={i: p for i, p in sorted(places.items()) if len(p) > 1},
                     extra=sorted(places.keys() - expected))


def find_shards(path: str) -> list[tuple[str, int, int]]:
    """(file, index, count) of every output of `path`: the plain `path` (as 0 of 1) if it exists,
    and every `ROOT-IIIII-of-NNNNN.EXT` beside it; sorted by (count, index)."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    found = [(path, 0, 1)] if os.path.isfile(path) else []
    for candidate in glob.glob(f"{glob.escape(root)}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"
                               f"{glob.escape(ext)}"):
        match = _SHARD_RE.search(os.path.splitext(candidate)[0])
        found.append((candidate, int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda s: (s[2], s[1], s[0]))
