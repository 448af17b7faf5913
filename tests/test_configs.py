"""Gin-facing configs: defaults construct, every bad field names `<Config>.<field>`, and a bad
gin binding stops `slm-jax train` (exit 2) before a mesh, a model or a compile exists."""
import math
import re

import gin
import pytest

from slm_jax import cli
from slm_jax.data.pipeline import DatasetConfig
from slm_jax.gin_utils import ConfigError
from slm_jax.training import distributed, partitioning, train
from slm_jax.training.distributed import DistributedConfig, DistributedConfigError
from slm_jax.training.optimizer import OptimizerConfig
from slm_jax.training.partitioning import MeshConfig, MeshError

DATASET = {"mixture_or_task_name": "demo_units_mix", "sequence_length": 16, "batch_size": 8}


def _make(cls, **kw):
    return cls(**{**DATASET, **kw}) if cls is DatasetConfig else cls(**kw)


def test_defaults_and_edge_values_construct():
    assert OptimizerConfig().warmup_steps == 100
    OptimizerConfig(learning_rate=1, warmup_steps=0, decay="linear", decay_steps=1, final_lr_fraction=0.0,
                    b1=0.0, b2=0.0, weight_decay=0.0, grad_clip_norm=None)
    OptimizerConfig(warmup_steps=10, decay_steps=11, final_lr_fraction=1)
    assert MeshConfig().fsdp == -1
    MeshConfig(data=-1, fsdp=2, tensor=1, logical_axis_rules=[["batch", ["data", "fsdp"]], ["embed", None]])
    assert DistributedConfig().mode is None
    DistributedConfig(mode="explicit", coordinator_address="[::1]:1234", num_processes=1, process_id=0,
                      local_device_ids=(0, 3), initialization_timeout_s=1, cpu_collectives="mpi")
    assert _make(DatasetConfig).split == "train"
    _make(DatasetConfig, seed=None, num_epochs=1, ctc_length=1, shuffle=False, pack=False, use_cached=True)


def test_gin_local_device_ids_string_resolves():
    cfg = DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=1, local_device_ids="0, 2")
    assert distributed.resolve(cfg, {}).local_device_ids == (0, 2)


BAD = [
    (OptimizerConfig, ConfigError, "learning_rate", [0, -1e-3, math.nan, "3e-4"]),
    (OptimizerConfig, ConfigError, "warmup_steps", [-1, 1.5, True]),
    (OptimizerConfig, ConfigError, "decay", ["exponential", None]),
    (OptimizerConfig, ConfigError, "decay_steps", [0, 100, 2.5]),  # 100: not past the default warmup_steps
    (OptimizerConfig, ConfigError, "final_lr_fraction", [-0.1, 1.5]),
    (OptimizerConfig, ConfigError, "b1", [1.0, -0.1]),
    (OptimizerConfig, ConfigError, "b2", [1.5]),
    (OptimizerConfig, ConfigError, "eps", [0.0, math.inf]),
    (OptimizerConfig, ConfigError, "weight_decay", [-0.1]),
    (OptimizerConfig, ConfigError, "grad_clip_norm", [0.0, -1.0]),
    (MeshConfig, MeshError, "data", [0, 1.5, True]),
    (MeshConfig, MeshError, "fsdp", [-2]),
    (MeshConfig, MeshError, "tensor", [0, "2"]),
    (MeshConfig, MeshError, "logical_axis_rules", ["batch", [("batch",)], [("batch", "model")],
                                                   [(1, "data")], [("batch", ("data", "x"))]]),
    (DistributedConfig, DistributedConfigError, "mode", ["mpi"]),
    (DistributedConfig, DistributedConfigError, "coordinator_address", ["host", "host:0", ":1234", 1234]),
    (DistributedConfig, DistributedConfigError, "num_processes", [0, "2"]),
    (DistributedConfig, DistributedConfigError, "process_id", [-1, 0.5]),
    (DistributedConfig, DistributedConfigError, "local_device_ids", [[0, -1], [0, 0], "0,x", 3, [0.5]]),
    (DistributedConfig, DistributedConfigError, "initialization_timeout_s", [0, 1.5]),
    (DistributedConfig, DistributedConfigError, "cpu_collectives", ["nccl"]),
    (DatasetConfig, ConfigError, "mixture_or_task_name", ["", None]),
    (DatasetConfig, ConfigError, "sequence_length", [0, 8.0]),
    (DatasetConfig, ConfigError, "batch_size", [0, -8, "8"]),
    (DatasetConfig, ConfigError, "split", ["", None]),
    (DatasetConfig, ConfigError, "seed", ["0", 1.0]),
    (DatasetConfig, ConfigError, "shuffle", [1]),
    (DatasetConfig, ConfigError, "pack", ["yes"]),
    (DatasetConfig, ConfigError, "use_cached", [None]),
    (DatasetConfig, ConfigError, "num_epochs", [0]),
    (DatasetConfig, ConfigError, "ctc_length", [0, True]),
]


@pytest.mark.parametrize("cls, error, field, value",
                         [(c, e, f, v) for c, e, f, values in BAD for v in values],
                         ids=lambda x: x.__name__ if isinstance(x, type) else repr(x))
def test_bad_field_names_its_gin_key(cls, error, field, value):
    with pytest.raises(error, match=rf"\b{cls.__name__}\.{field}\b"):
        _make(cls, **{field: value})


def test_cross_field_checks_name_both_keys():
    with pytest.raises(ConfigError, match=r"OptimizerConfig\.decay_steps=5: .*OptimizerConfig\.warmup_steps=10"):
        OptimizerConfig(warmup_steps=10, decay_steps=5)
    with pytest.raises(DistributedConfigError,
                       match=r"DistributedConfig\.process_id=2: .*DistributedConfig\.num_processes=2"):
        DistributedConfig(num_processes=2, process_id=2)
    with pytest.raises(MeshError, match=r"MeshConfig\.data=-1, MeshConfig\.tensor=-1: more than one axis is -1"):
        MeshConfig(data=-1, fsdp=1, tensor=-1)


@pytest.fixture
def no_training(monkeypatch):
    """`slm-jax train` must fail while building TrainRun: no mesh, no training, no compile."""
    import slm_jax.cli.train as cli_train

    def refuse(*args, **kwargs):
        raise AssertionError("training reached: a bad config must fail before any mesh or compile")
    for module in (cli_train, train):
        monkeypatch.setattr(module, "run_training", refuse)
    monkeypatch.setattr(partitioning, "make_mesh", refuse)
    yield
    gin.clear_config()


@pytest.mark.parametrize("binding, key", [
    ("OptimizerConfig.warmup_steps=-1", r"OptimizerConfig\.warmup_steps=-1"),
    ("OptimizerConfig.decay='exp'", r"OptimizerConfig\.decay='exp'"),
    ("MeshConfig.tensor=0", r"MeshConfig\.tensor=0"),
    ("BATCH_SIZE=0", r"DatasetConfig\.batch_size must be a positive int, got 0"),
    ("SEQUENCE_LENGTH=-4", r"DatasetConfig\.sequence_length must be a positive int, got -4"),
    ("DistributedConfig.mode='mpi'", r"DistributedConfig\.mode='mpi'"),
])
def test_bad_gin_binding_fails_before_training(binding, key, no_training, tmp_path, capsys):
    model_dir = tmp_path / "run"
    argv = ["train", "--gin_file=gin/runs/test_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'", f"--gin.{binding}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("slm-jax train: ") and re.search(key, err), err
    assert not model_dir.exists()
