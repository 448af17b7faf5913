"""K-means in JAX (k-means++ init, Lloyd or mini-batch updates), data-parallel over a mesh.

Why in JAX: the codebook that turns speech features into units is fitted on millions of
frames; the assignment step is a matmul + argmin that maps onto any accelerator, and with a
`mesh` every device assigns its shard of the frames and the per-cluster sums / counts are
all-reduced (`jax.shard_map` + `psum`), so the result does not depend on the device count
(up to float summation order).

Codebooks are plain `[k, dim]` float arrays in `.npy` files. A textlesslib / SpiritLM
k-means model (a joblib'd sklearn `KMeans`) becomes one with
`np.save("km500.npy", joblib.load("km.bin").cluster_centers_)` and then loads like ours.

Empty clusters keep their previous centroid (rare after k-means++ seeding).
Runs in one process: `features` is a host array that is split over the local devices.
"""
from __future__ import annotations

import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

_HIGHEST = jax.lax.Precision.HIGHEST


# --- validation and files ---------------------------------------------------------------------

def _as_features(features, name: str = "features") -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, dim] array, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf values")
    return x


def validate_centroids(centroids, source: str = "centroids", dim: int | None = None) -> np.ndarray:
    """Checks a codebook is a finite 2-D float [k, dim] array (and its dim matches `dim`); returns float32."""
    c = np.asarray(centroids)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise ValueError(f"{source}: expected a 2-D [k, dim] centroid array, got shape {c.shape}")
    if c.dtype.kind != "f":
        raise ValueError(f"{source}: expected float centroids, got dtype {c.dtype}")
    if not np.isfinite(c).all():
        raise ValueError(f"{source}: centroids contain NaN or inf")
    if dim is not None and c.shape[1] != dim:
        raise ValueError(f"{source}: centroids have dim {c.shape[1]} but the features have dim {dim} "
                         f"(fit the codebook on the same --features / --frame_stack)")
    return c.astype(np.float32, copy=False)


