"""Real-GPU checks (tier `gpu`): skipped unless `SLM_JAX_TEST_GPU=1` and JAX sees a GPU.

    SLM_JAX_TEST_GPU=1 python -m pytest -m gpu tests

What a CPU run cannot show: that the fused attention the GPU path picks honours packed
segments forward AND backward at GQA shapes, and that a train step on the GPU gives the
CPU's numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _packed_inputs(rng, b=2, t=256, h=8, kv=2, d=64):
    import jax.numpy as jnp
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((b, t, kv, d)), jnp.bfloat16)
    lengths = [[100, 90, 66], [200, 56]]  # several segments, padding in neither / both
    seg = np.zeros((b, t), np.int32)
    for r, ls in enumerate(lengths):
        start = 0
        for i, n in enumerate(ls):
            seg[r, start:start + n] = i + 1
            start += n
    seg[1, 240:] = 0  # padding
    return q, k, v, jnp.asarray(seg)


@pytest.mark.parametrize("impl", ["flash_gpu", "cudnn"])
def test_fused_gpu_attention_matches_xla_forward_and_backward_on_packed_gqa(impl):
    import jax
    import jax.numpy as jnp

    from slm_jax.models import attention

    q, k, v, seg = _packed_inputs(np.random.default_rng(0))
    real = (seg > 0)[:, :, None, None]

    def loss(impl):
        return lambda q, k, v: jnp.sum(jnp.where(real, attention.attend(q, k, v, seg, impl), 0).astype(jnp.float32) ** 2)

    want, want_grads = jax.jit(jax.value_and_grad(loss("xla"), argnums=(0, 1, 2)))(q, k, v)
    got, got_grads = jax.jit(jax.value_and_grad(loss(impl), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-2)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=5e-2, rtol=5e-2)


def test_no_token_sees_another_segment_on_gpu():
    import jax
    import jax.numpy as jnp

    from slm_jax.models import attention

    impl = attention.resolve_attention_impl("auto", length=256, num_heads=8, num_kv_heads=2, head_dim=64,
                                            dtype="bfloat16")
    q, k, v, seg = _packed_inputs(np.random.default_rng(1))
    base = jax.jit(lambda v: attention.attend(q, k, v, seg, impl))(v)
    # change the values of segment 2 of row 0: segment 1 and 3 outputs must not move
    changed = v.at[0, 100:190].set(jnp.asarray(np.random.default_rng(2).standard_normal((90, 2, 64)), v.dtype))
    out = jax.jit(lambda v: attention.attend(q, k, v, seg, impl))(changed)
    np.testing.assert_array_equal(np.asarray(out[0, :100], np.float32), np.asarray(base[0, :100], np.float32))
    np.testing.assert_array_equal(np.asarray(out[0, 190:], np.float32), np.asarray(base[0, 190:], np.float32))
