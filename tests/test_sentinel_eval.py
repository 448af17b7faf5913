"""A denoising-trained model's span-corruption sentinels in evaluation: the likelihood scorer
leaves them out of the softmax and generation never emits them, unless asked; `data show`
renders a corrupted example as its context, its targets and each sentinel's span."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax.data import inspect_data
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from slm_jax.evaluation import generate as gen
from slm_jax.evaluation.likelihood import COUNT_ALL, SUM_ALL, LikelihoodScorer, ScoredSequence
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.evaluation.sequences import modality_of_ids, sentinel_mask
from slm_jax.models.decoder import Decoder
from tests.test_evaluation import CFG, init_params

VOCAB = SpeechTextVocabulary(None, num_units=20, langs=("en", "fr"), num_sentinels=4)  # 31 ids, sentinels 27..30
SENTINELS = np.arange(27, 31)


@pytest.fixture(scope="module")
def runner():
    model = Decoder(dataclasses.replace(CFG, vocab_size=32))
    return ModelRunner(model, init_params(model, seed=3, std=0.5))


def test_sentinel_mask_is_the_vocabularys_block():
    mask = sentinel_mask(VOCAB, 32)
    assert np.flatnonzero(mask).tolist() == SENTINELS.tolist() == sorted(VOCAB.sentinel_id(k) for k in range(4))
    assert not sentinel_mask(SpeechTextVocabulary(None, num_units=20), 32).any()


def _naive_sum(runner, ids, excluded):
    """log p(ids | BOS 0) from one plain forward, softmax over the ids not excluded."""
    tokens = jnp.asarray([[0, *ids[:-1]]], jnp.int32)
    logits = np.asarray(runner.model.apply({"params": runner.params}, tokens).logits[0], np.float64)
    logits[:, excluded] = -np.inf
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return float(sum(logits[i, t] - logz[i] for i, t in enumerate(ids)))


def test_scorer_leaves_sentinels_out_of_the_softmax(runner):
    kinds = modality_of_ids(VOCAB, 32)
    seqs = [np.asarray(s, np.int32) for s in ([4, 6, 9, 9, 13, 1], [3, 2, 2, 1], [4, 25, 7, 8, 10, 11, 12, 1])]
    excluded = sentinel_mask(VOCAB, 32)
    out = LikelihoodScorer(runner, kinds, batch_size=4, excluded_ids=excluded)([ScoredSequence(s, len(s)) for s in seqs])
    full = LikelihoodScorer(runner, kinds, batch_size=4)([ScoredSequence(s, len(s)) for s in seqs])
    for row, row_full, s in zip(out, full, seqs):
        assert row[COUNT_ALL] == len(s)
        np.testing.assert_allclose(row[SUM_ALL], _naive_sum(runner, s, excluded), rtol=1e-5)
        np.testing.assert_allclose(row_full[SUM_ALL], _naive_sum(runner, s, np.zeros(32, bool)), rtol=1e-5)
        assert row[SUM_ALL] > row_full[SUM_ALL]  # the mass the sentinels held goes back to real tokens
    with pytest.raises(ValueError, match=r"sequence 0 contains id 28, which the scorer excludes"):
        LikelihoodScorer(runner, kinds, excluded_ids=excluded)([ScoredSequence(np.asarray([4, 28, 1]), 3)])
    with pytest.raises(ValueError, match="excluded_ids has 31 entries but the model has 32"):
        LikelihoodScorer(runner, kinds, excluded_ids=excluded[:31])


def test_generation_never_emits_sentinels_unless_allowed(runner):
    """A head whose only non-zero columns are the sentinels': greedy decoding picks a sentinel at
    nearly every step when allowed, never by default."""
    params = jax.tree_util.tree_map(lambda x: x, runner.params)
    head = np.asarray(params["lm_head"]["kernel"])
    only_sentinels = np.zeros_like(head)
    only_sentinels[:, SENTINELS] = head[:, SENTINELS] * 10
    params = {**params, "lm_head": {"kernel": jnp.asarray(only_sentinels)}}
    skewed = ModelRunner(runner.model, params)
    prompts = [[4, 6, 9], [3, 2]]
    allowed = gen.generate(skewed, prompts, 8, vocabulary=VOCAB, allow_sentinels=True)
    assert sum(np.isin(t, SENTINELS).sum() for t in allowed.tokens) >= 8
    default = gen.generate(skewed, prompts, 8, vocabulary=VOCAB)
    assert not any(np.isin(t, SENTINELS).any() for t in default.tokens)
    assert gen.banned_mask(32, (), VOCAB)[SENTINELS].all() and not gen.banned_mask(32, (), VOCAB, True)[SENTINELS].any()


def test_data_show_renders_context_targets_and_spans():
    v = VOCAB
    s0, s1 = v.sentinel_id(0), v.sentinel_id(1)
    u = lambda *xs: [v.unit_offset + x for x in xs]  # noqa: E731
    ids = [v.speech_marker_id, *u(1, 2), s0, *u(5), s1, s0, *u(3, 4), s1, *u(6, 7), v.eos_id, 0, 0]
    loss = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    lines = inspect_data.render_with_loss(v, np.asarray(ids), np.asarray(loss), colour=False)
    assert lines == ["context: [Speech][Hu1][Hu2]<extra_id_0>[Hu5]<extra_id_1>",
                     "targets: <extra_id_0>[Hu3][Hu4]<extra_id_1>[Hu6][Hu7]",
                     "spans:   <extra_id_0> = [Hu3][Hu4] | <extra_id_1> = [Hu6][Hu7]"]
    plain = [v.speech_marker_id, *u(1, 2), v.eos_id]
    assert inspect_data.render_with_loss(v, np.asarray(plain), np.ones(4), colour=False) == ["[Speech][Hu1][Hu2]"]


def test_invisible_spans_are_quoted():
    """A span that renders empty or as bare spaces (e.g. only SentencePiece's word-start piece) is quoted."""
    assert [inspect_data._shown(s) for s in ("[Hu3]", "", " ", " the", "the cat")] == \
        ["[Hu3]", "''", "' '", "' the'", "the cat"]
