"""Issue 13, kind 8: a task or mixture member that yields no examples is refused before step 1,
with the task and split named, the same way on every process; its neighbours (rate-0 member,
all examples filtered, member without the split, empty eval stream, finite stream running out,
token shares / show / stats of an empty task)."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax import gin_utils
from slm_jax.data import inspect_data, pipeline
from slm_jax.data.pipeline import DatasetConfig, EmptyDataError, check_not_empty, member_has_examples
from slm_jax.data.registration import register_mixture, register_unit_task
from slm_jax.testing import unit_corpus


@pytest.fixture(autouse=True)
def _clear_gin():
    """gin bindings parsed here (e.g. OptimizerConfig.decay_steps) must not leak into later tests."""
    import gin
    yield
    gin.clear_config()

EMPTY = "test_empty_units_de"  # a lang='de' filter over the en/fr synthetic records: 0 examples
TOO_LONG = "test_units_len_filtered"  # drops every example longer than the sequence length
TRAIN_ONLY = "test_units_train_only"
MIX = "test_mix_with_empty_member"
MIX_RATE0 = "test_mix_with_rate0_empty_member"
MIX_NO_SPLIT = "test_mix_member_without_split"


def _keep_if_fits(dataset, sequence_length):
    """A user's filter: drop examples longer than the row (here: every one at length 2)."""
    return dataset.filter(lambda ex: tf.size(ex["targets"]) <= sequence_length["targets"])


def _units_task(name, lang=None, splits=unit_corpus.SPLITS, extra=()):
    task = register_unit_task(name, {s: unit_corpus.file_pattern(s, "en") for s in splits},
                              num_units=unit_corpus.NUM_UNITS, lang=lang, root_fn=unit_corpus.ensure_demo_corpus)
    if extra:  # the same task with more preprocessors before its last (split_to_length)
        seqio.TaskRegistry.remove(name)
        steps = [*task.preprocessors[:-1], *extra, task.preprocessors[-1]]
        task = seqio.TaskRegistry.add(name, source=task.source, preprocessors=steps,
                                      output_features=task.output_features, metric_fns=[])
    return task


def register_tasks():
    """Registers this file's tasks (no I/O); also run on import, so that
    `--module_import=tests.test_empty_tasks` gives a subprocess the same tasks."""
    import slm_jax.testing.tasks  # noqa: F401  (demo_units_en / _fr / _mix)
    _units_task(EMPTY, lang="de")
    _units_task(TOO_LONG, extra=(_keep_if_fits,))
    _units_task(TRAIN_ONLY, splits=("train",))
    register_mixture(MIX, [("demo_units_en", 1.0), (EMPTY, 1.0)])
    register_mixture(MIX_RATE0, [("demo_units_en", 1.0), (EMPTY, 0.0)])
    register_mixture(MIX_NO_SPLIT, [("demo_units_en", 1.0), (TRAIN_ONLY, 1.0)])


register_tasks()


@pytest.fixture(scope="module")
def tasks(demo_data_dir):
    register_tasks()


def cfg(name, split="train", **kw):
    return DatasetConfig(mixture_or_task_name=name, sequence_length=kw.pop("sequence_length", 32),
                         batch_size=kw.pop("batch_size", 4), split=split, **kw)


def test_bare_stop_iteration_is_what_seqio_gives_without_the_check(tasks):
    """The fault itself: the mixture stream stops as soon as the empty member is drawn."""
    it = pipeline.DataIterator(pipeline.get_dataset(cfg(MIX)))
    with pytest.raises(StopIteration):
        for _ in range(1000):
            next(it)


def test_mixture_with_an_empty_member_is_refused_naming_task_and_split(tasks):
    assert member_has_examples(cfg(MIX)) == {"demo_units_en": True, EMPTY: False}
    with pytest.raises(EmptyDataError, match=rf"task '{EMPTY}', split 'train': 0 examples after preprocessing "
                                             rf".*member of mixture '{MIX}'"):
        check_not_empty(cfg(MIX))


def test_single_empty_task_and_empty_validation_split(tasks):
    with pytest.raises(EmptyDataError, match=rf"^task '{EMPTY}', split 'validation': 0 examples after"):
        check_not_empty(cfg(EMPTY, split="validation"))


def test_rate_zero_member_is_never_drawn_so_not_checked(tasks):
    check_not_empty(cfg(MIX_RATE0))
    assert member_has_examples(cfg(MIX_RATE0)) == {"demo_units_en": True}


def test_every_example_filtered_by_length_names_the_sequence_length(tasks):
    check_not_empty(cfg(TOO_LONG, sequence_length=4096))
    with pytest.raises(EmptyDataError, match=rf"task '{TOO_LONG}', split 'train': 0 examples .*sequence_length=2\)"):
        check_not_empty(cfg(TOO_LONG, sequence_length=2))


def test_member_without_the_split_is_refused_not_skipped(tasks):
    with pytest.raises(ValueError, match=rf"members \['{TRAIN_ONLY}'\] of mixture '{MIX_NO_SPLIT}' have no such split"):
        pipeline.get_dataset(cfg(MIX_NO_SPLIT, split="validation"))


