"""LST latent patching: pool the rows of contiguous patches, broadcast patch states back.

A row of length T is cut into contiguous patches. ``patch_ids`` int32 [B, T] numbers
them 0, 0, 0, 1, 1, 2, 3, 3, ... (non-decreasing along T) and is -1 on trailing padding
only. ``num_patches`` P is static and may exceed the number of patches: the extra
patches are empty and pool to zeros.

Public API (jit-able, differentiable, dtype-preserving, fp32 accumulation):

- ``patch_mean(x, patch_ids, num_patches)``: [B,T,D] -> [B,P,D], mean of each patch.
- ``patch_attention_pool(x, scores, patch_ids, num_patches)``: softmax of ``scores``
  within each patch (fp32, max-subtracted), weighted sum of the rows of ``x``.
- ``patch_broadcast(patch_states, patch_ids)``: [B,P,D] -> [B,T,D], row t gets the
  state of its patch, 0 where ``patch_ids == -1``. It is the transpose of a sum-pool.
- ``patch_layout(patch_ids, num_patches)``: per-patch ``(starts, lengths)`` [B,P] int32.
- ``*_reference``: the same ops in plain JAX (segment sums and gathers).

``impl`` picks the implementation:

- ``"auto"`` (default): the Pallas kernel on TPU (Mosaic) and on GPU (Pallas Triton;
  a GPU where a small probe kernel does not compile falls back to the reference), the
  reference elsewhere (CPU). The choice is made when lowering
  (``lax.platform_dependent``), so AOT compiles for a TPU from a CPU host get the kernel.
- ``"pallas"``: the kernel, compiled for TPU or GPU; interpreted on other platforms.
- ``"pallas_interpret"``: the TPU-flavoured kernel with ``interpret=True`` (CPU tests).
- ``"reference"``: plain JAX.
- ``"pallas_tpu"``, ``"pallas_gpu"``, ``"pallas_interpret_gpu"``: one kernel flavour
  regardless of platform (tests, AOT checks).

Kernel design (both kernels are one-hot matmuls, so they are exact for 0/1 masks and
run on the MXU / tensor cores):

- Pool: grid (B, D/Db, P/Pb); output block = ``Pb`` consecutive patches x ``Db``
  features. The x block is the whole row [T, Db]; its index does not change along the
  innermost (patch-block) axis, so each element of x is fetched from HBM once. Because patches
  are contiguous, the rows of a block are one range ``[start[first], end[last])``; the
  kernel loops (``fori_loop`` with a data-dependent trip count) over the ``Tt``-row tiles
  of that range only, builds the [Pb, Tt] mask ``start[p] <= t < end[p]`` (times the
  softmax weight for attention pooling) and accumulates ``mask @ x_tile`` in fp32.
  No maximum patch length is needed: the tile range comes from the layout.
- Broadcast: grid (B, D/Db, T/Tt); output block = ``Tt`` rows x ``Db`` features; the
  patch states [P, Db] stay resident along the row-tile axis; the patches a tile touches
  are one range, looped over in blocks of ``Pb``: ``mask[Tt, Pb] @ states_block``.
  The VJP of mean-pool is this broadcast with rows scaled by 1/len, the VJP of broadcast
  is the sum-pool, and the VJP of attention-pool is the broadcast scaled by the softmax
  weight, fused with the row dot <g[patch(t)], x[t]> that gives the weight gradient.

fp32 operands are split into three bf16 parts (bf16_6x-style products), so fp32 results
match the reference to fp32 rounding; bf16 operands times a 0/1 mask are exact in one
bf16 pass, softmax weights take two bf16 parts.

The per-block tile ranges are two small int32 tables computed in the wrapper from
``patch_layout`` (SMEM inputs on TPU, ordinary inputs on GPU); T, P and D are padded
inside the wrapper when they are not multiples of the tiles (a copy, so realistic shapes
should be multiples: T of 256, P of 128, D of 128). The BlockSpecs of each kernel are
listed in ``_pool_pallas`` and ``_bcast_pallas``.

Caveats: rows with ``patch_id == -1`` (and states of empty patches) are multiplied by
zero, so they must be finite; ``patch_ids`` must be < ``num_patches``. Under a sharded
jit, call these inside ``jax.shard_map`` (each shard holds whole rows).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

__all__ = [
    "BlockSizes", "IMPLS", "patch_layout", "patch_mean", "patch_mean_reference",
    "patch_attention_pool", "patch_attention_pool_reference", "patch_broadcast",
    "patch_broadcast_reference", "patch_softmax_weights",
]

IMPLS = ("auto", "pallas", "pallas_interpret", "reference", "pallas_tpu", "pallas_gpu",
         "pallas_interpret_gpu")

_F32 = jnp.float32
_BF16 = jnp.bfloat16
_MIB = 1024 * 1024
# Per-buffer VMEM budget for the block that stays resident across the inner grid axis
# (x for pooling, the patch states for broadcast); it sets the feature block Db on TPU.
_TPU_RESIDENT_BUDGET = 4 * _MIB


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Kernel tile sizes. ``rows``: Tt rows of x per tile; ``patches``: Pb patches per
    block; ``dim``: Db features per block (None: as large as the VMEM budget allows on
    TPU, 128 on GPU). TPU: multiples of 8 (16 suits bf16) and Db a multiple of 128.
    GPU (Triton): powers of two >= 16. The public functions take one BlockSizes for
    every flavour or a dict {"tpu": ..., "gpu": ...}; unset flavours use the defaults."""
    rows: int
    patches: int
    dim: int | None = None


