"""The decoder against a naive fp64 numpy implementation, packing isolation, gradients."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.models import attention
from slm_jax.models.decoder import Decoder, DecoderConfig
from tests.naive_decoder import naive_logits

BASE = DecoderConfig(vocab_size=97, embed_dim=32, mlp_dim=48, num_layers=3, num_heads=4, num_kv_heads=2,
                     init_std=0.2, rope_theta=500.0, dtype="float32", scan_layers=False)


def packed_batch(seed=0, batch=2, length=24):
    """Random tokens in 3 packed segments + padding; positions restart per segment."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, BASE.vocab_size, (batch, length))
    seg_lengths = [[7, 9, 5], [11, 4, 6]]
    segment_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    for i, lens in enumerate(seg_lengths[:batch]):
        start = 0
        for s, n in enumerate(lens, start=1):
            segment_ids[i, start:start + n] = s
            positions[i, start:start + n] = np.arange(n)
            start += n
        tokens[i, start:] = 0
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(segment_ids), jnp.asarray(positions)


def init_params(cfg, tokens):
    variables = Decoder(cfg).init(jax.random.key(1), tokens)
    return jax.tree.map(lambda x: x, variables["params"])


def unbox(tree):
    import flax.linen as nn
    return nn.meta.unbox(tree)


def to_scanned(params, num_layers):
    """Unscanned per-layer params -> the nn.scan layout (leading layers axis)."""
    layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.slow
def test_unscanned_fp32_equals_naive(tie):
    cfg = dataclasses.replace(BASE, tie_embeddings=tie)
    tokens, seg, pos = packed_batch()
    params = unbox(init_params(cfg, tokens))
    got = Decoder(cfg).apply({"params": params}, tokens, seg, pos).logits
    want = naive_logits(params, cfg, np.asarray(tokens), np.asarray(seg), np.asarray(pos))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_remat_bf16_matches_naive(remat):
    tokens, seg, pos = packed_batch(seed=3)
    params = unbox(init_params(BASE, tokens))
    want = naive_logits(params, BASE, np.asarray(tokens), np.asarray(seg), np.asarray(pos))
    scanned = to_scanned(dict(params), BASE.num_layers)

    cfg32 = dataclasses.replace(BASE, scan_layers=True, remat_policy=remat)
    got32 = Decoder(cfg32).apply({"params": scanned}, tokens, seg, pos).logits
    np.testing.assert_allclose(np.asarray(got32), want, atol=1e-4, rtol=1e-4)

    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    got16 = np.asarray(Decoder(cfg16).apply({"params": scanned}, tokens, seg, pos).logits)
    # bf16 compute: errors of a few 1e-2 on logits of O(1); structure must still match.
    assert np.abs(got16 - want).max() < 0.15 * np.abs(want).max()
    assert np.corrcoef(got16.ravel(), want.ravel())[0, 1] > 0.999


def test_scanned_params_have_layer_axis_and_logical_names():
    cfg = dataclasses.replace(BASE, scan_layers=True)
    tokens, _, _ = packed_batch()
    boxed = init_params(cfg, tokens)
    q = boxed["layers"]["attention"]["query"]["kernel"]
    assert q.names == ("layers", "embed", "heads", "head_dim")
    assert q.value.shape == (cfg.num_layers, 32, 4, 8)
    names = jax.tree.leaves(jax.tree.map(lambda b: b.names, boxed, is_leaf=lambda x: hasattr(x, "names")))
    assert names, "every param must carry logical axis names"


def test_param_count_formula():
    for cfg in (BASE, dataclasses.replace(BASE, tie_embeddings=True, use_qkv_bias=True)):
        tokens, _, _ = packed_batch()
        params = unbox(init_params(cfg, tokens))
        assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


