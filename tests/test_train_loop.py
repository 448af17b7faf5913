"""End-to-end runs of `slm-jax train`: exact resume after SIGKILL, restore onto another mesh,
NaN stop with the last good checkpoint intact, TPU ahead-of-time compile."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from slm_jax import gin_utils
from slm_jax.training import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FLAGS = [
    "--gin_file=gin/runs/test_cpu.gin",
    "--gin.TRAIN_STEPS=60",
    "--gin.CHECKPOINT_PERIOD=10",
    "--gin.SEQUENCE_LENGTH=64",
    "--gin.BATCH_SIZE=8",
    "--gin.train.log_period=5",
    "--gin.train.eval_period=0",
    "--gin.train.keep_checkpoints=None",
]


def cli(*args, devices=8):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return [sys.executable, "-m", "slm_jax.cli", *args], env


def run_cli(*args, devices=8, check=True):
    cmd, env = cli(*args, devices=devices)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def sha_of(model_dir, step=None):
    args = ["inspect", model_dir] + ([f"--step={step}"] if step else [])
    out = run_cli(*args).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("params_sha256:"))


def metrics_by_step(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return {m["step"]: m for m in map(json.loads, f)}


@pytest.fixture(scope="module")
def uninterrupted(demo_data_dir, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    run_cli("train", *RUN_FLAGS, f"--gin.MODEL_DIR='{model_dir}'")
    return model_dir


@pytest.mark.slow
def test_uninterrupted_run_writes_everything(uninterrupted):
    metrics = metrics_by_step(uninterrupted)
    assert sorted(metrics) == list(range(5, 61, 5))
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu"):
        assert key in metrics[60]
    assert metrics[60]["loss"] < 0.8 * metrics[5]["loss"], "loss must fall"
    assert checkpoints.list_complete_steps(os.path.join(uninterrupted, "checkpoints")) == list(range(10, 61, 10))
    for name in ("config.gin", "config-1.gin", "launches.jsonl", "model_config.json"):
        assert os.path.isfile(os.path.join(uninterrupted, name))
    assert os.listdir(os.path.join(uninterrupted, "tensorboard"))
    with open(os.path.join(uninterrupted, "config.gin")) as f:
        assert "TRAIN_STEPS = 60" in f.read()


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(uninterrupted, tmp_path):
    model_dir = str(tmp_path / "killed")
    cmd, env = cli("train", *RUN_FLAGS, f"--gin.MODEL_DIR='{model_dir}'")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    deadline = time.time() + 300
    while not checkpoints.list_complete_steps(ckpt_dir):
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read().decode()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.list_complete_steps(ckpt_dir)
    assert killed_at and killed_at[-1] < 60, killed_at

    run_cli("train", *RUN_FLAGS, f"--gin.MODEL_DIR='{model_dir}'")
    assert sha_of(model_dir) == sha_of(uninterrupted)
    # metrics.jsonl holds each logged step once, whatever was logged before the kill.
    assert sorted(metrics_by_step(model_dir)) == list(range(5, 61, 5))


@pytest.mark.slow
def test_resume_onto_a_different_mesh(uninterrupted, tmp_path):
    """Saved with fsdp=8 on 8 devices, continued on 1 device: same data, same losses."""
    model_dir = str(tmp_path / "remeshed")
    shutil.copytree(uninterrupted, model_dir)
    for step in checkpoints.list_complete_steps(os.path.join(model_dir, "checkpoints")):
        if step > 30:
            shutil.rmtree(os.path.join(model_dir, "checkpoints", str(step)))
    run_cli("train", *RUN_FLAGS, f"--gin.MODEL_DIR='{model_dir}'", devices=1)
    want, got = metrics_by_step(uninterrupted), metrics_by_step(model_dir)
    for step in range(35, 61, 5):
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=2e-3), step


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(demo_data_dir, tmp_path):
    from slm_jax.training.train import NonFiniteLossError, TrainRun, run_training

    model_dir = str(tmp_path / "nan")
    base = ["TRAIN_STEPS = 8", "CHECKPOINT_PERIOD = 2", "SEQUENCE_LENGTH = 64", "train.eval_period = 0",
            "train.log_period = 2", f"MODEL_DIR = '{model_dir}'", "OptimizerConfig.warmup_steps = 0",
            "OptimizerConfig.decay = 'constant'"]
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], base + ["TRAIN_STEPS = 4"])
    run_training(TrainRun())
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    assert checkpoints.list_complete_steps(ckpt_dir) == [2, 4]
    good_sha = checkpoints.params_sha256(checkpoints.restore_params_to_host(ckpt_dir)[1])

    # An absurd learning rate blows the parameters up at the first resumed step (5); a resume
    # may change the schedule only when told so (run_dir.RESUME_SETTINGS).
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], base + ["OptimizerConfig.learning_rate = 1e30",
                                                           "train.allow_resume_changes = 'schedule'"])
    with pytest.raises(NonFiniteLossError, match=r"at step 5\b.*last good checkpoint \(step 4\)"):
        run_training(TrainRun())
    assert checkpoints.list_complete_steps(ckpt_dir) == [2, 4]
    assert checkpoints.params_sha256(checkpoints.restore_params_to_host(ckpt_dir)[1]) == good_sha


@pytest.mark.slow
def test_incompatible_model_dir_is_refused_before_compiling(uninterrupted):
    proc = run_cli("train", *RUN_FLAGS, f"--gin.MODEL_DIR='{uninterrupted}'", "--gin.DecoderConfig.num_layers=3",
                   check=False)
    assert proc.returncode == 2
    assert "DecoderConfig.num_layers: saved 2 vs requested 3" in proc.stderr


def test_unknown_binding_from_the_command_line():
    proc = run_cli("train", "--gin_file=gin/runs/test_cpu.gin", "--gin.train.no_such_flag=1", check=False)
    assert proc.returncode == 2
    assert "--gin.train.no_such_flag = 1" in proc.stderr


@pytest.mark.tpu_aot
@pytest.mark.slow
def test_compile_for_a_tpu_slice():
    proc = run_cli("compile", "--gin_file=gin/runs/test_cpu.gin", "--topology=v5e:2x2")
    assert "topology: v5e:2x2 (4 x TPU v5" in proc.stdout
    assert "fits" in proc.stdout and "temporaries" in proc.stdout


USER_TASKS = '''
from slm_jax.testing import unit_corpus as demo_corpus
from slm_jax.data.registration import register_mixture, register_unit_task

register_unit_task("user_units_fr", {"train": demo_corpus.file_pattern("train", "fr"),
                                     "validation": demo_corpus.file_pattern("validation", "fr")},
                   num_units=demo_corpus.NUM_UNITS, root_fn=demo_corpus.ensure_demo_corpus)
register_mixture("user_mixture", ["user_units_fr"])
'''


@pytest.mark.slow
def test_user_module_registers_a_trainable_mixture(demo_data_dir, tmp_path):
    (tmp_path / "my_tasks.py").write_text(USER_TASKS)
    model_dir = str(tmp_path / "user_run")
    cmd, env = cli("train", "--gin_file=" + os.path.join(REPO, "gin/runs/test_cpu.gin"), "--module_import=my_tasks",
                   "--gin.MIXTURE_OR_TASK_NAME='user_mixture'", "--gin.TRAIN_STEPS=4", "--gin.SEQUENCE_LENGTH=64",
                   "--gin.train.log_period=2", "--gin.train.eval_period=0", f"--gin.MODEL_DIR='{model_dir}'")
    proc = subprocess.run(cmd, env=dict(env, PYTHONPATH=REPO), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(metrics_by_step(model_dir)) == [2, 4]
    with open(os.path.join(model_dir, "config.gin")) as f:
        assert "user_mixture" in f.read()


@pytest.mark.slow
def test_model_vocabulary_must_cover_the_task(tmp_path):
    proc = run_cli("train", *RUN_FLAGS, f"--gin.MODEL_DIR='{tmp_path / 'small_vocab'}'",
                   "--gin.DecoderConfig.vocab_size=64", check=False)
    assert proc.returncode == 2
    assert "DecoderConfig.vocab_size=64 is smaller than the vocabulary of 'demo_units_mix' (103 ids)" in proc.stderr


def test_in_training_benchmarks_are_logged_with_the_loss(demo_data_dir, tmp_path):
    """`train.benchmarks` / `train.benchmark_period`: cloze accuracy logged as bench/<name> every period."""
    import numpy as np

    from slm_jax.evaluation.benchmarks import in_training_scorer
    from slm_jax.training.train import TrainRun, run_training

    pairs = tmp_path / "pairs.jsonl"
    rng = np.random.default_rng(0)
    with open(pairs, "w") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"p{i}", "correct": rng.integers(0, 10, 12).tolist(),
                                "wrong": rng.integers(0, 10, 9).tolist()}) + "\n")
    model_dir = str(tmp_path / "bench")
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], [
        "TRAIN_STEPS = 4", "CHECKPOINT_PERIOD = 4", "SEQUENCE_LENGTH = 64", "train.eval_period = 0",
        "train.log_period = 2", f"MODEL_DIR = '{model_dir}'", f"train.benchmarks = '{pairs}'",
        "train.benchmark_period = 2"])
    run = TrainRun()
    with pytest.raises(ValueError, match="needs a scorer"):  # training never imports evaluation itself
        run_training(run)
    last = run_training(run, benchmark_fn=in_training_scorer(run.benchmarks, run.train_dataset.mixture_or_task_name))
    logged = [k for k in last if k.startswith("bench/")]
    assert logged == [f"bench/{pairs}"] and 0.0 <= last[logged[0]] <= 1.0, sorted(last)
    rows = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if any(k.startswith("bench/") for k in r)] == [2, 4]

    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], [f"MODEL_DIR = '{model_dir}2'", "train.log_period = 2",
                                                    "train.benchmarks = 'ssc_en'", "train.benchmark_period = 3"])
    with pytest.raises(ValueError, match="benchmark_period=3 must be a multiple of train.log_period=2"):
        TrainRun()