# Kernel flavours each impl traces (the dispatcher picks one when lowering).
_FLAVORS = {"auto": ("tpu", "gpu"), "pallas": ("tpu", "gpu"), "pallas_tpu": ("tpu",), "pallas_gpu": ("gpu",),
            "pallas_interpret": ("tpu",), "pallas_interpret_gpu": ("gpu",)}
_DEFAULT_BLOCKS = {"tpu": BlockSizes(rows=256, patches=128, dim=None),
                   "gpu": BlockSizes(rows=64, patches=32, dim=128)}


# --------------------------------------------------------------------------- checks


def _fail(fn: str, arg: str, msg: str):
    raise ValueError(f"{fn}: `{arg}` {msg}")


def _check_ids(fn: str, patch_ids, batch: int | None = None, time: int | None = None):
    shape = getattr(patch_ids, "shape", None)
    if shape is None or len(shape) != 2:
        _fail(fn, "patch_ids", f"must be [batch, time], got shape {shape}")
    if not jnp.issubdtype(patch_ids.dtype, jnp.integer):
        _fail(fn, "patch_ids", f"must be an integer array, got dtype {patch_ids.dtype}")
    if batch is not None and shape[0] != batch:
        _fail(fn, "patch_ids", f"batch size {shape[0]} does not match x's batch size {batch}")
    if time is not None and shape[1] != time:
        _fail(fn, "patch_ids", f"length {shape[1]} does not match x's time length {time}")