@pytest.mark.parametrize("impl", ["xla", "dot_product_attention", "auto"])
@pytest.mark.slow
def test_no_leak_across_packed_segments(impl):
    cfg = dataclasses.replace(BASE, attention_impl=impl, scan_layers=True)
    tokens, seg, pos = packed_batch(seed=5)
    params = unbox(init_params(cfg, tokens))
    model = Decoder(cfg)
    base = np.asarray(model.apply({"params": params}, tokens, seg, pos).logits)
    # Change every token of segment 1; segments 2 and 3 must be untouched.
    changed = jnp.where(seg == 1, (tokens + 13) % cfg.vocab_size, tokens)
    after = np.asarray(model.apply({"params": params}, changed, seg, pos).logits)
    others = np.asarray(seg) >= 2
    np.testing.assert_array_equal(after[others], base[others])
    assert not np.allclose(after[np.asarray(seg) == 1], base[np.asarray(seg) == 1])


@pytest.mark.slow
def test_packed_segment_equals_segment_alone():
    """Positions restart per segment: a packed segment = the same sequence run alone."""
    tokens, seg, pos = packed_batch(seed=7)
    cfg = dataclasses.replace(BASE, scan_layers=True)
    params = unbox(init_params(cfg, tokens))
    packed = np.asarray(Decoder(cfg).apply({"params": params}, tokens, seg, pos).logits)
    idx = np.nonzero(np.asarray(seg[0]) == 2)[0]
    alone = np.asarray(Decoder(cfg).apply({"params": params}, tokens[:1, idx]).logits)
    np.testing.assert_allclose(packed[0, idx], alone[0], atol=1e-5)


def test_attention_impls_agree():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 16, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 16, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((2, 16, 2, 8)), jnp.float32)
    seg = jnp.asarray([[1] * 6 + [2] * 10, [1] * 12 + [0] * 4], jnp.int32)
    a = attention.attend(q, k, v, seg, "xla")
    b = attention.attend(q, k, v, seg, "dot_product_attention")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_auto_attention_falls_back_to_xla_without_cudnn():
    assert jax.default_backend() == "cpu"
    assert attention.resolve_attention_impl("auto") == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        attention.resolve_attention_impl("flash9000")


@pytest.mark.slow
def test_gradients_scanned_remat_equal_unscanned():
    tokens, seg, pos = packed_batch(seed=11)
    params = unbox(init_params(BASE, tokens))
    targets = jnp.roll(tokens, -1, axis=1)

    def loss(p, cfg):
        logits = Decoder(cfg).apply({"params": p}, tokens, seg, pos).logits
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))

    g_ref = jax.grad(loss)(params, BASE)
    cfg = dataclasses.replace(BASE, scan_layers=True, remat_policy="full")
    g = jax.grad(loss)(to_scanned(dict(params), BASE.num_layers), cfg)
    g_ref = to_scanned(dict(g_ref), BASE.num_layers)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g)[0], jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g)) > 1e-4


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="num_kv_heads"):
        DecoderConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        DecoderConfig(remat_policy="sometimes")


# --------------------------------------------------------------------------------------
# RoPE variants (linear, Llama 3.1's llama3) and Qwen3's q/k norm against the naive model
# --------------------------------------------------------------------------------------

LLAMA3 = dict(rope_type="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
              rope_original_max_positions=32)
VARIANTS = {
    # head_dim 8, theta 500: wavelengths 6.3, 30, 140, 660 -> one pair kept (< 32 / 4), one blended, two divided
    "llama3": dict(LLAMA3),
    "linear": dict(rope_type="linear", rope_scaling_factor=4.0),
    # Qwen3: per-head norms, head_dim (12) other than embed_dim / num_heads (8)
    "qk_norm": dict(qk_norm=True, head_dim=12),
    "qk_norm_llama3": dict(LLAMA3, qk_norm=True),
}


