"""Fused attention (Pallas splash / flash, interpret mode on CPU) against the XLA reference.

Random packed rows (several segments and end padding), GQA with 8:1 heads, lengths that are
not multiples of the kernels' blocks; outputs AND gradients; no token sees another segment or
its future, forward or backward; the sharded path (shard_map over batch and heads) equals the
unsharded one; the implementation choice per platform and the GPU probe's verdicts.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.kernels import attention as kattn
from slm_jax.models import attention

FUSED = ["splash_interpret", "flash_gpu_interpret"]


def packed_qkv(seed=0, b=2, t=200, h=8, kv=1, d=32, dtype=jnp.float32):
    """Random q/k/v and segment ids: row 0 holds 3 segments and padding, row 1 two segments, no
    padding; t=200 is not a multiple of any kernel block (128 lanes, 512, 128)."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), dtype)
    k = jnp.asarray(rng.standard_normal((b, t, kv, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, t, kv, d)), dtype)
    seg = np.zeros((b, t), np.int32)
    seg[0, :61], seg[0, 61:130], seg[0, 130:181] = 1, 2, 3  # 181..199 padding
    if b > 1:
        seg[1, :117], seg[1, 117:] = 1, 2
    for r in range(2, b):
        seg[r, : t // 2], seg[r, t // 2:] = 1, 2
    return q, k, v, jnp.asarray(seg)


def _grads(impl, q, k, v, seg, weights):
    def loss(q, k, v):
        return jnp.sum(attention.attend(q, k, v, seg, impl).astype(jnp.float32) * weights)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("heads", [(8, 1), (4, 4), (8, 2)])
def test_fused_equals_reference_forward_and_backward(impl, heads):
    h, kv = heads
    q, k, v, seg = packed_qkv(seed=h + kv, h=h, kv=kv)
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), jnp.float32)
    want_out = attention.attend(q, k, v, seg, "xla")
    got_out = jax.jit(functools.partial(attention.attend, impl=impl))(q, k, v, seg)
    assert got_out.shape == want_out.shape and got_out.dtype == want_out.dtype
    np.testing.assert_allclose(np.asarray(got_out), np.asarray(want_out), atol=2e-5, rtol=2e-5)
    (want, want_g), (got, got_g) = _grads("xla", q, k, v, seg, weights), _grads(impl, q, k, v, seg, weights)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for name, g, w in zip("qkv", got_g, want_g):
        assert float(jnp.max(jnp.abs(w))) > 1e-3
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", FUSED)
def test_bf16_fused_close_to_reference(impl):
    q, k, v, seg = packed_qkv(seed=3, dtype=jnp.bfloat16)
    got = jax.jit(functools.partial(attention.attend, impl=impl))(q, k, v, seg).astype(jnp.float32)
    want = attention.attend(q, k, v, seg, "xla").astype(jnp.float32)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("impl", FUSED)
def test_no_token_sees_another_segment_or_its_future(impl):
    q, k, v, seg = packed_qkv(seed=4, b=1, h=8, kv=1)
    attend = jax.jit(functools.partial(attention.attend, impl=impl))
    base = np.asarray(attend(q, k, v, seg))
    rng = np.random.default_rng(5)
    # forward: new keys/values for segment 2 (61..129) move nothing in segments 1 and 3
    k2 = k.at[0, 61:130].set(jnp.asarray(rng.standard_normal((69, 1, 32)), k.dtype))
    v2 = v.at[0, 61:130].set(jnp.asarray(rng.standard_normal((69, 1, 32)), v.dtype))
    out = np.asarray(attend(q, k2, v2, seg))
    np.testing.assert_array_equal(out[0, :61], base[0, :61])
    np.testing.assert_array_equal(out[0, 130:], base[0, 130:])
    assert not np.allclose(out[0, 61:130], base[0, 61:130])
    # forward: changing token 90's key/value moves no earlier position
    k3, v3 = k.at[0, 90].add(1.0), v.at[0, 90].add(1.0)
    out = np.asarray(attend(q, k3, v3, seg))
    np.testing.assert_array_equal(out[0, :90], base[0, :90])
    assert not np.allclose(out[0, 90], base[0, 90])

    # backward: a loss on segment 1's outputs and on positions < 100 of segment 2 has zero
    # gradient on other segments' keys/values and on every later key/value
    def loss(k, v):
        o = attention.attend(q, k, v, seg, impl)
        return jnp.sum(o[0, :61] ** 2) + jnp.sum(o[0, 61:100] ** 2)
    dk, dv = jax.jit(jax.grad(loss, argnums=(0, 1)))(k, v)
    for g in (np.asarray(dk), np.asarray(dv)):
        assert np.all(g[0, 100:] == 0), "gradient reached a later segment or a future token"
        assert np.abs(g[0, :100]).max() > 0


