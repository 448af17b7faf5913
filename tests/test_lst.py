"""LST latent patching model: slot layout, causality, reduction to the dense decoder, coverage."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.models import lst
from slm_jax.models.decoder import Decoder, DecoderConfig

# One packed row: segment 1 = [BOS] [Speech] u u u u u t  (input tokens), segment 2 = 4 text
# tokens, then 2 pads. Target modality (of y_t = x_{t+1}): marker, 5 units, text, EOS(marker)...
SEG = [1] * 8 + [2] * 4 + [0] * 2
TARGET_MODALITY = [3, 2, 2, 2, 2, 2, 1, 3, 1, 1, 1, 3, 0, 0]


def _row(x):
    return jnp.asarray([x], jnp.int32)


def test_static_slots_and_context_exact():
    slots = lst.patch_slots(_row(SEG), _row(TARGET_MODALITY), "static", 2)
    # BOS | [Speech] | u u | u u | u | t || BOS | t | t | t || pad pad
    assert slots.tolist() == [[0, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, -1, -1]]
    # target t is predicted from the slot before its own: the first unit of a patch from the
    # previous slot, later units of the patch ALSO from the previous slot (+ local prefix)
    assert lst.context_slots(slots).tolist() == [[0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1]]
    seg, pos = lst.slot_segments(slots, _row(SEG), 12)
    assert seg.tolist() == [[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 0]]


def test_aligned_slots_follow_data_patch_ids():
    # word patches of 3 and 2 units (ids of the TARGET units; -1 elsewhere)
    target_patch = [-1, 0, 0, 0, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1]
    slots = lst.patch_slots(_row(SEG), _row(TARGET_MODALITY), "aligned", target_patch_ids=_row(target_patch))
    assert slots.tolist() == [[0, 1, 2, 2, 2, 3, 3, 4, 5, 6, 7, 8, -1, -1]]
    with pytest.raises(ValueError, match="decoder_patch_ids"):
        lst.patch_slots(_row(SEG), _row(TARGET_MODALITY), "aligned")


def _batch(rng, b=2, t=24, vocab=40):
    """Packed rows of speech runs and text, random ids (never all zeros)."""
    tokens = rng.integers(4, vocab, size=(b, t))
    seg = np.zeros((b, t), np.int32)
    seg[:, : t - 3] = 1
    seg[:, 10 : t - 3] = 2
    modality = np.where(rng.random((b, t)) < 0.7, 2, 1) * (seg > 0)
    pos = np.zeros_like(seg)
    for r in range(b):
        for s in (1, 2):
            idx = np.where(seg[r] == s)[0]
            pos[r, idx] = np.arange(idx.size)
    tokens = tokens * (seg > 0)
    return {k: jnp.asarray(v, jnp.int32) for k, v in
            dict(tokens=tokens, seg=seg, pos=pos, modality=modality).items()}


def _cfg(**kw):
    g = DecoderConfig(vocab_size=40, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      dtype="float32", scan_layers=True)
    base = dict(global_model=g, local_embed_dim=32, local_mlp_dim=48, local_num_heads=4, local_encoder_layers=1,
                local_decoder_layers=1, patch_size=3, pooling_impl="reference")
    base.update(kw)
    return lst.LSTConfig(**base)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.slow
def test_no_position_sees_its_future(pooling):
    """Changing input token j changes no logit at positions < j (causal through patches)."""
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    model = lst.LSTModel(_cfg(pooling=pooling))
    params = nn.meta.unbox(model.init(jax.random.key(0), batch["tokens"])["params"])

    @jax.jit
    def logits(tokens):
        return model.apply({"params": params}, tokens, batch["seg"], batch["pos"], modality=batch["modality"]).logits

    base = logits(batch["tokens"])
    for j in (3, 7, 12, 17):
        changed = batch["tokens"].at[:, j].set((batch["tokens"][:, j] + 5) % 36 + 4)
        out = logits(changed)
        np.testing.assert_allclose(out[:, :j], base[:, :j], atol=1e-5, err_msg=f"token {j} leaked backwards")
        assert not np.allclose(out[:, j], base[:, j])  # ...and it does influence its own position


def _dense_params_into_lst(dense, lst_params):
    """The dense decoder's weights in an LST with patch 1, no local layers, identity up/down."""
    p = jax.tree.map(lambda x: x, lst_params)
    p["embed"] = dense["embed"]
    p["global_layers"] = dense["layers"]
    p["lm_head"] = dense["lm_head"]
    d = dense["embed"]["embedding"].shape[1]
    p["up"] = {"kernel": jnp.eye(d)}
    p["down"] = {"kernel": jnp.eye(d)}
    # RMSNorm twice (global norm with unit scale, then the local final norm) = RMSNorm once
    p["global_norm"] = {"scale": jnp.ones((d,))}
    p["final_norm"] = dense["final_norm"]
    return p


