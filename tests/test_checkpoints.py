"""Tests for slm_jax.training.checkpoints (CPU, 8 fake devices from conftest)."""
import errno
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from slm_jax.training import checkpoints as ckpt


# ----------------------------------------------------------------------------- helpers


class TinyIterator:
    """Stand-in for the training data iterator: a checkpointable tf.data iterator."""

    def __init__(self):
        ds = tf.data.Dataset.range(100).shuffle(10, seed=1).batch(2)
        self._it = iter(ds)
        self._ckpt = tf.train.Checkpoint(iterator=self._it)

    def __next__(self):
        return next(self._it).numpy()

    def take(self, k):
        return [next(self) for _ in range(k)]

    def save(self, path: str) -> None:
        self._ckpt.write(path)

    def restore(self, path: str) -> None:
        self._ckpt.read(path).assert_consumed()


def fsdp_sharding(mesh):
    """Shard the leading axis over 'fsdp' (matrices and vectors; scalars replicated)."""
    return lambda x: NamedSharding(mesh, P("fsdp", None) if x.ndim == 2
                                   else P("fsdp") if x.ndim == 1 else P())


def make_params(seed=0, sharding=None):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "decoder": {
            "embed": jax.random.normal(k1, (16, 8), jnp.float32).astype(jnp.bfloat16),
            "layer_0": {"kernel": jax.random.normal(k2, (16, 4), jnp.float32)},
        },
        "bias": jax.random.uniform(k3, (16,), jnp.float32, 0.5, 1.5),
    }
    if sharding is not None:  # a Sharding, or a function leaf -> Sharding
        shard = sharding if callable(sharding) else (lambda x: sharding)
        params = jax.tree.map(lambda x: jax.device_put(x, shard(x)), params)
    return params


def make_state(seed=0, sharding=None):
    params = make_params(seed, sharding)
    opt = optax.adamw(1e-3)
    opt_state = opt.init(params)
    # One update so mu/nu/count are non-zero.
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"step": jnp.asarray(seed + 7, jnp.int32), "params": params, "opt_state": opt_state}


def abstract_of(state, sharding_fn=lambda x: x.sharding):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), state)


def to_host(tree):
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)  # writable copy


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def mesh_of(shape, n=None):
    devices = np.asarray(jax.devices()[: (n or int(np.prod(shape)))]).reshape(shape)
    return Mesh(devices, ("data", "fsdp", "tensor"))


# ------------------------------------------------------------------------------- tests


def test_round_trip_with_optax_state_and_dtypes(tmp_path):
    state = make_state(seed=1)
    expected = to_host(state)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=10)
    assert mngr.latest_step() is None
    assert mngr.save(10, state)
    mngr.wait_until_finished()
    assert mngr.all_steps() == [10] and mngr.latest_step() == 10

    restored = mngr.restore(abstract_of(state))
    mngr.close()
    # optax namedtuples come back as the same types.
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])
    assert restored["params"]["decoder"]["embed"].dtype == jnp.bfloat16
    assert restored["params"]["bias"].dtype == jnp.float32
    assert restored["step"].dtype == jnp.int32
    assert_trees_equal(to_host(restored), expected)
    assert float(jnp.abs(restored["opt_state"][0].mu["bias"]).sum()) > 0


def test_restore_sharded_8_devices_onto_1_device(tmp_path):
    mesh8 = mesh_of((1, 8, 1))
    state = make_state(seed=2, sharding=fsdp_sharding(mesh8))
    assert len(state["params"]["bias"].sharding.device_set) == 8
    expected = to_host(state)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=5)
    mngr.save(5, state, force=True)

    mesh1 = mesh_of((1, 1, 1))
    target = fsdp_sharding(mesh1)
    restored = mngr.restore(abstract_of(state, target))
    mngr.close()
    assert_trees_equal(to_host(restored), expected)
    for x in jax.tree.leaves(restored):
        assert x.sharding == target(x) and len(x.sharding.device_set) == 1


def grid_sharding(mesh):
    """Matrices over (data*fsdp, tensor), vectors over all axes, scalars replicated."""
    spec = {0: P(), 1: P(("data", "fsdp", "tensor")), 2: P(("data", "fsdp"), "tensor")}
    return lambda x: NamedSharding(mesh, spec[x.ndim])


