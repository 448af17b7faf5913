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