def save_centroids(path: str | os.PathLike, centroids) -> None:
    """Writes a validated [k, dim] float32 codebook to a `.npy` file."""
    path = os.fspath(path)
    if not path.endswith(".npy"):
        raise ValueError(f"{path}: centroid files must end in .npy")
    c = validate_centroids(centroids, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.save(path, c)


def load_centroids(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """Reads a `.npy` codebook (ours or an exported textlesslib/SpiritLM one) as float32 [k, dim]."""
    path = os.fspath(path)
    try:
        c = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: centroid file not found") from None
    except Exception as err:
        raise ValueError(f"{path}: not a .npy array ({type(err).__name__}: {err})") from err
    return validate_centroids(c, path, dim)


# --- layout: pad N so it splits into devices x chunks ------------------------------------------

def _mesh_axes(mesh: Mesh | None) -> tuple[str, ...]:
    return () if mesh is None else tuple(mesh.axis_names)


def _layout(n: int, n_devices: int, chunk_size: int) -> tuple[int, int]:
    """(padded N, chunk) with padded N = n_devices * whole chunks per device."""
    per_device = -(-n // n_devices)
    chunk = max(1, min(chunk_size, per_device))
    per_device = -(-per_device // chunk) * chunk
    return per_device * n_devices, chunk


def _place(x: np.ndarray, w: np.ndarray, mesh: Mesh | None):
    if mesh is None:
        return jnp.asarray(x), jnp.asarray(w)
    sharding = NamedSharding(mesh, P(_mesh_axes(mesh)))
    return jax.device_put(x, sharding), jax.device_put(w, sharding)


def _pad_rows(x: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero rows up to `total`, with weight 0 so they never count towards a cluster."""
    n = x.shape[0]
    w = np.zeros((total,), np.float32)
    w[:n] = 1.0
    if total == n:
        return x, w
    return np.concatenate([x, np.zeros((total - n, x.shape[1]), x.dtype)]), w


# --- the per-shard statistics ----------------------------------------------------------------

def _local_stats(x, w, cents, chunk: int, axes: tuple[str, ...] = ()):
    """Per-cluster weighted sums [k, d], counts [k] and inertia over this shard, chunk by chunk.

    Chunking bounds the [chunk, k] distance matrix, so millions of frames x 500 clusters fit.
    Inside `shard_map` (`axes` given) the accumulators start as device-varying values, as the
    scan carry must keep one type.
    """
    k, d = cents.shape
    c2 = jnp.sum(cents * cents, axis=-1)

    def body(carry, xs):
        sums, counts, inertia = carry
        xc, wc = xs
        dist = c2[None, :] - 2.0 * jnp.matmul(xc, cents.T, precision=_HIGHEST)
        ids = jnp.argmin(dist, axis=-1)
        onehot = jax.nn.one_hot(ids, k, dtype=xc.dtype) * wc[:, None]
        sums = sums + jnp.matmul(onehot.T, xc, precision=_HIGHEST)
        counts = counts + onehot.sum(axis=0)
        best = jnp.min(dist, axis=-1) + jnp.sum(xc * xc, axis=-1)
        return (sums, counts, inertia + jnp.sum(wc * jnp.maximum(best, 0.0))), None

    init = (jnp.zeros((k, d), x.dtype), jnp.zeros((k,), x.dtype), jnp.zeros((), x.dtype))
    if axes:
        init = jax.tree.map(lambda z: jax.lax.pcast(z, axes, to="varying"), init)
    xs = (x.reshape(-1, chunk, d), w.reshape(-1, chunk))
    (sums, counts, inertia), _ = jax.lax.scan(body, init, xs)
    return sums, counts, inertia


def _stats_fn(mesh: Mesh | None, chunk: int):
    """Cluster statistics over all rows: local, or per device + psum over every mesh axis."""
    if mesh is None:
        return functools.partial(_local_stats, chunk=chunk)
    axes = _mesh_axes(mesh)
    local = functools.partial(_local_stats, chunk=chunk, axes=axes)

    def per_shard(x, w, cents):
        return jax.tree.map(lambda s: jax.lax.psum(s, axes), local(x, w, cents))

    return jax.shard_map(per_shard, mesh=mesh, in_specs=(P(axes), P(axes), P()), out_specs=(P(), P(), P()))


def _new_centroids(sums, counts, cents):
    """Cluster means; an empty cluster keeps its previous centroid."""
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where((counts > 0)[:, None], means, cents)


# --- k-means++ -------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("k", "n_trials"))
def _kmeans_plus_plus(x, key, k: int, n_trials: int):
    """Greedy k-means++: several D^2-sampled candidates per step, keep the one lowering the potential most."""
    n, d = x.shape

    def sqdist(points):  # [m, d] -> [n, m]
        return jnp.maximum(jnp.sum(x * x, -1)[:, None] - 2.0 * jnp.matmul(x, points.T, precision=_HIGHEST)
                           + jnp.sum(points * points, -1)[None, :], 0.0)

    key, sub = jax.random.split(key)
    first = jax.random.randint(sub, (), 0, n)
    cents = jnp.zeros((k, d), x.dtype).at[0].set(x[first])
    closest = sqdist(x[first][None])[:, 0]

    def body(i, carry):
        cents, closest, key = carry
        key, sub = jax.random.split(key)
        total = jnp.sum(closest)
        logits = jnp.where(total > 0, jnp.log(closest), 0.0)  # all points covered: pick uniformly
        cand = jax.random.categorical(sub, logits, shape=(n_trials,))
        new_closest = jnp.minimum(closest[:, None], sqdist(x[cand]))  # [n, trials]
        best = jnp.argmin(new_closest.sum(axis=0))
        return cents.at[i].set(x[cand[best]]), new_closest[:, best], key

    cents, _, _ = jax.lax.fori_loop(1, k, body, (cents, closest, key))
    return cents


def kmeans_plus_plus(features, k: int, *, seed: int = 0, max_points: int = 100_000) -> np.ndarray:
    """k-means++ seeding on (a seeded subsample of at most `max_points` of) the features."""
    x = _as_features(features)
    key = jax.random.PRNGKey(seed)
    if x.shape[0] > max_points:
        key, sub = jax.random.split(key)
        x = x[np.sort(np.asarray(jax.random.choice(sub, x.shape[0], (max_points,), replace=False)))]
    return np.asarray(_kmeans_plus_plus(jnp.asarray(x), key, k, 2 + int(math.log(k))))


# --- fitting ---------------------------------------------------------------------------------

def fit_kmeans(features, k: int, *, seed: int = 0, iters: int = 100, batch_size: int | None = None,
               mesh: Mesh | None = None, tol: float = 1e-6, chunk_size: int = 8192,
               init_points: int = 100_000) -> np.ndarray:
    """Fits k centroids to `features` [N, dim]; returns float32 [k, dim].

    batch_size=None runs full-batch Lloyd for at most `iters` iterations, stopping early
    once the squared centroid shift falls under `tol` x the mean feature variance (sklearn's
    rule). With `batch_size`, runs `iters` mini-batch steps (Sculley 2010: each centroid
    moves towards its batch mean with rate batch count / total count seen), batches drawn
    with replacement from a `seed`-keyed stream. With `mesh`, rows are split over all of
    its devices; the result equals the unsharded one up to float summation order.
    """
    x = _as_features(features)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k={k}: need 1 <= k <= number of feature rows ({x.shape[0]})")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be a positive int or None")
    key_init, key_batches = jax.random.split(jax.random.PRNGKey(seed))
    cents = kmeans_plus_plus(x, k, seed=int(jax.random.randint(key_init, (), 0, 2 ** 31 - 1)),
                             max_points=init_points)
    n_devices = 1 if mesh is None else mesh.devices.size
    if batch_size is None:
        tol_abs = tol * float(np.mean(np.var(x, axis=0)))
        out = _fit_lloyd(x, cents, iters, tol_abs, mesh, n_devices, chunk_size)
    else:
        out = _fit_minibatch(x, cents, iters, batch_size, key_batches, mesh, n_devices, chunk_size)
    return np.asarray(out, np.float32)


def _fit_lloyd(x, cents, iters, tol_abs, mesh, n_devices, chunk_size):
    total, chunk = _layout(x.shape[0], n_devices, chunk_size)
    xs, ws = _place(*_pad_rows(x, total), mesh)
    steps, cents, inertia = _lloyd(xs, ws, jnp.asarray(cents), jnp.float32(tol_abs), mesh=mesh, chunk=chunk,
                                   iters=iters)
    log.info("k-means: %d Lloyd iterations, inertia/frame %.4g", int(steps), float(inertia) / x.shape[0])
    return cents


@functools.partial(jax.jit, static_argnames=("mesh", "chunk", "iters"))
def _lloyd(xs, ws, cents, tol_abs, *, mesh, chunk, iters):
    """Lloyd iterations until `iters` or a squared centroid shift <= tol_abs; (steps, centroids, inertia)."""
    stats = _stats_fn(mesh, chunk)

    def cond(state):
        i, _, shift = state
        return (i < iters) & (shift > tol_abs)

    def body(state):
        i, cents, _ = state
        sums, counts, _ = stats(xs, ws, cents)
        new = _new_centroids(sums, counts, cents)
        return i + 1, new, jnp.sum((new - cents) ** 2)

    i, cents, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), cents, jnp.array(jnp.inf, cents.dtype)))
    return i, cents, stats(xs, ws, cents)[2]


def _fit_minibatch(x, cents, iters, batch_size, key, mesh, n_devices, chunk_size):
    total, chunk = _layout(batch_size, n_devices, chunk_size)
    cents = jnp.asarray(cents)
    seen = jnp.zeros((cents.shape[0],), cents.dtype)
    all_idx = np.asarray(jax.random.randint(key, (iters, batch_size), 0, x.shape[0]))
    for idx in all_idx:
        xb, wb = _place(*_pad_rows(x[idx], total), mesh)
        cents, seen = _minibatch_step(xb, wb, cents, seen, mesh=mesh, chunk=chunk)
    return cents


@functools.partial(jax.jit, static_argnames=("mesh", "chunk"))
def _minibatch_step(xb, wb, cents, seen, *, mesh, chunk):
    """Sculley's update: each centroid moves to its batch mean by (batch count / total count seen)."""
    sums, counts, _ = _stats_fn(mesh, chunk)(xb, wb, cents)
    seen = seen + counts
    rate = (counts / jnp.maximum(seen, 1.0))[:, None]
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return cents + jnp.where(counts[:, None] > 0, rate * (means - cents), 0.0), seen


# --- assignment ------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("chunk",))
def _assign_jit(x, cents, chunk: int):
    c2 = jnp.sum(cents * cents, axis=-1)

    def one(xc):
        return jnp.argmin(c2[None, :] - 2.0 * jnp.matmul(xc, cents.T, precision=_HIGHEST), axis=-1)

    return jax.lax.map(one, x.reshape(-1, chunk, x.shape[1])).reshape(-1).astype(jnp.int32)


def assign(features, centroids, *, chunk_size: int = 8192) -> np.ndarray:
    """Nearest-centroid ids (int32 [N]) under squared Euclidean distance; ties go to the lower id.

    Rows are padded to a power-of-two bucket, so calling this per file compiles only a
    handful of shapes. A dim mismatch with the codebook raises ValueError.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features: expected [N, dim], got shape {x.shape}")
    c = validate_centroids(centroids, dim=x.shape[1])
    n = x.shape[0]
    if n == 0:
        return np.zeros((0,), np.int32)
    bucket = max(256, 1 << (n - 1).bit_length())
    chunk = min(chunk_size, bucket)
    total = -(-bucket // chunk) * chunk
    padded, _ = _pad_rows(x.astype(np.float32, copy=False), total)
    return np.asarray(_assign_jit(jnp.asarray(padded), jnp.asarray(c), chunk))[:n]