def _check_x(fn: str, name: str, x):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3:
        _fail(fn, name, f"must be [batch, time, dim], got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        _fail(fn, name, f"must be a floating-point array, got dtype {x.dtype}")


def _check_num_patches(fn: str, num_patches):
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        _fail(fn, "num_patches", f"must be a static int >= 1, got {num_patches!r}")


def _check_impl(fn: str, impl: str):
    if impl not in IMPLS:
        raise ValueError(f"{fn}: unknown impl={impl!r}; expected one of {IMPLS}")


# --------------------------------------------------------------------- layout + refs


def patch_layout(patch_ids: jax.Array, num_patches: int) -> tuple[jax.Array, jax.Array]:
    """Per-patch start offsets and lengths, both int32 [B, num_patches].

    Patches past the last one are empty (length 0, start = number of valid rows).
    """
    _check_ids("patch_layout", patch_ids)
    _check_num_patches("patch_layout", num_patches)
    ids = patch_ids.astype(jnp.int32)
    # Padding (-1) sorts last, so each row is sorted and a patch is a searchsorted range.
    keys = jnp.where(ids >= 0, ids, jnp.iinfo(jnp.int32).max)
    targets = jnp.arange(num_patches, dtype=jnp.int32)
    starts = jax.vmap(lambda k: jnp.searchsorted(k, targets, side="left"))(keys).astype(jnp.int32)
    ends = jax.vmap(lambda k: jnp.searchsorted(k, targets, side="right"))(keys).astype(jnp.int32)
    return starts, ends - starts


def _segment_ids(patch_ids, num_patches):
    # Out-of-range segment ids are dropped by segment_sum / segment_max.
    return jnp.where(patch_ids >= 0, patch_ids, num_patches).astype(jnp.int32)


def _segment_sum(v, patch_ids, num_patches):
    seg = _segment_ids(patch_ids, num_patches)
    return jax.vmap(lambda a, s: jax.ops.segment_sum(a, s, num_segments=num_patches))(v, seg)


def _gather_patches(states, patch_ids):
    """states [B, P, ...] -> [B, T, ...] (zeros where patch_ids == -1)."""
    valid = patch_ids >= 0
    idx = jnp.clip(patch_ids, 0, states.shape[1] - 1).astype(jnp.int32)
    idx = idx.reshape(idx.shape + (1,) * (states.ndim - 2))
    rows = jnp.take_along_axis(states, idx, axis=1)
    return jnp.where(valid.reshape(valid.shape + (1,) * (states.ndim - 2)), rows, 0)


def _patch_lengths(patch_ids, num_patches):
    return _segment_sum(jnp.ones(patch_ids.shape, _F32), patch_ids, num_patches)


def patch_softmax_weights(scores: jax.Array, patch_ids: jax.Array, num_patches: int) -> jax.Array:
    """Softmax of ``scores`` [B, T] within each patch, fp32 [B, T] (0 on padding)."""
    valid = patch_ids >= 0
    s = jnp.where(valid, scores.astype(_F32), 0.0)
    seg = _segment_ids(patch_ids, num_patches)
    smax = jax.vmap(lambda a, i: jax.ops.segment_max(a, i, num_segments=num_patches))(s, seg)
    smax = lax.stop_gradient(_gather_patches(smax, patch_ids))
    e = jnp.where(valid, jnp.exp(s - smax), 0.0)
    z = _gather_patches(_segment_sum(e, patch_ids, num_patches), patch_ids)
    return e / jnp.where(valid, z, 1.0)


def patch_mean_reference(x: jax.Array, patch_ids: jax.Array, num_patches: int) -> jax.Array:
    """Mean of each patch's rows: [B,T,D] -> [B,P,D] (plain JAX, fp32 accumulation)."""
    _validate_pool("patch_mean_reference", x, patch_ids, num_patches)
    sums = _segment_sum(x.astype(_F32), patch_ids, num_patches)
    lengths = _patch_lengths(patch_ids, num_patches)
    return (sums / jnp.maximum(lengths, 1.0)[..., None]).astype(x.dtype)


def patch_attention_pool_reference(x: jax.Array, scores: jax.Array, patch_ids: jax.Array,
                                   num_patches: int) -> jax.Array:
    """Softmax(scores)-weighted sum of each patch's rows (plain JAX)."""
    _validate_attention("patch_attention_pool_reference", x, scores, patch_ids, num_patches)
    w = patch_softmax_weights(scores, patch_ids, num_patches)
    return _segment_sum(x.astype(_F32) * w[..., None], patch_ids, num_patches).astype(x.dtype)


def patch_broadcast_reference(patch_states: jax.Array, patch_ids: jax.Array) -> jax.Array:
    """Row t gets patch_states[patch_ids[t]], 0 where patch_ids == -1 (plain JAX)."""
    _validate_broadcast("patch_broadcast_reference", patch_states, patch_ids)
    return _gather_patches(patch_states, patch_ids)


def _validate_pool(fn, x, patch_ids, num_patches):
    _check_x(fn, "x", x)
    _check_ids(fn, patch_ids, x.shape[0], x.shape[1])
    _check_num_patches(fn, num_patches)


def _validate_attention(fn, x, scores, patch_ids, num_patches):
    _validate_pool(fn, x, patch_ids, num_patches)
    shape = getattr(scores, "shape", None)
    if shape is None or tuple(shape) != tuple(x.shape[:2]):
        _fail(fn, "scores", f"must be [batch, time] = {tuple(x.shape[:2])} like x, got shape {shape}")


def _validate_broadcast(fn, patch_states, patch_ids):
    _check_x(fn, "patch_states", patch_states)
    _check_ids(fn, patch_ids, patch_states.shape[0])


# ----------------------------------------------------------------------- kernel bodies


def _bf16_parts(v, n: int):
    """Split v into n bf16 terms whose fp32 sum is v (bf16 input: itself, exact)."""
    if v.dtype == _BF16:
        return [v]
    r = v.astype(_F32)
    parts = []
    for i in range(n):
        p = r.astype(_BF16)
        parts.append(p)
        if i + 1 < n:
            r = r - p.astype(_F32)
    return parts


def _split_dot(a_parts, b_parts):
    """sum_{i+j < n} a_i @ b_j in fp32; smallest terms first."""
    n = max(len(a_parts), len(b_parts))
    terms = [(i, j) for i in range(len(a_parts)) for j in range(len(b_parts)) if i + j < n]
    acc = None
    for i, j in sorted(terms, key=lambda ij: -(ij[0] + ij[1])):
        d = jnp.dot(a_parts[i], b_parts[j], preferred_element_type=_F32)
        acc = d if acc is None else acc + d
    return acc


def _operand_parts(dtype) -> int:
    return 1 if dtype == _BF16 else 3


def _pool_kernel(lo_ref, n_ref, s_ref, e_ref, x_ref, *rest, n_blocks: int, mean: bool,
                 weighted: bool):
    """One (batch, feature block, patch block) step of the pool.

    lo_ref/n_ref: first row tile and tile count of each patch block ([B * nP]);
    s_ref/e_ref: [Pb, 1] patch starts/ends; x_ref: [nT, Tt, Db], the whole row (resident
    while the patch-block axis moves); w_ref: [nT, 1, Tt] softmax weights; o_ref: [Pb, Db].
    """
    if weighted:
        w_ref, o_ref = rest
    else:
        (o_ref,) = rest
    n_tiles, rows, _ = x_ref.shape
    pb, db = o_ref.shape
    idx = pl.program_id(0) * n_blocks + pl.program_id(2)
    lo = lo_ref[idx]
    count = n_ref[idx]
    s = s_ref[...]
    e = e_ref[...]
    x_parts = _operand_parts(x_ref.dtype)

    def body(k, acc):
        tile = jnp.minimum(lo + k, n_tiles - 1)
        t = tile * rows + lax.broadcasted_iota(jnp.int32, (pb, rows), 1)
        inside = (t >= s) & (t < e)
        if weighted:
            m = jnp.where(inside, w_ref[tile], 0.0)
            m_parts = _bf16_parts(m, 2 if x_ref.dtype == _BF16 else 3)
        else:
            m_parts = [jnp.where(inside, 1.0, 0.0).astype(_BF16)]
        return acc + _split_dot(m_parts, _bf16_parts(x_ref[tile], x_parts))

    acc = lax.fori_loop(0, count, body, jnp.zeros((pb, db), _F32))
    if mean:
        acc = acc / jnp.maximum(e - s, 1).astype(_F32)
    o_ref[...] = acc.astype(o_ref.dtype)


def _bcast_kernel(lo_ref, n_ref, s_ref, e_ref, y_ref, *rest, n_blocks: int, mean: bool,
                  weighted: bool, rowdot: bool):
    """One (batch, feature block, row tile) step of the broadcast.

    lo_ref/n_ref: first patch block and block count of each row tile ([B * nT]);
    s_ref/e_ref: [nPb, 1, Pb] patch starts/ends (resident); y_ref: [nPb, Pb, Db] patch
    states (resident while the row-tile axis moves); w_ref: [Tt, 1] row weights;
    x_ref: [Tt, Db] rows for the row dot; o_ref: [Tt, Db]; rd_ref: [Tt, 1] row dots.
    """
    rest = list(rest)
    w_ref = rest.pop(0) if weighted else None
    x_ref = rest.pop(0) if rowdot else None
    o_ref = rest.pop(0)
    rd_ref = rest.pop(0) if rowdot else None
    n_pblocks, pb, _ = y_ref.shape
    rows, db = o_ref.shape
    idx = pl.program_id(0) * n_blocks + pl.program_id(2)
    lo = lo_ref[idx]
    count = n_ref[idx]
    t = pl.program_id(2) * rows + lax.broadcasted_iota(jnp.int32, (rows, pb), 0)
    y_parts = _operand_parts(y_ref.dtype)

    def body(k, carry):
        acc, scale = carry
        blk = jnp.minimum(lo + k, n_pblocks - 1)
        s = s_ref[blk]
        e = e_ref[blk]
        inside = (t >= s) & (t < e)
        m = jnp.where(inside, 1.0, 0.0).astype(_BF16)
        acc = acc + _split_dot([m], _bf16_parts(y_ref[blk], y_parts))
        if mean:
            inv = 1.0 / jnp.maximum(e - s, 1).astype(_F32)
            scale = scale + jnp.sum(jnp.where(inside, inv, 0.0), axis=1, keepdims=True)
        return acc, scale

    init = (jnp.zeros((rows, db), _F32), jnp.zeros((rows, 1), _F32))
    acc, scale = lax.fori_loop(0, count, body, init)
    if rowdot:
        rd_ref[...] = jnp.sum(acc * x_ref[...].astype(_F32), axis=1, keepdims=True)
    if mean:
        acc = acc * scale
    if weighted:
        acc = acc * w_ref[...]
    o_ref[...] = acc.astype(o_ref.dtype)


# --------------------------------------------------------------------- pallas wrappers


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def _next_pow2(a: int) -> int:
    return 1 << max(0, (a - 1).bit_length())


def _check_blocks(flavor: str, blocks: BlockSizes):
    vals = [blocks.rows, blocks.patches] + ([blocks.dim] if blocks.dim is not None else [])
    if flavor == "gpu":
        if any(v < 16 or v & (v - 1) for v in vals):
            raise ValueError(f"block_sizes={blocks}: the Pallas GPU (Triton) kernels need powers of two >= 16")
    else:
        if any(v < 8 or v % 8 for v in vals[:2]) or (blocks.dim is not None and blocks.dim % 128):
            raise ValueError(f"block_sizes={blocks}: the TPU kernels need rows and patches multiples of 8 "
                             "and dim a multiple of 128")


def _dim_block(flavor: str, blocks: BlockSizes, d: int, resident_rows: int, itemsize: int):
    """(Db, padded D)."""
    if flavor == "gpu":
        db = min(blocks.dim or 128, _next_pow2(d))
        return db, _round_up(d, db)
    if blocks.dim is not None:
        return blocks.dim, _round_up(d, blocks.dim)
    if d <= 128:
        return d, d
    dp = _round_up(d, 128)
    fits = [c for c in range(128, min(dp, 2048) + 1, 128)
            if dp % c == 0 and resident_rows * c * itemsize <= _TPU_RESIDENT_BUDGET]
    return (max(fits) if fits else 128), dp


def _table_spec(flavor: str, size: int):
    if flavor == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pl.BlockSpec(memory_space=pltpu.SMEM)
    return pl.BlockSpec((size,), lambda *_: (0,))


def _compiler_params(flavor: str, interpret: bool, vmem_bytes: int):
    if interpret:
        return None
    if flavor == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        limit = int(min(max(vmem_bytes + 8 * _MIB, 32 * _MIB), 100 * _MIB))
        return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary"),
                                    vmem_limit_bytes=limit)
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4, num_stages=2)