@pytest.mark.slow
def test_patch_size_one_reduces_to_the_dense_decoder():
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    cfg = _cfg(patch_size=1, local_encoder_layers=0, local_decoder_layers=0, decoder_token_input=False)
    dense = Decoder(cfg.global_model)
    dense_params = nn.meta.unbox(dense.init(jax.random.key(1), batch["tokens"])["params"])
    dense_params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), dense_params)
    model = lst.LSTModel(cfg)
    params = _dense_params_into_lst(dense_params,
                                    nn.meta.unbox(model.init(jax.random.key(0), batch["tokens"])["params"]))
    want = dense.apply({"params": dense_params}, batch["tokens"], batch["seg"], batch["pos"]).logits
    out = model.apply({"params": params}, batch["tokens"], batch["seg"], batch["pos"], modality=batch["modality"])
    got, covered = out.logits, out.covered
    real = np.asarray(batch["seg"]) > 0
    assert np.all(np.asarray(covered)[real])
    # (the second RMSNorm differs from identity only through its eps)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=2e-3, atol=2e-3)

    def loss(logits):
        lp = jax.nn.log_softmax(logits)
        tgt = jnp.roll(batch["tokens"], -1, axis=1)
        return -jnp.sum(jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0] * real)
    assert abs(float(loss(got)) - float(loss(want))) < 1e-3 * abs(float(loss(want)))


@pytest.mark.slow
def test_rows_longer_than_the_global_length_are_reported_not_wrong():
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    model = lst.LSTModel(_cfg(patch_size=1, global_length=8))
    params = nn.meta.unbox(model.init(jax.random.key(0), batch["tokens"])["params"])
    covered = model.apply({"params": params}, batch["tokens"], batch["seg"], batch["pos"],
                          modality=batch["modality"]).covered
    covered = np.asarray(covered)
    assert covered[:, :7].all() and not covered[:, 8:].any()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="LSTConfig.patching"):
        _cfg(patching="words")
    with pytest.raises(ValueError, match="LSTConfig.pooling"):
        _cfg(pooling="max")
    with pytest.raises(ValueError, match="LSTConfig.patch_size"):
        _cfg(patch_size=0)


@pytest.mark.slow
def test_lst_trains_in_the_trainer_and_reports_per_modality_loss():
    """Loss falls on a learnable speech/text toy stream; uncovered_tokens is reported."""
    from jax.sharding import Mesh

    from slm_jax.training import partitioning
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.trainer import TrainConfig, Trainer

    cfg = dataclasses.replace(_cfg(patch_size=2), global_model=dataclasses.replace(
        _cfg().global_model, dtype="float32"))
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    trainer = Trainer(cfg, OptimizerConfig(learning_rate=3e-3, warmup_steps=5), TrainConfig(), mesh,
                      partitioning.DEFAULT_RULES, total_steps=80, batch_size=4, sequence_length=32)
    # rows: [Speech] then units counting up mod 8 (a learnable pattern), then text
    t = np.arange(32)
    tokens = np.stack([(t + r) % 8 + 10 for r in range(4)])
    modality = np.full((4, 32), 2)
    modality[:, 24:] = 1
    batch = {"decoder_input_tokens": np.concatenate([np.zeros((4, 1), int), tokens[:, :-1]], 1),
             "decoder_target_tokens": tokens, "decoder_loss_weights": np.ones((4, 32)),
             "decoder_modality": modality, "decoder_segment_ids": np.ones((4, 32)),
             "decoder_positions": np.broadcast_to(t, (4, 32))}
    state = trainer.init_state(0)
    losses = []
    for _ in range(60):
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.3 * losses[0]
    assert float(metrics["uncovered_tokens"]) == 0.0
    assert np.isfinite(float(metrics["loss_speech"])) and np.isfinite(float(metrics["loss_text"]))


# --- sampling ---------------------------------------------------------------------------------
MODALITY_OF_ID = np.array([0] + [3] * 3 + [1] * 16 + [2] * 20)  # 40 ids: pad, markers, text, speech


def _trained_like_params(model, tokens, seed):
    params = nn.meta.unbox(model.init(jax.random.key(seed), tokens)["params"])
    return jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(seed + 1), x.shape), params)


