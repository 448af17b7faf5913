"""Grouped-query self-attention over packed rows.

A token attends to earlier tokens of its OWN segment only (causal AND same segment id),
so packed examples never leak into each other. Implementations (`DecoderConfig.attention_impl`):

- `xla`: explicit einsums + fp32 softmax (`slm_jax.kernels.attention.reference_attention`);
  runs everywhere, the reference; materialises [batch, heads, length, length].
- `splash` (TPU): JAX's Pallas splash attention, fused forward and backward, per device
  inside `jax.shard_map` (`slm_jax.kernels.attention`).
- `flash_gpu` (GPU): JAX's Pallas/Triton flash attention with segment ids.
- `cudnn` (GPU): `jax.nn.dot_product_attention(implementation='cudnn')` with the
  causal+segment mask passed as an explicit [batch, 1, length, length] mask.
- `dot_product_attention`: the same call, letting JAX pick (XLA off GPU).
- `splash_interpret`, `flash_gpu_interpret`: the Pallas kernels in interpret mode, on any
  backend (tests; slow).
- `auto`: per platform of the run's devices: `splash` on TPU; on GPU `flash_gpu` when a probe
  at the run's shapes (its length, heads, GQA groups, dtype; forward AND gradients, on a packed
  row) matches the reference, else `cudnn` under the same probe, else `xla`; `xla` elsewhere.
  The choice (and a failed probe's reason) is logged once.

A fused implementation asked for by name never falls back: on the wrong platform it is
refused with a ValueError naming `DecoderConfig.attention_impl`.

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

from slm_jax.gin_utils import ConfigError
from slm_jax.kernels.attention import fused_attention, masked_attention, packed_causal_mask, reference_attention
from slm_jax.models.layers import DenseGeneral, RMSNorm, RoPE, apply_rope

ATTENTION_IMPLS = ("xla", "dot_product_attention", "cudnn", "splash", "flash_gpu", "splash_interpret",
                   "flash_gpu_interpret", "auto")
# the platform each fused implementation needs when asked for by name
_NEEDS_PLATFORM = {"splash": ("tpu",), "flash_gpu": ("gpu", "cuda", "rocm"), "cudnn": ("gpu", "cuda")}
_log = logging.getLogger("slm_jax")

xla_attention = reference_attention
__all__ = ["ATTENTION_IMPLS", "Attention", "DecodeState", "attend", "cached_mask", "masked_attention",
           "packed_causal_mask", "resolve_attention_impl", "xla_attention"]


def cached_mask(index, query_segment_ids: jax.Array, cache_segment_ids: jax.Array) -> jax.Array:
    """[batch, 1, n, slots] bool for n queries at buffer slots index..index+n-1 (decode mode)."""
    n, slots = query_segment_ids.shape[-1], cache_segment_ids.shape[-1]
    query_slot = index + jnp.arange(n)
    causal = jnp.arange(slots)[None, :] <= query_slot[:, None]
    same_segment = cache_segment_ids[:, None, :] == query_segment_ids[:, :, None]
    filled = (cache_segment_ids != 0)[:, None, :]
    return (causal[None] & same_segment & filled)[:, None]


def jax_dot_product_attention(q, k, v, segment_ids, implementation=None):
    mask = packed_causal_mask(segment_ids)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def run_platform() -> str:
    """The platform the traced program is for: the active mesh's devices (also under AOT
    compilation for a TPU topology from a CPU host), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


@functools.cache
def probe_fused(impl: str, length: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype_name: str):
    """Does `impl` match the reference at these shapes on this host's GPU? Returns (ok, why).

    One packed row of `length` tokens (three segments and end padding), the run's heads, GQA
    groups and dtype; outputs AND the gradients of q, k, v compared with the XLA reference.
    Any error (lowering, compile, unsupported shape) means no.
    """
    dtype = jnp.dtype(dtype_name)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, length, num_heads, head_dim)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((1, length, num_kv_heads, head_dim)), dtype) for _ in range(2))
    cuts = sorted({max(1, length // 3), max(1, (2 * length) // 3), max(1, length - max(1, length // 16))})
    seg = np.zeros((1, length), np.int32)
    for i, (a, b) in enumerate(zip([0] + cuts[:-1], cuts), start=1):
        seg[0, a:b] = i
    seg = jnp.asarray(seg)
    weights = jnp.asarray(rng.standard_normal((1, length, num_heads, head_dim)), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, seg).astype(jnp.float32) * weights)

    tol = 1e-2 if dtype == jnp.float32 else 6e-2
    try:
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            got = jax.jit(jax.value_and_grad(loss(functools.partial(attend, impl=impl)), argnums=(0, 1, 2)))(q, k, v)
            want = jax.jit(jax.value_and_grad(loss(reference_attention), argnums=(0, 1, 2)))(q, k, v)
        outs_got = jax.jit(lambda q, k, v: attend(q, k, v, seg, impl))(q, k, v).astype(jnp.float32)
        outs_want = reference_attention(q, k, v, seg).astype(jnp.float32)
    except Exception as err:  # noqa: BLE001 - any failure means "don't use it"
        return False, f"{type(err).__name__}: {str(err)[:300]}"
    checks = [("output", outs_got, outs_want)] + [(f"d{n}", g, w) for n, g, w in zip("qkv", got[1], want[1])]
    for name, g, w in checks:
        scale = float(jnp.max(jnp.abs(w))) or 1.0
        err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - w.astype(jnp.float32)))) / scale
        if not np.isfinite(err) or err > tol:
            return False, f"{name} differs from the XLA reference by {err:.3g} (relative to its max; tolerance {tol})"
    return True, "matches the XLA reference (output and gradients)"


