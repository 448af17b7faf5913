"""The dense Llama-family decoder: embeddings -> N x (attention + SwiGLU) -> logits.

Layers are stacked with `nn.scan` (one compiled layer, params with a leading `layers`
axis) and wrapped in `nn.remat` with a configurable policy; compute runs in
`DecoderConfig.dtype` (bf16 by default) over fp32 params.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from slm_jax.models.attention import Attention, resolve_attention_impl
from slm_jax.models.layers import DenseGeneral, Embed, RMSNorm, SwiGLU

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a decoder. Everything that changes parameter shapes is here."""

    vocab_size: int = 512
    embed_dim: int = 64
    mlp_dim: int = 172
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # default embed_dim // num_heads
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    use_qkv_bias: bool = False  # Qwen2 has q/k/v biases
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    # mSLAM auxiliary CTC head over the final hidden states (0: none); the size of the
    # run's slm_jax.models.ctc.CharVocabulary (padded to the tensor-parallel size)
    ctc_num_classes: int = 0

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_heads={self.num_heads} must be a multiple of "
                f"DecoderConfig.num_kv_heads={self.num_kv_heads}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"DecoderConfig.remat_policy={self.remat_policy!r}: expected one of "
                             f"{sorted(REMAT_POLICIES)}")
        if self.resolved_head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim={self.resolved_head_dim} must be even for RoPE")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    # Fields that decide parameter shapes: a checkpoint is only compatible if these match.
    SHAPE_FIELDS = ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads", "num_kv_heads",
                    "head_dim", "tie_embeddings", "use_qkv_bias", "scan_layers", "param_dtype", "ctc_num_classes")

    def shape_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.SHAPE_FIELDS}
        d["head_dim"] = self.resolved_head_dim
        return d

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _layer_matmul_params(self) -> int:
        d, hd = self.embed_dim, self.resolved_head_dim
        return d * hd * (self.num_heads * 2 + self.num_kv_heads * 2) + 3 * d * self.mlp_dim

    def num_params(self, include_embeddings: bool = True) -> int:
        hd = self.resolved_head_dim
        bias = hd * (self.num_heads + 2 * self.num_kv_heads) if self.use_qkv_bias else 0
        norms = 2 * self.embed_dim
        total = self.num_layers * (self._layer_matmul_params() + bias + norms) + self.embed_dim
        total += (self.embed_dim + 1) * self.ctc_num_classes
        if include_embeddings:
            total += self.vocab_size * self.embed_dim * (1 if self.tie_embeddings else 2)
        return total

    def flops_per_token(self, sequence_length: int) -> float:
        """Training FLOPs per token (fwd+bwd): 6 x matmul params + attention.

        Attention counts QK^T and AV over the full square (the PaLM/MaxText MFU
        convention), and the output projection counts whether tied or not, so the
        figure compares with published MFU numbers.
        """
        matmul = self.num_layers * self._layer_matmul_params() + self.vocab_size * self.embed_dim
        attention = 12 * self.num_layers * self.num_heads * self.resolved_head_dim * sequence_length
        return 6.0 * matmul + attention


class DecoderBlock(nn.Module):
    config: DecoderConfig
    attention_impl: str

    @nn.compact
    def __call__(self, x, segment_ids, positions):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="attention_norm")(x)
        h = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.embed_dim, cfg.rope_theta,
                      cfg.init_std, impl=self.attention_impl, use_qkv_bias=cfg.use_qkv_bias, dtype=dtype,
                      param_dtype=pdtype, name="attention")(h, segment_ids, positions)
        x = x + h
        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="mlp_norm")(x)
        h = SwiGLU(cfg.embed_dim, cfg.mlp_dim, cfg.init_std, dtype, pdtype, name="mlp")(h)
        x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
        return x


class _ScanBlock(DecoderBlock):
    """DecoderBlock with the (carry, per-step output) signature nn.scan needs."""

    def __call__(self, x, segment_ids, positions):  # type: ignore[override]
        return super().__call__(x, segment_ids, positions), None


class Decoder(nn.Module):
    """tokens [b, t] (+ packed segment ids and positions) -> fp32 logits [b, t, vocab]."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, return_hidden: bool = False,
                 return_ctc_logits: bool = False):
        """`return_ctc_logits`: also the CTC head's logits (needs `ctc_num_classes`)."""
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
        impl = resolve_attention_impl(cfg.attention_impl)

        embed = Embed(cfg.vocab_size, cfg.embed_dim, cfg.init_std, dtype, pdtype, name="embed")
        x = embed(tokens)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        policy = REMAT_POLICIES[cfg.remat_policy]
        block_cls = _ScanBlock if cfg.scan_layers else DecoderBlock
        if cfg.remat_policy != "none":
            block_cls = nn.remat(block_cls, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(cfg, impl, name="layers")(x, segment_ids, positions)
        else:
            for i in range(cfg.num_layers):
                x = block_cls(cfg, impl, name=f"layers_{i}")(x, segment_ids, positions)

        x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)
        if return_hidden:
            return x
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = DenseGeneral((cfg.embed_dim,), (cfg.vocab_size,), ("embed", "vocab"), cfg.init_std,
                                  dtype=dtype, param_dtype=pdtype, name="lm_head")(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab")).astype(jnp.float32)
        # built whenever configured, so init creates its params (unused outputs are compiled away)
        ctc = ctc_logits(cfg, x, dtype, pdtype) if cfg.ctc_num_classes or return_ctc_logits else None
        return (logits, ctc) if return_ctc_logits else logits


def ctc_logits(cfg: DecoderConfig, hidden, dtype, pdtype):
    """The mSLAM CTC head on `hidden` [b, t, d] (params under `ctc_head`)."""
    from slm_jax.models.ctc import CTCHead
    if cfg.ctc_num_classes < 1:
        raise ValueError("CTC logits requested but DecoderConfig.ctc_num_classes is 0; set it to the size of the "
                         "run's CharVocabulary")
    return CTCHead(cfg.ctc_num_classes, hidden.shape[-1], cfg.init_std, dtype=dtype, param_dtype=pdtype,
                   name="ctc_head")(hidden)
