"""SIGTERM (TPU VM maintenance, SLURM time limit, spot reclaim) in a one-process run: the
step in progress is finished and checkpointed, the process exits 0, and the relaunch
continues with exactly the losses and parameters of a run that was never stopped.
(Two processes: tests/test_multihost.py sends SIGTERM to one of them.)"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from slm_jax import gin_utils
from slm_jax.training import checkpoints
from slm_jax.training.preemption import PreemptionWatcher
from tests.multiprocess import REPO

GIN_FILE = "gin/runs/test_cpu.gin"
# decay_steps is fixed so that runs with different TRAIN_STEPS share one schedule.
BINDINGS = {"CHECKPOINT_PERIOD": "1000", "SEQUENCE_LENGTH": "64", "BATCH_SIZE": "8", "train.log_period": "1",
            "train.eval_period": "0", "OptimizerConfig.decay_steps": "100"}
LONG_ENOUGH = 100  # steps; the SIGTERM comes after step 3


def metrics_by_step(model_dir):
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {m["step"]: m for m in map(json.loads, f)}


def train_in_process(model_dir, train_steps):
    from slm_jax.training.train import TrainRun, run_training
    gin_utils.parse_gin([GIN_FILE], [f"{k} = {v}" for k, v in BINDINGS.items()]
                        + [f"TRAIN_STEPS = {train_steps}", f"MODEL_DIR = '{model_dir}'"])
    return run_training(TrainRun())


def start_training(model_dir, train_steps):
    args = [f"--gin.{k}={v}" for k, v in BINDINGS.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.Popen([sys.executable, "-m", "slm_jax.cli", "train", f"--gin_file={GIN_FILE}", *args,
                             f"--gin.TRAIN_STEPS={train_steps}", f"--gin.MODEL_DIR='{model_dir}'"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_params_sha(model_dir):
    return checkpoints.params_sha256(checkpoints.restore_params_to_host(os.path.join(model_dir, "checkpoints"))[1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_checkpoints_the_step_and_the_relaunch_resumes_exactly(demo_data_dir, tmp_path):
    model_dir = str(tmp_path / "preempted")
    proc = start_training(model_dir, LONG_ENOUGH)
    try:
        deadline = time.time() + 300
        while max(metrics_by_step(model_dir), default=0) < 3:
            assert proc.poll() is None, f"the run ended before the SIGTERM:\n{proc.stderr.read()[-3000:]}"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    steps = checkpoints.list_complete_steps(os.path.join(model_dir, "checkpoints"))
    assert len(steps) == 1 and 3 <= steps[0] < LONG_ENOUGH, steps
    stop = steps[0]
    assert f"Preemption notice (SIGTERM): saved step {stop} " in err
    assert max(metrics_by_step(model_dir)) == stop

    final = stop + 3
    resumed = train_in_process(model_dir, final)
    assert resumed["step"] == final and "preempted_at_step" not in resumed
    reference = str(tmp_path / "uninterrupted")
    train_in_process(reference, final)
    want, got = metrics_by_step(reference), metrics_by_step(model_dir)
    assert sorted(got) == sorted(want) == list(range(1, final + 1))
    assert [got[s]["loss"] for s in want] == [want[s]["loss"] for s in want]
    assert final_params_sha(model_dir) == final_params_sha(reference)


def test_watcher_turns_sigterm_into_a_stop_and_gives_it_back():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is before