def _pad_layout(starts, ends, total_patches: int, fill: int):
    pad = total_patches - starts.shape[1]
    if pad:
        starts = jnp.pad(starts, ((0, 0), (0, pad)), constant_values=fill)
        ends = jnp.pad(ends, ((0, 0), (0, pad)), constant_values=fill)
    return starts, ends


def _pool_pallas(flavor: str, interpret: bool, blocks: BlockSizes, x, w, starts, ends, *, mean: bool):
    """Pool [B,T,D] -> [B,P,D]: out[p] = scale[p] * sum_{start[p] <= t < end[p]} w[t] x[t].

    Grid (B, D/Db, P/Pb), patch-block axis innermost. BlockSpecs:
      lo, n tables   whole arrays (SMEM on TPU)          first row tile / tile count per block
      starts, ends   (None, Pb, 1)       -> (b, j, 0)    patch bounds as columns
      x              (None, nT, Tt, Db)  -> (b, 0, 0, d) whole row, fetched once per (b, d)
      w (attention)  (None, nT, 1, Tt)   -> (b, 0, 0, 0) softmax weights as rows
      out            (None, Pb, Db)      -> (b, j, d)
    """
    b, t, d = x.shape
    p = starts.shape[1]
    tt, pb = blocks.rows, blocks.patches
    tp, pp = _round_up(t, tt), _round_up(p, pb)
    db, dp = _dim_block(flavor, blocks, d, tp, x.dtype.itemsize)
    n_t, n_p, n_d = tp // tt, pp // pb, dp // db
    if (tp, dp) != (t, d):
        x = jnp.pad(x, ((0, 0), (0, tp - t), (0, dp - d)))
    starts, ends = _pad_layout(starts, ends, pp, t)
    first, last = starts[:, ::pb], ends[:, pb - 1::pb]
    lo = first // tt
    count = jnp.where(last > first, -(-last // tt) - lo, 0).astype(jnp.int32)
    lo = jnp.minimum(lo, n_t - 1).astype(jnp.int32)
    args = [lo.reshape(-1), count.reshape(-1), starts[..., None], ends[..., None], x.reshape(b, n_t, tt, dp)]
    in_specs = [_table_spec(flavor, b * n_p), _table_spec(flavor, b * n_p),
                pl.BlockSpec((None, pb, 1), lambda i, k, j: (i, j, 0)),
                pl.BlockSpec((None, pb, 1), lambda i, k, j: (i, j, 0)),
                pl.BlockSpec((None, n_t, tt, db), lambda i, k, j: (i, 0, 0, k))]
    if w is not None:
        w = jnp.pad(w.astype(_F32), ((0, 0), (0, tp - t)))
        args.append(w.reshape(b, n_t, 1, tt))
        in_specs.append(pl.BlockSpec((None, n_t, 1, tt), lambda i, k, j: (i, 0, 0, 0)))
    isz = x.dtype.itemsize
    passes = _operand_parts(x.dtype) * (1 if w is None else 2)
    vmem = 2 * (tp * db * isz + pb * db * isz + 2 * pb * 512 + (tp * 32 if w is not None else 0)) \
        + pb * tt * 4 * 8 + pb * db * 4 * 2
    kernel = functools.partial(_pool_kernel, n_blocks=n_p, mean=mean, weighted=w is not None)
    out = pl.pallas_call(
        kernel,
        grid=(b, n_d, n_p),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, pb, db), lambda i, k, j: (i, j, k)),
        out_shape=jax.ShapeDtypeStruct((b, pp, dp), x.dtype),
        compiler_params=_compiler_params(flavor, interpret, vmem),
        interpret=interpret,
        cost_estimate=pl.CostEstimate(flops=int(2 * pb * (tp + tt * n_p) * dp * b * passes),
                                      transcendentals=0,
                                      bytes_accessed=int(b * (tp + pp) * dp * isz)),
        name="patch_pool",
    )(*args)
    if (pp, dp) != (p, d):
        out = out[:, :p, :d]
    return out


