"""launch/ scripts: valid bash, and their --dry-run prints complete, pasteable commands."""
import os
import shlex
import subprocess

import pytest

from slm_jax.speech import workers
from slm_jax.training import distributed
from tests.multiprocess import REPO

SCRIPTS = ["launch/tpu_vm.sh", "launch/slurm_gpu.sbatch", "launch/local.sh", "launch/slurm_units.sbatch",
           "launch/tpu_vm_units.sh"]


def run_script(script, *args, env=None):
    return subprocess.run(["bash", script, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def commands(stdout):
    """Printed command lines (comments skipped), each split as a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def flag(words, name):
    return next(w.split("=", 1)[1] for w in words if w.startswith(f"--{name}="))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_tpu_vm_dry_run_for_a_2_worker_slice():
    proc = run_script("launch/tpu_vm.sh", "--name=slm-v4", "--zone=us-central2-b", "--accelerator-type=v4-16",
                      "--dry-run", "--", "--gin.MODEL_DIR='gs://bucket/runs/1b'", "--gin.TRAIN_STEPS=100")
    assert proc.returncode == 0, proc.stderr
    assert "# slm-v4: v4-16, 2 worker(s), runtime tpu-ubuntu2204-base" in proc.stdout
    create, archive, copy, install, train, stream = commands(proc.stdout)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "slm-v4", "--zone=us-central2-b",
                      "--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base"]
    assert "tar" in archive and copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy
    assert install[4:6] == ["ssh", "slm-v4"] and "--worker=all" in install
    assert "pip install -q -e ./slm_jax 'jax[tpu]>=0.10.2,<0.12'" in flag(install, "command")
    assert "--worker=all" in train
    remote = shlex.split(flag(train, "command"))
    assert remote[:3] == ["cd", "slm_jax", "&&"] and "SLM_JAX_DISTRIBUTED=tpu" in remote
    start = remote.index(".venv/bin/slm-jax")
    assert remote[start + 1:start + 5] == ["train", "--gin_file=gin/runs/tpu_v5e_1b.gin",
                                           "--gin.MODEL_DIR='gs://bucket/runs/1b'", "--gin.TRAIN_STEPS=100"]
    assert "--worker=0" in stream and "tail" in flag(stream, "command")


def test_tpu_vm_queued_resources_and_git_install():
    proc = run_script("launch/tpu_vm.sh", "--name=slm-v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
                      "--queued", "--spot", "--repo=https://example.com/slm_jax.git", "--branch=v1", "--dry-run",
                      "--gin_file=gin/runs/tpu_v5e_1b.gin")
    assert proc.returncode == 0, proc.stderr
    assert "4 worker(s), runtime v2-alpha-tpuv5-lite" in proc.stdout
    create, describe, install, train, _ = commands(proc.stdout)
    assert create[3:6] == ["queued-resources", "create", "slm-v5e"] and "--spot" in create
    assert "--node-id=slm-v5e" in create and "--runtime-version=v2-alpha-tpuv5-lite" in create
    assert describe[3:5] == ["queued-resources", "describe"]
    assert "git clone https://example.com/slm_jax.git slm_jax" in flag(install, "command")
    assert "fetch origin v1" in flag(install, "command")
    assert flag(train, "command").count("--gin_file=") == 1


def test_tpu_vm_names_missing_flags():
    proc = run_script("launch/tpu_vm.sh", "--zone=z", "--dry-run")
    assert proc.returncode == 2 and "--name=NAME" in proc.stderr
    proc = run_script("launch/tpu_vm.sh", "--name=n", "--zone=z", "--dry-run")
    assert proc.returncode == 2 and "--accelerator-type is required" in proc.stderr


SLURM_2_NODES = {"SLURM_JOB_ID": "4100", "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_NTASKS": "2",
                 "SLURM_SUBMIT_DIR": "/shared/slm_jax"}


@pytest.mark.parametrize("how", [("--dry-run",), ()])
def test_slurm_dry_run_for_2_nodes(how):
    env = dict(SLURM_2_NODES, **({} if how else {"DRY_RUN": "1"}))
    proc = run_script("launch/slurm_gpu.sbatch", *how, "--gin.MODEL_DIR='/shared/runs/1b'", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "coordinator gpu007:61444" in proc.stdout
    exports, srun = commands(proc.stdout)
    assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks=2", "--chdir=/shared/slm_jax"]
    assert srun[4:] == ["/shared/slm_jax/.venv/bin/slm-jax", "train", "--gin_file=gin/runs/gpu_h100_1b.gin",
                        "--gin.MODEL_DIR='/shared/runs/1b'"]
    # What each srun task then resolves: the exported coordinator, its own SLURM_PROCID.
    task_env = dict(word.split("=", 1) for word in exports[1:])
    task_env.update(SLURM_2_NODES, SLURM_STEP_NODELIST="gpu[007-008]", SLURM_PROCID="1")
    plan = distributed.resolve(distributed.DistributedConfig(), task_env)
    assert (plan.method, plan.coordinator_address, plan.num_processes, plan.process_id) == (
        "explicit", "gpu007:61444", 2, 1)


def test_slurm_script_asks_for_sigterm_before_the_time_limit():
    with open(os.path.join(REPO, "launch/slurm_gpu.sbatch")) as f:
        directives = [line.split()[1] for line in f if line.startswith("#SBATCH")]
    assert "--signal=TERM@120" in directives and "--ntasks-per-node=1" in directives


def test_slurm_script_outside_slurm_says_so():
    env = {k: "" for k in SLURM_2_NODES}
    proc = run_script("launch/slurm_gpu.sbatch", "--dry-run", env=env)
    assert proc.returncode == 2 and "submit with sbatch" in proc.stderr


def test_local_dry_run_for_2_processes():
    proc = run_script("launch/local.sh", "--processes=2", "--devices-per-process=4", "--dry-run",
                      "--gin_file=gin/runs/test_cpu.gin", "--gin.TRAIN_STEPS=10")
    assert proc.returncode == 0, proc.stderr
    first, second = commands(proc.stdout)
    coordinators = {flag_value for words in (first, second) for flag_value in words
                    if flag_value.startswith("SLM_JAX_COORDINATOR=127.0.0.1:")}
    assert len(coordinators) == 1
    assert "SLM_JAX_PROCESS_ID=0" in first and "SLM_JAX_PROCESS_ID=1" in second
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in first
    assert first[-4:] == ["train", "--gin_file=gin/runs/test_cpu.gin", "--gin.TRAIN_STEPS=10", "&"]
    assert second[-4:] == [">", "local_process_1.log", "2>&1", "&"]


def test_local_dry_run_single_process_defaults_to_the_demo():
    proc = run_script("launch/local.sh", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    (words,) = commands(proc.stdout)
    assert words[-2:] == ["train", "--gin_file=gin/runs/demo_cpu.gin"]


def test_tpu_vm_setup_only_installs_and_trains_nothing():
    proc = run_script("launch/tpu_vm.sh", "--name=slm-v4", "--zone=z", "--accelerator-type=v4-16", "--setup-only",
                      "--dry-run")
    assert proc.returncode == 0, proc.stderr
    *_, install = commands(proc.stdout)
    assert "pip install" in flag(install, "command") and "slm-jax train" not in proc.stdout


# --- speech units on many workers (issue 16) ---------------------------------------------------

SLURM_ARRAY_TASK = {"SLURM_JOB_ID": "4103", "SLURM_ARRAY_JOB_ID": "4100", "SLURM_ARRAY_TASK_ID": "3",
                    "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_SUBMIT_DIR": "/shared/slm_jax"}
UNITS_FLAGS = ["--audio=/data/wavs", "--centroids=/data/km.npy", "--out=/data/units.jsonl"]


def test_slurm_units_array_task_runs_its_worker():
    proc = run_script("launch/slurm_units.sbatch", "--dry-run", "--workers=16", "encode", *UNITS_FLAGS,
                      env=SLURM_ARRAY_TASK)
    assert proc.returncode == 0, proc.stderr
    assert "# job 4100_3: slm-jax units encode, array task 3" in proc.stdout
    cd, cmd = commands(proc.stdout)
    assert cd == ["cd", "/shared/slm_jax"]
    assert cmd == ["/shared/slm_jax/.venv/bin/slm-jax", "units", "encode", *UNITS_FLAGS, "--worker_index=3",
                   "--num_workers=16", "--no_progress"]
    # Without --workers the task's own SLURM variables decide (here an --array=1-16 range).
    env = dict(SLURM_ARRAY_TASK, SLURM_ARRAY_TASK_ID="4", SLURM_ARRAY_TASK_MIN="1")
    proc = run_script("launch/slurm_units.sbatch", "--dry-run", "encode", *UNITS_FLAGS, env=env)
    assert proc.returncode == 0, proc.stderr
    _, cmd = commands(proc.stdout)
    assert not any(w.startswith(("--worker_index", "--num_workers")) for w in cmd)
    worker = workers.resolve_worker(env=env, jax_process_fn=lambda: pytest.fail("JAX consulted"))
    assert (worker.index, worker.count) == (3, 16)


@pytest.mark.parametrize("args, env, message", [
    (["verify", "--audio=/d", "--out=/u.jsonl"], SLURM_ARRAY_TASK, "verify runs once: submit it without --array"),
    (["fit", "--from_samples", "--out=/k.npy"], SLURM_ARRAY_TASK, "fit --from_samples runs once"),
    (["encode", *UNITS_FLAGS], dict(SLURM_ARRAY_TASK, SLURM_ARRAY_TASK_ID=""), "submit with --array"),
    (["--workers=3", "encode", *UNITS_FLAGS], SLURM_ARRAY_TASK, "array task 3 >= --workers=3"),
    (["train"], SLURM_ARRAY_TASK, "fit, encode or verify"),
    (["encode", *UNITS_FLAGS], {k: "" for k in SLURM_ARRAY_TASK}, "submit with sbatch"),
])
def test_slurm_units_refuses_misuse(args, env, message):
    proc = run_script("launch/slurm_units.sbatch", "--dry-run", *args, env=env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_slurm_units_once_steps_run_without_an_array():
    env = dict(SLURM_ARRAY_TASK, SLURM_ARRAY_TASK_ID="", SLURM_ARRAY_JOB_ID="")
    proc = run_script("launch/slurm_units.sbatch", "--dry-run", "verify", "--audio=/d", "--out=/u.jsonl", env=env)
    assert proc.returncode == 0, proc.stderr
    assert commands(proc.stdout)[1][1:] == ["units", "verify", "--audio=/d", "--out=/u.jsonl"]


def test_tpu_vm_units_runs_workers_on_all_hosts_and_verify_on_one():
    proc = run_script("launch/tpu_vm_units.sh", "--name=slm-v4", "--zone=us-central2-b", "--project=p", "--dry-run",
                      "encode", *UNITS_FLAGS)
    assert proc.returncode == 0, proc.stderr
    (ssh,) = commands(proc.stdout)
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "slm-v4"] and "--worker=all" in ssh
    assert "--project=p" in ssh
    remote = shlex.split(flag(ssh, "command"))
    assert remote[:3] == ["cd", "slm_jax", "&&"]
    assert remote[remote.index(".venv/bin/slm-jax"):] == [".venv/bin/slm-jax", "units", "encode", *UNITS_FLAGS,
                                                           "--no_progress"]
    for step in (["verify", "--audio=/d", "--out=/u.jsonl"], ["fit", "--from_samples", "--out=/k.npy"]):
        proc = run_script("launch/tpu_vm_units.sh", "--name=n", "--zone=z", "--dry-run", *step)
        (ssh,) = commands(proc.stdout)
        assert "--worker=0" in ssh and flag(ssh, "command").endswith(" ".join(step))


def test_tpu_vm_units_names_missing_flags():
    proc = run_script("launch/tpu_vm_units.sh", "--zone=z", "--dry-run", "encode")
    assert proc.returncode == 2 and "--name=NAME" in proc.stderr
    proc = run_script("launch/tpu_vm_units.sh", "--name=n", "--zone=z", "--dry-run")
    assert proc.returncode == 2 and "fit, encode or verify" in proc.stderr
