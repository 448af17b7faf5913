"""How a Hugging Face Llama/Qwen2 checkpoint maps onto slm_jax's `Decoder`, both ways.

config.json <-> `DecoderConfig` fields (`decoder_fields_from_hf`, `hf_config_from_decoder`),
and HF tensor names/shapes <-> Decoder param paths (`leaf_sources`, `to_param`, `to_hf`).

HF stores a linear layer as `weight [out, in]` (torch computes x @ W.T); slm_jax stores
`kernel [in, *out]` with heads split out ([embed, heads, head_dim]), so a weight is
transposed then reshaped. Both use the half-split RoPE layout (HF's `rotate_half`), so
q/k need no permutation. Norm scales, biases and the embedding only change shape.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from slm_jax.models.decoder import DecoderConfig

# model_type -> the transformers class that loads it
CAUSAL_LM_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# transformers' config-class defaults for keys an (older) config.json may leave out
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu"}
LM_HEAD = "lm_head.weight"


class UnsupportedModelError(ValueError):
    """A Hugging Face model slm_jax's Decoder cannot represent exactly."""


# --------------------------------------------------------------------------------------
# config.json <-> DecoderConfig
# --------------------------------------------------------------------------------------


def read_hf_config(hf_dir: str) -> dict[str, Any]:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; a Hugging Face checkpoint directory holds config.json "
                                "and model.safetensors (or model.safetensors.index.json + shards)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err


def _rope_theta(config: dict, where: str) -> float:
    """The RoPE base; scaled RoPE variants (llama3, yarn, linear, ...) are refused."""
    parameters = config.get("rope_parameters") or {}
    for key, spec in (("rope_parameters", parameters), ("rope_scaling", config.get("rope_scaling") or {})):
        rope_type = spec.get("rope_type", spec.get("type", "default"))
        if rope_type != "default":
            raise UnsupportedModelError(f"{where}: {key}.rope_type={rope_type!r} is not supported; slm_jax's RoPE "
                                        "is the default (unscaled) one")
    return float(config.get("rope_theta", parameters.get("rope_theta", _HF_DEFAULTS["rope_theta"])))


def _get(config: dict, key: str, where: str):
    if key in config and config[key] is not None:
        return config[key]
    if key in _HF_DEFAULTS:
        return _HF_DEFAULTS[key]
    raise UnsupportedModelError(f"{where}: missing key {key!r}")


def _refuse(config: dict, where: str, key: str, supported, why: str) -> None:
    if config.get(key, supported) != supported:
        raise UnsupportedModelError(f"{where}: {key}={config[key]!r} is not supported ({why})")


