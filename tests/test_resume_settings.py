"""Issue 13, kind 9: what a resume may change (run_dir.RESUME_SETTINGS), a continuous LR
schedule when a run is extended, each launch's config kept (config-<N>.gin, launches.jsonl,
`slm-jax inspect`); kind 10 (part): no 'nan' for a modality the run does not have."""
import json
import re
import shutil

import pytest

from slm_jax import gin_utils
from slm_jax.training import run_dir
from slm_jax.training.optimizer import OptimizerConfig, make_schedule


@pytest.fixture(autouse=True)
def _clear_gin():
    """gin bindings parsed here (e.g. OptimizerConfig.decay_steps) must not leak into later tests."""
    import gin
    yield
    gin.clear_config()

# gin/runs/test_cpu.gin's schedule: peak 3e-3, 30 warmup steps, cosine to 0.1 of the peak
TEST_CPU_OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=30, decay="cosine", weight_decay=0.01)


def test_issue_numbers_jump_and_the_continuous_extension():
    """The issue's numbers: a finished 100-step run ends its decay at 3.0e-4; extended to 200
    steps with decay_steps following TRAIN_STEPS, step 120 would train at ~1.5e-3; with
    decay_steps=100 (the flag the refusal names) it stays at 3.0e-4."""
    old = make_schedule(TEST_CPU_OPT, 100)
    assert float(old(100)) == pytest.approx(3.0e-4, rel=1e-5)
    jumped = float(make_schedule(TEST_CPU_OPT, 200)(120))
    assert jumped == pytest.approx(1.5e-3, rel=0.05)
    kept = make_schedule(OptimizerConfig(**{**TEST_CPU_OPT.__dict__, "decay_steps": 100}), 200)
    for step in (100, 120, 200):
        assert float(kept(step)) == pytest.approx(3.0e-4, rel=1e-5)
    for step in range(0, 101, 10):  # identical up to the old end
        assert float(kept(step)) == pytest.approx(float(old(step)), rel=1e-6)


def test_allowed_changes_are_named_and_checked():
    assert run_dir.parse_allowed_changes("schedule, batch_size") == ("schedule", "batch_size")
    assert run_dir.parse_allowed_changes("") == ()
    with pytest.raises(ValueError, match=r"train.allow_resume_changes: unknown or not overridable \['optimizer'\]"):
        run_dir.parse_allowed_changes("optimizer")
    with pytest.raises(ValueError, match=r"\['batch'\]; known: \['batch_size', 'data_order'"):
        run_dir.parse_allowed_changes("batch")


def _run(model_dir, *bindings):
    from slm_jax.training.train import TrainRun
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], [
        "TRAIN_STEPS = 4", "CHECKPOINT_PERIOD = 2", "SEQUENCE_LENGTH = 32", "train.log_period = 2",
        "train.eval_period = 0", "OptimizerConfig.warmup_steps = 1", "train.async_checkpoints = False",
        f"MODEL_DIR = '{model_dir}'", *bindings])
    import gin
    return TrainRun(), gin.config_str()


@pytest.fixture(scope="module")
def finished(demo_data_dir, tmp_path_factory):
    """A finished 4-step run of the unit corpus (no text)."""
    from slm_jax.training.train import run_training
    model_dir = tmp_path_factory.mktemp("resume") / "base"
    run, config = _run(model_dir)
    last = run_training(run, config)
    return model_dir, last


def _copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished[0], dst)
    return dst


def _rows(model_dir):
    return [json.loads(line) for line in open(model_dir / "metrics.jsonl")]


def test_unit_only_run_never_reports_text_loss(finished):
    """The legacy unit vocabulary carries no modality ids, so neither per-modality mean is
    defined: both are absent (before: loss_text=nan in the summary, null in metrics.jsonl)."""
    model_dir, last = finished
    assert "loss_text" not in last and "loss_speech" not in last and last["loss"] > 0
    assert all("loss_text" not in r and "loss_speech" not in r for r in _rows(model_dir))
    assert "nan" not in (model_dir / "metrics.jsonl").read_text().lower()
    assert "null" not in (model_dir / "metrics.jsonl").read_text().lower().replace('"mfu": null', "")


