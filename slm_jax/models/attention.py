"""Grouped-query self-attention over packed rows.

A token attends to earlier tokens of its OWN segment only (causal AND same segment id),
so packed examples never leak into each other. Two implementations:

- `xla`: explicit einsums + fp32 softmax; runs everywhere, the reference.
- `dot_product_attention`: `jax.nn.dot_product_attention` with the causal+segment mask
  passed explicitly (cuDNN flash attention on NVIDIA GPUs, XLA elsewhere). `auto` picks
  it on GPU only after a one-off probe shows the cuDNN kernel honours the segment mask,
  and falls back to `xla` otherwise.
"""
from __future__ import annotations

import functools
import logging

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


def xla_attention(q, k, v, segment_ids):
    """q: [b, t, h, d]; k, v: [b, s, kv, d] with h a multiple of kv."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * (1.0 / np.sqrt(d))
    mask = packed_causal_mask(segment_ids)[:, :, None]  # [b, 1, 1, t, s]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


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
    def __call__(self, x, segment_ids, positions):
        def proj(name, heads, axes_heads):
            return DenseGeneral((self.embed_dim,), (heads, self.head_dim), ("embed", axes_heads, "head_dim"),
                                self.init_std, use_bias=self.use_qkv_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=name)(x)

        q = proj("query", self.num_heads, "heads")
        k = proj("key", self.num_kv_heads, "kv_heads")
        v = proj("value", self.num_kv_heads, "kv_heads")
        q = nn.with_logical_constraint(apply_rope(q, positions, self.rope_theta), ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(apply_rope(k, positions, self.rope_theta), ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
        out = attend(q, k, v, segment_ids, self.impl)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        return DenseGeneral((self.num_heads, self.head_dim), (self.embed_dim,), ("heads", "head_dim", "embed"),
                            self.init_std, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)