def test_processes_agree_from_the_gathered_table(tasks):
    """Each process peeks its own shard; the gathered [processes, members] table gives every
    process the same verdict. Here a fake 2-process gather where process 1's shard of
    demo_units_en is empty: both processes raise the same message naming process 1."""
    shards = [seqio.ShardInfo(i, 2) for i in range(2)]
    local = [member_has_examples(cfg("demo_units_en"), s) for s in shards]
    assert local == [{"demo_units_en": True}] * 2  # the real shards are not empty
    table = np.array([[1], [0]], np.int32)
    messages = []
    for shard in shards:
        with pytest.raises(EmptyDataError) as err:
            check_not_empty(cfg("demo_units_en"), shard, gather=lambda x: table)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert "task 'demo_units_en', split 'train': 0 examples on the data shards of processes [1] of 2" in messages[0]
    check_not_empty(cfg("demo_units_en"), shards[0], gather=lambda x: np.stack([x, x]))  # both have examples


def test_finite_stream_running_out_mid_training_is_a_message(tasks):
    from slm_jax.training.train import next_train_batch
    stream = cfg("demo_units_en", split="validation", num_epochs=1, batch_size=8, shuffle=False)
    it = pipeline.DataIterator(pipeline.get_dataset(stream))
    step = 1
    with pytest.raises(EmptyDataError, match=r"'demo_units_en', split 'validation': the input ran out before "
                                             r"step \d+ \(DatasetConfig.num_epochs=1"):
        while True:
            next_train_batch(it, stream, step)
            step += 1
    assert step > 1


def test_token_shares_show_and_stats_of_an_empty_task(tasks):
    table = inspect_data.stats(MIX, split="validation")
    assert table[EMPTY]["examples"] == 0 and table[EMPTY]["tokens_per_example"] == 0
    assert table["demo_units_en"]["examples"] > 0
    with pytest.raises(ValueError, match=rf"tasks \['{EMPTY}'\] have 0 tokens per example"):
        inspect_data.rates_for_token_shares({t: r["tokens_per_example"] for t, r in table.items()},
                                            {"demo_units_en": 0.5, EMPTY: 0.5})
    text = inspect_data.show(MIX, n=1, split="validation")
    assert f"== {EMPTY} (validation)\ntask '{EMPTY}', split 'validation': 0 examples after preprocessing" in text


def test_data_cli_token_shares_with_an_empty_member_is_one_line(tasks, capsys):
    from slm_jax.cli.data import data_main
    code = data_main(["stats", MIX, "--split=validation", f"--token_shares=demo_units_en=0.5,{EMPTY}=0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"warning: task '{EMPTY}', split 'validation': 0 examples after preprocessing" in err
    assert f"slm-jax data stats: tasks ['{EMPTY}'] have 0 tokens per example" in err
    assert "Traceback" not in err


def _run(model_dir, *bindings):
    from slm_jax.training.train import TrainRun
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], [
        "TRAIN_STEPS = 4", "CHECKPOINT_PERIOD = 4", "SEQUENCE_LENGTH = 32", "train.log_period = 2",
        "train.eval_period = 0", f"MODEL_DIR = '{model_dir}'", *bindings])
    return TrainRun()


@pytest.mark.parametrize("bindings, match", [
    ([f"MIXTURE_OR_TASK_NAME = '{MIX}'"], rf"task '{EMPTY}', split 'train': 0 examples after preprocessing"),
    ([f"eval/DatasetConfig.mixture_or_task_name = '{EMPTY}'", "train.eval_period = 2"],
     rf"task '{EMPTY}', split 'validation': 0 examples after preprocessing"),
])
def test_training_refuses_before_step_1(tasks, tmp_path, bindings, match):
    from slm_jax.training import checkpoints
    from slm_jax.training.train import run_training
    run = _run(tmp_path / "run", *bindings)
    with pytest.raises(EmptyDataError, match=match):
        run_training(run)
    assert not checkpoints.list_complete_steps(tmp_path / "run" / "checkpoints")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_stop_with_the_same_message(tasks, tmp_path):
    """A real 2-process job: both processes refuse the mixture before step 1 with the same
    one-line error (none waits for the other in a collective)."""
    from tests.multiprocess import finish_job, start_job
    args = ["train", "--gin_file=gin/runs/test_cpu.gin", "--module_import=tests.test_empty_tasks",
            f"--gin.MIXTURE_OR_TASK_NAME='{MIX}'", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            "--gin.SEQUENCE_LENGTH=32", "--gin.train.eval_period=0"]
    results = finish_job(start_job(args, num_processes=2, devices_per_process=4), timeout=600)
    lines = []
    for rc, _, err in results:
        assert rc == 2, err[-3000:]
        lines.append(next(line for line in err.splitlines() if line.startswith("slm-jax train: EmptyDataError")))
    assert lines[0] == lines[1]
    assert f"task '{EMPTY}', split 'train': 0 examples after preprocessing" in lines[0]


def test_evaluate_without_any_eval_token_is_an_error(tasks):
    from slm_jax.training.train import evaluate
    with pytest.raises(EmptyDataError, match="the eval stream gave no batch"):
        evaluate(trainer=None, params=None, eval_iterator_factory=lambda: iter([]), eval_steps=3)


