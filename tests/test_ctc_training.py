"""The mSLAM CTC objective inside the Trainer: the CTC loss falls on a toy paired set, with the
dense decoder and with LST; a CTC weight without a CTC head is refused."""
import dataclasses

import jax
import numpy as np
import pytest

from slm_jax.models.decoder import DecoderConfig
from slm_jax.models.lst import LSTConfig
from slm_jax.training import partitioning
from slm_jax.training.optimizer import OptimizerConfig
from slm_jax.training.trainer import TrainConfig, Trainer

CHARS = "abcdef"  # CTC ids 1..6 (0 blank); sentinel 7
UNITS = {c: (10 + 2 * i, 11 + 2 * i) for i, c in enumerate(CHARS)}  # each char is spoken as 2 units
SENTINEL = len(CHARS) + 1


def _paired_batch(rng, rows=4, length=48, segments=2, chars=3):
    """Packed rows of `[Speech] units(word)` segments + the packed transcript stream (sentinel-led)."""
    batch = {k: np.zeros((rows, length), np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_modality",
        "decoder_segment_ids", "decoder_positions")}
    ctc_len = segments * (chars + 1)
    ctc = {k: np.zeros((rows, ctc_len), np.int32) for k in ("decoder_ctc_targets", "decoder_ctc_segment_ids",
                                                            "decoder_ctc_positions")}
    for r in range(rows):
        t = c = 0
        for s in range(1, segments + 1):
            word = "".join(rng.choice(list(CHARS), chars))
            tokens = [1] + [u for ch in word for u in UNITS[ch]] + [2]  # [Speech] units EOS
            n = len(tokens)
            batch["decoder_target_tokens"][r, t:t + n] = tokens
            batch["decoder_input_tokens"][r, t:t + n] = [0, *tokens[:-1]]
            batch["decoder_modality"][r, t:t + n] = [3] + [2] * (n - 2) + [3]
            batch["decoder_loss_weights"][r, t:t + n] = 1
            batch["decoder_segment_ids"][r, t:t + n] = s
            batch["decoder_positions"][r, t:t + n] = np.arange(n)
            ids = [SENTINEL] + [CHARS.index(ch) + 1 for ch in word]
            ctc["decoder_ctc_targets"][r, c:c + len(ids)] = ids
            ctc["decoder_ctc_segment_ids"][r, c:c + len(ids)] = s
            ctc["decoder_ctc_positions"][r, c:c + len(ids)] = np.arange(len(ids))
            t, c = t + n, c + len(ids)
    return {**batch, **ctc}


def _trainer(model_cfg, ctc_weight=1.0):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    return Trainer(model_cfg, OptimizerConfig(learning_rate=3e-3, warmup_steps=5),
                   TrainConfig(ctc_weight=ctc_weight, ctc_max_segments=2, ctc_max_chars=3), mesh,
                   partitioning.DEFAULT_RULES, total_steps=100, batch_size=4, sequence_length=48)


DENSE = DecoderConfig(vocab_size=32, embed_dim=32, mlp_dim=64, num_layers=2, num_heads=2, num_kv_heads=2,
                      dtype="float32", ctc_num_classes=8)


@pytest.mark.parametrize("kind", ["dense", "lst"])
@pytest.mark.slow
def test_ctc_loss_falls_in_the_trainer(kind):
    cfg = DENSE if kind == "dense" else LSTConfig(global_model=DENSE, local_embed_dim=32, local_mlp_dim=64,
                                                  local_num_heads=2, patch_size=2, pooling_impl="reference")
    trainer = _trainer(cfg)
    rng = np.random.default_rng(0)
    state, ctc_losses = trainer.init_state(0), []
    for _ in range(80 if kind == "dense" else 40):
        state, metrics = trainer.train_step(state, trainer.global_batch(_paired_batch(rng)))
        ctc_losses.append(float(metrics["ctc_loss"]))
        assert float(metrics["ctc_segments"]) == 8.0
    assert np.isfinite(ctc_losses).all()
    assert np.mean(ctc_losses[-5:]) < 0.5 * np.mean(ctc_losses[:3]), ctc_losses


def test_ctc_weight_needs_a_head_and_ctc_batches():
    with pytest.raises(ValueError, match="DecoderConfig.ctc_num_classes"):
        _trainer(dataclasses.replace(DENSE, ctc_num_classes=0))
    trainer = _trainer(DENSE)
    batch = _paired_batch(np.random.default_rng(1))
    with pytest.raises(KeyError, match="decoder_ctc"):
        trainer.global_batch({k: v for k, v in batch.items() if "ctc" not in k})


@pytest.mark.slow
def test_transcripts_that_do_not_fit_are_counted():
    trainer = _trainer(DENSE)
    batch = _paired_batch(np.random.default_rng(2), chars=3)
    small = Trainer(DENSE, OptimizerConfig(), TrainConfig(ctc_weight=1.0, ctc_max_segments=2, ctc_max_chars=2),
                    trainer.mesh, partitioning.DEFAULT_RULES, total_steps=10, batch_size=4, sequence_length=48)
    _, metrics = small.train_step(small.init_state(0), small.global_batch(batch))
    assert float(metrics["ctc_dropped_chars"]) == 4 * 2 * 1  # one char too many per transcript
    _, metrics = trainer.train_step(trainer.init_state(0), trainer.global_batch(batch))
    assert float(metrics["ctc_dropped_chars"]) == 0