@pytest.mark.parametrize("src,dst", [
    ((1, 1, 1), (2, 2, 2)),
    ((1, 8, 1), (2, 2, 2)),
    ((2, 2, 2), (1, 8, 1)),
])
def test_restore_onto_another_mesh_layout(tmp_path, src, dst):
    src_mesh, dst_mesh = mesh_of(src), mesh_of(dst)
    src_shard = grid_sharding(src_mesh) if src == (2, 2, 2) else fsdp_sharding(src_mesh)
    dst_shard = grid_sharding(dst_mesh) if dst == (2, 2, 2) else fsdp_sharding(dst_mesh)
    state = make_state(seed=3, sharding=src_shard)
    expected = to_host(state)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=5, async_save=False)
    mngr.save(5, state)
    restored = mngr.restore(abstract_of(state, dst_shard))
    mngr.close()
    assert_trees_equal(to_host(restored), expected)
    for x in jax.tree.leaves(restored):
        assert x.sharding == dst_shard(x)
    assert len(restored["params"]["decoder"]["embed"].addressable_shards) == 8


def test_half_written_steps_are_ignored(tmp_path):
    it = TinyIterator()
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=10, max_to_keep=None)
    s10, s20 = make_state(seed=10), make_state(seed=20)
    mngr.save(10, s10, it)
    mngr.save(20, s20, it)
    mngr.close()
    expected20 = to_host(s20)

    src = tmp_path / "20"
    # 30: copy of a complete step whose commit metadata is gone.
    shutil.copytree(src, tmp_path / "30")
    (tmp_path / "30" / "_CHECKPOINT_METADATA").unlink()
    # 40: commit markers present but the state item missing.
    shutil.copytree(src, tmp_path / "40")
    shutil.rmtree(tmp_path / "40" / "state")
    # 50: state present but the data item missing.
    shutil.copytree(src, tmp_path / "50")
    shutil.rmtree(tmp_path / "50" / "data")
    # 60: killed before the commit: metadata without commit timestamp / success file.
    shutil.copytree(src, tmp_path / "60")
    (tmp_path / "60" / "commit_success.txt").unlink()
    # 70: an orbax tmp dir (a save that never got renamed), with an item still tmp.
    shutil.copytree(src, tmp_path / "70.orbax-checkpoint-tmp")
    (tmp_path / "70.orbax-checkpoint-tmp" / "state").rename(
        tmp_path / "70.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp")
    # 80: an item dir left un-renamed inside an otherwise committed-looking step.
    shutil.copytree(src, tmp_path / "80")
    (tmp_path / "80" / "state").rename(tmp_path / "80" / "state.orbax-checkpoint-tmp-1")
    # Junk that is not a step at all.
    (tmp_path / "notes").mkdir()

    assert ckpt.list_complete_steps(str(tmp_path)) == [10, 20]
    # The constructor copes with these directories.
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=10, max_to_keep=None)
    assert mngr.all_steps() == [10, 20]
    assert mngr.latest_step() == 20
    restored = mngr.restore(abstract_of(s20), data_iterator=TinyIterator())
    assert_trees_equal(to_host(restored), expected20)
    with pytest.raises(FileNotFoundError, match=r"step 30"):
        mngr.restore(abstract_of(s20), step=30)
    # Re-saving over a half-written step replaces it with a complete one.
    s30 = make_state(seed=30)
    assert mngr.save(30, s30, TinyIterator())
    mngr.wait_until_finished()
    assert mngr.latest_step() == 30
    assert_trees_equal(to_host(mngr.restore(abstract_of(s30))), to_host(s30))
    # Re-saving a step whose orbax tmp dir was left behind works too.
    assert mngr.save(70, s30)
    mngr.wait_until_finished()
    assert mngr.all_steps() == [10, 20, 30, 70]
    assert not (tmp_path / "70.orbax-checkpoint-tmp").exists()
    mngr.close()
    assert ckpt.restore_params_to_host(str(tmp_path), 20)[0] == 20


def test_max_to_keep_and_should_save(tmp_path):
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=5, max_to_keep=2)
    assert [s for s in range(0, 21) if mngr.should_save(s)] == [0, 5, 10, 15, 20]
    state = make_state(seed=4)
    assert not mngr.save(7, state)  # off period: skipped
    for step in (5, 10, 15):
        assert mngr.save(step, state)
    assert mngr.save(17, state, force=True)  # forced final save off period
    assert not mngr.save(17, state, force=True)  # already saved: no-op
    mngr.close()
    assert ckpt.list_complete_steps(str(tmp_path)) == [15, 17]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["15", "17"]


