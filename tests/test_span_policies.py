"""Word-interleaving span policies are the distributions they claim (issue 13, kind 3).

Each policy of `slm_jax.data.preprocessors.word_interleave` is compared, on small records
(2..6 words), with a plain Python transcription of slamkit's rule (slp-rl/slamkit
slamkit/tokeniser/interleaving_tokeniser.py: `select_spans_poisson` and
`_assign_interleaved_modality`) run with numpy's generator: the speech/text pattern of a
record is a categorical variable with at most 2**6 values, and a chi-square homogeneity
test over fixed seeds compares the two samples. Deterministic (fixed seeds); a wrong law
(e.g. a capped rejection loop) gives p-values far below the threshold.
"""
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from slm_jax.data.preprocessors import word_interleave as wi

DRAWS = 12000
P_MIN = 1e-3  # fixed seeds: each test is deterministic; a wrong law gives p ~ 1e-10 or less


# --- plain Python transcriptions of slamkit's rules ---------------------------------------------
class _Draws:
    """numpy draws taken in bulk and handed out one at a time (a plain loop stays fast)."""

    def __init__(self, rng, lam, size=1 << 16):
        self.rng, self.lam, self.size = rng, lam, size
        self.u, self.k, self.i = None, None, size

    def next(self):
        if self.i == self.size:
            self.u, self.k, self.i = self.rng.random(self.size), self.rng.poisson(self.lam, self.size), 0
        self.i += 1
        return self.u[self.i - 1], int(self.k[self.i - 1])


def slamkit_poisson(n, lam, eta, draws):
    """slamkit select_spans_poisson, line for line; `np.random.choice(list(eligible))` and
    `np.random.poisson(lam)` are a uniform pick and a Poisson draw from `draws`."""
    total = math.ceil(n * eta)
    mask = [0] * n
    eligible = set(range(n))
    count = 0
    while count < total and eligible:
        u, length = draws.next()
        candidates = sorted(eligible)
        start = candidates[int(u * len(candidates))]
        end = min(start + length, n)
        if any(mask[start:end]):
            continue
        mask[start:end] = [1] * (end - start)
        count += end - start
        for i in range(start, end):
            eligible.discard(i)
        if end < n:
            eligible.discard(end)
    return mask


def slamkit_span(n, prob, span, rng):
    """slamkit 'span': a word is audio when a trigger (rand < prob) happened in the last `span` words."""
    out, patience = [], 0
    for u in rng.random(n):
        if u < prob:
            patience = span
        out.append(int(patience > 0))
        patience -= 1
    return out


def slamkit_random(n, prob, rng):
    return (rng.random(n) < prob).astype(int).tolist()


# --- helpers --------------------------------------------------------------------------------------
def _codes(masks):
    masks = np.asarray(masks, np.int64)
    return masks @ (1 << np.arange(masks.shape[1]))


def _tf_masks(policy, n, ratio, span, seed=(3, 5)):
    splits = tf.constant(np.arange(DRAWS + 1) * n, tf.int64)
    flat = wi.word_speech_mask_rows(splits, tf.constant(seed, tf.int64), policy, ratio, span).numpy()
    return flat.reshape(DRAWS, n).astype(np.int64)


def _homogeneity_p(a_codes, b_codes):
    """Chi-square p-value that two samples of patterns come from one law (rare patterns pooled)."""
    cats = np.union1d(a_codes, b_codes)
    table = np.array([[np.sum(a_codes == c) for c in cats], [np.sum(b_codes == c) for c in cats]])
    common = table.sum(0) >= 20
    pooled = table[:, ~common].sum(1, keepdims=True)
    table = np.concatenate([table[:, common], pooled], 1) if pooled.sum() else table[:, common]
    if table.shape[1] < 2:
        return 1.0
    return stats.chi2_contingency(table)[1]


POISSON_SETTINGS = [(0.3, 10.0), (0.5, 10.0), (0.3, 3.0), (0.6, 0.5)]


@pytest.mark.parametrize("ratio,lam", POISSON_SETTINGS)
@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_poisson_policy_is_slamkit_law(n, ratio, lam):
    draws = _Draws(np.random.default_rng(1000 * n + int(10 * lam) + int(100 * ratio)), lam)
    ref = [slamkit_poisson(n, lam, ratio, draws) for _ in range(DRAWS)]
    got = _tf_masks("poisson", n, ratio, lam)
    assert np.all(got.sum(1) >= math.ceil(n * ratio)) or np.any(got.sum(1) < n)  # never stops short needlessly
    assert _homogeneity_p(_codes(got), _codes(ref)) > P_MIN


@pytest.mark.parametrize("n,ratio", [(4, 0.3), (3, 0.5)])
def test_poisson_short_records_at_slamkit_settings_never_one_speech_word(n, ratio):
    # issue 13: a capped rejection loop gave a single speech word in 6.7% (4 words, 0.3) and
    # 21.8% (3 words, 0.5) of draws; slamkit's loop about never does (0.05%)
    draws = _Draws(np.random.default_rng(7), 10.0)
    ref = np.array([sum(slamkit_poisson(n, 10.0, ratio, draws)) == 1 for _ in range(DRAWS)]).mean()
    got = (_tf_masks("poisson", n, ratio, 10.0).sum(1) == 1).mean()
    assert ref < 0.005
    assert got < 0.005


@pytest.mark.parametrize("prob,span", [(0.3, 10), (0.2, 3), (0.5, 1), (0.1, 2)])
@pytest.mark.parametrize("n", [2, 4, 6])
def test_span_policy_is_slamkit_law(n, prob, span):
    rng = np.random.default_rng(n + span)
    ref = [slamkit_span(n, prob, span, rng) for _ in range(DRAWS)]
    assert _homogeneity_p(_codes(_tf_masks("span", n, prob, float(span))), _codes(ref)) > P_MIN


@pytest.mark.parametrize("prob", [0.5, 0.3, 0.9])
@pytest.mark.parametrize("n", [2, 5])
def test_random_policy_is_slamkit_law(n, prob):
    rng = np.random.default_rng(n)
    ref = [slamkit_random(n, prob, rng) for _ in range(DRAWS)]
    got = _tf_masks("random", n, prob, 10.0)
    assert _homogeneity_p(_codes(got), _codes(ref)) > P_MIN
    # and each word is Bernoulli(prob): exact binomial test on the speech count
    assert stats.binomtest(int(got.sum()), got.size, prob).pvalue > P_MIN


def test_poisson_batch_of_one_is_the_batched_rule():
    seed = tf.constant([4, 1], tf.int64)
    one = wi.word_speech_mask(9, seed, "poisson", 0.3, 3.0).numpy()
    rows = wi.word_speech_mask_rows(tf.constant([0, 9], tf.int64), seed, "poisson", 0.3, 3.0).numpy()
    assert one.tolist() == rows.tolist()


def test_poisson_mean_bound_is_checked():
    with pytest.raises(ValueError, match="mean_span_words <= 500"):
        wi.word_speech_mask(5, [1, 2], "poisson", 0.3, 1000.0)
