"""Sharded train step across meshes, gradient accumulation, optimizer, config errors."""
import dataclasses

import jax
import numpy as np
import pytest

from slm_jax import gin_utils
from slm_jax.contract import TRAIN_FEATURES as BATCH_KEYS
from slm_jax.models.decoder import DecoderConfig
from slm_jax.training import optimizer as opt_lib
from slm_jax.training.partitioning import DEFAULT_RULES, MeshConfig, MeshError, make_mesh
from slm_jax.training.trainer import TrainConfig, Trainer
from slm_jax.training.train import IncompatibleModelDirError, check_model_dir_compatible, write_run_files

MODEL = DecoderConfig(vocab_size=128, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      dtype="float32", init_std=0.1)
BATCH, LENGTH = 16, 32


def random_packed_batch(seed=0, batch=BATCH, length=LENGTH):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, MODEL.vocab_size, (batch, length + 1))
    seg = np.ones((batch, length), np.int32)
    cut = rng.integers(5, length - 5, batch)
    pos = np.tile(np.arange(length), (batch, 1))
    for i, c in enumerate(cut):
        seg[i, c:] = 2
        pos[i, c:] = np.arange(length - c)
    weights = (rng.random((batch, length)) > 0.1).astype(np.int32)
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": weights, "decoder_segment_ids": seg, "decoder_positions": pos}


def make_trainer(mesh_shape, accum=1, model=MODEL, rules=DEFAULT_RULES, batch=BATCH, length=LENGTH):
    mesh = make_mesh(MeshConfig(*mesh_shape))
    return Trainer(model, opt_lib.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), TrainConfig(accum),
                   mesh, rules, 10, batch, length)


def run_steps(trainer, n=2):
    state = trainer.init_state(seed=0)
    losses = []
    for i in range(n):
        state, metrics = trainer.train_step(state, trainer.global_batch(random_packed_batch(i)))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.slow
def test_same_loss_on_every_mesh():
    results = {shape: run_steps(make_trainer(shape)) for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]}
    (ref_state, ref_losses) = results[(8, 1, 1)]
    for shape, (state, losses) in results.items():
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=str(shape))
        for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4)  # Adam amplifies tiny grads
    # The losses moved: the second step saw updated params.
    assert ref_losses[0] != ref_losses[1]
    # Params really are sharded as the rules say on the (2,2,2) mesh.
    up = results[(2, 2, 2)][0]["params"]["layers"]["mlp"]["up"]["kernel"]
    assert tuple(up.sharding.spec) == (None, "fsdp", "tensor")


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    _, plain = run_steps(make_trainer((8, 1, 1), accum=1))
    _, accumulated = run_steps(make_trainer((4, 1, 1) if False else (8, 1, 1), accum=2))
    np.testing.assert_allclose(accumulated, plain, rtol=1e-5)


def test_batch_is_sharded_over_data_axes():
    trainer = make_trainer((2, 4, 1))
    batch = trainer.global_batch(random_packed_batch())
    assert set(batch) == set(BATCH_KEYS)
    assert tuple(batch["decoder_input_tokens"].sharding.spec)[0] == ("data", "fsdp")


def test_decay_mask_skips_norms_and_biases():
    params = {"layers": {"attention_norm": {"scale": np.ones((2, 4))}, "mlp": {"up": {"kernel": np.ones((2, 4, 8))}}},
              "q": {"bias": np.ones(3)}, "embed": {"embedding": np.ones((5, 4))}}
    mask = opt_lib.decay_mask(params)
    assert mask["layers"]["attention_norm"]["scale"] is False
    assert mask["q"]["bias"] is False
    assert mask["layers"]["mlp"]["up"]["kernel"] is True and mask["embed"]["embedding"] is True


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedule_warmup_then_decay(decay):
    cfg = opt_lib.OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay=decay, final_lr_fraction=0.1)
    sched = opt_lib.make_schedule(cfg, total_steps=110)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 0.5)
    np.testing.assert_allclose(float(sched(10)), 1.0)
    end = float(sched(110))
    np.testing.assert_allclose(end, 1.0 if decay == "constant" else 0.1, rtol=1e-5)