def long_batch(seed, length=48):
    """One row of one segment (positions to 47, beyond rope_original_max_positions=32) and one packed row."""
    tokens, seg, pos = packed_batch(seed, batch=2, length=length)
    rng = np.random.default_rng(seed)
    tokens = tokens.at[0].set(jnp.asarray(rng.integers(1, BASE.vocab_size, length), jnp.int32))
    return tokens, seg.at[0].set(1), pos.at[0].set(jnp.arange(length))


def randomised(params, seed):
    """Norm scales drawn around 1 (they start at exactly 1, which would hide a missing norm)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
        if "norm" in jax.tree_util.keystr(path) else x, params)


def test_rope_llama3_bands():
    """The three bands of the llama3 rule (pair wavelengths vs 32 / 4 and 32 / 1) at head_dim 8, theta 500."""
    from slm_jax.models.layers import RoPE

    default = RoPE(500.0).inv_frequencies(8)
    scaled = RoPE(500.0, "llama3", 8.0, 1.0, 4.0, 32).inv_frequencies(8)
    wavelength = 2 * np.pi / default
    assert (wavelength < 8).tolist() == [True, False, False, False]
    assert ((wavelength >= 8) & (wavelength <= 32)).tolist() == [False, True, False, False]
    np.testing.assert_allclose(scaled[[0, 2, 3]], default[[0, 2, 3]] / [1, 8, 8], rtol=1e-15)
    s = (32 / wavelength[1] - 1) / 3
    np.testing.assert_allclose(scaled[1], (1 - s) * default[1] / 8 + s * default[1], rtol=1e-15)
    np.testing.assert_allclose(RoPE(500.0, "linear", 4.0).inv_frequencies(8), default / 4, rtol=1e-15)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rope_variants_and_qk_norm_equal_naive(variant):
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    tokens, seg, pos = long_batch(seed=13)
    params = randomised(unbox(init_params(cfg, tokens)), seed=1)
    got = np.asarray(Decoder(cfg).apply({"params": params}, tokens, seg, pos).logits)
    want = naive_logits(params, cfg, np.asarray(tokens), np.asarray(seg), np.asarray(pos))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # the variant matters: the default RoPE / no q/k norm gives other logits
    plain = dataclasses.replace(BASE, head_dim=cfg.head_dim)
    other = naive_logits(params, plain, np.asarray(tokens), np.asarray(seg), np.asarray(pos))
    assert np.abs(other - want).max() > 1e-2


def to_unscanned(params, num_layers):
    params = dict(params)
    stacked = params.pop("layers")
    params.update({f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers)})
    return params


def _naive_loss(params, cfg, tokens, seg, pos, targets, weights):
    logits = naive_logits(params, cfg, tokens, seg, pos)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -(np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum() / weights.sum()


@pytest.mark.slow
def test_qk_norm_llama3_gradients_equal_naive_finite_differences():
    """d loss / d params of the Decoder (scanned, remat) along a random direction = the naive fp64
    model's central difference; the q/k norm scales get gradients of their own."""
    cfg = dataclasses.replace(BASE, **VARIANTS["qk_norm_llama3"], num_layers=2)
    tokens, seg, pos = long_batch(seed=17, length=40)
    targets = np.asarray(jnp.roll(tokens, -1, axis=1))
    weights = (np.asarray(seg) > 0).astype(np.float64)
    params = randomised(unbox(init_params(cfg, tokens)), seed=2)

    def loss(p, cfg):
        logits = Decoder(cfg).apply({"params": p}, tokens, seg, pos).logits
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], -1)[..., 0]
        return jnp.sum(nll * weights) / weights.sum()

    scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat_policy="full")
    grads = to_scanned(dict(jax.jit(jax.grad(loss), static_argnums=1)(params, cfg)), cfg.num_layers)
    scanned = jax.jit(jax.grad(loss), static_argnums=1)(to_scanned(dict(params), cfg.num_layers), scanned_cfg)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(scanned)[0], jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    for name in ("query_norm", "key_norm"):
        assert float(jnp.abs(grads["layers"]["attention"][name]["scale"]).max()) > 1e-4
    grads = to_unscanned(grads, cfg.num_layers)
    rng = np.random.default_rng(3)
    direction = jax.tree.map(lambda x: rng.standard_normal(x.shape), params)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    eps = 1e-5
    shifted = [jax.tree.map(lambda x, d, s=s: np.asarray(x, np.float64) + s * eps * d, params, direction)
               for s in (1.0, -1.0)]
    args = (cfg, np.asarray(tokens), np.asarray(seg), np.asarray(pos), targets, weights)
    numeric = (_naive_loss(shifted[0], *args) - _naive_loss(shifted[1], *args)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=2e-3, abs=1e-5)


