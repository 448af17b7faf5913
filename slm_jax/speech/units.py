"""Run-length dedup of unit sequences (GSLM / SpiritLM "deduplicated units") and its inverse.

Durations are kept so that a deduplicated stream can be merged with other streams by time
(a token's timestamp is its index BEFORE dedup / its rate), or expanded back exactly.
"""
from __future__ import annotations

import numpy as np


def _as_int_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def run_starts_mask(units, run_ids=None) -> np.ndarray:
    """bool [n]: True where a unit starts a run (it is first, differs from the previous unit, or
    `run_ids` [n] changes there: runs never cross recordings/spans). The numpy twin of
    `slm_jax.data.preprocessors.common.dedup_rows`."""
    u = _as_int_1d(units, "units")
    keep = np.ones(u.shape, bool)
    keep[1:] = u[1:] != u[:-1]
    if run_ids is not None:
        r = np.asarray(run_ids).reshape(-1)
        if r.shape != u.shape:
            raise ValueError(f"run_ids and units differ in length: {r.size} vs {u.size}")
        keep[1:] |= r[1:] != r[:-1]
    return keep


def run_length_dedup(units) -> np.ndarray:
    """[5, 5, 7, 5, 5, 5] -> [5, 7, 5] (int64 [runs]): GSLM / SpiritLM deduplicated units."""
    u = _as_int_1d(units, "units")
    return u[run_starts_mask(u)]


def dedup_with_durations(units) -> tuple[np.ndarray, np.ndarray]:
    """[5, 5, 7, 5, 5, 5] -> ([5, 7, 5], [2, 1, 3]): collapse runs, count each run's length."""
    u = _as_int_1d(units, "units")
    starts = np.flatnonzero(run_starts_mask(u))
    durations = np.diff(np.concatenate([starts, [u.size]])).astype(np.int64)
    return u[starts], durations


def dedup_start_indices(units) -> np.ndarray:
    """Index (before dedup) of each kept unit: its timestamp in frames, for merging streams by time."""
    _, durations = dedup_with_durations(units)
    return np.concatenate([[0], np.cumsum(durations)[:-1]]).astype(np.int64) if durations.size else durations


def expand_durations(units, durations) -> np.ndarray:
    """Inverse of `dedup_with_durations`: repeat each unit by its (positive) duration."""
    u = _as_int_1d(units, "units")
    d = _as_int_1d(durations, "durations")
    if u.shape != d.shape:
        raise ValueError(f"units and durations differ in length: {u.size} vs {d.size}")
    if (d < 1).any():
        raise ValueError(f"durations must be >= 1, got {d[d < 1][:5].tolist()} at index "
                         f"{np.flatnonzero(d < 1)[:5].tolist()}")
    return np.repeat(u, d)