def test_absent_modality_is_dropped_but_a_nan_loss_is_not():
    from slm_jax.training.train import drop_absent_modalities
    nan = float("nan")
    assert drop_absent_modalities({"loss": 1.0, "loss_text": nan, "loss_speech": 2.0, "ctc_loss": nan}) == {
        "loss": 1.0, "loss_speech": 2.0}
    kept = drop_absent_modalities({"loss": nan, "grad_norm": nan})
    assert set(kept) == {"loss", "grad_norm"}  # the non-finite check must still see them


@pytest.mark.parametrize("bindings, name, flag", [
    (["TRAIN_STEPS = 8"], "schedule", r"--gin.OptimizerConfig.decay_steps=4 \(the LR then stays"),
    (["TRAIN_STEPS = 8", "OptimizerConfig.learning_rate = 1e-3"], "schedule", r"OptimizerConfig.learning_rate"),
    (["TRAIN_STEPS = 8", "BATCH_SIZE = 16", "OptimizerConfig.decay_steps = 4"], "batch_size", "BATCH_SIZE"),
    (["TRAIN_STEPS = 8", "SEQUENCE_LENGTH = 64", "OptimizerConfig.decay_steps = 4"], "sequence_length",
     "SEQUENCE_LENGTH"),
    (["TRAIN_STEPS = 8", "MIXTURE_OR_TASK_NAME = 'demo_units_en'", "OptimizerConfig.decay_steps = 4"],
     "mixture", "MIXTURE_OR_TASK_NAME"),
    (["TRAIN_STEPS = 8", "SEED = 1", "OptimizerConfig.decay_steps = 4"], "data_order", "SEED"),
    (["TRAIN_STEPS = 8", "OptimizerConfig.grad_clip_norm = None", "OptimizerConfig.decay_steps = 4"],
     "optimizer", "it cannot change on a resume"),
])
def test_resume_with_changed_settings_is_refused_naming_the_flag(finished, tmp_path, bindings, name, flag):
    from slm_jax.training.train import run_training
    model_dir = _copy(finished, tmp_path)
    before = (model_dir / "launches.jsonl").read_text()
    run, config = _run(model_dir, *bindings)
    with pytest.raises(run_dir.ResumeSettingsError, match=rf"{name} \[") as err:
        run_training(run, config)
    assert re.search(flag, str(err.value)), str(err.value)
    if name != "optimizer":
        assert f"--gin.train.allow_resume_changes=\"'{name}'\"" in str(err.value)
    assert (model_dir / "launches.jsonl").read_text() == before  # a refused launch leaves no record


def test_schedule_refusal_states_the_jump(finished, tmp_path):
    from slm_jax.training.train import run_training
    model_dir = _copy(finished, tmp_path)
    run, config = _run(model_dir, "TRAIN_STEPS = 8")
    with pytest.raises(run_dir.ResumeSettingsError) as err:
        run_training(run, config)
    old, new = make_schedule(run.optimizer, 4)(4), make_schedule(run.optimizer, 8)(4)
    assert f"The learning rate of step 5 would be {float(new):.3g} instead of {float(old):.3g}." in str(err.value)