@pytest.mark.slow
def test_kv_cache_decoding_applies_the_same_rope_and_qk_norm():
    """Prefill + one token at a time through the KV cache = the full forward pass, at positions past
    rope_original_max_positions, with llama3 RoPE and q/k norm."""
    from slm_jax.models.decoder import init_cache

    cfg = dataclasses.replace(BASE, **VARIANTS["qk_norm_llama3"], scan_layers=True)
    tokens, _, _ = long_batch(seed=19, length=44)
    tokens = tokens[:1]
    params = randomised(unbox(init_params(cfg, tokens)), seed=4)
    full = np.asarray(Decoder(cfg).apply({"params": params}, tokens).logits)
    n0 = 30
    decode = jax.jit(lambda p, x, pos, cache: Decoder(cfg).apply({"params": p}, x, jnp.ones_like(x), pos, cache=cache))
    out = decode(params, tokens[:, :n0], jnp.arange(n0)[None], init_cache(cfg, 1, 44))
    steps = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(n0, 44):
        out = decode(params, tokens[:, t:t + 1], jnp.full((1, 1), t), cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=1e-4)


def test_rope_and_qk_norm_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"DecoderConfig\.rope_type='yarn': expected one of \('default', 'linear', "
                                         r"'llama3'\)"):
        DecoderConfig(rope_type="yarn")
    with pytest.raises(ValueError, match=r"DecoderConfig\.rope_scaling_factor=8\.0 has no effect with "
                                         r"DecoderConfig\.rope_type='default'"):
        DecoderConfig(rope_scaling_factor=8.0)
    with pytest.raises(ValueError, match=r"DecoderConfig\.rope_original_max_positions=32 has no effect with "
                                         r"DecoderConfig\.rope_type='linear'"):
        DecoderConfig(rope_type="linear", rope_scaling_factor=2.0, rope_original_max_positions=32)
    with pytest.raises(ValueError, match=r"rope_low_freq_factor=4\.0 and DecoderConfig\.rope_high_freq_factor=4\.0 "
                                         r"must satisfy 0 < low < high"):
        DecoderConfig(**{**LLAMA3, "rope_low_freq_factor": 4.0})
    with pytest.raises(ValueError, match=r"DecoderConfig\.rope_scaling_factor=0\.0 must be > 0"):
        DecoderConfig(rope_type="linear", rope_scaling_factor=0.0)
    with pytest.raises(ValueError, match=r"DecoderConfig\.rope_original_max_positions=0 must be an int >= 1"):
        DecoderConfig(**{**LLAMA3, "rope_original_max_positions": 0})


def test_qk_norm_params_have_logical_names_and_count():
    cfg = dataclasses.replace(BASE, qk_norm=True, head_dim=12, scan_layers=True)
    tokens, _, _ = packed_batch()
    boxed = init_params(cfg, tokens)
    for name in ("query_norm", "key_norm"):
        scale = boxed["layers"]["attention"][name]["scale"]
        assert scale.names == ("layers", "head_dim") and scale.value.shape == (cfg.num_layers, 12)
    assert sum(x.size for x in jax.tree.leaves(unbox(boxed))) == cfg.num_params()