def test_data_iterator_resumes_exactly(tmp_path):
    it = TinyIterator()
    it.take(3)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=10)
    state = make_state(seed=5)
    mngr.save(10, state, it)
    after_save = it.take(4)  # the iterator keeps going right after save returns
    it.take(5)
    mngr.wait_until_finished()

    fresh = TinyIterator()
    assert not np.array_equal(next(TinyIterator()), after_save[0])
    mngr.restore(abstract_of(state), data_iterator=fresh)
    mngr.close()
    for want in after_save:
        np.testing.assert_array_equal(next(fresh), want)
    data_dir = tmp_path / "10" / "data"
    assert (data_dir / "process_0_of_1.index").exists()


def test_data_iterator_process_count_mismatch(tmp_path):
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=10, async_save=False)
    state = make_state(seed=6)
    mngr.save(10, state, TinyIterator())
    # Pretend the checkpoint came from a 2-process job.
    data_dir = tmp_path / "10" / "data"
    for f in list(data_dir.iterdir()):
        if f.name.startswith("process_0_of_1"):
            for i in range(2):
                shutil.copy(f, data_dir / f.name.replace("process_0_of_1", f"process_{i}_of_2"))
            f.unlink()
    assert mngr.latest_step() == 10
    with pytest.raises(ValueError, match=r"saved by \[2\] process.*runs 1 process"):
        mngr.restore(abstract_of(state), data_iterator=TinyIterator())
    # data_iterator=None skips the data item.
    restored = mngr.restore(abstract_of(state))
    assert_trees_equal(to_host(restored), to_host(state))
    # A checkpoint without data state says so when asked for it.
    mngr.save(20, state)
    with pytest.raises(FileNotFoundError, match="no data iterator state"):
        mngr.restore(abstract_of(state), step=20, data_iterator=TinyIterator())
    mngr.close()


def test_params_sha256(tmp_path):
    state = make_state(seed=8)
    h = ckpt.params_sha256(state["params"])
    assert len(h) == 64 and h == ckpt.params_sha256(to_host(state["params"]))
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=1)
    mngr.save(1, state)
    restored = mngr.restore(abstract_of(state))
    mngr.close()
    assert ckpt.params_sha256(restored["params"]) == h

    changed = to_host(state["params"])
    changed["bias"][3] += 1.0
    assert ckpt.params_sha256(changed) != h
    renamed = dict(to_host(state["params"]))
    renamed["bias2"] = renamed.pop("bias")
    assert ckpt.params_sha256(renamed) != h
    # Key order of the dict does not matter, only the key paths.
    reordered = {"decoder": changed["decoder"], "bias": to_host(state["params"])["bias"]}
    assert ckpt.params_sha256(reordered) == h


def test_restore_params_to_host(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ckpt.restore_params_to_host(str(tmp_path))
    mesh8 = mesh_of((1, 8, 1))
    s1 = make_state(seed=11, sharding=fsdp_sharding(mesh8))
    s2 = make_state(seed=12, sharding=fsdp_sharding(mesh8))
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=1)
    mngr.save(1, s1)
    mngr.save(2, s2)
    mngr.close()

    step, params = ckpt.restore_params_to_host(str(tmp_path))
    assert step == 2
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    assert params["decoder"]["embed"].dtype == jnp.bfloat16
    assert_trees_equal(params, to_host(s2["params"]))
    assert ckpt.params_sha256(params) == ckpt.params_sha256(s2["params"])
    step, params = ckpt.restore_params_to_host(str(tmp_path), step=1)
    assert step == 1
    assert_trees_equal(params, to_host(s1["params"]))
    with pytest.raises(FileNotFoundError, match="step 3"):
        ckpt.restore_params_to_host(str(tmp_path), step=3)


def test_async_save_survives_donation_and_deletion(tmp_path):
    mesh8 = mesh_of((1, 8, 1))
    state = make_state(seed=13, sharding=fsdp_sharding(mesh8))
    expected = to_host(state)
    abstract = abstract_of(state)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=1, async_save=True)
    assert mngr.save(1, state)

    # Right after save returns: donate the buffers to a step that overwrites them...
    overwrite = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 + 3, s),
                        donate_argnums=0)
    new_params = overwrite(state["params"])
    jax.block_until_ready(new_params)
    # ...and delete every buffer outright. (Whether XLA took the donation above depends on
    # timing: while the async save still holds a buffer, donation is skipped, so only
    # deletion is asserted, not donation.)
    for x in jax.tree.leaves(state):
        if not x.is_deleted():
            x.delete()
    assert all(x.is_deleted() for x in jax.tree.leaves(state))
    del state

    mngr.wait_until_finished()
    restored = mngr.restore(abstract)
    mngr.close()
    assert_trees_equal(to_host(restored), expected)