def _bcast_pallas(flavor: str, interpret: bool, blocks: BlockSizes, y, w, x, starts, ends, *,
                  seq_len: int, mean: bool):
    """Broadcast [B,P,D] -> [B,T,D]: out[t] = w[t] * scale[p(t)] * y[p(t)] (and, with x,
    the row dots <y[p(t)], x[t]> in fp32 [B, T]).

    Grid (B, D/Db, T/Tt), row-tile axis innermost. BlockSpecs:
      lo, n tables   whole arrays (SMEM on TPU)            first patch block / count per tile
      starts, ends   (None, nPb, 1, Pb)  -> (b, 0, 0, 0)   patch bounds as rows (resident)
      y              (None, nPb, Pb, Db) -> (b, 0, 0, d)   all patch states, once per (b, d)
      w (optional)   (None, Tt, 1)       -> (b, i, 0)      row weights as a column
      x (optional)   (None, None, Tt, Db)-> (b, i, 0, d)
      out            (None, None, Tt, Db)-> (b, i, 0, d)
      row dots       (None, None, Tt, 1) -> (b, d, i, 0)   per feature block, summed outside
    """
    b, p, d = y.shape
    t = seq_len
    tt, pb = blocks.rows, blocks.patches
    tp, pp = _round_up(t, tt), _round_up(p, pb)
    db, dp = _dim_block(flavor, blocks, d, pp, y.dtype.itemsize)
    n_t, n_p, n_d = tp // tt, pp // pb, dp // db
    rowdot = x is not None
    total = ends[:, -1]
    tile_lo = jnp.arange(n_t, dtype=jnp.int32) * tt
    tile_hi = jnp.minimum(tile_lo[None, :] + tt, total[:, None])
    p_first = jax.vmap(lambda e: jnp.searchsorted(e, tile_lo, side="right"))(ends)
    p_end = jax.vmap(lambda s, h: jnp.searchsorted(s, h, side="left"))(starts, tile_hi)
    lo = p_first // pb
    count = jnp.where(p_end > p_first, -(-p_end // pb) - lo, 0).astype(jnp.int32)
    lo = jnp.minimum(lo, n_p - 1).astype(jnp.int32)
    if (pp, dp) != (p, d):
        y = jnp.pad(y, ((0, 0), (0, pp - p), (0, dp - d)))
    starts, ends = _pad_layout(starts, ends, pp, t)
    args = [lo.reshape(-1), count.reshape(-1), starts.reshape(b, n_p, 1, pb), ends.reshape(b, n_p, 1, pb),
            y.reshape(b, n_p, pb, dp)]
    in_specs = [_table_spec(flavor, b * n_t), _table_spec(flavor, b * n_t),
                pl.BlockSpec((None, n_p, 1, pb), lambda i, k, j: (i, 0, 0, 0)),
                pl.BlockSpec((None, n_p, 1, pb), lambda i, k, j: (i, 0, 0, 0)),
                pl.BlockSpec((None, n_p, pb, db), lambda i, k, j: (i, 0, 0, k))]
    if w is not None:
        args.append(jnp.pad(w.astype(_F32), ((0, 0), (0, tp - t)))[..., None])
        in_specs.append(pl.BlockSpec((None, tt, 1), lambda i, k, j: (i, j, 0)))
    if rowdot:
        if (tp, dp) != (t, d):
            x = jnp.pad(x, ((0, 0), (0, tp - t), (0, dp - d)))
        args.append(x.reshape(b, n_t, tt, dp))
        in_specs.append(pl.BlockSpec((None, None, tt, db), lambda i, k, j: (i, j, 0, k)))
    out_shape = [jax.ShapeDtypeStruct((b, n_t, tt, dp), y.dtype)]
    out_specs = [pl.BlockSpec((None, None, tt, db), lambda i, k, j: (i, j, 0, k))]
    if rowdot:
        out_shape.append(jax.ShapeDtypeStruct((b, n_d, tp, 1), _F32))
        out_specs.append(pl.BlockSpec((None, None, tt, 1), lambda i, k, j: (i, k, j, 0)))
    isz = y.dtype.itemsize
    vmem = 2 * (pp * db * isz + 2 * pp * 32 + tt * db * isz * (2 if rowdot else 1) + 2 * tt * 512) \
        + tt * pb * 4 * 4 + tt * db * 4 * 2
    kernel = functools.partial(_bcast_kernel, n_blocks=n_t, mean=mean, weighted=w is not None, rowdot=rowdot)
    outs = pl.pallas_call(
        kernel,
        grid=(b, n_d, n_t),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(flavor, interpret, vmem),
        interpret=interpret,
        cost_estimate=pl.CostEstimate(flops=int(2 * tp * 2 * pb * dp * b * _operand_parts(y.dtype)),
                                      transcendentals=0,
                                      bytes_accessed=int(b * (pp + tp * (2 if rowdot else 1)) * dp * isz)),
        name="patch_broadcast",
    )(*args)
    out = outs[0].reshape(b, tp, dp)
    if (tp, dp) != (t, d):
        out = out[:, :t, :d]
    rd = None
    if rowdot:
        rd = jnp.sum(outs[1][..., 0], axis=1)[:, :t]
    return out, rd


# ------------------------------------------------------------------- XLA equivalents


def _pool_xla(x, w, ids, starts, ends, *, mean: bool):
    v = x.astype(_F32)
    if w is not None:
        v = v * w[..., None]
    out = _segment_sum(v, ids, starts.shape[1])
    if mean:
        out = out / jnp.maximum(ends - starts, 1).astype(_F32)[..., None]
    return out.astype(x.dtype)


def _bcast_xla(y, w, x, ids, starts, ends, *, mean: bool):
    v = y.astype(_F32)
    if mean:
        v = v / jnp.maximum(ends - starts, 1).astype(_F32)[..., None]
    g = _gather_patches(v, ids)
    rd = None if x is None else jnp.sum(g * x.astype(_F32), axis=-1)
    if w is not None:
        g = g * w[..., None]
    return g.astype(y.dtype), rd


# ----------------------------------------------------------------------- dispatch


@dataclasses.dataclass(frozen=True)
class _Cfg:
    impl: str
    seq_len: int
    blocks: BlockSizes | tuple[tuple[str, BlockSizes], ...] | None


def _make_cfg(impl: str, seq_len: int, block_sizes) -> _Cfg:
    if isinstance(block_sizes, dict):
        unknown = set(block_sizes) - set(_DEFAULT_BLOCKS)
        if unknown:
            raise ValueError(f"block_sizes: unknown flavour(s) {sorted(unknown)}; expected 'tpu' and/or 'gpu'")
        block_sizes = tuple(sorted(block_sizes.items()))
    elif block_sizes is not None and not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"block_sizes must be a BlockSizes or a dict {{'tpu'|'gpu': BlockSizes}}, got {block_sizes!r}")
    cfg = _Cfg(impl, seq_len, block_sizes)
    for flavor in _FLAVORS.get(impl, ()):
        _blocks_for(cfg, flavor)  # fail before any tracing
    return cfg


def _blocks_for(cfg: _Cfg, flavor: str) -> BlockSizes:
    blocks = cfg.blocks
    if isinstance(blocks, tuple):
        blocks = dict(blocks).get(flavor)
    blocks = blocks or _DEFAULT_BLOCKS[flavor]
    _check_blocks(flavor, blocks)
    return blocks


@functools.lru_cache(maxsize=None)
def _gpu_kernels_compile(dtype_name: str) -> bool:
    """Whether the Triton kernels compile on this host's GPU (True off-GPU: trust lowering)."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return True
    if not gpus:
        return True
    dtype = jnp.dtype(dtype_name)
    b, t, d, p = 1, 128, 128, 64

    def probe(x, s, ids):
        mean = patch_mean(x, ids, p, impl="pallas_gpu")
        att = patch_attention_pool(x, s, ids, p, impl="pallas_gpu")
        out = patch_broadcast(mean + att, ids, impl="pallas_gpu")
        return jnp.sum(out.astype(_F32))

    try:
        with jax.default_device(gpus[0]):
            jax.jit(jax.grad(probe, argnums=(0, 1))).lower(
                jax.ShapeDtypeStruct((b, t, d), dtype), jax.ShapeDtypeStruct((b, t), _F32),
                jax.ShapeDtypeStruct((b, t), jnp.int32)).compile()
    except Exception as err:  # noqa: BLE001 - any lowering/compile failure means "use XLA"
        warnings.warn(f"slm_jax.kernels.patching: the Pallas GPU kernels do not compile on "
                      f"{gpus[0].device_kind} ({type(err).__name__}: {str(err)[:200]}); "
                      "impl='auto' falls back to the XLA reference.", RuntimeWarning, stacklevel=3)
        return False
    return True


def _dispatch(cfg: _Cfg, kernel, xla, args, dtype):
    """Run `kernel(flavor, interpret)(*args)` or `xla(*args)` according to cfg.impl."""
    impl = cfg.impl
    fixed = {"pallas_tpu": ("tpu", False), "pallas_gpu": ("gpu", False),
             "pallas_interpret": ("tpu", True), "pallas_interpret_gpu": ("gpu", True)}
    if impl in fixed:
        return kernel(*fixed[impl])(*args)
    if impl == "pallas":
        return lax.platform_dependent(*args, tpu=kernel("tpu", False), cuda=kernel("gpu", False),
                                      rocm=kernel("gpu", False), default=kernel("tpu", True))
    assert impl == "auto", impl
    gpu = kernel("gpu", False) if _gpu_kernels_compile(jnp.dtype(dtype).name) else xla
    return lax.platform_dependent(*args, tpu=kernel("tpu", False), cuda=gpu, default=xla)


def _pool(cfg: _Cfg, x, w, ids, starts, ends, *, mean: bool):
    def kernel(flavor, interpret):
        blocks = _blocks_for(cfg, flavor)
        return lambda x, w, ids, s, e: _pool_pallas(flavor, interpret, blocks, x, w, s, e, mean=mean)
    xla = functools.partial(_pool_xla, mean=mean)
    return _dispatch(cfg, kernel, xla, (x, w, ids, starts, ends), x.dtype)


def _bcast(cfg: _Cfg, y, w, x, ids, starts, ends, *, mean: bool):
    def kernel(flavor, interpret):
        blocks = _blocks_for(cfg, flavor)
        return lambda y, w, x, ids, s, e: _bcast_pallas(flavor, interpret, blocks, y, w, x, s, e,
                                                        seq_len=cfg.seq_len, mean=mean)
    xla = functools.partial(_bcast_xla, mean=mean)
    return _dispatch(cfg, kernel, xla, (y, w, x, ids, starts, ends), y.dtype)


# -------------------------------------------------------------------- custom VJPs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _mean_op(x, ids, starts, ends, cfg):
    return _pool(cfg, x, None, ids, starts, ends, mean=True)


def _mean_fwd(x, ids, starts, ends, cfg):
    return _mean_op(x, ids, starts, ends, cfg), (ids, starts, ends)


def _mean_bwd(cfg, res, g):
    ids, starts, ends = res
    dx, _ = _bcast(cfg, g, None, None, ids, starts, ends, mean=True)
    return dx, None, None, None


_mean_op.defvjp(_mean_fwd, _mean_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_op(x, w, ids, starts, ends, cfg):
    return _pool(cfg, x, w, ids, starts, ends, mean=False)


def _attention_fwd(x, w, ids, starts, ends, cfg):
    return _attention_op(x, w, ids, starts, ends, cfg), (x, w, ids, starts, ends)


def _attention_bwd(cfg, res, g):
    x, w, ids, starts, ends = res
    dx, dw = _bcast(cfg, g, w, x, ids, starts, ends, mean=False)
    return dx, dw, None, None, None


_attention_op.defvjp(_attention_fwd, _attention_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _broadcast_op(y, ids, starts, ends, cfg):
    return _bcast(cfg, y, None, None, ids, starts, ends, mean=False)[0]


def _broadcast_fwd(y, ids, starts, ends, cfg):
    return _broadcast_op(y, ids, starts, ends, cfg), (ids, starts, ends)


def _broadcast_bwd(cfg, res, g):
    ids, starts, ends = res
    return _pool(cfg, g, None, ids, starts, ends, mean=False), None, None, None


_broadcast_op.defvjp(_broadcast_fwd, _broadcast_bwd)


# ---------------------------------------------------------------------- public API


def _layout(patch_ids, num_patches):
    ids = patch_ids.astype(jnp.int32)
    starts, lengths = patch_layout(ids, num_patches)
    return ids, starts, starts + lengths


def patch_mean(x: jax.Array, patch_ids: jax.Array, num_patches: int, *, impl: str = "auto",
               block_sizes: BlockSizes | dict[str, BlockSizes] | None = None) -> jax.Array:
    """Mean of each patch's rows: x [B,T,D] -> [B,num_patches,D] (0 for empty patches)."""
    _check_impl("patch_mean", impl)
    _validate_pool("patch_mean", x, patch_ids, num_patches)
    if impl == "reference":
        return patch_mean_reference(x, patch_ids, num_patches)
    cfg = _make_cfg(impl, x.shape[1], block_sizes)
    ids, starts, ends = _layout(patch_ids, num_patches)
    return _mean_op(x, ids, starts, ends, cfg)


def patch_attention_pool(x: jax.Array, scores: jax.Array, patch_ids: jax.Array, num_patches: int, *,
                         impl: str = "auto",
                         block_sizes: BlockSizes | dict[str, BlockSizes] | None = None) -> jax.Array:
    """Softmax(scores within each patch)-weighted sum of the patch's rows: -> [B,P,D]."""
    _check_impl("patch_attention_pool", impl)
    _validate_attention("patch_attention_pool", x, scores, patch_ids, num_patches)
    if impl == "reference":
        return patch_attention_pool_reference(x, scores, patch_ids, num_patches)
    cfg = _make_cfg(impl, x.shape[1], block_sizes)
    ids, starts, ends = _layout(patch_ids, num_patches)
    w = patch_softmax_weights(scores, ids, num_patches)
    return _attention_op(x, w, ids, starts, ends, cfg)


def patch_broadcast(patch_states: jax.Array, patch_ids: jax.Array, *, impl: str = "auto",
                    block_sizes: BlockSizes | dict[str, BlockSizes] | None = None) -> jax.Array:
    """Row t gets patch_states[patch_ids[t]]: [B,P,D] -> [B,T,D]; 0 where patch_ids == -1."""
    _check_impl("patch_broadcast", impl)
    _validate_broadcast("patch_broadcast", patch_states, patch_ids)
    if impl == "reference":
        return patch_broadcast_reference(patch_states, patch_ids)
    cfg = _make_cfg(impl, patch_ids.shape[1], block_sizes)
    ids, starts, ends = _layout(patch_ids, patch_states.shape[1])
    return _broadcast_op(patch_states, ids, starts, ends, cfg)
