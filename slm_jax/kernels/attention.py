"""Causal attention over packed rows: the pure-JAX reference and JAX's fused Pallas kernels.

Every implementation computes the same thing: a query attends to keys at earlier or equal
positions of its OWN segment (`segment_ids`, int32 [batch, length], 0 = padding, which
attends to earlier padding only), with grouped-query heads (query head j uses key/value head
j // (heads // kv_heads), the Llama/Qwen layout).

- `reference_attention`: einsums + fp32 softmax; materialises [batch, heads, length, length].
- `splash_attention` (TPU): JAX's Pallas splash attention
  (`jax.experimental.pallas.ops.tpu.splash_attention`) with a static causal mask and the
  row's segment ids (`SegmentIds(q, kv)`), GQA natively (the `mha` kernel with fewer
  key heads), its own backward (dq and dkv kernels). Grid (per row, vmapped over the batch):
  (heads, length / block_q, length / block_kv); fully masked blocks (above the diagonal) are
  skipped from the mask's block table. Blocks are 512 (128 for rows under 512 tokens).
- `flash_gpu_attention` (GPU): JAX's Pallas/Triton flash attention
  (`jax.experimental.pallas.ops.gpu.attention.mha`, `causal=True` + segment ids) with its
  Triton backward. That kernel has no GQA, so keys/values are repeated to the query heads
  (an [batch, length, heads, head_dim] copy, not [length, length]). Grid:
  (length / block_q, batch, heads); blocks 128 forward, 32 backward (JAX's defaults).

Both kernels need lengths that are multiples of their blocks: rows are padded at the end with
segment 0, which no real token sees (it is later than every real token), and the padding is
cut off again. `interpret=True` runs either kernel with Pallas' interpreter on any backend
(tests on CPU). Under a sharded jit, `fused_attention` runs the kernel inside `jax.shard_map`
over the batch and (where sharded) head axes: a Pallas call is opaque to the partitioner.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.kernels.sharding import mesh_axes_of, shard_map_logical, shards_of

Q_AXES = ("batch", "length", "heads", "head_dim")
KV_AXES = ("batch", "length", "kv_heads", "head_dim")
SEGMENT_AXES = ("batch", "length")
LANES = 128  # splash blocks are multiples of the TPU lane width


def packed_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """[batch, 1, length, length] bool: causal and within-segment."""
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same_segment)[:, None]


def masked_attention(q, k, v, mask):
    """q: [b, t, h, d]; k, v: [b, s, kv, d] with h a multiple of kv; mask: [b, 1, t, s] bool."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / np.sqrt(d))
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def reference_attention(q, k, v, segment_ids):
    """The reference: q [b, t, h, d], k/v [b, t, kv, d], segment_ids int32 [b, t] -> [b, t, h, d].
    Raises ValueError on mismatched shapes (the same checks as the kernels)."""
    _check("reference_attention", q, k, v, segment_ids)
    return masked_attention(q, k, v, packed_causal_mask(segment_ids))


def _check(fn: str, q, k, v, segment_ids):
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"{fn}: expected q [b, t, h, d] and k, v [b, t, kv, d]; got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{fn}: query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if segment_ids.shape != q.shape[:2]:
        raise ValueError(f"{fn}: segment_ids {segment_ids.shape} must be [batch, length] = {q.shape[:2]}")


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def _pad_length(x, length: int):
    """Pad axis 1 to `length` with zeros (segment 0 for ids)."""
    pad = length - x.shape[1]
    return x if pad == 0 else jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


# --------------------------------------------------------------------------- splash (TPU)
def splash_block(length: int) -> int:
    """The splash block for a row of `length` tokens: 512 (MaxText's default), or the row
    rounded up to 128 lanes when shorter."""
    return 512 if length >= 512 else _round_up(length, LANES)