def test_relative_directory_works_for_save_and_host_restore(tmp_path, monkeypatch):
    """Orbax needs absolute paths; `slm-jax inspect runs/demo` must still work."""
    monkeypatch.chdir(tmp_path)
    params = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)), jnp.float32)}
    mgr = ckpt.CheckpointManager("rel/checkpoints", save_period=1, async_save=False)
    mgr.save(1, {"step": jnp.asarray(1, jnp.int32), "params": params})
    mgr.close()
    step, host = ckpt.restore_params_to_host("rel/checkpoints")
    assert step == 1 and np.array_equal(host["w"], np.asarray(params["w"]))


# ------------------------------------------------------------- a full disk during a save


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("async_save", [True, False])
def test_full_disk_in_the_data_item_names_step_reason_and_resume_step(tmp_path, monkeypatch, async_save):
    """ENOSPC while writing step 20's iterator: CheckpointWriteError (step 20, ENOSPC, resume
    from 10); step 20 is not counted; a new manager restores step 10 and its input exactly."""
    it = TinyIterator()
    it.take(2)
    state10, state20 = make_state(seed=3), make_state(seed=4)
    mngr = ckpt.CheckpointManager(str(tmp_path / "checkpoints"), save_period=10, async_save=async_save)
    mngr.save(10, state10, it)
    after10 = it.take(3)
    monkeypatch.setattr(TinyIterator, "save", _enospc)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        mngr.save(20, state20, it)
    mngr.close()  # does not raise a second time
    err = info.value
    assert (err.step, err.resume_step, err.model_dir) == (20, 10, str(tmp_path))
    assert "ENOSPC" in err.reason and "No space left on device" in str(err)
    assert str(err).count("\n") == 0 and "step 20" in str(err) and "resumes from step 10" in str(err)
    assert ckpt.list_complete_steps(str(tmp_path / "checkpoints")) == [10]

    monkeypatch.undo()
    fresh = TinyIterator()
    again = ckpt.CheckpointManager(str(tmp_path / "checkpoints"), save_period=10)
    assert again.latest_step() == 10
    assert_trees_equal(to_host(again.restore(abstract_of(state10), data_iterator=fresh)), to_host(state10))
    for want in after10:
        np.testing.assert_array_equal(next(fresh), want)
    assert again.save(20, state20, fresh)
    again.close()
    assert ckpt.list_complete_steps(str(tmp_path / "checkpoints")) == [10, 20]


def test_full_disk_in_the_state_item_and_before_any_checkpoint(tmp_path, monkeypatch):
    """ENOSPC from the parameter writer on the first save: no complete step to resume from."""
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", _enospc)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=5)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        mngr.save(5, make_state(seed=1), TinyIterator())
    mngr.close()
    assert info.value.step == 5 and info.value.resume_step is None
    assert "ENOSPC" in str(info.value) and "starts from step 0" in str(info.value)
    assert ckpt.list_complete_steps(str(tmp_path)) == []


def test_other_save_errors_are_not_translated(tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise KeyError("a bug, not a disk")
    monkeypatch.setattr(TinyIterator, "save", boom)
    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=5, async_save=False)
    with pytest.raises(KeyError):
        mngr.save(5, make_state(seed=1), TinyIterator())
    assert ckpt.list_complete_steps(str(tmp_path)) == []


def test_full_disk_in_the_background_commit_is_reported_by_wait(tmp_path, monkeypatch, caplog):
    """ENOSPC raised in orbax's background save thread: wait_until_finished raises
    CheckpointWriteError for that step, and orbax's own traceback records are not logged."""
    class FullDisk:
        def result(self, timeout=None):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real = ocp.StandardCheckpointHandler.async_save

    async def failing_commit(self, *args, **kwargs):
        return list(await real(self, *args, **kwargs) or []) + [FullDisk()]

    mngr = ckpt.CheckpointManager(str(tmp_path), save_period=5)
    mngr.save(5, make_state(seed=1), TinyIterator())
    mngr.wait_until_finished()
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", failing_commit)
    assert mngr.save(10, make_state(seed=2), TinyIterator())  # the failure comes later
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        mngr.wait_until_finished()
    mngr.close()
    assert (info.value.step, info.value.resume_step) == (10, 5) and "ENOSPC" in str(info.value)
    assert not [r for r in caplog.records if r.exc_info]
    assert ckpt.list_complete_steps(str(tmp_path)) == [5]
