"""The dense Llama-family decoder: embeddings -> N x (attention + SwiGLU) -> logits.

Layers are stacked with `nn.scan` (one compiled layer, params with a leading `layers`
axis) and wrapped in `nn.remat` with a configurable policy; compute runs in
`DecoderConfig.dtype` (bf16 by default) over fp32 params. `Decoder.__call__` returns a
`slm_jax.models.interface.ModelOutput`; `DecoderFamily` registers the family for `DecoderConfig`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from slm_jax import contract
from slm_jax.contract import AXIS_BATCH, AXIS_EMBED, AXIS_LENGTH, AXIS_VOCAB
from slm_jax.models import interface
from slm_jax.gin_utils import ConfigError
from slm_jax.models.attention import ATTENTION_IMPLS, Attention, DecodeState, resolve_attention_impl
from slm_jax.models.interface import ModelOutput
from slm_jax.models.layers import ROPE_TYPES, DenseGeneral, Embed, RMSNorm, RoPE, SwiGLU

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a decoder (gin: `DecoderConfig.*`). Everything that changes
    parameter shapes is here. Validated once, in `__post_init__` (ValueError naming the key).

    vocab_size: embedding rows / logits, >= 1 (a multiple of 128 is efficient).
    embed_dim: model width d, >= 1.
    mlp_dim: SwiGLU hidden width, >= 1.
    num_layers: transformer blocks, >= 0 (0: embeddings straight to the head).
    num_heads: query heads, >= 1, a multiple of num_kv_heads.
    num_kv_heads: key/value heads (GQA), >= 1.
    head_dim: per-head width, even, >= 2; None: embed_dim // num_heads.
    rope_theta: RoPE base wavelength, > 0.
    rope_type: the RoPE variant, one of `slm_jax.models.layers.ROPE_TYPES` (rules and sources in
      `slm_jax.models.layers.RoPE`): "default"; "linear" (frequencies / rope_scaling_factor);
      "llama3" (Llama 3.1+'s frequency-dependent scaling: rope_scaling_factor,
      rope_low_freq_factor, rope_high_freq_factor, rope_original_max_positions). The same RoPE
      runs in training, scoring and KV-cache decoding.
    rope_scaling_factor: "linear" / "llama3" scaling factor, > 0 (1.0 with "default").
    rope_low_freq_factor, rope_high_freq_factor: "llama3" band edges, 0 < low < high (1.0 and
      4.0, Llama 3.1's, unless rope_type is "llama3").
    rope_original_max_positions: "llama3" pretraining context length, >= 1 (8192 unless
      rope_type is "llama3"). A scaling field set away from its default for a rope_type that
      does not read it is refused rather than ignored.
    tie_embeddings: the output head reuses the embedding matrix.
    use_qkv_bias: q/k/v projections have biases (Qwen2).
    qk_norm: RMSNorm of each query and key head over head_dim before RoPE (Qwen3), with
      norm_eps; params `attention/query_norm/scale`, `attention/key_norm/scale` [head_dim].
    norm_eps: RMSNorm epsilon, > 0.
    init_std: stddev of the normal initialiser, >= 0.
    dtype: compute dtype name (e.g. "bfloat16", "float32").
    param_dtype: parameter dtype name.
    scan_layers: stack the blocks with `nn.scan` (params get a leading `layers` axis).
    remat_policy: activation rematerialisation, one of `REMAT_POLICIES`.
    attention_impl: one of `slm_jax.models.attention.ATTENTION_IMPLS`: "xla" (reference), "splash"
      (TPU Pallas), "flash_gpu" (GPU Pallas/Triton), "cudnn", "auto" (per platform; the fused path
      where it passes a probe at the run's shapes, logged once), "*_interpret" (tests).
    ctc_num_classes: classes of the mSLAM CTC head over the final hidden states, >= 0 (0: no
      head); the size of the run's CharVocabulary (padded to the tensor-parallel size).
    """

    vocab_size: int = 512
    embed_dim: int = 64
    mlp_dim: int = 172
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    tie_embeddings: bool = False
    use_qkv_bias: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    ctc_num_classes: int = 0

    def __post_init__(self):
        for name, low in (("vocab_size", 1), ("embed_dim", 1), ("mlp_dim", 1), ("num_layers", 0),
                          ("num_heads", 1), ("num_kv_heads", 1), ("ctc_num_classes", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"DecoderConfig.{name}={getattr(self, name)} must be >= {low}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"DecoderConfig.num_heads={self.num_heads} must be a multiple of "
                f"DecoderConfig.num_kv_heads={self.num_kv_heads}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"DecoderConfig.remat_policy={self.remat_policy!r}: expected one of "
                             f"{sorted(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"DecoderConfig.attention_impl={self.attention_impl!r}: expected one of "
                             f"{ATTENTION_IMPLS}")
        if self.resolved_head_dim % 2 or self.resolved_head_dim < 2:
            raise ConfigError(f"DecoderConfig.head_dim={self.resolved_head_dim} must be even for RoPE (and >= 2)")
        for name in ("rope_theta", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"DecoderConfig.{name}={getattr(self, name)} must be > 0")
        self._check_rope()
        if not self.init_std >= 0:
            raise ConfigError(f"DecoderConfig.init_std={self.init_std} must be >= 0")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as e:
                raise ConfigError(f"DecoderConfig.{name}={getattr(self, name)!r} is not a dtype name") from e

    # the scaling fields each rope_type reads (the others must stay at their defaults)
    _ROPE_READS = {"default": (), "linear": ("rope_scaling_factor",),
                   "llama3": ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                              "rope_original_max_positions")}

    def _check_rope(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(f"DecoderConfig.rope_type={self.rope_type!r}: expected one of {ROPE_TYPES}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                     "rope_original_max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"DecoderConfig.{name}={value!r} must be a number")
            if name not in self._ROPE_READS[self.rope_type] and value != defaults[name]:
                readers = [t for t, reads in self._ROPE_READS.items() if name in reads]
                raise ConfigError(f"DecoderConfig.{name}={value!r} has no effect with "
                                  f"DecoderConfig.rope_type={self.rope_type!r}; leave it at {defaults[name]!r} or "
                                  f"set a rope_type that reads it ({readers})")
        if not self.rope_scaling_factor > 0:
            raise ConfigError(f"DecoderConfig.rope_scaling_factor={self.rope_scaling_factor} must be > 0")
        if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
            raise ConfigError(f"DecoderConfig.rope_low_freq_factor={self.rope_low_freq_factor} and "
                              f"DecoderConfig.rope_high_freq_factor={self.rope_high_freq_factor} must satisfy "
                              "0 < low < high")
        if int(self.rope_original_max_positions) != self.rope_original_max_positions or \
                self.rope_original_max_positions < 1:
            raise ConfigError(f"DecoderConfig.rope_original_max_positions={self.rope_original_max_positions} must "
                              "be an int >= 1")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.embed_dim // self.num_heads

    @property
    def rope(self) -> RoPE:
        """The RoPE variant of this config (`slm_jax.models.layers.RoPE`)."""
        return RoPE(float(self.rope_theta), self.rope_type, float(self.rope_scaling_factor),
                    float(self.rope_low_freq_factor), float(self.rope_high_freq_factor),
                    int(self.rope_original_max_positions))

    # Fields that decide parameter shapes: a checkpoint is only compatible if these match.
    SHAPE_FIELDS = ("vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads", "num_kv_heads",
                    "head_dim", "tie_embeddings", "use_qkv_bias", "qk_norm", "scan_layers", "param_dtype",
                    "ctc_num_classes")
    # Shape fields added after runs already recorded model_config.json: a record without the key
    # was written with this value (`run_dir.check_compatible` reads it so).
    RECORD_DEFAULTS = {"qk_norm": False}

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
        norms = 2 * self.embed_dim + (2 * hd if self.qk_norm else 0)
        total = self.num_layers * (self._layer_matmul_params() + bias + norms) + self.embed_dim
        total += (self.embed_dim + 1) * self.ctc_num_classes
        if include_embeddings:
            total += self.vocab_size * self.embed_dim * (1 if self.tie_embeddings else 2)
        return total

    def resolved_attention_impl(self, length: int) -> str:
        """`attention_impl` resolved for rows of `length` tokens on the traced program's platform
        (`slm_jax.models.attention.resolve_attention_impl`; `auto` probes at these shapes)."""
        return resolve_attention_impl(self.attention_impl, length=length, num_heads=self.num_heads,
                                      num_kv_heads=self.num_kv_heads, head_dim=self.resolved_head_dim,
                                      dtype=self.dtype)

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
    def __call__(self, x, segment_ids, positions, kv_cache=None, decode=None):
        """x -> x; in decode mode (`kv_cache`, `decode`: see `Attention`) -> (x, new kv_cache)."""
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        x = nn.with_logical_constraint(x, (AXIS_BATCH, AXIS_LENGTH, AXIS_EMBED))
        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="attention_norm")(x)
        h = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.embed_dim, cfg.rope,
                      cfg.init_std, impl=self.attention_impl, use_qkv_bias=cfg.use_qkv_bias, dtype=dtype,
                      param_dtype=pdtype, qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps,
                      name="attention")(h, segment_ids, positions, kv_cache, decode)
        h, new_cache = h if kv_cache is not None else (h, None)
        x = x + h
        h = RMSNorm(cfg.norm_eps, dtype, pdtype, name="mlp_norm")(x)
        h = SwiGLU(cfg.embed_dim, cfg.mlp_dim, cfg.init_std, dtype, pdtype, name="mlp")(h)
        x = nn.with_logical_constraint(x + h, (AXIS_BATCH, AXIS_LENGTH, AXIS_EMBED))
        return x if kv_cache is None else (x, new_cache)