def decoder_fields_from_hf(config: dict, where: str = "config.json") -> tuple[str, dict[str, Any]]:
    """(family, DecoderConfig keyword arguments) of a HF config; errors name `where` and the key."""
    family = config.get("model_type")
    if family not in CAUSAL_LM_CLASSES:
        raise UnsupportedModelError(f"{where}: model_type={family!r} is not supported; import-hf reads "
                                    f"{sorted(CAUSAL_LM_CLASSES)} (Llama / Qwen2 decoders)")
    _refuse(config, where, "hidden_act", "silu", "the Decoder's MLP is SwiGLU")
    if family == "llama":
        _refuse(config, where, "attention_bias", False, "the Decoder has no o_proj bias")
        _refuse(config, where, "mlp_bias", False, "the Decoder's MLP has no biases")
    else:
        _refuse(config, where, "use_sliding_window", False, "the Decoder attends over the whole segment")
    heads = int(_get(config, "num_attention_heads", where))
    hidden = int(_get(config, "hidden_size", where))
    fields = dict(
        vocab_size=int(_get(config, "vocab_size", where)),
        embed_dim=hidden,
        mlp_dim=int(_get(config, "intermediate_size", where)),
        num_layers=int(_get(config, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        rope_theta=_rope_theta(config, where),
        tie_embeddings=bool(_get(config, "tie_word_embeddings", where)),
        use_qkv_bias=family == "qwen2",  # Qwen2 always has q/k/v biases (and no o_proj bias)
        norm_eps=float(_get(config, "rms_norm_eps", where)),
    )
    return family, fields


def hf_config_from_decoder(cfg: DecoderConfig, family: str, dtype: str, base: dict | None = None) -> dict[str, Any]:
    """config.json for `cfg` as a `family` model; `base` (the imported model's config) keeps its other keys
    (token ids, max_position_embeddings, ...) when it is of the same family."""
    check_family(cfg, family)
    out = dict(base) if base and base.get("model_type") == family else {}
    out.pop("rope_scaling", None)
    out.update(
        architectures=[CAUSAL_LM_CLASSES[family]], model_type=family, vocab_size=cfg.vocab_size,
        hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.resolved_head_dim,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu",
        # transformers 5 reads rope_parameters, 4.x reads rope_theta: write both
        rope_theta=cfg.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )
    out.update({"attention_bias": False, "mlp_bias": False} if family == "llama" else {"use_sliding_window": False})
    out["torch_dtype" if "torch_dtype" in out else "dtype"] = dtype
    return out


def check_family(cfg: DecoderConfig, family: str) -> None:
    if family not in CAUSAL_LM_CLASSES:
        raise UnsupportedModelError(f"--family={family!r}: expected one of {sorted(CAUSAL_LM_CLASSES)}")
    if cfg.use_qkv_bias != (family == "qwen2"):
        raise UnsupportedModelError(
            f"DecoderConfig.use_qkv_bias={cfg.use_qkv_bias} does not fit --family={family}: Qwen2 has q/k/v biases, "
            f"Llama has none; use --family={'qwen2' if cfg.use_qkv_bias else 'llama'}")


# --------------------------------------------------------------------------------------
# tensors <-> params
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor kind (one per layer when `per_layer`) and the Decoder param it becomes."""

    hf_name: str  # "model.layers.{layer}.mlp.up_proj.weight"
    param: tuple[str, ...]  # path in the Decoder params (inside the layer when per_layer)
    hf_shape: tuple[int, ...]
    transpose: bool  # a HF linear weight [out, in] -> kernel [in, *out]
    per_layer: bool = False
    vocab_rows: bool = False  # embedding / lm_head: one HF row per token id


@dataclasses.dataclass(frozen=True)
class LeafSource:
    """The HF tensor(s) one Decoder param leaf is made of."""

    tensor: TensorMap
    layers: tuple[int, ...] = ()  # () for a tensor outside the layers
    stacked: bool = False  # scan_layers: the leaf is [num_layers, *per-layer shape]

    @property
    def hf_names(self) -> list[str]:
        if not self.layers:
            return [self.tensor.hf_name]
        return [self.tensor.hf_name.format(layer=i) for i in self.layers]


def tensor_maps(cfg: DecoderConfig, hf_vocab_size: int, prefix: str = "model.") -> list[TensorMap]:
    """Every HF tensor of `cfg`'s model; `hf_vocab_size` rows in the embedding / lm_head."""
    d, f, hd = cfg.embed_dim, cfg.mlp_dim, cfg.resolved_head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    maps = [TensorMap(f"{prefix}embed_tokens.weight", ("embed", "embedding"), (hf_vocab_size, d), False,
                      vocab_rows=True),
            TensorMap(f"{prefix}norm.weight", ("final_norm", "scale"), (d,), False)]
    if not cfg.tie_embeddings:
        maps.append(TensorMap(LM_HEAD, ("lm_head", "kernel"), (hf_vocab_size, d), True, vocab_rows=True))
    layer = f"{prefix}layers.{{layer}}."
    per_layer = [
        ("self_attn.q_proj.weight", ("attention", "query", "kernel"), (q, d), True),
        ("self_attn.k_proj.weight", ("attention", "key", "kernel"), (kv, d), True),
        ("self_attn.v_proj.weight", ("attention", "value", "kernel"), (kv, d), True),
        ("self_attn.o_proj.weight", ("attention", "out", "kernel"), (d, q), True),
        ("mlp.gate_proj.weight", ("mlp", "gate", "kernel"), (f, d), True),
        ("mlp.up_proj.weight", ("mlp", "up", "kernel"), (f, d), True),
        ("mlp.down_proj.weight", ("mlp", "down", "kernel"), (d, f), True),
        ("input_layernorm.weight", ("attention_norm", "scale"), (d,), False),
        ("post_attention_layernorm.weight", ("mlp_norm", "scale"), (d,), False),
    ]
    if cfg.use_qkv_bias:
        per_layer += [(f"self_attn.{name}_proj.bias", ("attention", param, "bias"), (size,), False)
                      for name, param, size in (("q", "query", q), ("k", "key", kv), ("v", "value", kv))]
    maps += [TensorMap(layer + name, param, shape, transpose, per_layer=True)
             for name, param, shape, transpose in per_layer]
    return maps


def leaf_sources(cfg: DecoderConfig, hf_vocab_size: int, prefix: str = "model.") -> dict[tuple[str, ...], LeafSource]:
    """Decoder param path -> the HF tensors it is made of (stacked over layers with scan_layers)."""
    out = {}
    for tm in tensor_maps(cfg, hf_vocab_size, prefix):
        if not tm.per_layer:
            out[tm.param] = LeafSource(tm)
        elif cfg.scan_layers:
            out[("layers", *tm.param)] = LeafSource(tm, tuple(range(cfg.num_layers)), stacked=True)
        else:
            out.update({(f"layers_{i}", *tm.param): LeafSource(tm, (i,)) for i in range(cfg.num_layers)})
    return out


def to_param(hf_array: np.ndarray, tm: TensorMap, shape: tuple[int, ...]) -> np.ndarray:
    """A HF tensor in the Decoder's layout (`shape`: the param's per-layer shape)."""
    return (hf_array.T if tm.transpose else hf_array).reshape(shape)


def to_hf(param: np.ndarray, tm: TensorMap) -> np.ndarray:
    """A Decoder param (one layer of it) in HF's layout, contiguous for safetensors."""
    if tm.transpose:
        return np.ascontiguousarray(param.reshape(tm.hf_shape[::-1]).T)
    return np.ascontiguousarray(param.reshape(tm.hf_shape))


def path_name(path: tuple[str, ...]) -> str:
    return "/".join(path)