@pytest.mark.slow
def test_extension_with_decay_steps_is_continuous_and_keeps_every_config(finished, tmp_path, capsys):
    from slm_jax.cli.inspect_run import main as inspect_main
    from slm_jax.training.train import run_training
    model_dir = _copy(finished, tmp_path)
    first_config = (model_dir / "config.gin").read_text()
    run, config = _run(model_dir, "TRAIN_STEPS = 8", "OptimizerConfig.decay_steps = 4")
    run_training(run, config)
    end = 3e-3 * 0.1
    rows = {r["step"]: r for r in _rows(model_dir)}
    assert sorted(rows) == [2, 4, 6, 8]
    assert rows[4]["learning_rate"] == pytest.approx(float(make_schedule(run.optimizer, 4)(3)), rel=1e-6)
    for step in (6, 8):  # flat at the end of the finished decay, no jump back up
        assert rows[step]["learning_rate"] == pytest.approx(end, rel=1e-5)
    assert (model_dir / "config.gin").read_text() == first_config and "TRAIN_STEPS = 4" in first_config
    assert "TRAIN_STEPS = 4" in (model_dir / "config-1.gin").read_text()
    second = (model_dir / "config-2.gin").read_text()
    assert "TRAIN_STEPS = 8" in second and "OptimizerConfig.decay_steps = 4" in second
    launches = run_dir.read_launches(model_dir)
    assert [(r["launch"], r["start_step"], r["train_steps"], r["config"], r["changed"]) for r in launches] == [
        (1, 0, 4, "config-1.gin", []), (2, 4, 8, "config-2.gin", [])]
    assert launches[1]["settings"]["schedule"]["decay_end_step"] == 4
    assert inspect_main([str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "launches: 2" in out and "  2: " in out and "steps 4 -> 8 config config-2.gin changed: -" in out
    assert "train_loss: " in out and "loss_text" not in out and ": nan" not in out.lower()


@pytest.mark.slow
def test_allowed_batch_size_change_is_recorded_and_restarts_the_data(finished, tmp_path, caplog):
    from slm_jax.training.train import run_training
    model_dir = _copy(finished, tmp_path)
    run, config = _run(model_dir, "TRAIN_STEPS = 6", "OptimizerConfig.decay_steps = 4", "BATCH_SIZE = 16",
                       "train.allow_resume_changes = 'batch_size'")
    with caplog.at_level("WARNING", logger="slm_jax"):
        last = run_training(run, config)
    assert last["step"] == 6
    assert "Resume with changed batch_size" in caplog.text
    launches = run_dir.read_launches(model_dir)
    assert launches[-1]["changed"] == ["batch_size"] and launches[-1]["settings"]["batch_size"] == 16
    # the next launch compares with the latest settings: 16 is now the saved batch size
    run, config = _run(model_dir, "TRAIN_STEPS = 6", "OptimizerConfig.decay_steps = 4", "BATCH_SIZE = 8")
    with pytest.raises(run_dir.ResumeSettingsError, match=r"batch_size \[BATCH_SIZE .*saved 16, requested 8"):
        run_training(run, config)


def test_summary_never_prints_nan(capsys, tmp_path, monkeypatch):
    """`slm-jax train`'s summary line formats an absent value as n/a (kind 10)."""
    import slm_jax.cli.train as cli_train
    monkeypatch.setattr(cli_train.gin_utils, "setup", lambda argv, **kwargs: None)
    monkeypatch.setattr(cli_train, "TrainRun", lambda: type("R", (), {"benchmarks": "", "benchmark_period": 0,
                                                                      "model_dir": str(tmp_path)})())
    monkeypatch.setattr(cli_train, "run_training", lambda *a, **k: {"step": 3, "loss": 1.5,
                                                                     "loss_text": float("nan")})
    monkeypatch.setattr(cli_train.gin, "config_str", lambda: "")
    assert cli_train.main([]) == 0
    out = capsys.readouterr().out
    assert "loss=1.5" in out and "loss_text=n/a" in out and "=nan" not in out


def test_record_launch_keeps_the_first_config_and_inspect_lists_launches(tmp_path, capsys):
    from slm_jax.cli.inspect_run import _print_launches
    settings = {"batch_size": 8, "schedule": {"decay_end_step": 4}}
    first = run_dir.record_launch(str(tmp_path), settings, "TRAIN_STEPS = 4\n", 0, 4)
    second = run_dir.record_launch(str(tmp_path), {**settings, "batch_size": 16}, "TRAIN_STEPS = 8\n", 4, 8,
                                   changed=["batch_size"])
    assert (first["launch"], second["launch"]) == (1, 2)
    assert (tmp_path / "config.gin").read_text() == "TRAIN_STEPS = 4\n"
    assert (tmp_path / "config-1.gin").read_text() == "TRAIN_STEPS = 4\n"
    assert (tmp_path / "config-2.gin").read_text() == "TRAIN_STEPS = 8\n"
    assert [r["settings"]["batch_size"] for r in run_dir.read_launches(str(tmp_path))] == [8, 16]
    _print_launches(str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "launches: 2 (first launch's config: config.gin)"
    assert out[1].endswith("steps 0 -> 4 config config-1.gin changed: -")
    assert out[2].endswith("steps 4 -> 8 config config-2.gin changed: batch_size")
    # without a complete checkpoint nothing is resumed, so nothing is compared
    assert run_dir.check_resume(str(tmp_path), {"batch_size": 32}) == []
