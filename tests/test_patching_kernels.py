"""slm_jax.kernels.patching: the Pallas kernels (interpret mode on CPU) against the
pure-JAX references, values and gradients, plus ahead-of-time lowering proofs for
TPU (Mosaic, via libtpu's topology API) and GPU (Pallas Triton IR, via jax.export)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from slm_jax.kernels import patching as pk

INTERP = "pallas_interpret"
# Small tiles so a patch block spans several row tiles and D needs a padded second block.
SMALL = pk.BlockSizes(rows=32, patches=8, dim=128)
TOL = {jnp.float32: dict(rtol=2e-5, atol=2e-5), jnp.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def ragged_ids(rng, batch, time, max_len=16, full_rows=()):
    """Random contiguous patches of length 1..max_len, a random empty tail of -1."""
    ids = np.full((batch, time), -1, np.int32)
    for b in range(batch):
        valid = time if b in full_rows else int(rng.integers(time // 2, time))
        t = p = 0
        while t < valid:
            length = min(int(rng.integers(1, max_len + 1)), valid - t)
            ids[b, t:t + length] = p
            t, p = t + length, p + 1
    return ids


def nonzero_normal(rng, shape, dtype=jnp.float32):
    v = rng.normal(size=shape)
    v = np.where(np.abs(v) < 0.05, 0.5, v)  # never (near) zero
    return jnp.asarray(v, dtype)


def _make_case():
    rng = np.random.default_rng(0)
    b, t, d = 3, 144, 160
    ids = ragged_ids(rng, b, t, full_rows=(1,))
    p = int(ids.max()) + 7  # more patches than any row uses: trailing empty patches
    return dict(b=b, t=t, d=d, p=p, ids=jnp.asarray(ids), x=nonzero_normal(rng, (b, t, d)),
                s=nonzero_normal(rng, (b, t)), y=nonzero_normal(rng, (b, p, d)))


_CASE = _make_case()


@pytest.fixture
def case():
    return _CASE


def ops(impl, blocks=SMALL):
    kw = dict(impl=impl) if impl == "reference" or blocks is None else dict(impl=impl, block_sizes=blocks)
    return (functools.partial(pk.patch_mean, **kw), functools.partial(pk.patch_attention_pool, **kw),
            functools.partial(pk.patch_broadcast, **kw))


@functools.lru_cache(maxsize=None)
def forward_and_vjps(impl, blocks=SMALL):
    """One jitted program: the three ops and their VJPs on given cotangents."""
    mean, att, bc = ops(impl, blocks)

    @functools.partial(jax.jit, static_argnums=5)
    def run(x, s, y, ids, cts, p):
        ct_pool, ct_rows = cts
        out_m, vjp_m = jax.vjp(lambda x: mean(x, ids, p), x)
        out_a, vjp_a = jax.vjp(lambda x, s: att(x, s, ids, p), x, s)
        out_b, vjp_b = jax.vjp(lambda y: bc(y, ids), y)
        return (out_m, out_a, out_b), (*vjp_m(ct_pool), *vjp_a(ct_pool), *vjp_b(ct_rows))
    return run


@functools.lru_cache(maxsize=None)
def results(impl, dtype):
    c = _CASE
    rng = np.random.default_rng(2)
    cts = (nonzero_normal(rng, (c["b"], c["p"], c["d"]), dtype), nonzero_normal(rng, (c["b"], c["t"], c["d"]), dtype))
    return forward_and_vjps(impl)(c["x"].astype(dtype), c["s"], c["y"].astype(dtype), c["ids"], cts, c["p"])


def assert_close(got, want, dtype, names):
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        scale = max(float(np.max(np.abs(np.asarray(w, np.float32)))), 1.0)
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), err_msg=name,
                                   rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


def test_patch_layout(case):
    ids = np.asarray(case["ids"])
    starts, lengths = jax.jit(pk.patch_layout, static_argnums=1)(case["ids"], case["p"])
    for b in range(case["b"]):
        for p in range(case["p"]):
            rows = np.nonzero(ids[b] == p)[0]
            assert lengths[b, p] == len(rows)
            if len(rows):
                assert starts[b, p] == rows[0]
            else:
                assert starts[b, p] == np.sum(ids[b] >= 0)
    assert starts.dtype == lengths.dtype == jnp.int32


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_forward_matches_reference(case, dtype):
    got, want = results(INTERP, dtype)[0], results("reference", dtype)[0]
    assert all(g.dtype == dtype for g in got)
    assert_close(got, want, dtype, ["mean", "attention", "broadcast"])
    # Empty patches pool to zero; padding rows broadcast to zero.
    ids = np.asarray(case["ids"])
    for b in range(case["b"]):
        n = ids[b].max() + 1
        assert not np.any(np.asarray(got[0][b, n:], np.float32))
        assert not np.any(np.asarray(got[2][b][ids[b] < 0], np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_vjp_matches_reference(case, dtype):
    got, want = results(INTERP, dtype)[1], results("reference", dtype)[1]
    assert_close(got, want, dtype, ["d_mean/dx", "d_att/dx", "d_att/dscores", "d_broadcast/dy"])


def test_gpu_flavour_interpreted(case):
    """The Triton-flavoured kernels (power-of-two tiles, tables without SMEM), interpreted."""
    mean, att, bc = ops("pallas_interpret_gpu", pk.BlockSizes(rows=32, patches=16, dim=64))
    f = jax.jit(lambda x, s, y, ids: (mean(x, ids, case["p"]), att(x, s, ids, case["p"]), bc(y, ids)))
    got = f(case["x"], case["s"], case["y"], case["ids"])
    assert_close(got, results("reference", jnp.float32)[0], jnp.float32, ["mean", "attention", "broadcast"])


@pytest.mark.slow
def test_check_grads_kernel_path(case):
    c = case
    mean, att, bc = ops(INTERP)
    f = jax.jit(lambda x, s, y: (mean(x, c["ids"], c["p"]), att(x, s, c["ids"], c["p"]), bc(y, c["ids"])))
    check_grads(f, (c["x"], c["s"], c["y"]), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@functools.lru_cache(maxsize=None)
def edge_program():
    # Default (TPU) tiles: T, P and D are all padded inside the wrapper here.
    mean, att, bc = ops(INTERP, None)
    return jax.jit(lambda x, s, ids: (mean(x, ids, 48), att(x, s, ids, 48), bc(x, ids)))


def test_length_one_patches_are_identity():
    rng = np.random.default_rng(3)
    b, t, d = 2, 48, 96
    ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x, s = nonzero_normal(rng, (b, t, d)), nonzero_normal(rng, (b, t))
    for out in edge_program()(x, s, ids):
        np.testing.assert_allclose(out, x, rtol=1e-6, atol=1e-6)


def test_single_patch_spanning_the_row():
    rng = np.random.default_rng(4)
    b, t, d = 2, 48, 96
    ids = jnp.zeros((b, t), jnp.int32)
    x, s = nonzero_normal(rng, (b, t, d)), nonzero_normal(rng, (b, t))
    mean, att, bc = edge_program()(x, s, ids)
    np.testing.assert_allclose(mean[:, 0], jnp.mean(x, axis=1), rtol=1e-5, atol=1e-6)
    w = jax.nn.softmax(s, axis=-1)
    np.testing.assert_allclose(att[:, 0], jnp.einsum("bt,btd->bd", w, x), rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(mean[:, 1:])) and not np.any(np.asarray(att[:, 1:]))
    np.testing.assert_allclose(bc, jnp.broadcast_to(x[:, :1], (b, t, d)))


def test_auto_on_cpu_matches_reference(case):
    mean, att, bc = ops("auto", None)
    got = jax.jit(lambda x, s, y, ids: (mean(x, ids, case["p"]), att(x, s, ids, case["p"]), bc(y, ids)))(
        case["x"], case["s"], case["y"], case["ids"])
    assert_close(got, results("reference", jnp.float32)[0], jnp.float32, ["mean", "attention", "broadcast"])


def test_bad_inputs_name_the_argument():
    x = jnp.ones((2, 8, 4))
    ids = jnp.zeros((2, 8), jnp.int32)
    with pytest.raises(ValueError, match="`x`"):
        pk.patch_mean(jnp.ones((8, 4)), ids, 2)
    with pytest.raises(ValueError, match="`patch_ids`"):
        pk.patch_mean(x, jnp.zeros((2, 8, 1), jnp.int32), 2)
    with pytest.raises(ValueError, match="`patch_ids`.*batch"):
        pk.patch_mean(x, jnp.zeros((3, 8), jnp.int32), 2)
    with pytest.raises(ValueError, match="`patch_ids`.*time"):
        pk.patch_attention_pool(x, jnp.ones((2, 8)), jnp.zeros((2, 7), jnp.int32), 2)
    with pytest.raises(ValueError, match="`patch_ids`.*integer"):
        pk.patch_mean(x, jnp.zeros((2, 8)), 2)
    with pytest.raises(ValueError, match="`scores`"):
        pk.patch_attention_pool(x, jnp.ones((2, 7)), ids, 2)
    with pytest.raises(ValueError, match="`num_patches`"):
        pk.patch_mean(x, ids, 0)
    with pytest.raises(ValueError, match="`patch_states`"):
        pk.patch_broadcast(jnp.ones((2, 4)), ids)
    with pytest.raises(ValueError, match="`patch_ids`.*batch"):
        pk.patch_broadcast(jnp.ones((3, 2, 4)), ids)
    with pytest.raises(ValueError, match="unknown impl='triton'"):
        pk.patch_broadcast(jnp.ones((2, 2, 4)), ids, impl="triton")
    with pytest.raises(ValueError, match="block_sizes"):
        pk.patch_mean(x, ids, 2, impl=INTERP, block_sizes=pk.BlockSizes(rows=12, patches=8))


def _tpu_devices():
    try:
        from jax.experimental import topologies
        return topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
                                            chips_per_host_bounds=(2, 2, 1), num_slices=1).devices
    except Exception as err:  # noqa: BLE001 - no libtpu / no topology API: nothing to prove here
        pytest.skip(f"libtpu's TPU topology API is unavailable ({type(err).__name__}: {err})")


def _loss(v):
    return jnp.sum(v.astype(jnp.float32) ** 2)


def _program(b, t, d, p, dtype, impl):
    """Forward of mean and broadcast, gradients of a loss of each of the three ops: 6 kernels."""
    def fn(x, s, y, ids):
        fwd = (pk.patch_mean(x, ids, p, impl=impl), pk.patch_broadcast(y, ids, impl=impl))
        grads = (jax.grad(lambda x: _loss(pk.patch_mean(x, ids, p, impl=impl)))(x),
                 jax.grad(lambda y: _loss(pk.patch_broadcast(y, ids, impl=impl)))(y),
                 jax.grad(lambda x, s: _loss(pk.patch_attention_pool(x, s, ids, p, impl=impl)), argnums=(0, 1))(x, s))
        return fwd, grads
    args = (jax.ShapeDtypeStruct((b, t, d), dtype), jax.ShapeDtypeStruct((b, t), jnp.float32),
            jax.ShapeDtypeStruct((b, p, d), dtype), jax.ShapeDtypeStruct((b, t), jnp.int32))
    return fn, args


@pytest.mark.tpu_aot
def test_mosaic_tpu_aot_compile():
    """impl='pallas' lowers through Mosaic and compiles for a v5e chip (libtpu, no TPU):
    patch_mean, patch_broadcast and the gradients of all three ops in bf16, and the
    attention-pool gradient in fp32 (the three-way bf16 split path)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    devices = _tpu_devices()
    sharding = NamedSharding(Mesh(np.array(devices[:1]).reshape(1), ("x",)), PartitionSpec())
    b, t, d, p = 2, 1000, 320, 200
    fn, args = _program(b, t, d, p, jnp.bfloat16, "pallas")

    def both(x, s, y, ids, x32):
        att32 = jax.grad(lambda x, s: _loss(pk.patch_attention_pool(x, s, ids, p, impl="pallas")),
                         argnums=(0, 1))(x32, s)
        return fn(x, s, y, ids), att32
    args = args + (jax.ShapeDtypeStruct((b, t, d), jnp.float32),)
    lowered = jax.jit(both, in_shardings=tuple(sharding for _ in args)).lower(*args)
    # mean, broadcast, grad mean (pool + broadcast), grad broadcast (broadcast + pool), grad attention (2) x 2
    assert lowered.as_text().count("tpu_custom_call") >= 8
    assert lowered.compile() is not None


def test_triton_gpu_lowering():
    """impl='pallas_gpu' lowers to Triton IR for CUDA (jax.export, no GPU needed)."""
    from jax import export
    fn, args = _program(2, 200, 96, 60, jnp.bfloat16, "pallas_gpu")
    try:
        exp = export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=[
            export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
    except (ImportError, ModuleNotFoundError) as err:
        pytest.skip(f"this jaxlib cannot lower Pallas Triton kernels ({err})")
    assert exp.mlir_module().count("xla.gpu.triton") >= 6
