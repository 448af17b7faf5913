"""Flags and messages (issue 13 kind 10): misspelt gin flags are refused with the closest
known name, a full disk during a checkpoint is one line naming the step, reason, MODEL_DIR
and resume step (and the resume stays exact), and a CLI start on a machine without a GPU
prints no CUDA/TPU probe lines."""
import errno
import os
import subprocess
import sys
import textwrap

import gin
import pytest

from slm_jax import cli, gin_utils
from slm_jax.cli import common
from slm_jax.training import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "--gin_file=gin/runs/test_cpu.gin"


def refused(*argv) -> str:
    """The ConfigError message of gin_utils.setup(argv) (fails if it is accepted)."""
    with pytest.raises(gin_utils.ConfigError) as info:
        gin_utils.setup(list(argv))
    return str(info.value)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    yield
    gin.clear_config()


# ------------------------------------------------------------------ gin flags on the command line

def test_misspelt_macro_is_refused_with_the_closest_name():
    message = refused(RUN, "--gin.TRAIN_STPES=5")
    assert "TRAIN_STPES" in message and "did you mean TRAIN_STEPS?" in message


def test_misspelt_macro_through_the_cli_is_one_line_and_exit_2(capsys):
    assert cli.main(["train", RUN, "--gin.TRAIN_STPES=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("slm-jax train: ConfigError: --gin.TRAIN_STPES = 5")
    assert "did you mean TRAIN_STEPS?" in err


def test_a_macro_no_config_uses_is_refused_even_without_a_close_name():
    message = refused(RUN, "--gin.LEARNING_RATE_XYZ=0.1")
    assert "no loaded gin file or module uses a macro named LEARNING_RATE_XYZ" in message
    assert "TRAIN_STEPS" in message  # the known macros are listed


@pytest.mark.parametrize("binding, suggestion", [
    ("--gin.train.train_stpes=5", "did you mean train.train_steps?"),
    ("--gin.DatasetConfig.batch_sise=8", "did you mean DatasetConfig.batch_size?"),
    ("--gin.train/DatsetConfig.batch_size=8", "did you mean train/DatasetConfig.batch_size?"),
    ("--gin.Trian.log_period=2", "did you mean train.log_period?"),
])
def test_unknown_configurable_or_parameter_names_the_closest(binding, suggestion):
    message = refused(RUN, binding)
    assert suggestion in message and message.count("\n") == 0


def test_legitimate_overrides_are_accepted():
    """Every kind of --gin. flag the tests, Makefile, README and launch scripts use."""
    gin_utils.setup([RUN, "--gin.TRAIN_STEPS=60", "--gin.CHECKPOINT_PERIOD=10", "--gin.SEQUENCE_LENGTH=64",
                     "--gin.BATCH_SIZE=8", "--gin.train.log_period=5", "--gin.train.eval_period=0",
                     "--gin.train.keep_checkpoints=None", "--gin.train.eval_steps=2",
                     "--gin.MODEL_DIR='/tmp/somewhere'", "--gin.MIXTURE_OR_TASK_NAME='demo_units_mix'",
                     "--gin.DecoderConfig.num_layers=3", "--gin.train/DatasetConfig.batch_size=4",
                     "--gin.DistributedConfig.coordinator_address=None", "--gin.OptimizerConfig.learning_rate=1e-3",
                     "--gin.OptimizerConfig.learning_rate=1"])  # an int where the file has a float
    assert gin.query_parameter("%TRAIN_STEPS") == 60
    assert gin.query_parameter("train/DatasetConfig.batch_size") == 4
    assert gin.query_parameter("%MODEL_DIR") == "/tmp/somewhere"


def test_a_macro_used_only_by_another_binding_is_accepted():
    gin_utils.setup([RUN, "--gin.train.seed=%MY_SEED", "--gin.MY_SEED=3"])
    assert gin.query_parameter("%MY_SEED") == 3


def test_configurables_of_a_module_import_are_known(tmp_path, monkeypatch):
    (tmp_path / "flag_test_tasks.py").write_text(textwrap.dedent("""
        import gin

        @gin.configurable
        def my_augment(strength=0.5, mode="none"):
            return strength, mode
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = f"--gin_file={REPO}/gin/runs/test_cpu.gin"
    gin_utils.setup([run, "--module_import=flag_test_tasks", "--gin.my_augment.strength=0.9"])
    assert gin.query_parameter("my_augment.strength") == 0.9
    message = refused(run, "--module_import=flag_test_tasks", "--gin.my_augment.strenght=0.9")
    assert "did you mean my_augment.strength?" in message


@pytest.mark.parametrize("binding, words", [
    ("--gin.TRAIN_STEPS=1e3", ["TRAIN_STEPS is int in the gin file (300)", "float 1000.0"]),
    ("--gin.TRAIN_STEPS='300'", ["TRAIN_STEPS is int", "got str '300'"]),
    ("--gin.MIXTURE_OR_TASK_NAME=5", ["MIXTURE_OR_TASK_NAME is str", "got int 5", "quote strings"]),
])
def test_a_known_macro_with_a_value_of_another_type(binding, words):
    message = refused(RUN, binding)
    assert all(w in message for w in words), message


def test_missing_gin_file_lists_the_paths_tried_and_the_closest_file():
    message = refused("--gin_file=gin/runs/tset_cpu.gin")
    assert os.path.join(REPO, "gin/runs/tset_cpu.gin") in message
    assert "did you mean gin/runs/test_cpu.gin?" in message


def test_unknown_module_import_is_named():
    message = refused(RUN, "--module_import=no_such_tasks_module")
    assert "--module_import=no_such_tasks_module: cannot import it" in message


def test_train_refuses_arguments_it_does_not_take(capsys):
    assert cli.main(["train", RUN, "--gin_flie=gin/runs/test_cpu.gin"]) == 2
    err = capsys.readouterr().err
    assert "--gin_flie=gin/runs/test_cpu.gin: unknown argument" in err and "did you mean --gin_file?" in err


@pytest.mark.parametrize("argv", [
    ["units", "encode", "--audio=x", "--centroids=km.npy", "--out=u.jsonl", "--rencode"],
    ["inspect", "runs/x", "--stpe=3"],
    ["export-hf", "runs/x", "--out=y", "--stpe=3"],
])
def test_unknown_flags_of_argparse_commands_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_a_missing_model_dir_is_one_line(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No complete checkpoint found" in err and str(tmp_path / "no_run") in err


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "/runs/locked/config.gin"),
                                   OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run")])
def test_an_unwritable_path_is_one_line_and_other_errors_keep_their_traceback(error, monkeypatch, capsys):
    def command_raising(_name):
        def main(_argv):
            raise error
        return main
    monkeypatch.setattr(cli, "command", command_raising)
    assert cli.main(["train", RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("slm-jax train: ") and error.filename in err
    monkeypatch.setattr(cli, "command", lambda _name: lambda _argv: {}["a bug"])
    with pytest.raises(KeyError):
        cli.main(["train", RUN])


def test_tensorflow_permission_denied_is_one_line(monkeypatch, capsys):
    import tensorflow as tf
    def main(_argv):
        raise tf.errors.PermissionDeniedError(None, None, "/runs/locked/config.gin; Permission denied")
    monkeypatch.setattr(cli, "command", lambda _name: main)
    assert cli.main(["train", RUN]) == 2
    assert "PermissionDeniedError: /runs/locked/config.gin; Permission denied" in capsys.readouterr().err


# ------------------------------------------------------------------ a full disk during a checkpoint

TRAIN = [RUN, "--gin.TRAIN_STEPS=6", "--gin.CHECKPOINT_PERIOD=2", "--gin.SEQUENCE_LENGTH=64", "--gin.BATCH_SIZE=8",
         "--gin.train.log_period=2", "--gin.train.eval_period=0", "--gin.train.keep_checkpoints=None"]


def params_sha(model_dir, step):
    return checkpoints.params_sha256(checkpoints.restore_params_to_host(os.path.join(model_dir, "checkpoints"),
                                                                        step)[1])


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_one_line_and_the_resume_is_exact(demo_data_dir, tmp_path, monkeypatch,
                                                                            capsys):
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert cli.main(["train", *TRAIN, f"--gin.MODEL_DIR='{whole}'"]) == 0

    real_save = checkpoints.DataIteratorHandler.save

    def full_disk_at_step_4(self, directory, args):
        if os.path.basename(os.path.dirname(str(directory))).split(".")[0] == "4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return real_save(self, directory, args)

    monkeypatch.setattr(checkpoints.DataIteratorHandler, "save", full_disk_at_step_4)
    capsys.readouterr()
    assert cli.main(["train", *TRAIN, f"--gin.MODEL_DIR='{broken}'"]) == 1
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("slm-jax")]
    assert len(err) == 1 and "Traceback" not in stderr, stderr
    assert err[0].startswith("slm-jax train: CheckpointWriteError: checkpoint of step 4 not written: "
                             "[Errno 28] No space left on device (ENOSPC)")
    assert f"MODEL_DIR {broken};" in err[0] and "a rerun resumes from step 2" in err[0]
    assert checkpoints.list_complete_steps(os.path.join(broken, "checkpoints")) == [2]

    monkeypatch.undo()
    monkeypatch.chdir(REPO)
    assert cli.main(["train", *TRAIN, f"--gin.MODEL_DIR='{broken}'"]) == 0
    for step in (4, 6):
        assert params_sha(broken, step) == params_sha(whole, step)


# ------------------------------------------------------------------ a quiet start without a GPU

PROBE_WORDS = ("Unable to initialize backend", "An NVIDIA GPU may be present", "cudart_stub", "cuInit",
               "Unable to register cu", "absl::InitializeLog", "TPU accelerator type", "InitGoogle")


def test_probe_lines_are_recognised_and_other_lines_kept():
    assert common.is_probe_line("I0000 00:00:17.6 21789 cudart_stub.cc:31] Could not find cuda drivers on your "
                                "machine, GPU will not be used.")
    assert common.is_probe_line("E0000 00:00:17.2 21789 cuda_platform.cc:52] failed call to cuInit: INTERNAL")
    assert common.is_probe_line("Unable to initialize backend 'cuda': module 'jaxlib' has no attribute")
    assert not common.is_probe_line("E0000 ... some_op.cc:12] INVALID_ARGUMENT: shape mismatch in tensor foo")
    assert not common.is_probe_line("Traceback (most recent call last):")


@pytest.mark.slow
@pytest.mark.skipif(common.has_accelerator(), reason="checks a machine without a GPU/TPU device node")
def test_a_cli_start_on_a_machine_without_gpu_prints_no_probe_lines(tmp_path):
    """`train` (imports TensorFlow) and `units fit` (initialises JAX) with the user's plain
    environment: no JAX_PLATFORMS, no TF_CPP_MIN_LOG_LEVEL; errors still come through."""
    import numpy as np
    from scipy.io import wavfile
    wav = tmp_path / "a.wav"
    wavfile.write(wav, 16000, (np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16))
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    env["PYTHONPATH"] = REPO
    runs = [["train", RUN, "--gin.TRAIN_STPES=5"],
            ["units", "fit", f"--audio={wav}", f"--out={tmp_path / 'km.npy'}", "--k=2", "--iters=2", "--no_progress"]]
    for argv in runs:
        proc = subprocess.run([sys.executable, "-m", "slm_jax.cli", *argv], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert not [line for line in proc.stderr.splitlines() if any(w in line for w in PROBE_WORDS)], proc.stderr
        if argv[0] == "train":
            assert proc.returncode == 2 and "did you mean TRAIN_STEPS?" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(common.has_accelerator(), reason="checks a machine without a GPU/TPU device node")
def test_quiet_start_survives_an_availability_probe_of_tensorflow():
    """orbax's dependencies ask `importlib.util.find_spec("tensorflow")` before anything imports it
    (`slm-jax inspect` printed TF's cudart probe twice): the filter must still wrap the real import."""
    code = ("from slm_jax.cli.common import quiet_start; quiet_start(); import importlib.util; "
            "assert importlib.util.find_spec('tensorflow') is not None; import tensorflow")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if any(w in line for w in PROBE_WORDS)], proc.stderr