@pytest.mark.slow
def test_dense_greedy_sampling_is_stepwise_argmax():
    from slm_jax.models import sampling
    cfg = _cfg().global_model
    model = Decoder(cfg)
    prompt = np.array([[0, 21, 22, 23], [0, 5, 6, 30]])
    params = _trained_like_params(model, jnp.asarray(prompt), 3)
    got = sampling.sample(model, params, prompt, 6, modality_of_id=MODALITY_OF_ID, temperature=0.0)
    seq = prompt.copy()
    for _ in range(6):
        logits = model.apply({"params": params}, jnp.asarray(seq)).logits
        seq = np.concatenate([seq, np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]], 1)
    assert got.tolist() == seq[:, 4:].tolist()


@pytest.mark.slow
def test_lst_sampling_completes_patches_and_matches_teacher_forcing():
    from slm_jax.models import sampling
    cfg = _cfg(patch_size=3)
    model = lst.LSTModel(cfg)
    prompt = np.array([[0, 1, 25, 26], [0, 2, 7, 8]])  # [Speech] u u  /  [Text] t t
    params = _trained_like_params(model, jnp.asarray(prompt), 5)
    got = sampling.sample(model, params, prompt, 10, modality_of_id=MODALITY_OF_ID, temperature=0.0)
    seq = np.concatenate([prompt, got], 1)
    t = seq.shape[1]
    target_mod = MODALITY_OF_ID[np.roll(seq, -1, axis=1)]
    seg = np.ones_like(seq)
    pos = np.broadcast_to(np.arange(t), seq.shape)
    slots = np.asarray(lst.patch_slots(jnp.asarray(seg), jnp.asarray(target_mod), "static", 3))
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(seq), jnp.asarray(seg), jnp.asarray(pos),
                                    modality=jnp.asarray(target_mod)).logits)
    speech = MODALITY_OF_ID == 2
    for r in range(2):
        for n in range(prompt.shape[1] - 1, t - 1):
            continues = slots[r, n + 1] == slots[r, n] and MODALITY_OF_ID[seq[r, n]] == 2
            allowed = np.where(continues and speech[seq[r, n + 1]], speech, True)
            if continues:  # a patch that is not full is completed with units
                assert speech[seq[r, n + 1]], (r, n)
            assert seq[r, n + 1] == np.argmax(np.where(allowed, logits[r, n], -np.inf)), (r, n)


@pytest.mark.slow
def test_lst_step_is_the_same_on_sharded_meshes():
    """One train step on 1 device and on a (data 2, fsdp 4) mesh of 8 fake devices: same loss; the
    pooling kernel runs per device inside shard_map (interpret mode here). (A data-only mesh adds
    nothing the 2x4 one does not cover: both axes shard the batch.)"""
    from slm_jax.training import partitioning
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.trainer import TrainConfig, Trainer

    rng = np.random.default_rng(4)
    raw = _batch(rng, b=8, t=24)
    batch = {"decoder_input_tokens": raw["tokens"], "decoder_target_tokens": jnp.roll(raw["tokens"], -1, 1),
             "decoder_loss_weights": (raw["seg"] > 0).astype(jnp.int32), "decoder_modality": raw["modality"],
             "decoder_segment_ids": raw["seg"], "decoder_positions": raw["pos"]}
    batch = {k: np.asarray(v) for k, v in batch.items()}
    cfg = _cfg(pooling="attention", pooling_impl="pallas_interpret")
    losses = []
    for shape in ((1, 1, 1), (2, 4, 1)):
        devices = np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape)
        mesh = jax.sharding.Mesh(devices, partitioning.MESH_AXES)
        trainer = Trainer(cfg, OptimizerConfig(learning_rate=1e-3, warmup_steps=1), TrainConfig(), mesh,
                          partitioning.DEFAULT_RULES, total_steps=10, batch_size=8, sequence_length=24)
        state = trainer.init_state(0)
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        _, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses[1:], losses[0], rtol=1e-5)


@pytest.mark.tpu_aot
@pytest.mark.slow
def test_lst_train_step_compiles_for_tpu_with_the_mosaic_kernel():
    """`slm-jax compile`'s path for gin/runs/lst_demo_cpu.gin on v5e:2x2: the compiled TPU program
    contains the Pallas pooling kernel (a Mosaic tpu_custom_call), not the reference."""
    import gin

    from slm_jax.gin_utils import parse_gin
    from slm_jax.training import aot
    from slm_jax.training.train import TrainRun, build_trainer

    try:
        devices = aot.topology_devices("v5e:2x2")
    except ValueError as err:
        pytest.skip(str(err))
    parse_gin(["gin/runs/lst_demo_cpu.gin"], ["SEQUENCE_LENGTH=128", "BATCH_SIZE=4"])
    try:
        run = TrainRun()
        assert isinstance(run.model, lst.LSTConfig)
        trainer = build_trainer(run, devices=devices)
        hlo = trainer.lower_train_step().compile().as_text()
    finally:
        gin.clear_config()
    assert "tpu_custom_call" in hlo