def _mesh(fsdp, tensor):
    from slm_jax.training.partitioning import MeshConfig, make_mesh
    return make_mesh(MeshConfig(data=1, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize("impl", FUSED)
@pytest.mark.parametrize("fsdp,tensor", [(8, 1), (4, 2)])
def test_sharded_fused_attention_equals_reference(impl, fsdp, tensor):
    """Under jit on 8 devices (batch over fsdp, heads over tensor), the kernel runs in
    jax.shard_map per block and equals the unsharded reference, gradients included."""
    import flax.linen as nn

    from slm_jax.training.partitioning import DEFAULT_RULES
    q, k, v, seg = packed_qkv(seed=6, b=8, t=136, h=8, kv=2, d=16)
    weights = jnp.asarray(np.random.default_rng(7).standard_normal(q.shape), jnp.float32)
    want, want_g = _grads("xla", q, k, v, seg, weights)
    mesh = _mesh(fsdp, tensor)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        lowered = jax.jit(lambda q, k, v: attention.attend(q, k, v, seg, impl)).lower(q, k, v)
        got, got_g = _grads(impl, q, k, v, seg, weights)
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4, rtol=1e-4)


def test_split_gqa_groups_are_refused():
    import flax.linen as nn

    from slm_jax.training.partitioning import DEFAULT_RULES
    q, k, v, seg = packed_qkv(b=2, t=64, h=8, kv=1, d=16)
    with jax.set_mesh(_mesh(4, 2)), nn.logical_axis_rules(DEFAULT_RULES):
        with pytest.raises(ValueError, match="whole GQA groups"):
            jax.jit(lambda q, k, v: attention.attend(q, k, v, seg, "splash_interpret"))(q, k, v)


def test_named_fused_impl_on_the_wrong_platform_is_refused():
    assert jax.default_backend() == "cpu"
    for name in ("splash", "flash_gpu", "cudnn"):
        with pytest.raises(ValueError, match=rf"DecoderConfig.attention_impl='{name}' runs on"):
            attention.resolve_attention_impl(name)
    assert attention.resolve_attention_impl("splash", platform="tpu") == "splash"
    assert attention.resolve_attention_impl("auto", platform="tpu") == "splash"
    assert attention.resolve_attention_impl("auto") == "xla"
    assert attention.resolve_attention_impl("splash_interpret") == "splash_interpret"


def test_auto_on_gpu_takes_the_first_fused_path_whose_probe_passes(monkeypatch, caplog):
    verdicts = {}
    monkeypatch.setattr(attention, "probe_fused", lambda impl, *shape: verdicts[impl])
    monkeypatch.setattr(attention, "_log_choice", lambda *a: None)
    shape = dict(length=2048, num_heads=32, num_kv_heads=4, head_dim=64, dtype="bfloat16", platform="gpu")
    verdicts.update(flash_gpu=(True, "ok"), cudnn=(True, "ok"))
    assert attention.resolve_attention_impl("auto", **shape) == "flash_gpu"
    verdicts.update(flash_gpu=(False, "dq differs"), cudnn=(True, "ok"))
    assert attention.resolve_attention_impl("auto", **shape) == "cudnn"
    verdicts.update(flash_gpu=(False, "dq differs"), cudnn=(False, "no cudnn"))
    with caplog.at_level("WARNING", logger="slm_jax"):
        assert attention.resolve_attention_impl("auto", **shape) == "xla"
    assert "dq differs" in caplog.text and "no cudnn" in caplog.text


def test_probe_checks_outputs_and_gradients_at_the_runs_shapes(monkeypatch):
    """The probe passes a correct kernel and catches one whose BACKWARD ignores segments."""
    ok, why = attention.probe_fused.__wrapped__("flash_gpu_interpret", 200, 8, 1, 16, "float32")
    assert ok, why

    @jax.custom_vjp
    def leaky(q, k, v, seg):
        return kattn.reference_attention(q, k, v, seg)

    def fwd(q, k, v, seg):
        return leaky(q, k, v, seg), (q, k, v, seg)

    def bwd(res, g):
        q, k, v, seg = res
        ones = jnp.ones_like(seg)  # causal only: the backward sees across segments
        _, vjp = jax.vjp(lambda q, k, v: kattn.reference_attention(q, k, v, ones), q, k, v)
        return (*vjp(g), None)

    leaky.defvjp(fwd, bwd)
    monkeypatch.setitem(kattn.KERNELS, "splash", lambda q, k, v, seg, interpret=False: leaky(q, k, v, seg))
    ok, why = attention.probe_fused.__wrapped__("splash_interpret", 200, 8, 1, 16, "float32")
    assert not ok and "differs from the XLA reference" in why and why.startswith("d")


@pytest.mark.parametrize("impl", FUSED)
def test_decoder_and_lst_with_fused_attention_equal_xla(impl):
    """Training's forward and gradients with the fused path equal the XLA path: the decoder
    (scanned, remat) and LST (global and local stacks)."""
    import flax.linen as nn

    from slm_jax.models import lst
    from slm_jax.models.decoder import Decoder, DecoderConfig
    rng = np.random.default_rng(8)
    b, t = 2, 136  # not a multiple of any block
    _, _, _, seg = packed_qkv(b=b, t=t)
    seg = seg.at[0, 125:].set(0)  # row 0: segments 1 and 2, then padding; row 1: two segments
    tokens = jnp.asarray(rng.integers(1, 40, (b, t)) * (np.asarray(seg) > 0), jnp.int32)
    pos = np.zeros((b, t), np.int32)
    for r in range(b):
        for s in np.unique(np.asarray(seg[r])):
            idx = np.nonzero(np.asarray(seg[r]) == s)[0]
            pos[r, idx] = np.arange(idx.size)
    pos = jnp.asarray(pos)
    g = DecoderConfig(vocab_size=40, embed_dim=32, mlp_dim=48, num_layers=1, num_heads=8, num_kv_heads=1,
                      init_std=0.2, dtype="float32", scan_layers=True, remat_policy="dots_no_batch")
    models = {"decoder": lambda c: Decoder(c),
              "lst": lambda c: lst.LSTModel(lst.LSTConfig(global_model=c, local_embed_dim=32, local_mlp_dim=48,
                                                         local_num_heads=4, local_encoder_layers=1,
                                                         local_decoder_layers=1, patch_size=3,
                                                         pooling_impl="reference"))}
    for name, make in models.items():
        ref_model = make(g)
        params = nn.meta.unbox(ref_model.init(jax.random.key(0), tokens)["params"])

        def loss(p, model):
            logits = model.apply({"params": p}, tokens, seg, pos).logits
            return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * (seg > 0))

        want, want_g = jax.jit(jax.value_and_grad(functools.partial(loss, model=ref_model)))(params)
        fused = make(dataclasses.replace(g, attention_impl=impl))
        got, got_g = jax.jit(jax.value_and_grad(functools.partial(loss, model=fused)))(params)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5, err_msg=name)
        for (path, a), w in zip(jax.tree_util.tree_flatten_with_path(got_g)[0], jax.tree.leaves(want_g)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(w), atol=1e-4, rtol=1e-3,
                                       err_msg=f"{name} {jax.tree_util.keystr(path)}")


