"""A naive numpy fp64 Llama / Qwen2 / Qwen3 decoder used as the reference for slm_jax's Decoder.

Deliberately different from the model code: one example and one packed segment at a
time (slicing, not masking), explicit loops over heads, rotate-half RoPE written out (its
scaled variants per pair of dimensions, branch by branch), q/k norm per head.
"""
from __future__ import annotations

import numpy as np


def unstack_layers(params: dict, num_layers: int) -> list[dict]:
    """Scanned params (leading layers axis under 'layers') -> list of per-layer dicts."""
    if "layers" in params:
        stacked = params["layers"]
        return [_map(lambda x, i=i: np.asarray(x)[i], stacked) for i in range(num_layers)]
    return [params[f"layers_{i}"] for i in range(num_layers)]


def _map(fn, tree):
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _inv_freq(j, d, cfg):
    """Inverse frequency of pair j (of d / 2), written out from Llama 3.1's published rule."""
    freq = cfg.rope_theta ** (-(2.0 * j) / d)
    kind = getattr(cfg, "rope_type", "default")
    if kind == "default":
        return freq
    if kind == "linear":
        return freq / cfg.rope_scaling_factor
    assert kind == "llama3", kind
    wavelen = 2.0 * np.pi / freq
    ctx = cfg.rope_original_max_positions
    if wavelen < ctx / cfg.rope_high_freq_factor:  # high frequency: unchanged
        return freq
    if wavelen > ctx / cfg.rope_low_freq_factor:  # low frequency: interpolated by the factor
        return freq / cfg.rope_scaling_factor
    s = (ctx / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    return (1.0 - s) * freq / cfg.rope_scaling_factor + s * freq


def _rope(x, positions, cfg):
    """x: [t, heads, d]."""
    d = x.shape[-1]
    half = d // 2
    out = np.empty_like(x)
    for j in range(half):
        ang = positions[:, None] * _inv_freq(j, d, cfg)
        a, b = x[..., j], x[..., j + half]
        out[..., j] = a * np.cos(ang) - b * np.sin(ang)
        out[..., j + half] = b * np.cos(ang) + a * np.sin(ang)
    return out


def _attention(x, p, positions, cfg):
    """x: [t, d] of ONE segment; plain causal attention."""
    t = x.shape[0]
    wq, wk, wv, wo = (np.asarray(p[n]["kernel"], np.float64) for n in ("query", "key", "value", "out"))
    q = np.einsum("td,dhk->thk", x, wq)
    k = np.einsum("td,dhk->thk", x, wk)
    v = np.einsum("td,dhk->thk", x, wv)
    if "bias" in p["query"]:
        q, k, v = (a + np.asarray(p[n]["bias"], np.float64) for a, n in ((q, "query"), (k, "key"), (v, "value")))
    if getattr(cfg, "qk_norm", False):  # Qwen3: per-head RMSNorm of q and k over head_dim, before RoPE
        q = _rms(q, p["query_norm"]["scale"], cfg.norm_eps)
        k = _rms(k, p["key_norm"]["scale"], cfg.norm_eps)
    q, k = _rope(q, positions, cfg), _rope(k, positions, cfg)
    heads, kv_heads = q.shape[1], k.shape[1]
    out = np.zeros_like(q)
    for h in range(heads):
        kvh = h // (heads // kv_heads)
        scores = q[:, h] @ k[:, kvh].T / np.sqrt(q.shape[-1])
        scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, h] = (scores / scores.sum(-1, keepdims=True)) @ v[:, kvh]
    return np.einsum("thk,hkd->td", out, wo)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def naive_logits(params: dict, cfg, tokens, segment_ids, positions) -> np.ndarray:
    """fp64 logits [b, t, vocab]; each packed segment processed on its own."""
    params = _map(lambda x: np.asarray(x, np.float64), params)
    layers = unstack_layers(params, cfg.num_layers)
    emb = params["embed"]["embedding"]
    b, t = tokens.shape
    logits = np.zeros((b, t, cfg.vocab_size))
    for i in range(b):
        for seg in np.unique(segment_ids[i]):
            idx = np.nonzero(segment_ids[i] == seg)[0]
            x = emb[tokens[i, idx]]
            pos = positions[i, idx].astype(np.float64)
            for lp in layers:
                x = x + _attention(_rms(x, lp["attention_norm"]["scale"], cfg.norm_eps), lp["attention"], pos, cfg)
                h = _rms(x, lp["mlp_norm"]["scale"], cfg.norm_eps)
                m = lp["mlp"]
                x = x + (_silu(h @ m["gate"]["kernel"]) * (h @ m["up"]["kernel"])) @ m["down"]["kernel"]
            x = _rms(x, params["final_norm"]["scale"], cfg.norm_eps)
            head = emb.T if cfg.tie_embeddings else params["lm_head"]["kernel"]
            logits[i, idx] = x @ head
    return logits
