"""How a Hugging Face Llama / Qwen2 / Qwen3 checkpoint maps onto slm_jax's `Decoder`, both ways.

config.json <-> `DecoderConfig` fields (`decoder_fields_from_hf`, `hf_config_from_decoder`),
and HF tensor names/shapes <-> Decoder param paths (`leaf_sources`, `to_param`, `to_hf`).

HF stores a linear layer as `weight [out, in]` (torch computes x @ W.T); slm_jax stores
`kernel [in, *out]` with heads split out ([embed, heads, head_dim]), so a weight is
transposed then reshaped. Both use the half-split RoPE layout (HF's `rotate_half`), so
q/k need no permutation. Norm scales, biases and the embedding only change shape.

Families (config.json `model_type`): `llama` (Llama 2 / 3.x, SmolLM2, ...), `qwen2`
(Qwen2 / Qwen2.5: q/k/v biases), `qwen3` (Qwen3 dense: per-head q/k RMSNorm, explicit
head_dim). RoPE: the default, `linear` and `llama3` variants (`rope_scaling` of
transformers 4.x or `rope_parameters` of transformers 5, both read and both written).
Whatever the Decoder cannot compute exactly is refused from config.json alone, before
any weight is read, naming the file and key (`decoder_fields_from_hf`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from slm_jax.models.decoder import DecoderConfig

# model_type -> the transformers class that loads it
CAUSAL_LM_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# model_type -> (use_qkv_bias, qk_norm): what the family's attention layer has
FAMILY_ATTENTION = {"llama": (False, False), "qwen2": (True, False), "qwen3": (False, True)}
# config.json RoPE type -> its keys besides rope_type / type / rope_theta, and the DecoderConfig field of each
ROPE_KEYS = {
    "default": {},
    "linear": {"factor": "rope_scaling_factor"},
    "llama3": {"factor": "rope_scaling_factor", "low_freq_factor": "rope_low_freq_factor",
               "high_freq_factor": "rope_high_freq_factor",
               "original_max_position_embeddings": "rope_original_max_positions"},
}
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


def _rope_spec(config: dict, key: str, where: str) -> dict | None:
    """config[key] (rope_scaling / rope_parameters) checked and normalised: {'rope_type': ..., its
    keys...} without rope_theta; None when absent or empty."""
    spec = config.get(key)
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise UnsupportedModelError(f"{where}: {key}={spec!r} is not an object")
    if all(isinstance(v, dict) or v is None for v in spec.values()):
        raise UnsupportedModelError(f"{where}: {key} holds RoPE parameters per layer type ({sorted(spec)}); the "
                                    "Decoder applies one RoPE to every layer")
    names = {spec[k] for k in ("rope_type", "type") if k in spec}
    if len(names) > 1:
        raise UnsupportedModelError(f"{where}: {key}.rope_type={spec['rope_type']!r} and {key}.type={spec['type']!r} "
                                    "disagree")
    rope_type = names.pop() if names else "default"
    if rope_type not in ROPE_KEYS:
        raise UnsupportedModelError(f"{where}: {key}.rope_type={rope_type!r} is not supported; slm_jax's RoPE "
                                    f"variants are {sorted(ROPE_KEYS)} (DecoderConfig.rope_type)")
    known = set(ROPE_KEYS[rope_type])
    out = {"rope_type": rope_type}
    for name, value in spec.items():
        if name in ("rope_type", "type", "rope_theta"):
            continue
        if name == "partial_rotary_factor" and value in (1, 1.0):
            continue  # the whole head rotates, as in the Decoder
        if name not in known:
            raise UnsupportedModelError(f"{where}: {key}.{name}={value!r} is not supported with rope_type="
                                        f"{rope_type!r} (its keys: {sorted(known) or 'none besides rope_theta'})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UnsupportedModelError(f"{where}: {key}.{name}={value!r} must be a number")
        out[name] = value
    missing = sorted(known - set(out))
    if missing:
        raise UnsupportedModelError(f"{where}: {key}.{missing[0]} is missing (rope_type={rope_type!r} needs "
                                    f"{sorted(known)})")
    if "factor" in out and not out["factor"] > 0:
        raise UnsupportedModelError(f"{where}: {key}.factor={out['factor']!r} must be > 0")
    if rope_type == "llama3":
        if not 0 < out["low_freq_factor"] < out["high_freq_factor"]:
            raise UnsupportedModelError(f"{where}: {key}.low_freq_factor={out['low_freq_factor']!r} and "
                                        f"{key}.high_freq_factor={out['high_freq_factor']!r} must satisfy "
                                        "0 < low < high")
        original = out["original_max_position_embeddings"]
        if int(original) != original or original < 1:
            raise UnsupportedModelError(f"{where}: {key}.original_max_position_embeddings={original!r} must be an "
                                        "int >= 1")
    return out


def rope_fields_from_hf(config: dict, where: str) -> dict[str, Any]:
    """DecoderConfig RoPE fields (rope_theta, rope_type and its scaling fields) of a HF config.

    Reads `rope_scaling` (transformers 4.x; `type` or `rope_type`) and `rope_parameters`
    (transformers 5): when both are set they must describe the same RoPE; `rope_theta` may sit at
    the top level or inside either and must agree where repeated. Refuses (naming `where` and the
    key) a type other than `ROPE_KEYS`' (e.g. yarn, dynamic, longrope), keys the type does not
    define, missing keys, per-layer-type RoPE and a partial rotary factor other than 1."""
    specs = {key: spec for key in ("rope_scaling", "rope_parameters")
             if (spec := _rope_spec(config, key, where)) is not None}
    if len(specs) == 2 and specs["rope_scaling"] != specs["rope_parameters"]:
        raise UnsupportedModelError(f"{where}: rope_scaling={config['rope_scaling']!r} and rope_parameters="
                                    f"{config['rope_parameters']!r} describe different RoPEs")
    thetas = {key: value for key, value in (("rope_theta", config.get("rope_theta")),
                                            *((f"{k}.rope_theta", (config.get(k) or {}).get("rope_theta"))
                                              for k in specs)) if value is not None}
    if len({float(v) for v in thetas.values()}) > 1:
        raise UnsupportedModelError(f"{where}: the RoPE base is ambiguous: {thetas}")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"{where}: partial_rotary_factor={config['partial_rotary_factor']!r} is not "
                                    "supported (the Decoder rotates the whole head)")
    spec = next(iter(specs.values()), {"rope_type": "default"})
    fields = {"rope_theta": float(next(iter(thetas.values()), _HF_DEFAULTS["rope_theta"])),
              "rope_type": spec["rope_type"]}
    for name, field in ROPE_KEYS[spec["rope_type"]].items():
        fields[field] = int(spec[name]) if field == "rope_original_max_positions" else float(spec[name])
    return fields


def hf_rope_fields(cfg: DecoderConfig) -> dict[str, Any]:
    """config.json's RoPE keys for `cfg`, in both forms: `rope_theta` + `rope_scaling` (null for the
    default RoPE; what transformers 4.x reads) and `rope_parameters` (what transformers 5 reads)."""
    scaling = {hf: getattr(cfg, field) for hf, field in ROPE_KEYS[cfg.rope_type].items()}
    return {"rope_theta": cfg.rope_theta,
            "rope_scaling": {"rope_type": cfg.rope_type, **scaling} if scaling else None,
            "rope_parameters": {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta, **scaling}}


def _get(config: dict, key: str, where: str):
    if key in config and config[key] is not None:
        return config[key]
    if key in _HF_DEFAULTS:
        return _HF_DEFAULTS[key]
    raise UnsupportedModelError(f"{where}: missing key {key!r}")


def _refuse(config: dict, where: str, key: str, supported, why: str) -> None:
    if config.get(key, supported) != supported:
        raise UnsupportedModelError(f"{where}: {key}={config[key]!r} is not supported ({why})")


def _refuse_unsupported(config: dict, family: str, where: str) -> None:
    """Keys whose value the Decoder cannot compute (checked before any weight is read)."""
    if config.get("quantization_config") is not None:
        raise UnsupportedModelError(f"{where}: quantization_config is not supported (import-hf reads full-precision "
                                    "weights; load and dequantize with transformers, save_pretrained, import that)")
    _refuse(config, where, "hidden_act", "silu", "the Decoder's MLP is SwiGLU")
    if family in ("llama", "qwen3"):
        _refuse(config, where, "attention_bias", False, "the Decoder's q/k/v/o projections have no biases in "
                f"{family}; Qwen2's q/k/v biases come with model_type='qwen2'")
    if family == "llama":
        _refuse(config, where, "mlp_bias", False, "the Decoder's MLP has no biases")
    if family in ("qwen2", "qwen3"):
        _refuse(config, where, "use_sliding_window", False, "the Decoder attends over the whole segment")
    _refuse(config, where, "rope_interleaved", False, "the Decoder's RoPE rotates half-split pairs, as "
            "transformers' rotate_half")
    layer_types = config.get("layer_types")
    if layer_types is not None:
        other = sorted({t for t in layer_types if t != "full_attention"})
        if other:
            raise UnsupportedModelError(f"{where}: layer_types has {other} layers; the Decoder's layers all attend "
                                        "over the whole segment ('full_attention')")


def decoder_fields_from_hf(config: dict, where: str = "config.json") -> tuple[str, dict[str, Any]]:
    """(family, DecoderConfig keyword arguments) of a HF config; errors name `where` and the key."""
    family = config.get("model_type")
    if family not in CAUSAL_LM_CLASSES:
        raise UnsupportedModelError(f"{where}: model_type={family!r} is not supported; import-hf reads "
                                    f"{sorted(CAUSAL_LM_CLASSES)} (Llama / Qwen2 / Qwen3 decoders)")
    _refuse_unsupported(config, family, where)
    heads = int(_get(config, "num_attention_heads", where))
    hidden = int(_get(config, "hidden_size", where))
    qkv_bias, qk_norm = FAMILY_ATTENTION[family]
    fields = dict(
        vocab_size=int(_get(config, "vocab_size", where)),
        embed_dim=hidden,
        mlp_dim=int(_get(config, "intermediate_size", where)),
        num_layers=int(_get(config, "num_hidden_layers", where)),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        **rope_fields_from_hf(config, where),
        tie_embeddings=bool(_get(config, "tie_word_embeddings", where)),
        use_qkv_bias=qkv_bias,  # Qwen2 always has q/k/v biases (and no o_proj bias)
        qk_norm=qk_norm,  # Qwen3 always normalises q and k per head
        norm_eps=float(_get(config, "rms_norm_eps", where)),
    )
    return family, fields


def hf_config_from_decoder(cfg: DecoderConfig, family: str, dtype: str, base: dict | None = None) -> dict[str, Any]:
    """config.json for `cfg` as a `family` model; `base` (the imported model's config) keeps its other keys
    (token ids, max_position_embeddings, ...) when it is of the same family."""
    check_family(cfg, family)
    out = dict(base) if base and base.get("model_type") == family else {}
    out.update(
        architectures=[CAUSAL_LM_CLASSES[family]], model_type=family, vocab_size=cfg.vocab_size,
        hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.resolved_head_dim,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu",
        # transformers 5 reads rope_parameters, 4.x reads rope_theta + rope_scaling: write both
        **hf_rope_fields(cfg),
    )
    out.update({"llama": {"attention_bias": False, "mlp_bias": False}, "qwen2": {"use_sliding_window": False},
                "qwen3": {"attention_bias": False, "use_sliding_window": False}}[family])
    if "layer_types" in out:
        out["layer_types"] = ["full_attention"] * cfg.num_layers
    out["torch_dtype" if "torch_dtype" in out else "dtype"] = dtype
    return out


def default_family(cfg: DecoderConfig) -> str:
    """The family whose attention layer `cfg` has (Llama when neither q/k/v biases nor q/k norm)."""
    return "qwen2" if cfg.use_qkv_bias else "qwen3" if cfg.qk_norm else "llama"


def check_family(cfg: DecoderConfig, family: str) -> None:
    if family not in CAUSAL_LM_CLASSES:
        raise UnsupportedModelError(f"--family={family!r}: expected one of {sorted(CAUSAL_LM_CLASSES)}")
    if (cfg.use_qkv_bias, cfg.qk_norm) != FAMILY_ATTENTION[family]:
        raise UnsupportedModelError(
            f"DecoderConfig.use_qkv_bias={cfg.use_qkv_bias}, DecoderConfig.qk_norm={cfg.qk_norm} do not fit "
            f"--family={family}: Qwen2 has q/k/v biases, Qwen3 q/k norm, Llama neither (and no family both)"
            + ("" if cfg.use_qkv_bias and cfg.qk_norm else f"; use --family={default_family(cfg)}"))


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
    if cfg.qk_norm:
        per_layer += [(f"self_attn.{name}_norm.weight", ("attention", f"{param}_norm", "scale"), (hd,), False)
                      for name, param in (("q", "query"), ("k", "key"))]
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