def _splash_kernel(num_heads: int, length: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    # built inside the trace that uses it (its block tables become that program's constants)
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(num_heads)])
    blocks = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                           block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, segment_ids, *, interpret: bool = False):
    """Splash attention on one device's block: q [b, t, h, d], k/v [b, t, kv, d] (h a multiple
    of kv), segment_ids int32 [b, t] -> [b, t, h, d] in q's dtype. Differentiable (splash's
    own backward kernels). Raises ValueError on mismatched shapes."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    _check("splash_attention", q, k, v, segment_ids)
    b, t, h, d = q.shape
    block = splash_block(t)
    padded = _round_up(t, block)
    kernel = _splash_kernel(h, padded, block, interpret)
    # splash takes [heads, length, head_dim] per row and applies no 1/sqrt(d) itself
    qh = jnp.swapaxes(_pad_length(q * jnp.asarray(1.0 / np.sqrt(d), q.dtype), padded), 1, 2)
    kh, vh = (jnp.swapaxes(_pad_length(x, padded), 1, 2) for x in (k, v))
    seg = _pad_length(segment_ids.astype(jnp.int32), padded)
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(s1, s1)))(qh, kh, vh, seg)
    return jnp.swapaxes(out, 1, 2)[:, :t].astype(q.dtype)


# --------------------------------------------------------------------------- flash (GPU)
def flash_gpu_attention(q, k, v, segment_ids, *, interpret: bool = False):
    """Pallas/Triton flash attention on one device's block; same contract as
    `splash_attention`. Keys/values are repeated to the query heads (the kernel has no GQA)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention
    _check("flash_gpu_attention", q, k, v, segment_ids)
    b, t, h, d = q.shape
    blocks = gpu_attention.BlockSizes.get_default()
    padded = _round_up(t, max(blocks.block_q, blocks.block_k))
    group = h // k.shape[2]
    k, v = (jnp.repeat(x, group, axis=2) if group > 1 else x for x in (k, v))
    q, k, v = (_pad_length(x, padded) for x in (q, k, v))
    seg = _pad_length(segment_ids.astype(jnp.int32), padded)
    out = gpu_attention.mha(q, k, v, seg, sm_scale=float(1.0 / np.sqrt(d)), causal=True, block_sizes=blocks,
                            interpret=interpret)
    return out[:, :t]


# --------------------------------------------------------------------------- sharded dispatch
KERNELS = {"splash": splash_attention, "flash_gpu": flash_gpu_attention}


def fused_attention(q, k, v, segment_ids, *, kernel: str, interpret: bool = False):
    """`KERNELS[kernel]` under the active mesh: inside `jax.shard_map` over the batch and head
    axes the rules shard (query and key/value heads must be split over the same mesh axes, so
    each device keeps whole GQA groups). Raises ValueError when the sequence is sharded (the
    kernels need whole rows) or the head groups would be split."""
    q_axes, kv_axes = mesh_axes_of(Q_AXES), mesh_axes_of(KV_AXES)
    if shards_of(q_axes[1]) > 1 or shards_of(kv_axes[1]) > 1:
        raise ValueError(f"attention_impl={kernel!r}: the 'length' axis is sharded ({q_axes[1]}); the fused kernels "
                         "need whole rows per device (map 'length' to None in MeshConfig.logical_axis_rules)")
    kv_heads = k.shape[2]
    head_shards = shards_of(q_axes[2])
    if head_shards > 1 and (q_axes[2] != kv_axes[2] or kv_heads % head_shards):
        raise ValueError(f"attention_impl={kernel!r}: query heads are sharded over {q_axes[2]} ({head_shards} ways) "
                         f"but the {kv_heads} key/value heads are sharded over {kv_axes[2]}; each device needs whole "
                         "GQA groups: shard 'heads' and 'kv_heads' over the same mesh axes with num_kv_heads divisible "
                         f"by {head_shards}")
    fn = functools.partial(KERNELS[kernel], interpret=interpret)
    return shard_map_logical(fn, (q, k, v, segment_ids), (Q_AXES, KV_AXES, KV_AXES, SEGMENT_AXES), Q_AXES)
