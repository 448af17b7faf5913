"""Building blocks of the Llama-family decoder: RMSNorm, RoPE, SwiGLU MLP, embeddings.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so the
same module shards on any mesh through the logical-axis rules in gin.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

Dtype = jnp.dtype


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
    """Root-mean-square norm; statistics in fp32 whatever the compute dtype."""

    eps: float = 1e-5
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """Inverse frequencies of rotary embeddings, one per pair of dimensions."""
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, half-split layout (as Hugging Face Llama/Qwen2).

    x: [batch, length, heads, head_dim]; positions: [batch, length] (restart per
    packed segment, so each segment sees positions 0..n-1).
    """
    head_dim = x.shape[-1]
    inv_freq = rope_frequencies(head_dim, theta)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` gives tied output logits."""

    vocab_size: int
    embed_dim: int
    init_std: float = 1.0
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(_normal(self.init_std), ("vocab", "embed")),
            (self.vocab_size, self.embed_dim),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("bte,ve->btv", x, self.embedding.astype(self.dtype))


class DenseGeneral(nn.Module):
    """x @ kernel over the trailing `len(in_shape)` axes, kernel with logical names."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]
    init_std: float
    use_bias: bool = False
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_normal(self.init_std), self.axes),
            self.in_shape + self.out_shape,
            self.param_dtype,
        )
        n_in = len(self.in_shape)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (contract, ((), ())))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[n_in:]),
                self.out_shape,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class SwiGLU(nn.Module):
    """Gated MLP of Llama: down(silu(gate(x)) * up(x))."""

    embed_dim: int
    mlp_dim: int
    init_std: float
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(name, in_dim, out_dim, axes):
            return DenseGeneral((in_dim,), (out_dim,), axes, self.init_std, dtype=self.dtype,
                                param_dtype=self.param_dtype, name=name)

        gate = dense("gate", self.embed_dim, self.mlp_dim, ("embed", "mlp"))(x)
        up = dense("up", self.embed_dim, self.mlp_dim, ("embed", "mlp"))(x)
        hidden = nn.silu(gate) * up
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
        return dense("down", self.mlp_dim, self.embed_dim, ("mlp", "embed"))(hidden)