# -- errors, each naming the offending key ------------------------------------------------

def test_mesh_product_must_match_devices():
    with pytest.raises(MeshError, match=r"data=3 x fsdp=1 x tensor=1 = 3 devices, but 8"):
        make_mesh(MeshConfig(3, 1, 1))
    with pytest.raises(MeshError, match="more than one axis is -1"):
        make_mesh(MeshConfig(-1, -1, 1))
    assert dict(make_mesh(MeshConfig(2, -1, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_batch_must_divide_data_parallel_size():
    with pytest.raises(MeshError, match=r"BATCH_SIZE=12 .*data-parallel size 8"):
        make_trainer((8, 1, 1), batch=12)
    with pytest.raises(MeshError, match="gradient_accumulation_steps=3"):
        make_trainer((8, 1, 1), accum=3)


def test_sequence_length_must_divide_length_sharding():
    rules = tuple(r if r[0] != "length" else ("length", "tensor") for r in DEFAULT_RULES)
    with pytest.raises(MeshError, match=r"SEQUENCE_LENGTH=33 is not divisible by 2"):
        make_trainer((2, 2, 2), rules=rules, length=33)


def test_parameter_must_divide_its_mesh_axes():
    model = dataclasses.replace(MODEL, vocab_size=127)
    with pytest.raises(MeshError, match=r"\['embed'\]\['embedding'\].*127"):
        make_trainer((2, 2, 2), model=model)


def test_unknown_gin_binding_is_named():
    with pytest.raises(gin_utils.ConfigError, match=r"--gin\.DecoderConfig\.num_layerz = 3"):
        gin_utils.parse_gin([], ["DecoderConfig.num_layerz = 3"])
    with pytest.raises(gin_utils.ConfigError, match=r"--gin\.NoSuchThing\.x = 1"):
        gin_utils.parse_gin([], ["NoSuchThing.x = 1"])
    with pytest.raises(gin_utils.ConfigError, match="--gin_file=nope.gin"):
        gin_utils.parse_gin(["nope.gin"], [])
    with pytest.raises(gin_utils.ConfigError, match="--module_import=not_a_module_xyz"):
        gin_utils.parse_gin([], [], ["not_a_module_xyz"])


def test_macro_override_wins_over_file():
    import gin
    gin_utils.parse_gin(["gin/runs/test_cpu.gin"], ["TRAIN_STEPS = 7", "MODEL_DIR = '/tmp/x'"])
    assert gin.query_parameter("train.train_steps") is not None
    assert gin.query_parameter("TRAIN_STEPS/macro.value") == 7
    gin.clear_config()


def test_split_gin_args():
    files, bindings, modules, rest = gin_utils.split_gin_args(
        ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.X=1", "--module_import=m", "--topology=v5e:2x2"])
    assert files == ["a.gin", "b.gin"] and bindings == ["X = 1"] and modules == ["m"]
    assert rest == ["--topology=v5e:2x2"]


def test_incompatible_model_dir(tmp_path):
    write_run_files(str(tmp_path), MODEL, "")
    check_model_dir_compatible(str(tmp_path), dataclasses.replace(MODEL, attention_impl="xla"))  # numerics only
    with pytest.raises(IncompatibleModelDirError, match=r"DecoderConfig\.num_layers: saved 2 vs requested 3"):
        check_model_dir_compatible(str(tmp_path), dataclasses.replace(MODEL, num_layers=3))
    with pytest.raises(IncompatibleModelDirError, match=r"DecoderConfig\.qk_norm: saved False vs requested True"):
        check_model_dir_compatible(str(tmp_path), dataclasses.replace(MODEL, qk_norm=True))


def test_model_config_records_older_than_a_shape_field_still_resume(tmp_path):
    """A model_config.json written before qk_norm existed (no key) is a model without q/k norm,
    for the dense decoder and inside LSTConfig's global model alike."""
    import json

    from slm_jax.models.lst import LSTConfig
    from slm_jax.training.run_dir import MODEL_CONFIG_FILE

    for name, cfg, record in (("dense", MODEL, None), ("lst", LSTConfig(global_model=MODEL), "global_model")):
        model_dir = tmp_path / name
        write_run_files(str(model_dir), cfg, "")
        path = model_dir / MODEL_CONFIG_FILE
        saved = json.loads(path.read_text())
        (saved[record] if record else saved).pop("qk_norm")
        saved.pop("qk_norm", None)
        path.write_text(json.dumps(saved))
        check_model_dir_compatible(str(model_dir), cfg)
        with_norm = dataclasses.replace(MODEL, qk_norm=True)
        with pytest.raises(IncompatibleModelDirError, match=r"qk_norm: saved False vs requested True"):
            check_model_dir_compatible(str(model_dir), with_norm if record is None else
                                       dataclasses.replace(cfg, global_model=with_norm))


@pytest.mark.slow
def test_loss_is_reported_per_modality():
    trainer = make_trainer((8, 1, 1))
    batch = random_packed_batch(3)
    rng = np.random.default_rng(0)
    batch["decoder_modality"] = rng.integers(1, 3, batch["decoder_target_tokens"].shape).astype(np.int32)
    state = trainer.init_state(seed=0)
    _, m = trainer.train_step(state, trainer.global_batch(batch))
    w = batch["decoder_loss_weights"].astype(float)
    w_speech = (w * (batch["decoder_modality"] == 2)).sum()
    w_text = (w * (batch["decoder_modality"] == 1)).sum()
    mixed = (float(m["loss_text"]) * w_text + float(m["loss_speech"]) * w_speech) / (w_text + w_speech)
    np.testing.assert_allclose(mixed, float(m["loss"]), rtol=1e-5)
    assert float(m["loss_text"]) != float(m["loss_speech"])
    # Without modality ids (synthetic batches) the split is unknown: NaN, logged as null.
    _, m = trainer.train_step(trainer.init_state(seed=0), trainer.global_batch(random_packed_batch(3)))
    assert np.isnan(float(m["loss_text"])) and np.isnan(float(m["loss_speech"]))


def test_schedule_problem_names_a_run_that_ends_within_its_warmup():
    from slm_jax.training.optimizer import OptimizerConfig, schedule_problem
    cfg = OptimizerConfig(warmup_steps=30)
    problem = schedule_problem(cfg, 20)
    assert "step 20" in problem and "warmup_steps=30" in problem and "never decays" in problem
    assert schedule_problem(cfg, 31) is None
    assert schedule_problem(OptimizerConfig(warmup_steps=30, decay_steps=40), 20) is None  # explicit end: user's call
    assert schedule_problem(OptimizerConfig(warmup_steps=0), 1) is None


def test_train_tokens_accepts_an_integral_float_and_refuses_bad_values_as_config_errors():
    import gin

    from slm_jax.gin_utils import ConfigError, parse_gin
    from slm_jax.training.train import TrainRun
    try:
        parse_gin(["gin/runs/test_cpu.gin"], ["TRAIN_TOKENS=6e4"])
        assert TrainRun().train_tokens == 60000 and isinstance(TrainRun().train_tokens, int)
        for bad in ("0", "-100", "'60000'", "65000.5"):
            gin.clear_config()
            parse_gin(["gin/runs/test_cpu.gin"], [f"TRAIN_TOKENS={bad}"])
            with pytest.raises(ConfigError, match="TRAIN_TOKENS"):
                TrainRun()
    finally:
        gin.clear_config()
