"""Grouped-query self-attention over packed rows.

A token attends to earlier tokens of its OWN segment only (causal AND same segment id),
so packed examples never leak into each other. Two implementations:

- `xla`: explicit einsums + fp32 softmax; runs everywhere, the reference.
- `dot_product_attention`: `jax.nn.dot_product_attention` with the causal+segment mask
  passed explicitly (cuDNN flash attention on NVIDIA GPUs, XLA elsewhere). `auto` picks
  it on GPU only after a one-off probe shows the cuDNN kernel honours the segment mask,
  and falls back to `xla` otherwise.

Decode mode (`kv_cache=...`, for generation): the new tokens' keys/values are written
into a per-layer cache at buffer slots [index, index + n) and the queries attend over the
whole buffer. A slot is visible when it is not later than the query's slot and holds the
query's segment (0 = empty or padding, never visible). Slots are shared by all rows while
RoPE positions are per row, so prompts of different lengths (left- or right-padded) decode
in one batch: padding slots are simply never visible. Decode always uses the XLA einsums.
"""
from __future__ import annotations

import functools
import logging

import flax
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from slm_jax.models.layers import DenseGeneral, apply_rope

ATTENTION_IMPLS = ("xla", "dot_product_attention", "auto")


def packed_causal_mask(segment_ids: jax.Array) -> jax.Array:
    """[batch, 1, length, length] bool: causal and within-segment."""
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same_segment)[:, None]


def cached_mask(index, query_segment_ids: jax.Array, cache_segment_ids: jax.Array) -> jax.Array:
    """[batch, 1, n, slots] bool for n queries at buffer slots index..index+n-1 (decode mode)."""
    n, slots = query_segment_ids.shape[-1], cache_segment_ids.shape[-1]
    query_slot = index + jnp.arange(n)
    causal = jnp.arange(slots)[None, :] <= query_slot[:, None]
    same_segment = cache_segment_ids[:, None, :] == query_segment_ids[:, :, None]
    filled = (cache_segment_ids != 0)[:, None, :]
    return (causal[None] & same_segment & filled)[:, None]


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


def xla_attention(q, k, v, segment_ids):
    """q: [b, t, h, d]; k, v: [b, s, kv, d] with h a multiple of kv."""
    return masked_attention(q, k, v, packed_causal_mask(segment_ids))


def jax_dot_product_attention(q, k, v, segment_ids, implementation=None):
    mask = packed_causal_mask(segment_ids)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


@functools.cache
def cudnn_honours_segments() -> bool:
    """One-off probe on the default backend: does cuDNN attention respect segment masks?

    Compares cuDNN with the XLA reference on a packed row; any error (no GPU, unsupported
    shape, old cuDNN) means no.
    """
    if jax.default_backend() != "gpu":
        return False
    try:
        rng = np.random.default_rng(0)
        shape = (2, 128, 4, 64)
        q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.bfloat16) for _ in range(3))
        seg = jnp.asarray(np.repeat([[1] * 50 + [2] * 60 + [0] * 18], 2, axis=0), jnp.int32)
        got = jax.jit(functools.partial(jax_dot_product_attention, implementation="cudnn"))(q, k, v, seg)
        want = jax.jit(xla_attention)(q, k, v, seg)
        return bool(jnp.allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=2e-2))
    except Exception as err:  # noqa: BLE001 - any failure means "don't use it"
        logging.info("cuDNN attention probe failed, using XLA attention: %s", err)
        return False


def resolve_attention_impl(name: str) -> str:
    if name not in ATTENTION_IMPLS:
        raise ValueError(f"DecoderConfig.attention_impl={name!r}: expected one of {ATTENTION_IMPLS}")
    if name == "auto":
        return "cudnn" if cudnn_honours_segments() else "xla"
    return name


def attend(q, k, v, segment_ids, impl: str):
    """Dispatch on a resolved implementation name ('xla', 'dot_product_attention', 'cudnn')."""
    if impl == "xla":
        return xla_attention(q, k, v, segment_ids)
    if impl == "dot_product_attention":
        return jax_dot_product_attention(q, k, v, segment_ids)
    if impl == "cudnn":
        return jax_dot_product_attention(q, k, v, segment_ids, implementation="cudnn")
    raise ValueError(f"unknown attention implementation {impl!r}")


class Attention(nn.Module):
    """GQA self-attention with RoPE; projections carry logical axis names."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    embed_dim: int
    rope_theta: float
    init_std: float
    impl: str = "xla"
    use_qkv_bias: bool = False
    dtype: jnp.dtype = jnp.bfloat16
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, segment_ids, positions, kv_cache=None, decode=None):
        """Packed self-attention; with `kv_cache` ({'key', 'value'}: [b, slots, kv, d]) and
        `decode` (a `DecodeState`) also the updated cache: returns (out, new kv_cache)."""
        def proj(name, heads, axes_heads):
            return DenseGeneral((self.embed_dim,), (heads, self.head_dim), ("embed", axes_heads, "head_dim"),
                                self.init_std, use_bias=self.use_qkv_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=name)(x)

        q = proj("query", self.num_heads, "heads")
        k = proj("key", self.num_kv_heads, "kv_heads")
        v = proj("value", self.num_kv_heads, "kv_heads")
        q_axes, kv_axes = ("batch", "length", "heads", "head_dim"), ("batch", "length", "kv_heads", "head_dim")
        q = nn.with_logical_constraint(apply_rope(q, positions, self.rope_theta), q_axes)
        k = nn.with_logical_constraint(apply_rope(k, positions, self.rope_theta), kv_axes)
        v = nn.with_logical_constraint(v, kv_axes)
        new_cache = None
        if kv_cache is None:
            out = attend(q, k, v, segment_ids, self.impl)
        else:
            k, v = (_write_slots(kv_cache[name], new, decode.index) for name, new in (("key", k), ("value", v)))
            new_cache = {"key": k, "value": v}
            out = masked_attention(q, k, v, cached_mask(decode.index, segment_ids, decode.cache_segment_ids))
        out = nn.with_logical_constraint(out, q_axes)
        out = DenseGeneral((self.num_heads, self.head_dim), (self.embed_dim,), ("heads", "head_dim", "embed"),
                           self.init_std, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
        return out if kv_cache is None else (out, new_cache)


@flax.struct.dataclass
class DecodeState:
    """What every layer needs in decode mode: the first buffer slot of the new tokens and the
    segment ids of every slot after they are written (0 = empty / padding)."""

    index: jax.Array
    cache_segment_ids: jax.Array


def _write_slots(cache: jax.Array, new: jax.Array, index) -> jax.Array:
    """cache [b, slots, kv, d] with `new` [b, n, kv, d] written at slots [index, index + n)."""
    cache = jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, index, 0, 0))
    return nn.with_logical_constraint(cache, ("batch", "length", "kv_heads", "head_dim"))
