"""Building blocks of the Llama-family decoder: RMSNorm, RoPE, SwiGLU MLP, embeddings.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so the
same module shards on any mesh through the logical-axis rules in gin.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

Dtype = jnp.dtype


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis; statistics in fp32 whatever the compute dtype."""

    eps: float = 1e-5
    dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32
    axis_name: str = "embed"  # logical name of the normalised (last) axis, e.g. "head_dim" for q/k norm

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RoPE:
    """A rotary position embedding variant (hashable: a static part of a jitted model).

    theta: base wavelength, > 0. rope_type: one of `ROPE_TYPES`:
      - "default": inverse frequency of pair j (of head_dim / 2) is theta ** (-2j / head_dim)
        (Su et al. 2021, RoFormer; the Llama / Qwen layout).
      - "linear": the default frequencies divided by `scaling_factor` (position interpolation,
        Chen et al. 2023; transformers' `_compute_linear_scaling_rope_parameters`).
      - "llama3": the frequency-dependent rule of Llama 3.1+ (source: Meta's Llama 3.1 reference
        code and transformers' `modeling_rope_utils._compute_llama3_parameters`). With
        L = original_max_positions, a pair of wavelength w = 2 pi / f (f its default frequency)
        keeps f when w < L / high_freq_factor (high frequencies), gets f / scaling_factor when
        w > L / low_freq_factor (low frequencies), and in between the blend
        (1 - s) f / scaling_factor + s f with s = (L / w - low_freq_factor) / (high_freq_factor -
        low_freq_factor).
    The scaling fields are read only by the types that use them. No variant here rescales the
    attention logits (transformers' `attention_factor` is 1 for all three).
    """

    theta: float = 10000.0
    rope_type: str = "default"
    scaling_factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def inv_frequencies(self, head_dim: int) -> np.ndarray:
        """float64 [head_dim // 2]: the angle per position of each pair of dimensions (rad)."""
        freq = self.theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        if self.rope_type == "default":
            return freq
        if self.rope_type == "linear":
            return freq / self.scaling_factor
        if self.rope_type == "llama3":
            wavelength = 2.0 * np.pi / freq
            context = float(self.original_max_positions)
            smooth = (context / wavelength - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
            blended = (1.0 - smooth) * freq / self.scaling_factor + smooth * freq
            out = np.where(wavelength > context / self.low_freq_factor, freq / self.scaling_factor, blended)
            return np.where(wavelength < context / self.high_freq_factor, freq, out)
        raise ValueError(f"RoPE.rope_type={self.rope_type!r}: expected one of {ROPE_TYPES}")


def rope_frequencies(head_dim: int, theta: float | RoPE) -> jax.Array:
    """fp32 [head_dim // 2] inverse frequencies; `theta`: a base wavelength (default RoPE) or a `RoPE`.
    Computed in float64 on the host (they are constants), then rounded once."""
    rope = theta if isinstance(theta, RoPE) else RoPE(theta=float(theta))
    return jnp.asarray(rope.inv_frequencies(head_dim), jnp.float32)


def apply_rope(x: jax.Array, positions: jax.Array, rope: float | RoPE) -> jax.Array:
    """Rotary position embedding, half-split layout (as Hugging Face Llama/Qwen2/Qwen3).

    x: [batch, length, heads, head_dim]; positions: int [batch, length] (restart per
    packed segment, so each segment sees positions 0..n-1); `rope`: a `RoPE` (or a base
    wavelength for the default variant). Angles and rotation in fp32; output in x's dtype.
    """
    head_dim = x.shape[-1]
    inv_freq = rope_frequencies(head_dim, rope)
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