class _ScanBlock(DecoderBlock):
    """DecoderBlock with the (carry, per-step output) signature nn.scan needs; the per-step
    output is (new kv cache or None, the block's output if `collect_hidden` else None)."""

    collect_hidden: bool = False

    def __call__(self, x, segment_ids, positions, kv_cache=None, decode=None):  # type: ignore[override]
        out = super().__call__(x, segment_ids, positions, kv_cache, decode)
        x, new_cache = out if kv_cache is not None else (out, None)
        return x, (new_cache, x if self.collect_hidden else None)


def init_cache(cfg: DecoderConfig, batch: int, slots: int) -> dict:
    """An empty KV cache for `Decoder(cfg)(..., cache=...)`: `batch` rows of `slots` buffer slots.

    {'key', 'value': [layers, batch, slots, kv_heads, head_dim] in cfg.dtype,
     'segment_ids': int32 [batch, slots] (0 = empty), 'index': int32 scalar (next free slot)}.
    """
    shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.resolved_head_dim)
    return {"key": jnp.zeros(shape, cfg.dtype), "value": jnp.zeros(shape, cfg.dtype),
            "segment_ids": jnp.zeros((batch, slots), jnp.int32), "index": jnp.zeros((), jnp.int32)}


class Decoder(nn.Module):
    """The dense decoder module; `__call__` returns a `ModelOutput` in every mode."""

    config: DecoderConfig

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, *, return_logits: bool = True,
                 return_hidden: bool = False, return_layer_hidden: bool = False,
                 return_ctc_logits: bool = False, cache=None) -> ModelOutput:
        """tokens int32 [b, t] (+ packed segment ids, 0 = padding, and RoPE positions, both
        int32 [b, t]; default one segment, positions 0..t-1) -> `ModelOutput` with
        `logits` (fp32 [b, t, vocab]; `return_logits`), `hidden` (final normed states
        [b, t, d]), `layer_hidden` (embeddings + every block's output [layers + 1, b, t, d]),
        `ctc_logits` (fp32 [b, t, ctc_num_classes]; ValueError when the config has no CTC head).

        Decode mode: with `cache` (from `init_cache`) the tokens are written at the cache's next
        free slots and `cache` of the output is the new cache. At init every configured
        parameter (output head, CTC head) is created whatever the flags request.
        """
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = self.is_initializing()
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)

        embed = Embed(cfg.vocab_size, cfg.embed_dim, cfg.init_std, dtype, pdtype, name="embed")
        x = embed(tokens)
        x = nn.with_logical_constraint(x, (AXIS_BATCH, AXIS_LENGTH, AXIS_EMBED))

        decode = None
        if cache is not None:
            decode = DecodeState(cache["index"], jax.lax.dynamic_update_slice(
                cache["segment_ids"], segment_ids.astype(jnp.int32), (0, cache["index"])))
        embedded = x
        x, new_kv, layer_outputs = self._blocks(x, segment_ids, positions, cache, decode, return_layer_hidden)
        layer_hidden = jnp.concatenate([embedded[None], layer_outputs], axis=0) if return_layer_hidden else None

        x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)
        logits = lm_logits(cfg, x, embed, dtype, pdtype) if return_logits or init else None
        ctc = None
        if return_ctc_logits or (init and cfg.ctc_num_classes):
            ctc = ctc_logits(cfg, x, dtype, pdtype)
        new_cache = None
        if cache is not None:
            new_cache = {**new_kv, "segment_ids": decode.cache_segment_ids, "index": cache["index"] + tokens.shape[-1]}
        return ModelOutput(logits=logits if return_logits else None, hidden=x if return_hidden else None,
                           layer_hidden=layer_hidden, ctc_logits=ctc if return_ctc_logits else None, cache=new_cache)

    def _blocks(self, x, segment_ids, positions, cache, decode, collect_hidden: bool):
        """The layer stack -> (x, new {'key','value'} or None, stacked block outputs or None)."""
        cfg = self.config
        # decoding always uses the cache's einsums (Attention), so only training/scoring resolve
        impl = "xla" if cache is not None else cfg.resolved_attention_impl(x.shape[1])
        layer_kv = None if cache is None else {"key": cache["key"], "value": cache["value"]}
        block_cls = _ScanBlock if cfg.scan_layers else DecoderBlock
        if cfg.remat_policy != "none" and cache is None:  # decoding keeps no activations to save
            block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            extra_kwargs = {"collect_hidden": True} if collect_hidden else {}
            args, in_axes = (segment_ids, positions), (nn.broadcast, nn.broadcast)
            if cache is not None:  # each layer gets its slice of the cache; the decode state is shared
                args, in_axes = (*args, layer_kv, decode), (*in_axes, 0, nn.broadcast)
            stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=in_axes, length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, (new_kv, hidden) = stack(cfg, impl, name="layers", **extra_kwargs)(x, *args)
            return x, new_kv, hidden
        new_kvs, hidden = [], []
        for i in range(cfg.num_layers):
            block = block_cls(cfg, impl, name=f"layers_{i}")
            if cache is None:
                x = block(x, segment_ids, positions)
            else:
                x, kv = block(x, segment_ids, positions, jax.tree.map(lambda a, i=i: a[i], layer_kv), decode)
                new_kvs.append(kv)
            hidden.append(x)
        new_kv = jax.tree.map(lambda *a: jnp.stack(a), *new_kvs) if new_kvs else None
        return x, new_kv, (jnp.stack(hidden) if collect_hidden else None)