@functools.cache
def _log_choice(name: str, impl: str, platform: str, why: str):
    _log.info("attention: %s on %s (DecoderConfig.attention_impl=%r%s)", impl, platform, name,
              f"; {why}" if why else "")


def resolve_attention_impl(name: str, *, length: int | None = None, num_heads: int | None = None,
                           num_kv_heads: int | None = None, head_dim: int | None = None,
                           dtype=jnp.float32, platform: str | None = None) -> str:
    """The implementation a run uses: `name` itself, checked against the platform, or `auto`'s
    pick (module docstring). The shapes are those of training (for `auto`'s GPU probe).

    Raises ConfigError (a ValueError; one line from the CLI) for an unknown name, or a fused
    implementation asked for by name on a platform that does not run it."""
    if name not in ATTENTION_IMPLS:
        raise ConfigError(f"DecoderConfig.attention_impl={name!r}: expected one of {ATTENTION_IMPLS}")
    platform = platform or run_platform()
    if name in _NEEDS_PLATFORM:
        if platform not in _NEEDS_PLATFORM[name]:
            raise ConfigError(f"DecoderConfig.attention_impl={name!r} runs on {'/'.join(_NEEDS_PLATFORM[name])}, but "
                             f"this run's devices are {platform!r}; use 'auto' (picks per platform), 'xla', or "
                             f"'{name}_interpret' where one exists (Pallas interpreter, tests)")
        _log_choice(name, name, platform, "")
        return name
    if name != "auto":
        _log_choice(name, name, platform, "")
        return name
    if platform == "tpu":
        impl, why = "splash", "Pallas splash attention"
    elif platform in ("gpu", "cuda", "rocm") and None not in (length, num_heads, num_kv_heads, head_dim):
        shapes = (int(length), int(num_heads), int(num_kv_heads), int(head_dim), jnp.dtype(dtype).name)
        impl, why = "xla", ""
        reasons = []
        for candidate in ("flash_gpu", "cudnn"):
            ok, reason = probe_fused(candidate, *shapes)
            reasons.append(f"{candidate}: {reason}")
            if ok:
                impl = candidate
                break
        why = f"probe at length {length}, {num_heads}/{num_kv_heads} heads, {jnp.dtype(dtype).name}: " + \
            "; ".join(reasons)
        if impl == "xla":
            _log.warning("attention: no fused GPU attention passed its probe, using xla (%s)", why)
    else:
        impl, why = "xla", "no fused attention on this platform"
    _log_choice(name, impl, platform, why)
    return impl


def attend(q, k, v, segment_ids, impl: str):
    """Dispatch on a resolved implementation name (see the module docstring)."""
    if impl == "xla":
        return reference_attention(q, k, v, segment_ids)
    if impl == "dot_product_attention":
        return jax_dot_product_attention(q, k, v, segment_ids)
    if impl == "cudnn":
        return jax_dot_product_attention(q, k, v, segment_ids, implementation="cudnn")
    if impl in ("splash", "flash_gpu"):
        return fused_attention(q, k, v, segment_ids, kernel=impl)
    if impl in ("splash_interpret", "flash_gpu_interpret"):
        return fused_attention(q, k, v, segment_ids, kernel=impl.removesuffix("_interpret"), interpret=True)
    raise ValueError(f"unknown attention implementation {impl!r}: expected one of {ATTENTION_IMPLS[:-1]} "
                     "(resolve 'auto' with resolve_attention_impl)")


class Attention(nn.Module):
    """GQA self-attention with RoPE; projections carry logical axis names.

    `rope`: the RoPE variant (`slm_jax.models.layers.RoPE`, or a base wavelength for the
    default one), applied to q and k in every mode (training, scoring, decoding), so a KV cache
    holds rotated keys. `qk_norm` (Qwen3): q and k are RMS-normalised per head over head_dim
    (params `query_norm/scale`, `key_norm/scale`: [head_dim], logical axis "head_dim", epsilon
    `norm_eps`) after the projections and before RoPE, as transformers' Qwen3Attention.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    embed_dim: int
    rope: RoPE | float
    init_std: float
    impl: str = "xla"
    use_qkv_bias: bool = False
    dtype: jnp.dtype = jnp.bfloat16
    param_dtype: jnp.dtype = jnp.float32
    qk_norm: bool = False
    norm_eps: float = 1e-6

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
        if self.qk_norm:
            q = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, axis_name="head_dim", name="query_norm")(q)
            k = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, axis_name="head_dim", name="key_norm")(k)
        q_axes, kv_axes = ("batch", "length", "heads", "head_dim"), ("batch", "length", "kv_heads", "head_dim")
        q = nn.with_logical_constraint(apply_rope(q, positions, self.rope), q_axes)
        k = nn.with_logical_constraint(apply_rope(k, positions, self.rope), kv_axes)
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
