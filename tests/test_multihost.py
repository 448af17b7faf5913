"""`slm-jax train` as 2 processes x 4 CPU devices (loopback coordinator, gloo collectives).

One job, launched twice: SIGTERM to process 1 only makes both processes stop at the same
step, checkpoint it and exit 0; the relaunch resumes. Then: per-process data shards made
one global batch every step (the losses equal one process fed both shards), every process
wrote its part of each checkpoint, only process 0 logged, and the checkpoint restores on 8
devices and on 1."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import seqio

from slm_jax import gin_utils
from slm_jax.training import checkpoints, distributed
from tests.multiprocess import REPO, finish_job, run_job, start_job

# decay_steps is fixed so that the relaunch, with fewer TRAIN_STEPS, keeps the same schedule.
BINDINGS = {"CHECKPOINT_PERIOD": "1000", "SEQUENCE_LENGTH": "64", "BATCH_SIZE": "8", "train.log_period": "1",
            "train.eval_period": "0", "OptimizerConfig.decay_steps": "100"}
GIN_FILE = "gin/runs/test_cpu.gin"
LONG_ENOUGH = 100  # steps; the SIGTERM comes after step 2


def train_args(model_dir, train_steps):
    return ["train", f"--gin_file={GIN_FILE}", *(f"--gin.{k}={v}" for k, v in BINDINGS.items()),
            f"--gin.TRAIN_STEPS={train_steps}", f"--gin.MODEL_DIR='{model_dir}'"]


def parse_run(model_dir, train_steps):
    from slm_jax.training.train import TrainRun
    gin_utils.parse_gin([GIN_FILE], [f"{k} = {v}" for k, v in BINDINGS.items()]
                        + [f"TRAIN_STEPS = {train_steps}", f"MODEL_DIR = '{model_dir}'"])
    return TrainRun()


def metrics_by_step(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return {m["step"]: m for m in map(json.loads, f)}


def _wait_for_step(model_dir, step, procs, timeout=300):
    path, deadline = os.path.join(model_dir, "metrics.jsonl"), time.time() + timeout
    while not (os.path.exists(path) and max(metrics_by_step(model_dir), default=0) >= step):
        assert all(p.poll() is None for p in procs), "the job ended before the SIGTERM"
        assert time.time() < deadline, f"no step {step} in {timeout} s"
        time.sleep(0.1)


class TwoProcessRun:
    def __init__(self, model_dir, preempted, stop_step, steps_after_stop, resumed):
        self.model_dir, self.preempted, self.resumed = model_dir, preempted, resumed
        self.stop_step, self.steps_after_stop, self.final_step = stop_step, steps_after_stop, stop_step + 2


@pytest.fixture(scope="module")
def two_process_run(demo_data_dir, tmp_path_factory):
    from slm_jax.testing import unit_corpus as demo_corpus
    demo_corpus.ensure_demo_corpus()  # once, before two processes would both build it
    model_dir = str(tmp_path_factory.mktemp("multihost") / "run")
    procs = start_job(train_args(model_dir, LONG_ENOUGH), num_processes=2, devices_per_process=4)
    try:
        _wait_for_step(model_dir, 2, procs)
        os.kill(procs[1].pid, signal.SIGTERM)  # the notice reaches one host only
    finally:
        preempted = finish_job(procs)
    steps = checkpoints.list_complete_steps(os.path.join(model_dir, "checkpoints"))
    stop_step = steps[-1] if steps else 0
    # The relaunch also evaluates after its last step (2 batches, each from both processes' eval shards).
    final_step = stop_step + 2
    eval_at_the_end = [f"--gin.train.eval_period={final_step}", "--gin.train.eval_steps=2"]
    resumed = run_job(train_args(model_dir, final_step) + eval_at_the_end, num_processes=2, devices_per_process=4)
    return TwoProcessRun(model_dir, preempted, stop_step, steps, resumed)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_to_one_process_stops_both_at_one_checkpointed_step(two_process_run):
    run = two_process_run
    assert [rc for rc, _, _ in run.preempted] == [0, 0], run.preempted[1][2][-3000:]
    assert 2 <= run.stop_step < LONG_ENOUGH and run.steps_after_stop == [run.stop_step]
    for _, _, err in run.preempted:
        assert f"Preemption notice (SIGTERM): saved step {run.stop_step} " in err


@pytest.mark.multiprocess
def test_both_processes_write_each_checkpoint(two_process_run):
    ckpt_dir = os.path.join(two_process_run.model_dir, "checkpoints")
    assert checkpoints.list_complete_steps(ckpt_dir) == [two_process_run.stop_step, two_process_run.final_step]
    data_files = sorted(os.listdir(os.path.join(ckpt_dir, str(two_process_run.final_step), "data")))
    assert [f for f in data_files if f.endswith(".index")] == ["process_0_of_2.index", "process_1_of_2.index"]


@pytest.mark.multiprocess
def test_only_process_0_logs(two_process_run):
    # each step once (not once per process, and the relaunch replaced nothing twice)
    assert sorted(metrics_by_step(two_process_run.model_dir)) == list(range(1, two_process_run.final_step + 1))
    for (_, _, err0), (_, _, err1) in (two_process_run.preempted, two_process_run.resumed):
        assert "train:" in err0 and "train:" not in err1  # the progress bar
        assert "Joined a 2-process job (explicit) as process 0 with 4 local devices" in err0
        assert "Joined a 2-process job" not in err1


def _one_process_reference(run):
    """What the 2-process job computes, in one process: each step's global batch is
    process 0's shard rows followed by process 1's."""
    from slm_jax.data.pipeline import DataIterator, get_dataset
    from slm_jax.training.train import build_trainer

    trainer = build_trainer(run)
    shards = [DataIterator(get_dataset(run.train_dataset, seqio.ShardInfo(i, 2))) for i in range(2)]
    state, losses = trainer.init_state(run.seed), {}
    for step in range(1, run.train_steps + 1):
        rows = [next(it) for it in shards]
        batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses[step] = float(metrics["loss"])
    return losses, jax.device_get(state["params"]), _eval_loss(trainer, state["params"], run)


def _eval_loss(trainer, params, run):
    from slm_jax.data.pipeline import DataIterator, get_dataset
    shards = [DataIterator(get_dataset(run.eval_dataset, seqio.ShardInfo(i, 2))) for i in range(2)]
    loss_sum = tokens = 0.0
    for _ in range(2):
        rows = [next(it) for it in shards]
        batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        out = trainer.eval_step(params, trainer.global_batch(batch))
        loss_sum, tokens = loss_sum + float(out["loss_sum"]), tokens + float(out["target_tokens"])
    return loss_sum / tokens


@pytest.mark.slow
@pytest.mark.multiprocess
def test_global_batches_come_from_per_process_shards_and_resume_exactly(two_process_run):
    model_dir, final_step = two_process_run.model_dir, two_process_run.final_step
    want_losses, want_params, want_eval = _one_process_reference(parse_run(model_dir, final_step))
    got = metrics_by_step(model_dir)
    for step, loss in want_losses.items():
        assert got[step]["loss"] == pytest.approx(loss, rel=1e-5), step
    assert got[final_step]["eval_loss"] == pytest.approx(want_eval, rel=1e-5)
    _, saved = checkpoints.restore_params_to_host(os.path.join(model_dir, "checkpoints"), final_step)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), saved, want_params)


def _restored_sha(run, devices):
    from slm_jax.training.train import build_trainer
    trainer = build_trainer(run, devices=devices)
    with checkpoints.CheckpointManager(os.path.join(run.model_dir, "checkpoints"), save_period=1) as ckpt:
        state = ckpt.restore(trainer.abstract_state, step=run.train_steps)
    assert len(state["params"]["embed"]["embedding"].sharding.device_set) == len(devices)
    return checkpoints.params_sha256(jax.device_get(state["params"]))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_checkpoint_restores_on_8_devices_and_on_1(two_process_run):
    model_dir = two_process_run.model_dir
    run = parse_run(model_dir, two_process_run.final_step)
    on_8, on_1 = _restored_sha(run, jax.devices()), _restored_sha(run, jax.devices()[:1])
    inspect = subprocess.run([sys.executable, "-m", "slm_jax.cli", "inspect", model_dir], cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=True).stdout
    assert f"params_sha256: {on_8}" in inspect and on_1 == on_8
    assert f"checkpoint_steps: {two_process_run.stop_step} {two_process_run.final_step}" in inspect


def test_process_settings_from_environment_and_slurm():
    resolve, config = distributed.resolve, distributed.DistributedConfig
    explicit = resolve(config(), {"SLM_JAX_COORDINATOR": "10.0.0.2:1234", "SLM_JAX_NUM_PROCESSES": "4",
                                  "SLM_JAX_PROCESS_ID": "3", "SLM_JAX_LOCAL_DEVICE_IDS": "0,1"})
    assert (explicit.method, explicit.num_processes, explicit.process_id) == ("explicit", 4, 3)
    assert explicit.local_device_ids == (0, 1)
    srun = {"SLURM_JOB_ID": "4100", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    slurm = resolve(config(), srun)
    assert (slurm.method, slurm.coordinator_address, slurm.process_id) == ("slurm", "gpu007:61444", 1)
    assert resolve(config(), {**srun, "SLURM_NTASKS": "1"}).method == "single"
    assert resolve(config(), {}).method == "single"
    assert resolve(config(mode="off"), srun).method == "single"
    # gin wins over the environment
    assert resolve(config(coordinator_address="h:1", num_processes=2, process_id=0), srun).process_id == 0


@pytest.mark.parametrize("env, message", [
    ({"SLM_JAX_COORDINATOR": "h:1", "SLM_JAX_NUM_PROCESSES": "2"}, "SLM_JAX_PROCESS_ID"),
    ({"SLM_JAX_COORDINATOR": "h", "SLM_JAX_NUM_PROCESSES": "2", "SLM_JAX_PROCESS_ID": "0"}, "expected host:port"),
    ({"SLM_JAX_COORDINATOR": "h:1", "SLM_JAX_NUM_PROCESSES": "2", "SLM_JAX_PROCESS_ID": "2"},
     r"\$SLM_JAX_PROCESS_ID=2 must be in \[0, \$SLM_JAX_NUM_PROCESSES=2\)"),
    ({"SLM_JAX_DISTRIBUTED": "slurm"}, "not a SLURM step"),
    ({"SLM_JAX_DISTRIBUTED": "mpi"}, "expected one of auto, off"),
])
def test_bad_process_settings_name_the_variable(env, message):
    with pytest.raises(distributed.DistributedConfigError, match=message):
        distributed.resolve(distributed.DistributedConfig(), env)


@pytest.mark.parametrize("nodelist, host", [("node001", "node001"), ("node001,node002", "node001"),
                                            ("gpu[003-005,9],cpu1", "gpu003"), ("a-[12,14]-ib", "a-12-ib")])
def test_first_slurm_host(nodelist, host):
    assert distributed.first_slurm_host(nodelist) == host