@pytest.mark.tpu_aot
@pytest.mark.slow
def test_splash_train_step_compiles_for_tpu_with_the_mosaic_kernel():
    """`slm-jax compile`'s path for a decoder run and an LST run with attention_impl='auto' on
    v5e:2x2: the compiled TPU program holds the splash kernel (a Mosaic tpu_custom_call), and the
    XLA path's does not."""
    import gin

    from slm_jax.gin_utils import parse_gin
    from slm_jax.training import aot
    from slm_jax.training.train import TrainRun, build_trainer

    try:
        devices = aot.topology_devices("v5e:2x2")
    except ValueError as err:
        pytest.skip(str(err))
    hlo = {}
    runs = {"auto": "gin/runs/test_cpu.gin", "xla": "gin/runs/test_cpu.gin", "lst": "gin/runs/lst_demo_cpu.gin"}
    for name, gin_file in runs.items():
        impl = "xla" if name == "xla" else "auto"
        parse_gin([gin_file], ["SEQUENCE_LENGTH=200", "BATCH_SIZE=4", f"DecoderConfig.attention_impl='{impl}'"]
                  + (["LSTConfig.pooling_impl='reference'"] if name == "lst" else []))
        try:
            trainer = build_trainer(TrainRun(), devices=devices)
            hlo[name] = trainer.lower_train_step().compile().as_text()
        finally:
            gin.clear_config()
    assert "tpu_custom_call" in hlo["auto"]
    assert "splash" in hlo["auto"].lower()
    assert "tpu_custom_call" not in hlo["xla"]
    # LST: its global and local stacks run splash too (pooling kept on the XLA reference, so every
    # Mosaic call in the program is attention)
    assert "tpu_custom_call" in hlo["lst"] and "splash" in hlo["lst"].lower()


def test_a_named_fused_impl_on_cpu_stops_the_cli_with_one_line(tmp_path):
    """`slm-jax train` with attention_impl='splash' on CPU: exit 2, one line naming the setting,
    nothing written (no traceback)."""
    from tests.test_train_loop import run_cli
    proc = run_cli("train", "--gin_file=gin/runs/test_cpu.gin", "--gin.DecoderConfig.attention_impl='splash'",
                   f"--gin.MODEL_DIR='{tmp_path / 'run'}'", check=False)
    assert proc.returncode == 2
    assert "ConfigError: DecoderConfig.attention_impl='splash' runs on tpu" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()