def lm_logits(cfg: DecoderConfig, hidden, embed, dtype, pdtype):
    """fp32 logits [b, t, vocab] of `hidden` [b, t, d]: the tied embedding's `attend`, or an
    `lm_head` (params under `lm_head`, input width d) when `cfg.tie_embeddings` is False."""
    if cfg.tie_embeddings:
        logits = embed.attend(hidden)
    else:
        logits = DenseGeneral((hidden.shape[-1],), (cfg.vocab_size,), (AXIS_EMBED, AXIS_VOCAB), cfg.init_std,
                              dtype=dtype, param_dtype=pdtype, name="lm_head")(hidden)
    return nn.with_logical_constraint(logits, (AXIS_BATCH, AXIS_LENGTH, AXIS_VOCAB)).astype(jnp.float32)


def ctc_logits(cfg: DecoderConfig, hidden, dtype, pdtype):
    """The mSLAM CTC head on `hidden` [b, t, d] (params under `ctc_head`)."""
    from slm_jax.models.ctc import CTCHead
    if cfg.ctc_num_classes < 1:
        raise ValueError("CTC logits requested but DecoderConfig.ctc_num_classes is 0; set it to the size of the "
                         "run's CharVocabulary")
    return CTCHead(cfg.ctc_num_classes, hidden.shape[-1], cfg.init_std, dtype=dtype, param_dtype=pdtype,
                   name="ctc_head")(hidden)


@interface.register
class DecoderFamily(interface.ModelFamily):
    """The dense `Decoder`: per-layer hidden states, KV-cache decoding, every target covered."""

    config_type = DecoderConfig
    module_type = Decoder
    has_layer_hidden = True
    supports_kv_cache = True

    def dense_config(self) -> DecoderConfig:
        return self.config

    def forward(self, module, params, features, *, step=None, logits=True, hidden=False, layer_hidden=False,
                ctc_logits=False) -> ModelOutput:
        """`interface.ModelFamily.forward`; reads input tokens, segment ids and positions only."""
        del step
        return module.apply({"params": params}, features[contract.DECODER_INPUT_TOKENS],
                            features.get(contract.DECODER_SEGMENT_IDS), features.get(contract.DECODER_POSITIONS),
                            return_logits=logits, return_hidden=hidden, return_layer_hidden=layer_hidden,
                            return_ctc_logits=ctc_logits)

    def init_cache(self, batch: int, slots: int) -> dict:
        return init_cache(self.config, batch, slots)

    def decode(self, module, params, tokens, segment_ids, positions, cache) -> ModelOutput:
        return module.apply({"params": params}, tokens, segment_ids, positions, cache=cache)
