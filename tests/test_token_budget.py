"""Issue 14, item 1: token budgets (TRAIN_TOKENS) and token accounting (`tokens/*`).

A budget run stops at exactly the first step whose cumulative target tokens reach the budget,
counted again here with numpy from a fresh DataIterator; the counters are per modality and
per mixture member (`decoder_task_ids`, tagged with seqio's own mixture sampling), written at
every checkpoint step and restored on resume."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from slm_jax import contract, gin_utils
from slm_jax.training import checkpoints, metrics, run_dir

MIX = "demo_units_mix"
LENGTH, BATCH = 32, 8
CHECKPOINT_PERIOD, LOG_PERIOD = 3, 4
END_LR = 3e-3 * 0.1  # test_cpu.gin: cosine to 0.1 of the peak


@pytest.fixture(autouse=True)
def _clear_gin():
    import gin
    yield
    gin.clear_config()


# --- counting (numpy only) -------------------------------------------------------------------
def _batch():
    """Two rows: a text + marker segment of member 2 (one prompt token without loss), speech of member 1, padding."""
    tokens = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 0, 0, 0]])
    return {
        contract.DECODER_TARGET_TOKENS: tokens,
        contract.DECODER_LOSS_WEIGHTS: np.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]),
        contract.DECODER_MODALITY: np.array([[contract.MODALITY_MARKER, contract.MODALITY_TEXT, contract.MODALITY_TEXT,
                                              contract.MODALITY_MARKER, 0, 0],
                                             [contract.MODALITY_SPEECH] * 3 + [0, 0, 0]]),
        contract.DECODER_TASK_IDS: np.array([[2, 2, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0]]),
    }


def test_counter_splits_targets_by_modality_and_member():
    counter = metrics.TokenCounter(["a", "b"])
    counter.add(_batch())
    counter.add(_batch())
    assert counter.values() == {"tokens/target": 0, "tokens/packed": 0, "tokens/target_speech": 0,
                                "tokens/target_text": 0, "tokens/task/a": 0, "tokens/task/b": 0}  # not synced yet
    counter.sync()
    values = counter.values()
    assert values == {"tokens/target": 12, "tokens/packed": 14, "tokens/target_speech": 6, "tokens/target_text": 4,
                      "tokens/target_marker": 2, "tokens/task/a": 6, "tokens/task/b": 6}
    assert counter.target == 12
    # A stream without member ids: one task takes everything; a mixture's go to <untagged>.
    no_ids = {k: v for k, v in _batch().items() if k != contract.DECODER_TASK_IDS}
    single = metrics.TokenCounter(["only"])
    single.add(no_ids)
    single.sync()
    assert single.values()["tokens/task/only"] == 6
    counter.add(no_ids)
    counter.sync()
    assert counter.values()["tokens/task/<untagged>"] == 6
    # Restored counts continue; members the run no longer has are carried, so the sums still hold.
    resumed = metrics.TokenCounter(["b", "c"], restored=counter.values())  # member a left the mixture
    resumed.add(_batch())
    resumed.sync()
    out = resumed.values()
    assert out["tokens/target"] == 24 and out["tokens/task/a"] == 6
    assert out["tokens/task/b"] == 6 + 3 and out["tokens/task/c"] == 3
    assert sum(v for k, v in out.items() if k.startswith("tokens/task/")) == out["tokens/target"]
    assert sum(v for k, v in out.items() if k.startswith("tokens/target_")) == out["tokens/target"]


def test_counter_refuses_ids_outside_the_contract():
    bad = _batch()
    bad[contract.DECODER_TASK_IDS] = bad[contract.DECODER_TASK_IDS] * 2  # member 4 of 2
    with pytest.raises(ValueError, match=r"decoder_task_ids: ids \[4\] on target tokens; expected 1..2"):
        metrics.batch_token_counts(bad, 2)
    bad = _batch()
    bad[contract.DECODER_MODALITY][0, 1] = 7
    with pytest.raises(ValueError, match=r"decoder_modality: ids \[7\]"):
        metrics.batch_token_counts(bad, 2)
    with pytest.raises(ValueError, match=r"tokens/target=-1 must be an int >= 0"):
        metrics.TokenCounter(["a"], restored={"tokens/target": -1})


def test_sum_over_processes_is_exact_beyond_int32():
    values = np.array([2**40 + 12345, 7, 2**31 - 1, 2**31], np.int64)
    calls = []

    def gather(x):  # three processes, each with `values` (as process_allgather gives them)
        calls.append(x.dtype)
        return np.stack([x, x, x])

    np.testing.assert_array_equal(metrics.sum_over_processes(values, gather), 3 * values)
    assert calls == [np.int32]
    np.testing.assert_array_equal(metrics.sum_over_processes(values, None), values)


def test_budget_estimate_and_config_checks():
    from slm_jax.training.train import TrainRun, estimated_budget_steps
    probe = {"target_tokens": 600, "probe_batches": 3}  # 200 per step
    assert estimated_budget_steps(1000, probe) == 5
    assert estimated_budget_steps(1001, probe) == 6
    assert estimated_budget_steps(1000, probe, start_step=4, start_tokens=700) == 6
    assert estimated_budget_steps(1000, probe, start_step=4, start_tokens=5000) == 4
    base = dict(model_dir="x", model=None, train_dataset=None, train_steps=10)
    assert TrainRun(**base, train_tokens=5).train_tokens == 5
    for bad in (0, -3, 1.5, True, "1000"):
        with pytest.raises(ValueError, match=r"TRAIN_TOKENS \(train.train_tokens\)=.* must be an int >= 1"):
            TrainRun(**base, train_tokens=bad)
    with pytest.raises(ValueError, match=r"train.token_probe_batches=0 must be an int >= 1"):
        TrainRun(**base, token_probe_batches=0)


def test_converter_packs_task_ids_with_the_tokens():
    import tensorflow as tf

    from slm_jax.data.feature_converter import SLMFeatureConverter
    examples = [([5, 6, 7, 1], 2), ([8, 9, 1], 1), ([4, 1], 2)]

    def ds():
        return tf.data.Dataset.from_generator(
            lambda: ({"targets": t, "task_ids": [i] * len(t)} for t, i in examples),
            output_signature={"targets": tf.TensorSpec([None], tf.int32), "task_ids": tf.TensorSpec([None], tf.int32)})

    (row,) = SLMFeatureConverter(pack=True)(ds(), {"targets": 10}).as_numpy_iterator()
    assert row["decoder_task_ids"].tolist() == [2, 2, 2, 2, 1, 1, 1, 2, 2, 0]
    rows = list(SLMFeatureConverter(pack=False)(ds(), {"targets": 4}).as_numpy_iterator())
    assert [r["decoder_task_ids"].tolist() for r in rows] == [[2, 2, 2, 2], [1, 1, 1, 0], [2, 2, 0, 0]]
    # without the feature, no output (the pipeline writes a task's ids itself)
    (plain,) = SLMFeatureConverter(pack=True)(ds().map(lambda e: {"targets": e["targets"]}),
                                              {"targets": 10}).as_numpy_iterator()
    assert "decoder_task_ids" not in plain


def test_checkpoint_tokens_item(tmp_path):
    import jax
    import jax.numpy as jnp
    state = {"step": jnp.asarray(1, jnp.int32), "params": {"w": jnp.ones((4,), jnp.float32)}}
    counts = {"counts": {"tokens/target": 2**40, "tokens/task/x": 2**40}, "data_task_ids": True}
    with checkpoints.CheckpointManager(str(tmp_path), save_period=1, async_save=False) as mgr:
        mgr.save(1, state, tokens=counts)
        mgr.save(2, state)  # e.g. an import-hf step: no counts
        assert mgr.token_counts(1) == counts and mgr.token_counts(2) is None
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        assert int(mgr.restore(abstract, step=1)["step"]) == 1  # the state restores beside the item
    assert checkpoints.read_token_counts(str(tmp_path)) is None  # latest = 2
    assert checkpoints.list_complete_steps(str(tmp_path)) == [1, 2]
    os.remove(tmp_path / "1" / checkpoints.TOKENS_ITEM / checkpoints.TOKENS_FILE)  # a truncated copy
    assert checkpoints.list_complete_steps(str(tmp_path)) == [2]


def test_resume_settings_record_the_budget_only_when_set():
    import slm_jax.testing.tasks  # noqa: F401  (registers the mixture; no I/O)
    from slm_jax.data.pipeline import DatasetConfig
    from slm_jax.training.train import TrainRun, resume_settings
    run = TrainRun(model_dir="x", model=None, train_dataset=DatasetConfig(MIX, LENGTH, BATCH), train_steps=10)
    assert "train_tokens" not in resume_settings(run)["schedule"]  # older launch records still compare equal
    budget = resume_settings(TrainRun(**{**run.__dict__, "train_tokens": 999}))["schedule"]
    assert budget["train_tokens"] == 999 and budget["decay_end_step"] == 10


# --- the mixture: task tags on seqio's own sampling -------------------------------------------
@pytest.mark.slow
def test_tagged_mixture_equals_seqio_mixture_and_resumes_exactly(demo_data_dir, tmp_path):
    import seqio

    import slm_jax.testing.tasks  # noqa: F401
    from slm_jax.data.feature_converter import SLMFeatureConverter
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, get_dataset, task_names
    cfg = DatasetConfig(MIX, LENGTH, BATCH)
    assert task_names(cfg) == ["demo_units_en", "demo_units_fr"]
    ours = DataIterator(get_dataset(cfg))
    ref = seqio.get_dataset(MIX, {"targets": LENGTH}, SLMFeatureConverter(pack=True), dataset_split="train",
                            shuffle=True, num_epochs=None, seed=0, verbose=False).batch(BATCH).as_numpy_iterator()
    batches = [next(ours) for _ in range(12)]
    for ours_b in batches:
        ref_b = next(ref)
        assert set(ours_b) == set(ref_b) | {"decoder_task_ids"}
        for key in ref_b:
            np.testing.assert_array_equal(ours_b[key], ref_b[key], err_msg=key)
    # Every packed example carries the id of the member it came from (the languages' examples differ,
    # but for a few pieces of one or two tokens, which are skipped).
    members = {}
    for i, name in enumerate(task_names(cfg), 1):
        task = seqio.get_mixture_or_task(name)
        for ex in task.get_dataset({"targets": LENGTH}, split="train", shuffle=False, num_epochs=1).as_numpy_iterator():
            members.setdefault(tuple(ex["targets"][:LENGTH]), set()).add(i)
    seen, checked = set(), 0
    for b in batches:
        for row in range(BATCH):
            seg = b["decoder_segment_ids"][row]
            for s in set(seg[seg > 0]):
                ids = set(b["decoder_task_ids"][row][seg == s].tolist())
                assert len(ids) == 1
                member = members[tuple(b["decoder_target_tokens"][row][seg == s])]
                if len(member) == 1:
                    assert member == ids
                    seen |= ids
                    checked += 1
            assert (b["decoder_task_ids"][row][seg == 0] == 0).all()
    assert seen == {1, 2} and checked > 50
    # The tagged pipeline's position saves and restores exactly.
    it = DataIterator(get_dataset(cfg))
    for _ in range(3):
        next(it)
    it.save(str(tmp_path / "pos"))
    want = [next(it) for _ in range(2)]
    again = DataIterator(get_dataset(cfg))
    again.restore(str(tmp_path / "pos"))
    for w in want:
        got = next(again)
        for key in w:
            np.testing.assert_array_equal(got[key], w[key], err_msg=key)


# --- budget runs ---------------------------------------------------------------------------------
def _recount(steps: int) -> list[dict[str, int]]:
    """Cumulative tokens after each of the first `steps` batches of a fresh train iterator (numpy)."""
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, task_names
    cfg = DatasetConfig(MIX, LENGTH, BATCH)
    names = task_names(cfg)
    it = DataIterator.from_config(cfg)
    total, out = {}, []
    for _ in range(steps):
        b = next(it)
        w = b["decoder_loss_weights"]
        step = {"tokens/target": int(w.sum()), "tokens/packed": int((b["decoder_target_tokens"] != 0).sum()),
                "tokens/target_unknown": int(w[b["decoder_modality"] == 0].sum()),  # unit tasks: no modality
                "tokens/target_speech": int(w[b["decoder_modality"] == 2].sum()),
                "tokens/target_text": int(w[b["decoder_modality"] == 1].sum())}
        step.update({f"tokens/task/{n}": int(w[b["decoder_task_ids"] == i].sum()) for i, n in enumerate(names, 1)})
        total = {k: total.get(k, 0) + v for k, v in step.items()}
        out.append(dict(total))
    return out


def _choose_budget(cum: list[dict[str, int]]) -> tuple[int, int, int, int]:
    """(budget, probe batches, stop step, estimate) with the estimate BEFORE the stop step when the
    data allow it (so the run trains past the end of its schedule), the stop step in 7..12."""
    targets = [c["tokens/target"] for c in cum]
    fallback = None
    for probe in (1, 2, 3):
        for budget in range(targets[5] + 1, targets[11] + 1):
            stop = next(i + 1 for i, t in enumerate(targets) if t >= budget)
            estimate = max(1, math.ceil(budget * probe / targets[probe - 1]))
            if estimate < stop:
                return budget, probe, stop, estimate
            fallback = fallback or (budget, probe, stop, estimate)
    return fallback


def _parse(model_dir, *bindings):
    from slm_jax.training.train import TrainRun
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], [
        "TRAIN_STEPS = 1000", f"CHECKPOINT_PERIOD = {CHECKPOINT_PERIOD}", f"SEQUENCE_LENGTH = {LENGTH}",
        f"BATCH_SIZE = {BATCH}", f"train.log_period = {LOG_PERIOD}", "train.eval_period = 0",
        "train.async_checkpoints = False", "train.keep_checkpoints = None", "OptimizerConfig.warmup_steps = 1",
        f"MODEL_DIR = '{model_dir}'", *bindings])
    import gin
    return TrainRun(), gin.config_str()


def _train(model_dir, *bindings):
    import gin

    from slm_jax.training.train import run_training
    run, config = _parse(model_dir, *bindings)
    try:
        return run_training(run, config)
    finally:
        gin.clear_config()


def _metrics(model_dir):
    with open(os.path.join(model_dir, run_dir.METRICS_FILE)) as f:
        return {m["step"]: m for m in map(json.loads, f)}


def _tokens(line):
    return {k: v for k, v in line.items() if k.startswith("tokens/")}


@pytest.fixture(scope="module")
def budget_run(demo_data_dir, tmp_path_factory):
    import slm_jax.testing.tasks  # noqa: F401
    cum = _recount(26)
    budget, probe, stop, estimate = _choose_budget(cum)
    model_dir = str(tmp_path_factory.mktemp("budget") / "run")
    flags = (f"TRAIN_TOKENS = {budget}", f"train.token_probe_batches = {probe}")
    last = _train(model_dir, *flags)
    return dict(model_dir=model_dir, cum=cum, budget=budget, probe=probe, stop=stop, estimate=estimate,
                flags=flags, last=last)


@pytest.mark.slow
def test_budget_run_stops_at_the_first_step_reaching_the_budget(budget_run, capsys):
    r = budget_run
    model_dir, cum, stop = r["model_dir"], r["cum"], r["stop"]
    assert cum[stop - 1]["tokens/target"] >= r["budget"] > cum[stop - 2]["tokens/target"]
    assert r["last"]["step"] == stop and r["last"]["tokens/target"] == cum[stop - 1]["tokens/target"]
    ckpts = checkpoints.list_complete_steps(run_dir.checkpoints_dir(model_dir))
    assert ckpts == sorted({*range(CHECKPOINT_PERIOD, stop + 1, CHECKPOINT_PERIOD), stop})
    # token_budget.json holds the measured figures
    with open(os.path.join(model_dir, run_dir.TOKEN_BUDGET_FILE)) as f:
        record = json.load(f)
    p = r["probe"]
    assert record["train_tokens"] == r["budget"] and record["probe_batches"] == p
    assert record["target_tokens_per_step"] == pytest.approx(cum[p - 1]["tokens/target"] / p)
    assert record["packed_tokens_per_step"] == pytest.approx(cum[p - 1]["tokens/packed"] / p)
    assert record["capacity_tokens_per_step"] == BATCH * LENGTH
    assert record["packing_efficiency"] == pytest.approx(cum[p - 1]["tokens/packed"] / p / (BATCH * LENGTH))
    assert record["target_fraction"] == pytest.approx(cum[p - 1]["tokens/target"] / cum[p - 1]["tokens/packed"])
    assert record["estimated_steps"] == r["estimate"]
    assert (record["batch_size"], record["sequence_length"], record["mixture"]["name"]) == (BATCH, LENGTH, MIX)
    # the schedule ends at the estimate (recorded as the launch's train_steps), TRAIN_STEPS=1000 is ignored
    (launch,) = run_dir.read_launches(model_dir)
    assert launch["train_steps"] == r["estimate"] and launch["settings"]["schedule"]["train_tokens"] == r["budget"]
    lines = _metrics(model_dir)
    if r["estimate"] < stop:  # trained past the estimate at the schedule's end LR
        assert lines[stop]["learning_rate"] == pytest.approx(END_LR, rel=1e-4)
    # inspect shows the tokens of the inspected step and the budget file
    from slm_jax.cli import inspect_run
    assert inspect_run.main([model_dir]) == 0
    out = capsys.readouterr().out
    assert f"tokens/target: {cum[stop - 1]['tokens/target']:,} (step {stop})" in out
    assert f"token_budget (token_budget.json): train_tokens {r['budget']:,}, estimated_steps {r['estimate']}" in out


@pytest.mark.slow
def test_counters_equal_a_numpy_recount_at_every_logged_and_checkpoint_step(budget_run):
    model_dir, cum, stop = budget_run["model_dir"], budget_run["cum"], budget_run["stop"]
    lines = _metrics(model_dir)
    ckpts = checkpoints.list_complete_steps(run_dir.checkpoints_dir(model_dir))
    assert set(lines) == {*range(LOG_PERIOD, stop + 1, LOG_PERIOD), *ckpts}
    for step, line in lines.items():
        tokens = _tokens(line)
        assert tokens == cum[step - 1], step
        assert sum(v for k, v in tokens.items() if k.startswith("tokens/task/")) == tokens["tokens/target"]
        assert sum(v for k, v in tokens.items() if k.startswith("tokens/target_")) == tokens["tokens/target"]
    for step in ckpts:  # the checkpoint carries the same counts
        saved = checkpoints.read_token_counts(run_dir.checkpoints_dir(model_dir), step)
        assert saved["counts"] == _tokens(lines[step]) and saved["data_task_ids"] is True


def _truncate_to(src, dst, step):
    """A copy of run `src` as a run killed after checkpoint `step` (later checkpoints gone)."""
    shutil.copytree(src, dst)
    for s in checkpoints.list_complete_steps(run_dir.checkpoints_dir(dst)):
        if s > step:
            shutil.rmtree(os.path.join(run_dir.checkpoints_dir(dst), str(s)))
    return str(dst)


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_counters_and_stop_step(budget_run, tmp_path, monkeypatch):
    from slm_jax.training import train
    r = budget_run
    model_dir = _truncate_to(r["model_dir"], tmp_path / "killed", CHECKPOINT_PERIOD)
    with open(os.path.join(model_dir, run_dir.TOKEN_BUDGET_FILE)) as f:
        record = f.read()

    def no_probe(*args, **kwargs):
        raise AssertionError("a resume with the same budget, batch, length and mixture must not probe again")

    monkeypatch.setattr(train, "probe_token_rates", no_probe)
    last = _train(model_dir, *r["flags"])
    assert last["step"] == r["stop"] and _tokens(last) == _tokens(r["last"])
    want, got = _metrics(r["model_dir"]), _metrics(model_dir)
    assert sorted(got) == sorted(want)
    for step in want:
        assert _tokens(got[step]) == _tokens(want[step]), step
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5), step
    with open(os.path.join(model_dir, run_dir.TOKEN_BUDGET_FILE)) as f:
        assert f.read() == record
    assert [lr["train_steps"] for lr in run_dir.read_launches(model_dir)] == [r["estimate"]] * 2
    # A run that reached its budget does nothing more.
    steps = checkpoints.list_complete_steps(run_dir.checkpoints_dir(model_dir))
    again = _train(model_dir, *r["flags"])
    assert again["budget_reached"] and again["step"] == r["stop"] and _tokens(again) == _tokens(r["last"])
    assert checkpoints.list_complete_steps(run_dir.checkpoints_dir(model_dir)) == steps
    # Another budget moves the schedule: refused unless allowed.
    with pytest.raises(run_dir.ResumeSettingsError, match=r"schedule \[.*TRAIN_TOKENS.*'train_tokens': "
                                                          rf"{r['budget']}.*'train_tokens': {r['budget'] + 500}"):
        _train(model_dir, f"TRAIN_TOKENS = {r['budget'] + 500}", f"train.token_probe_batches = {r['probe']}")


@pytest.mark.slow
def test_resume_from_a_checkpoint_saved_before_token_accounting(budget_run, tmp_path, caplog):
    """An older step (no tokens item, the data position of the untagged pipeline) resumes its data
    exactly; counts start from 0 there and a mixture's go to tokens/task/<untagged>."""
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, get_dataset
    r = budget_run
    k = 2 * CHECKPOINT_PERIOD
    model_dir = _truncate_to(r["model_dir"], tmp_path / "old", k)
    step_dir = os.path.join(run_dir.checkpoints_dir(model_dir), str(k))
    shutil.rmtree(os.path.join(step_dir, checkpoints.TOKENS_ITEM))
    meta_path = os.path.join(step_dir, checkpoints.STEP_METADATA_FILE)
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["item_handlers"][checkpoints.TOKENS_ITEM]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    legacy = DataIterator(get_dataset(DatasetConfig(MIX, LENGTH, BATCH), task_ids=False))
    for _ in range(k):
        next(legacy)
    data_dir = os.path.join(step_dir, checkpoints.DATA_ITEM)
    shutil.rmtree(data_dir)
    os.makedirs(data_dir)
    legacy.save(os.path.join(data_dir, checkpoints.data_file_prefix(0, 1)))
    assert checkpoints.list_complete_steps(run_dir.checkpoints_dir(model_dir))[-1] == k
    with caplog.at_level("WARNING", logger="slm_jax"):
        last = _train(model_dir, *r["flags"])
    assert f"Checkpoint step {k} has no token counts" in caplog.text
    assert "resumes in that layout" in caplog.text
    cum = r["cum"]
    since_k = [c["tokens/target"] - cum[k - 1]["tokens/target"] for c in cum]
    assert last["step"] == next(i + 1 for i, t in enumerate(since_k) if t >= r["budget"])
    want = _metrics(r["model_dir"])
    for step, line in _metrics(model_dir).items():
        if step <= k:
            continue
        if step in want:
            assert line["loss"] == pytest.approx(want[step]["loss"], rel=1e-5), step  # the same data
        since = since_k[step - 1]
        assert line["tokens/target"] == line["tokens/task/<untagged>"] == since, step
        assert line["tokens/task/demo_units_en"] == line["tokens/task/demo_units_fr"] == 0
    saved = checkpoints.read_token_counts(run_dir.checkpoints_dir(model_dir))
    assert saved["data_task_ids"] is False and saved["counts"] == _tokens(_metrics(model_dir)[last["step"]])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_count_the_global_batch_and_stop_together(demo_data_dir, tmp_path):
    """2 processes x 4 devices, each reading its shard: the counts are the sum over both shards,
    and both processes stop at the first step where that sum reaches the budget."""
    import seqio

    import slm_jax.testing.tasks  # noqa: F401
    from slm_jax.data.pipeline import DataIterator, DatasetConfig, get_dataset
    from slm_jax.testing import unit_corpus
    from tests.multiprocess import run_job
    unit_corpus.ensure_demo_corpus()  # once, before two processes would both build it
    cfg = DatasetConfig(MIX, LENGTH, BATCH)
    shards = [DataIterator(get_dataset(cfg, seqio.ShardInfo(i, 2))) for i in range(2)]
    per_step = []
    for _ in range(12):
        parts = [next(it) for it in shards]
        per_step.append((sum(int(b["decoder_loss_weights"].sum()) for b in parts),
                         {n: sum(int(b["decoder_loss_weights"][b["decoder_task_ids"] == i].sum()) for b in parts)
                          for i, n in enumerate(["demo_units_en", "demo_units_fr"], 1)}))
    cum = np.cumsum([t for t, _ in per_step])
    budget = int(cum[5]) + 1  # reached at step 7
    model_dir = str(tmp_path / "run")
    run_job(["train", "--gin_file=gin/runs/test_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
             f"--gin.SEQUENCE_LENGTH={LENGTH}", f"--gin.BATCH_SIZE={BATCH}", "--gin.CHECKPOINT_PERIOD=1000",
             "--gin.train.log_period=1000", "--gin.train.eval_period=0", f"--gin.TRAIN_TOKENS={budget}",
             "--gin.train.token_probe_batches=2"], num_processes=2, devices_per_process=4)
    lines = _metrics(model_dir)
    assert list(lines) == [7] and checkpoints.list_complete_steps(run_dir.checkpoints_dir(model_dir)) == [7]
    assert lines[7]["tokens/target"] == cum[6]
    for name in ("demo_units_en", "demo_units_fr"):
        assert lines[7][f"tokens/task/{name}"] == sum(tasks[name] for _, tasks in per_step[:7])
    with open(os.path.join(model_dir, run_dir.TOKEN_BUDGET_FILE)) as f:
        record = json.load(f)
    assert record["processes"] == 2 and record["target_tokens_per_step"] == pytest.approx(cum[1] / 2)
