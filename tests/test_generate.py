"""KV-cache generation against the no-cache sampler, padding, scan, stop ids, modality forcing,
sampling filters, sharding, the LST path, few-shot prompts and WER/CER."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from slm_jax.evaluation import generate as gen, metrics_text
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.models import sampling
from slm_jax.models.decoder import Decoder, init_cache
from tests.test_evaluation import CFG, KINDS, NUM_UNITS, VOCAB, init_params

# prompts of three lengths (target-style ids: no BOS)
PROMPTS = [[4, 7, 9, 11, 5, 6, 20, 21], [4, 12], [4, 8, 8, 30, 2]]


def no_cache_greedy(model, params, prompt, n):
    """The reference: slm_jax.models.sampling.sample on this prompt alone (BOS in front)."""
    return sampling.sample(model, params, np.asarray([[0, *prompt]]), n, modality_of_id=KINDS, temperature=0.0)[0]


@pytest.fixture(scope="module", params=[True, False], ids=["scan", "no_scan"])
def dense(request):
    model = Decoder(dataclasses.replace(CFG, scan_layers=request.param))
    return ModelRunner(model, init_params(model, seed=1, std=0.5))


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.slow
def test_cached_greedy_equals_no_cache_generation_token_for_token(dense, padding):
    n = 12
    out = gen.generate(dense, PROMPTS, n, padding=padding)
    for prompt, got in zip(PROMPTS, out.tokens):
        np.testing.assert_array_equal(got, no_cache_greedy(dense.model, dense.params, prompt, n), err_msg=str(prompt))
    assert out.stopped == [False] * len(PROMPTS)


def test_decode_mode_logits_equal_the_full_forward(dense):
    tokens = jnp.asarray([[0, 4, 9, 9, 13, 7, 21, 5]], jnp.int32)
    apply = jax.jit(lambda *args, **kwargs: dense.model.apply({"params": dense.params}, *args, **kwargs))
    full = apply(tokens).logits
    cache = init_cache(dense.config, 1, 12)
    out = apply(tokens[:, :5], cache=cache)
    rest, cache = [out.logits], out.cache
    for i in range(5, 8):
        out = apply(tokens[:, i:i + 1], positions=jnp.asarray([[i]]), cache=cache)
        rest.append(out.logits)
        cache = out.cache
    np.testing.assert_allclose(np.concatenate(rest, axis=1), full, atol=1e-5)
    assert int(cache["index"]) == 8 and np.asarray(cache["segment_ids"]).tolist() == [[1] * 8 + [0] * 4]


def test_stop_ids_end_each_row_on_its_own(dense):
    free = gen.generate(dense, PROMPTS, 10)
    stop = int(free.tokens[0][3])
    out = gen.generate(dense, PROMPTS, 10, stop_ids=[stop])
    for row, got, stopped in zip(free.tokens, out.tokens, out.stopped):
        hits = np.flatnonzero(row == stop)
        end = int(hits[0]) if len(hits) else len(row)
        np.testing.assert_array_equal(got, row[:end])  # the stop id itself is not returned
        assert stopped == bool(len(hits))
    assert out.stopped[0] and len(out.tokens[0]) <= 3


@pytest.mark.slow
def test_modality_forcing_never_emits_a_banned_id(dense):
    text_prompt = [VOCAB.text_marker_id, 1, 2]
    prompts, banned = gen.forced_modality_prompts([*PROMPTS, text_prompt], "speech", VOCAB)
    assert prompts[:3] == PROMPTS  # already speech (last marker [Speech]): nothing to add
    assert prompts[3] == text_prompt + [VOCAB.speech_marker_id]
    sampled = gen.SamplingConfig(temperature=2.0, seed=3)  # flat: every id would show up unbanned
    out = gen.generate(dense, prompts * 4, 40, sampling_config=sampled, banned_ids=banned, vocabulary=VOCAB)
    emitted = set(np.concatenate(out.tokens).tolist())
    never = set(banned.tolist()) | {VOCAB.pad_id} | set(range(VOCAB.vocab_size, CFG.vocab_size))
    assert not emitted & never and len(emitted) > 5  # text, [Text], language tags, PAD, ids beyond the vocabulary
    free = set(np.concatenate(gen.generate(dense, prompts * 4, 40, sampling_config=sampled).tokens).tolist())
    assert free & never  # the ban is what kept them out


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
    key = jax.random.key(0)
    top_k = np.asarray(sampling.pick_next_token(logits, key, 1.0, top_k=2))
    assert set(top_k.tolist()) == {0, 1}
    top_p = np.asarray(sampling.pick_next_token(logits, key, 1.0, top_p=0.7))  # 0.5 + 0.3 reach it
    assert set(top_p.tolist()) == {0, 1}
    assert set(np.asarray(sampling.pick_next_token(logits, key, 1.0, top_p=0.4)).tolist()) == {0}
    banned = jnp.asarray([True, False, False, False])
    assert set(np.asarray(sampling.pick_next_token(logits, key, 0.0, banned=banned)).tolist()) == {1}
    with pytest.raises(ValueError, match="top_p=0"):
        gen.SamplingConfig(temperature=1.0, top_p=0.0)


@pytest.mark.slow
def test_generation_on_the_trainer_mesh_equals_single_device():
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.partitioning import DEFAULT_RULES, MeshConfig, make_mesh
    from slm_jax.training.trainer import TrainConfig, Trainer
    model = Decoder(CFG)
    params = init_params(model, seed=2, std=0.5)
    trainer = Trainer(CFG, OptimizerConfig(), TrainConfig(), make_mesh(MeshConfig(2, 2, 2)), DEFAULT_RULES, 10, 8, 32)
    sharded = gen.generate(ModelRunner.from_trainer(trainer, params), PROMPTS, 8)  # 3 rows -> 4 on the mesh
    single = gen.generate(ModelRunner(model, params), PROMPTS, 8)
    for a, b in zip(sharded.tokens, single.tokens):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_lst_generation_uses_the_no_cache_sampler_per_prompt_length():
    from slm_jax.models.lst import LSTConfig, LSTModel
    cfg = LSTConfig(global_model=dataclasses.replace(CFG, num_layers=1), local_embed_dim=16, local_mlp_dim=32,
                    local_num_heads=2, patch_size=2)
    model = LSTModel(cfg)
    params = init_params(model, seed=5)
    prompts = [[4, 7, 9], [4, 12, 13, 5], [4, 8, 6]]
    out = gen.generate(ModelRunner(model, params), prompts, 5, vocabulary=VOCAB)
    want = sampling.sample(model, params, np.asarray([[0, *prompts[0]], [0, *prompts[2]]]), 5, modality_of_id=KINDS,
                           temperature=0.0, banned_ids=[0, *range(VOCAB.vocab_size, CFG.vocab_size)])
    np.testing.assert_array_equal(np.stack([out.tokens[0], out.tokens[2]]), want)
    with pytest.raises(ValueError, match="needs the vocabulary"):
        gen.generate(ModelRunner(model, params), prompts, 5)


def test_bad_generation_arguments_are_named(dense):
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        gen.generate(dense, PROMPTS, 0)
    with pytest.raises(ValueError, match="padding='middle'"):
        gen.generate(dense, PROMPTS, 2, padding="middle")
    with pytest.raises(ValueError, match="prompt 1 has ids outside"):
        gen.generate(dense, [[4], [99]], 2)


# --- few-shot ASR / TTS and error rates ----------------------------------------------------------
@pytest.fixture(scope="module")
def text_vocab(tmp_path_factory):
    from tests.test_token_space import make_tiny_spm
    return SpeechTextVocabulary(make_tiny_spm(tmp_path_factory.mktemp("spm")), num_units=NUM_UNITS,
                                langs=("en", "fr"))


def test_fewshot_asr_and_tts_prompts_force_the_output_modality(text_vocab):
    cfg = dataclasses.replace(CFG, vocab_size=96)
    model = Decoder(cfg)
    runner = ModelRunner(model, init_params(model, seed=6, std=0.5))
    shots = [([1, 1, 2, 3], "the cat"), ([4, 5, 5], "a dog ran")]
    texts = gen.fewshot_asr(runner, text_vocab, shots, [[6, 7, 7], [8]], max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) and "[" not in t for t in texts)  # text only, no tags
    units = gen.fewshot_tts(runner, text_vocab, [(t, u) for u, t in shots], ["the sun", "a bird"], max_new_tokens=6)
    assert len(units) == 2 and all(u.dtype == np.int32 and ((u >= 0) & (u < NUM_UNITS)).all() for u in units)
    assert gen.fewshot_stop_ids(text_vocab) == [text_vocab.eos_id]  # this SentencePiece model drops "\n"


def test_word_char_and_unit_error_rates():
    refs, hyps = ["The cat sat.", "a dog"], ["the cat sat", "a dig ran"]
    assert metrics_text.word_error_rate(refs, hyps) == pytest.approx(2 / 5)  # dig for dog, ran inserted
    assert metrics_text.char_error_rate(["abcd"], ["abd"]) == pytest.approx(1 / 4)
    assert metrics_text.word_error_rate(["The cat"], ["the cat"], normalize=False) == pytest.approx(1 / 2)
    assert metrics_text.unit_error_rate([[1, 2, 3, 4]], [[1, 3, 4]]) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="reference 1 is empty"):
        metrics_text.word_error_rate(["a", " "], ["a", "b"])