def test_aligned_falls_back_to_static_without_alignment_and_mixed_picks_per_row():
    seg = _row(SEG)
    mod = _row(TARGET_MODALITY)
    no_alignment = _row([-1] * 14)
    static = lst.patch_slots(seg, mod, "static", 2)
    # a record without word alignment is never pooled whole: its units get static patches
    assert lst.patch_slots(seg, mod, "aligned", 2, no_alignment).tolist() == static.tolist()
    aligned_ids = _row([-1, 0, 0, 0, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1])
    aligned = lst.patch_slots(seg, mod, "aligned", 2, aligned_ids)
    both = lst.patch_slots(jnp.concatenate([seg, seg]), jnp.concatenate([mod, mod]), "mixed", 2,
                           jnp.concatenate([aligned_ids, aligned_ids]), use_aligned=jnp.array([True, False]))
    assert both.tolist() == [aligned.tolist()[0], static.tolist()[0]]


def test_curriculum_schedule_and_deterministic_choices():
    cfg = _cfg(patching="curriculum", curriculum_start_prob=1.0, curriculum_end_prob=0.0, curriculum_steps=100)
    assert float(cfg.aligned_probability(0)) == 1.0
    assert abs(float(cfg.aligned_probability(50)) - 0.5) < 1e-6
    assert float(cfg.aligned_probability(500)) == 0.0
    assert _cfg(patching="mixed", aligned_prob=0.3).aligned_probability(7) == 0.3
    with pytest.raises(ValueError, match="LSTConfig.aligned_prob"):
        _cfg(patching="mixed", aligned_prob=1.5)
    # the per-row choice depends only on (patching_seed, step): a resumed run repeats it
    model = lst.LSTModel(_cfg(patching="mixed", aligned_prob=0.5, patch_size=2))
    rows = 64
    seg = jnp.tile(_row(SEG), (rows, 1))
    mod = jnp.tile(_row(TARGET_MODALITY), (rows, 1))
    pid = jnp.tile(_row([-1, 0, 0, 0, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1]), (rows, 1))
    first = model._slots(seg, mod, pid, jnp.int32(3))
    again = model._slots(seg, mod, pid, jnp.int32(3))
    other = model._slots(seg, mod, pid, jnp.int32(4))
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()
    aligned_rows = int((first[:, 4] == 2).sum())  # aligned: unit 4 still in the 3-unit word patch
    assert 16 < aligned_rows < 48
    assert model._slots(seg, mod, pid, None).tolist() == lst.patch_slots(seg, mod, "static", 2).tolist()


@pytest.mark.slow
def test_curriculum_trains_and_batches_without_patch_ids_get_static_fallback():
    from slm_jax.training import partitioning
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.contract import DECODER_PATCH_IDS as PATCH_KEY
    from slm_jax.training.trainer import TrainConfig, Trainer

    raw = _batch(np.random.default_rng(6), b=2, t=24)
    batch = {"decoder_input_tokens": raw["tokens"], "decoder_target_tokens": jnp.roll(raw["tokens"], -1, 1),
             "decoder_loss_weights": (raw["seg"] > 0).astype(jnp.int32), "decoder_modality": raw["modality"],
             "decoder_segment_ids": raw["seg"], "decoder_positions": raw["pos"]}
    batch = {k: np.asarray(v) for k, v in batch.items()}
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    trainer = Trainer(_cfg(patching="curriculum", curriculum_steps=4), OptimizerConfig(warmup_steps=1),
                      TrainConfig(), mesh, partitioning.DEFAULT_RULES, total_steps=10, batch_size=2,
                      sequence_length=24)
    assert PATCH_KEY in trainer.batch_keys
    state = trainer.init_state(0)
    for _ in range(3):
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))  # patch ids filled with -1
        assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("size", ["lst_tiny", "lst_125m", "lst_360m", "lst_1b", "lst_7b"])
def test_lst_model_configs_parse(size):
    import pathlib

    import gin
    repo = pathlib.Path(__file__).resolve().parent.parent
    gin.clear_config()
    gin.add_config_file_search_path(str(repo / "gin"))
    try:
        gin.parse_config_files_and_bindings([str(repo / "gin" / "models" / f"{size}.gin")], [],
                                            finalize_config=False)
        cfg = lst.LSTConfig()
    finally:
        gin.clear_config()
    assert cfg.patch_size == 4 and cfg.global_model.num_layers >= 2
    assert cfg.num_params() > cfg.global_model.num_params(include_embeddings=False)
    # the global model sees 1 / patch_size of the positions: far fewer FLOPs per unit than dense
    assert cfg.flops_per_token(2048) < cfg.global_model.flops_per_token(2048)
