"""Interleaving preprocessors: exact outputs on hand-written records, policy semantics, resume."""

import itertools
import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax.data import corpus
from slm_jax.data.preprocessors import interleave as il
from slm_jax.data.preprocessors.common import unbatch_records
from slm_jax.data.preprocessors import word_interleave as wi
from slm_jax.data.feature_converter import SLMFeatureConverter
from slm_jax.data.tokenizers.spm import train_sentencepiece
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

WORDS = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "far", "away"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """Word-level SentencePiece (one id per word) + 10 units, 4 pitch, 3 style, EN/FR tags."""
    texts = [" ".join(WORDS)] * 20 + ["a dog and a cat", "on the mat far away"]
    path = train_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "w"), 14, model_type="word")
    return SpeechTextVocabulary(path, num_units=10, num_pitch=4, num_style=3, langs=("en", "fr"))


def _ds(*examples):
    ds = tf.data.Dataset.from_tensors(examples[0])
    for ex in examples[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(ex))
    return ds


def _run(ds, seed=None):
    """numpy outputs of a (possibly random) pipeline built under `map_seed_manager(seed)`."""
    return [
        {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ex.items()}
        for ex in ds.as_numpy_iterator()
    ]


def _built(fn, seed=1234):
    with seqio.map_seed_manager(seed):
        return _run(fn())


def U(v, *units):
    return [v.unit_offset + u for u in units]


def _record(units, rate, words, starts, ends, rid="r"):
    return {
        "id": tf.constant(rid),
        "units": tf.constant(units, tf.int64),
        "unit_rate_hz": tf.constant(rate, tf.float32),
        "word_text": tf.constant(words, tf.string),
        "word_start": tf.constant(starts, tf.float32),
        "word_end": tf.constant(ends, tf.float32),
        "text": tf.constant(" ".join(words)),
    }


def _twelve_word_record():
    """12 words, word i spans [0.4 i, 0.4 i + 0.3) s; units at 25 Hz, value (frame // 3) % 10."""
    units = [(f // 3) % 10 for f in range(120)]
    return _record(
        units, 25.0, WORDS, [0.4 * i for i in range(12)], [0.4 * i + 0.3 for i in range(12)], "twelve"
    )


def _word_frames(start, end, rate, n):
    """The documented word -> frames rule, plainly: frames whose start lies in [start, end)
    (1/100-frame snap); a word covering none takes the frame it lies in (the last when after)."""
    lo = min(max(math.ceil(start * rate - 0.01), 0), n)
    hi = max(min(max(math.ceil(end * rate - 0.01), 0), n), lo)
    if hi == lo and n > 0:
        lo = min(max(math.floor(start * rate + 0.01), 0), n - 1)
        hi = lo + 1
    return lo, hi


def reference_interleave(v, words, starts, ends, units, rate, mask, dedup=True):
    """Plain-python statement of the format: spans, markers at changes, frames by start time
    (a span runs from its first word's first frame to its last word's last frame)."""
    out, i, n = [], 0, len(words)
    starts, ends = np.float32(starts).astype(np.float64), np.float32(ends).astype(np.float64)
    while i < n:
        j = i
        while j + 1 < n and mask[j + 1] == mask[i]:
            j += 1
        if mask[i]:
            ranges = [_word_frames(starts[w], ends[w], rate, len(units)) for w in range(i, j + 1)]
            span = list(units[min(r[0] for r in ranges):max(r[1] for r in ranges)])
            if dedup:
                span = [u for k, u in enumerate(span) if k == 0 or u != span[k - 1]]
            out += [v.speech_marker_id] + U(v, *span)
        else:
            out += [v.text_marker_id] + v.encode_text(" ".join(words[i : j + 1]))
        i = j + 1
    return out + [v.eos_id]


# --- speech only / text only ------------------------------------------------------------
def test_speech_only_exact(vocab):
    v = vocab
    ds = _ds({"id": tf.constant("s"), "units": tf.constant([3, 3, 5, 5, 5, 2, 3, 3], tf.int64)})
    (out,) = _run(il.speech_only(ds, v))
    assert out["targets"] == [v.speech_marker_id] + U(v, 3, 5, 2, 3) + [v.eos_id]
    assert out["modality"] == [3, 2, 2, 2, 2, 3] and out["loss_mask"] == [1] * 6
    assert out["id"] == b"s" and sorted(out) == sorted(il.OUTPUT_KEYS)
    (raw,) = _run(il.speech_only(ds, v, dedup=False))
    assert raw["targets"] == [v.speech_marker_id] + U(v, 3, 3, 5, 5, 5, 2, 3, 3) + [v.eos_id]


def test_text_only_exact(vocab):
    v = vocab
    (out,) = _run(il.text_only(_ds({"id": tf.constant("t"), "text": tf.constant("the cat sat")}), v))
    assert len(v.encode_text("the cat sat")) == 3  # word model: one id per word
    assert out["targets"] == [v.text_marker_id] + v.encode_text("the cat sat") + [v.eos_id]
    assert out["modality"] == [3, 1, 1, 1, 3]


def test_vocabulary_from_output_features(vocab):
    feats = {"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)}
    ds = _ds({"id": tf.constant("s"), "units": tf.constant([1], tf.int64)})
    assert _run(il.speech_only(ds, output_features=feats))[0]["targets"] == [
        vocab.speech_marker_id,
        vocab.unit_offset + 1,
        vocab.eos_id,
    ]
    with pytest.raises(ValueError, match="vocabulary must be"):
        il.speech_only(ds)


# --- time ranges and span rendering --------------------------------------------------------
def test_frame_bounds_start_time_rule_and_float32_snap():
    lo, hi = il.frame_bounds(
        tf.constant([0.28, 0.0, 0.5, 3.0, 0.9], tf.float32),
        tf.constant([0.36, 0.41, 9.0, 3.5, 0.1], tf.float32),
        25.0,
        50,
    )
    # 0.28 s * 25 = frame 7 exactly (float32 0.28 is 7.0000003 frames: snapped), 0.36 -> 9;
    # 0.41 -> 10.25 -> frames up to 11; clipped to 50 frames; reversed span -> empty.
    assert lo.numpy().tolist() == [7, 0, 13, 50, 23]
    assert hi.numpy().tolist() == [9, 11, 50, 50, 23]


def test_interleave_words_exact(vocab):
    v = vocab
    words = ["the", "cat", "sat", "on"]
    starts, ends = [0.0, 0.3, 0.5, 0.9], [0.2, 0.5, 0.8, 1.0]
    units = [1, 1, 2, 3, 3, 4, 4, 5, 6, 6]  # 10 Hz

    def body(mask, dedup=True):
        out = wi.interleave_words(
            tf.constant(words),
            tf.constant(starts, tf.float32),
            tf.constant(ends, tf.float32),
            tf.constant(mask),
            tf.constant(units, tf.int64),
            10.0,
            v,
            dedup,
        )
        return out.numpy().tolist()

    T, S = v.text_marker_id, v.speech_marker_id
    enc = v.encode_text
    # speech "cat sat" = frames [3, 8) = 3 3 4 4 5 -> deduped 3 4 5; pauses next to text dropped.
    assert body([False, True, True, False]) == [T] + enc("the") + [S] + U(v, 3, 4, 5) + [T] + enc("on")
    assert body([False, True, True, False], dedup=False) == [T] + enc("the") + [S] + U(v, 3, 3, 4, 4, 5) + [
        T
    ] + enc("on")
    # text "cat sat" joined by one space; speech [0, 0.2) and [0.9, 1.0).
    assert body([True, False, False, True]) == [S] + U(v, 1) + [T] + enc("cat sat") + [S] + U(v, 6)
    # all speech: ONE marker, pauses between words kept ([0, 1.0) = every frame).
    assert body([True] * 4) == [S] + U(v, 1, 2, 3, 4, 5, 6)
    assert body([False] * 4) == [T] + enc("the cat sat on")
    assert (
        wi.interleave_words(
            tf.constant([], tf.string),
            tf.constant([], tf.float32),
            tf.constant([], tf.float32),
            tf.constant([], tf.bool),
            tf.constant(units, tf.int64),
            10.0,
            v,
        )
        .numpy()
        .size
        == 0
    )


# --- policies: slamkit semantics ---------------------------------------------------------------
def _slamkit_span(u, p, span):
    """slamkit InterleavingTokeniser 'span' (patience counter), on given uniforms."""
    out, patience = [], 0
    for x in u:
        if x < p:  # slamkit: text if rand >= prob else audio
            patience = span
        out.append(patience > 0)
        patience -= 1
    return out


ROW_LENGTHS = [12, 30, 0, 25, 1, 7]  # a batch of records, one without words


def _splits(lengths):
    return tf.constant(np.concatenate([[0], np.cumsum(lengths)]), tf.int64)


def _by_row(flat, lengths):
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [list(flat[a:b]) for a, b in itertools.pairwise(bounds)]


def test_span_policy_is_slamkit_patience_rule_per_record():
    seed = tf.constant([5, 6], tf.int64)
    for p, span in [(0.3, 3), (0.1, 5), (0.3, 10)]:
        u = tf.random.stateless_uniform([sum(ROW_LENGTHS)], seed, dtype=tf.float64).numpy()
        got = _by_row(wi.span_policy_rows(_splits(ROW_LENGTHS), seed, p, span).numpy().tolist(), ROW_LENGTHS)
        # each record runs its own patience counter: a span never spills into the next record
        assert got == [_slamkit_span(row_u, p, span) for row_u in _by_row(u, ROW_LENGTHS)]


@pytest.mark.parametrize("eta,lam", [(0.3, 3.0), (0.3, 10.0), (0.6, 2.0)])
def test_poisson_policy_rows_are_separate_records(eta, lam):
    # its law is checked against slamkit's loop in tests/test_span_policies.py; here: the
    # longer rows reach ceil(n * eta) speech words (slamkit stops short only when every start
    # is retired, which length-0 draws can do on a 1-word record)
    seed = tf.constant([11, 3], tf.int64)
    rows = _by_row(wi.poisson_policy_rows(_splits(ROW_LENGTHS), seed, eta, lam).numpy().tolist(), ROW_LENGTHS)
    for b, n in enumerate(ROW_LENGTHS):
        assert len(rows[b]) == n
        if n >= 7:
            assert sum(rows[b]) >= math.ceil(n * eta), b


def test_single_record_mask_is_a_batch_of_one():
    seed = tf.constant([4, 1], tf.int64)
    for policy, ratio, span in [("random", 0.5, 10.0), ("span", 0.2, 3), ("poisson", 0.3, 3.0)]:
        one = wi.word_speech_mask(12, seed, policy, ratio, span).numpy().tolist()
        rows = wi.word_speech_mask_rows(_splits([12]), seed, policy, ratio, span).numpy().tolist()
        assert one == rows


def test_random_policy_is_independent_coin():
    seed = tf.constant([2, 9], tf.int64)
    u = tf.random.stateless_uniform([12], seed, dtype=tf.float64).numpy()
    assert wi.word_speech_mask(12, seed, "random", 0.3).numpy().tolist() == (u < 0.3).tolist()


def _runs(mask):
    lengths, run = [], 0
    for m in list(mask) + [False]:
        if m:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_policy_statistics_on_2000_words():
    seed = tf.constant([7, 7], tf.int64)
    random_frac = wi.word_speech_mask(2000, seed, "random", 0.3).numpy().mean()
    assert abs(random_frac - 0.3) < 0.035
    poisson = wi.word_speech_mask(2000, seed, "poisson", 0.3, 10.0).numpy()
    assert 0.3 <= poisson.mean() < 0.32  # stops once ceil(0.3 n) words are speech
    assert abs(np.mean(_runs(poisson)) - 10.0) < 1.5
    span = wi.word_speech_mask(2000, seed, "span", 0.05, 5).numpy()  # fraction 1 - 0.95^5 = 0.226
    assert abs(span.mean() - (1 - 0.95**5)) < 0.05


def test_policy_argument_errors(vocab):
    ds = _ds(_twelve_word_record())
    with pytest.raises(ValueError, match="policy must be one of"):
        wi.word_interleave(ds, vocab, policy="spans")
    with pytest.raises(ValueError, match="speech_ratio"):
        wi.word_interleave(ds, vocab, speech_ratio=1.5)
    with pytest.raises(ValueError, match="whole mean_span_words"):
        wi.word_interleave(ds, vocab, policy="span", mean_span_words=2.5)
    assert dict(wi.SLAMKIT_DEFAULTS) == {"policy": "poisson", "speech_ratio": 0.3, "mean_span_words": 10.0}


# --- word_interleave end to end (seeded) -------------------------------------------------------
# Modalities chosen for the 12-word record by each policy, pipeline seed 1234, three epochs
# (one vectorised batch: one seed from seqio.map_over_dataset, row b draws its own
# values). 1 = speech, 0 = text.
PINNED_MASKS = {
    "random": ["SSTSSSSSSTST", "SSSTSTTSSSST", "TSTSTTTSTSTT"],  # speech_ratio 0.5
    "span": ["TSSSSSSSSSTT", "TSSSSSSSSSSS", "TTTSSSTSSSTT"],  # trigger 0.2, spans of 3
    "poisson": ["TSSSSTTSTSTT", "TTTTSSSTSTTT", "TTTSSSSSSSTT"],  # >= ceil(12 * 0.3) = 4 words, lambda 3 (exact law)
}


def _mask_from_targets(v, targets, starts, ends, units, rate):
    """Per-word modality read back from an output: a text span has one id per word (word
    model); a speech span has as many words as makes its reference rendering match."""
    segs, cur = [], None
    for t in targets[:-1]:
        if t in (v.text_marker_id, v.speech_marker_id):
            cur = [t, []]
            segs.append(cur)
        else:
            cur[1].append(t)
    mask, i = [], 0
    for marker, body in segs:
        if marker == v.text_marker_id:
            mask += [False] * len(body)
            i += len(body)
            continue
        for k in range(1, len(WORDS) - i + 1):
            span = reference_interleave(
                v, WORDS[i : i + k], starts[i : i + k], ends[i : i + k], units, rate, [True] * k
            )
            if span[1:-1] == body:
                break
        mask += [True] * k
        i += k
    assert i == len(WORDS)
    return mask


@pytest.mark.parametrize("policy", ["random", "span", "poisson"])
@pytest.mark.slow
def test_word_interleave_pinned_modalities(vocab, policy):
    v = vocab
    rec = _twelve_word_record()
    kwargs = {
        "random": {"speech_ratio": 0.5},
        "span": {"speech_ratio": 0.2, "mean_span_words": 3},
        "poisson": {"speech_ratio": 0.3, "mean_span_words": 3.0},
    }[policy]
    ds = _ds(rec).repeat(3)
    outs = _built(lambda: wi.word_interleave(ds, v, policy=policy, **kwargs))
    assert len(outs) == 3
    units = rec["units"].numpy().tolist()
    starts, ends = rec["word_start"].numpy(), rec["word_end"].numpy()
    got = [
        "".join("ST"[not m] for m in _mask_from_targets(v, o["targets"], starts, ends, units, 25.0))
        for o in outs
    ]
    assert got == PINNED_MASKS[policy], got
    for out, pinned in zip(outs, PINNED_MASKS[policy]):
        mask = [c == "S" for c in pinned]
        expected = reference_interleave(v, WORDS, starts, ends, units, 25.0, mask)
        assert out["targets"] == expected
        assert out["modality"] == v.modality_ids(expected).tolist()
        assert out["loss_mask"] == [1] * len(expected) and out["id"] == b"twelve"


def test_markers_only_where_modality_changes(vocab):
    """Over many seeded examples: a marker starts the sequence, markers alternate, no span is empty."""
    v = vocab
    markers = {v.text_marker_id, v.speech_marker_id}
    outs = _built(
        lambda: wi.word_interleave(
            _ds(_twelve_word_record()).repeat(25), v, policy="random", speech_ratio=0.5
        ),
        seed=99,
    )
    for out in outs:
        t = out["targets"]
        found = [x for x in t if x in markers]
        assert t[0] in markers and t[-1] == v.eos_id and v.eos_id not in t[:-1]
        assert all(a != b for a, b in itertools.pairwise(found))  # only at changes
        assert all(not (a in markers and b in markers) for a, b in itertools.pairwise(t))
    assert len({tuple(o["targets"]) for o in outs}) > 10  # examples get different seeds


@pytest.mark.slow
def test_word_interleave_record_without_words_is_eos(vocab):
    rec = _record([1, 2, 3], 10.0, [], [], [], "empty")
    for policy in wi.POLICIES:
        (out,) = _built(lambda p=policy: wi.word_interleave(_ds(rec), vocab, policy=p, mean_span_words=2))
        assert out["targets"] == [vocab.eos_id] and out["id"] == b"empty"


def test_word_interleave_bad_alignment_fails_naming_record(vocab):
    rec = _record([1, 2, 3], 10.0, ["a", "b"], [0.0, 0.1], [0.1], "broken")
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken"):
        _built(lambda: wi.word_interleave(_ds(rec), vocab, policy="random"))


def test_word_interleave_bad_record_in_a_batch_is_named(vocab):
    good = _twelve_word_record()
    reversed_word = _record([1, 2, 3], 10.0, ["a", "b"], [0.0, 0.2], [0.1, 0.1], "reversed")
    ds = _ds(good, reversed_word, good)
    with pytest.raises(tf.errors.InvalidArgumentError, match="reversed.*ends before it starts"):
        _built(lambda: wi.word_interleave(ds, vocab, policy="random"))
    with pytest.raises(ValueError, match="batch_records must be an int >= 1"):
        wi.word_interleave(ds, vocab, batch_records=0)


def _with_tokens(rec, v, use=True):
    words = [w.decode() for w in rec["word_text"].numpy()]
    ids = [v.encode_text(w) for w in words] if use else []
    return {
        **rec,
        "word_token_ids": tf.constant([i for w in ids for i in w], tf.int64),
        "word_token_lengths": tf.constant([len(w) for w in ids], tf.int64),
        "word_token_model": tf.constant(v.model_digest if use else ""),
    }


def test_interleave_rows_batch_equals_per_record_reference(vocab):
    """Records of different lengths and rates (one without words), some with pre-tokenized
    words and some without, in ONE vectorised batch: each row is its own record's rendering."""
    v = vocab
    recs = [
        _twelve_word_record(),
        _record([1, 1, 2, 3, 3, 4, 4, 5, 6, 6], 10.0, ["the", "cat", "sat", "on"], [0.0, 0.3, 0.5, 0.9],
                [0.2, 0.5, 0.8, 1.0], "four"),
        _record([7, 8], 10.0, [], [], [], "empty"),
        _record([2] * 30 + [3] * 30, 20.0, ["far", "away"], [0.1, 1.6], [1.4, 2.9], "two"),
    ]
    recs = [_with_tokens(r, v, use=k % 2 == 0) for k, r in enumerate(recs)]
    masks = [[(i * 7 + k) % 3 == 0 for i in range(len(r["word_text"].numpy()))] for k, r in enumerate(recs)]
    ds = _ds(*recs).ragged_batch(len(recs))
    batch = next(iter(ds))
    batch = {k: (tf.RaggedTensor.from_tensor(x) if not isinstance(x, tf.RaggedTensor) and x.shape.rank == 2
                 else x) for k, x in batch.items()}
    word_tokens, use, _ = wi._pretokenized(batch, v)
    assert use.numpy().tolist() == [True, False, True, False]
    bodies = wi.interleave_rows(
        batch["word_text"], batch["word_start"], batch["word_end"], tf.constant(sum(masks, [])),
        batch["units"], batch["unit_rate_hz"], v, True, word_tokens, use,
    ).to_list()
    for rec, mask, body in zip(recs, masks, bodies):
        words = [w.decode() for w in rec["word_text"].numpy()]
        expected = reference_interleave(
            v, words, rec["word_start"].numpy(), rec["word_end"].numpy(), rec["units"].numpy().tolist(),
            float(rec["unit_rate_hz"]), mask,
        )
        assert body + [v.eos_id] == expected, rec["id"]


def test_word_interleave_batch_size_changes_draws_not_format(vocab):
    """Any batch_records gives well-formed per-record outputs, in input order, one per record."""
    recs = [_record(list(range(10)) * 3, 10.0, WORDS[:k], [0.2 * i for i in range(k)],
                    [0.2 * i + 0.15 for i in range(k)], f"r{k}") for k in range(6)]
    for batch_records in (1, 4, 64):
        outs = _built(lambda b=batch_records: wi.word_interleave(
            _ds(*recs), vocab, policy="poisson", speech_ratio=0.5, mean_span_words=2.0, batch_records=b))
        assert [o["id"] for o in outs] == [f"r{k}".encode() for k in range(6)]
        for k, out in enumerate(outs):
            t = out["targets"]
            assert t[-1] == vocab.eos_id and (k > 0 or t == [vocab.eos_id])
            assert out["modality"] == vocab.modality_ids(t).tolist()
            assert sum(x == vocab.text_marker_id for x in t) + sum(x == vocab.speech_marker_id for x in t) >= (k > 0)


# --- cross-lingual -----------------------------------------------------------------------------
def _pair_record(rid="p"):
    """4 sentence pairs at 10 Hz. Side a: sentence k = frames [10k, 10k+10), units 2k (x5) then
    2k+1 (x5). Side b: sentences [0,.5) [.5,1.5) [1.5,2.5) [2.5,3) s, sentence k all unit 9-k."""
    a_units = [2 * (f // 10) + (f % 10 >= 5) for f in range(40)]
    b_units = [9] * 5 + [8] * 10 + [7] * 10 + [6] * 5
    return {
        "id": tf.constant(rid),
        "a_lang": tf.constant("en"),
        "b_lang": tf.constant("fr"),
        "a_units": tf.constant(a_units, tf.int64),
        "b_units": tf.constant(b_units, tf.int64),
        "a_sentence_start": tf.constant([0.0, 1.0, 2.0, 3.0]),
        "a_sentence_end": tf.constant([1.0, 2.0, 3.0, 4.0]),
        "b_sentence_start": tf.constant([0.0, 0.5, 1.5, 2.5]),
        "b_sentence_end": tf.constant([0.5, 1.5, 2.5, 3.0]),
        "unit_rate_hz": tf.constant(10.0),
    }


def _expected_crosslingual(v, sides, lang_tags=False):
    out, prev = [v.speech_marker_id], None
    for k, side in enumerate(sides):
        if lang_tags and side != prev:
            out.append(v.lang_tag_id("en" if side == "a" else "fr"))
        out += U(v, 2 * k, 2 * k + 1) if side == "a" else U(v, 9 - k)
        prev = side
    return out + [v.eos_id]


def _xl(v, **kwargs):
    return _built(lambda: il.crosslingual_interleave(_ds(_pair_record()), v, **kwargs))[0]["targets"]


@pytest.mark.slow
def test_crosslingual_strict_alternation_and_never_switch(vocab):
    v = vocab
    S, E, EN, FR = v.speech_marker_id, v.eos_id, v.lang_tag_id("en"), v.lang_tag_id("fr")
    assert _xl(v, switch_prob=1.0, start="a") == [S] + U(v, 0, 1, 8, 4, 5, 6) + [E]
    assert _xl(v, switch_prob=1.0, start="b") == [S] + U(v, 9, 2, 3, 7, 6, 7) + [E]
    assert _xl(v, switch_prob=1.0, start="a", lang_tags=True) == (
        [S, EN] + U(v, 0, 1) + [FR] + U(v, 8) + [EN] + U(v, 4, 5) + [FR] + U(v, 6) + [E]
    )
    assert _xl(v, switch_prob=0.0, start="a") == [S] + U(v, *range(8)) + [E]
    assert _xl(v, switch_prob=0.0, start="b", lang_tags=True) == [S, FR] + U(v, 9, 8, 7, 6) + [E]
    assert _xl(v, switch_prob=1.0, start="a", dedup=False) == (
        [S] + U(v, *[0] * 5, *[1] * 5, *[8] * 10, *[4] * 5, *[5] * 5, *[6] * 5) + [E]
    )
    assert _xl(v, switch_prob=1.0, start="a", speech_marker=False) == U(v, 0, 1, 8, 4, 5, 6) + [E]
    out = _built(lambda: il.crosslingual_interleave(_ds(_pair_record()), v, start="a"))[0]
    assert out["modality"] == [3, 2, 2, 2, 2, 2, 2, 3] and out["id"] == b"p"


def test_crosslingual_never_switching_equals_monolingual_side(vocab):
    v = vocab
    for side in "ab":
        mono = _run(il.monolingual_side(_ds(_pair_record()), v, side=side))[0]["targets"]
        assert mono == _xl(v, switch_prob=0.0, start=side)
    mono = _run(il.monolingual_side(_ds(_pair_record()), v, side="b", lang_tags=True, dedup=False))[0][
        "targets"
    ]
    assert mono == [v.speech_marker_id, v.lang_tag_id("fr")] + U(
        v, *[9] * 5, *[8] * 10, *[7] * 10, *[6] * 5
    ) + [v.eos_id]


def test_sentence_sides_fixed_seed():
    seed = tf.constant([4, 2], tf.int64)
    sides = lambda p, start, n=12: "".join("ab"[s] for s in il.sentence_sides(n, seed, p, start).numpy())
    assert sides(1.0, "a") == "abababababab" and sides(1.0, "b") == "babababababa"
    assert sides(0.0, "b") == "b" * 12
    assert sides(0.5, "a") == PINNED_SIDES_05
    u = tf.random.stateless_uniform(
        [12], tf.unstack(tf.random.experimental.stateless_split(seed, 2))[1], dtype=tf.float64
    ).numpy()
    switches = [i for i in range(1, 12) if u[i] < 0.5]
    assert [i for i in range(1, 12) if PINNED_SIDES_05[i] != PINNED_SIDES_05[i - 1]] == switches
    assert il.sentence_sides(0, seed, 0.5, "random").numpy().size == 0


PINNED_SIDES_05 = "abbbbbabbaaa"


def _xl_sides(v, **kwargs):
    """switch_prob=0.5, random start, pipeline seed 1234, 4 epochs: the sides of each example."""
    outs = _built(lambda: il.crosslingual_interleave(_ds(_pair_record()).repeat(4), v, switch_prob=0.5, **kwargs))
    candidates = {
        "".join(s): _expected_crosslingual(v, s)
        for s in ["".join("ab"[(m >> k) & 1] for k in range(4)) for m in range(16)]
    }
    got = [[k for k, t in candidates.items() if t == o["targets"]] for o in outs]
    assert all(len(g) == 1 for g in got)
    return [g[0] for g in got]


def test_crosslingual_switch_half_pipeline_pinned(vocab):
    """Batches of one record: one seed per record, the draws of the former per-record map."""
    assert _xl_sides(vocab, batch_records=1) == PINNED_XL_05


PINNED_XL_05 = ["bbba", "baba", "bbbb", "baab"]


def test_crosslingual_batched_draws_pinned(vocab):
    """The default (all 4 records in one batch): one seed, record b takes element b of each draw,
    exactly as `crosslingual_interleave_batches` on the same batch."""
    assert _xl_sides(vocab) == PINNED_XL_05_BATCH
    batched = _built(lambda: unbatch_records(il.crosslingual_interleave_batches(
        _ds(_pair_record()).repeat(4).ragged_batch(4), vocab, switch_prob=0.5)))
    single = _built(lambda: il.crosslingual_interleave(_ds(_pair_record()).repeat(4), vocab, switch_prob=0.5))
    assert [o["targets"] for o in batched] == [o["targets"] for o in single]


PINNED_XL_05_BATCH = ["bbba", "baaa", "babb", "abba"]


def test_crosslingual_dedup_never_merges_across_languages(vocab):
    v = vocab
    rec = {
        "id": tf.constant("x"),
        "a_lang": tf.constant("en"),
        "b_lang": tf.constant("fr"),
        "a_units": tf.constant([1, 1, 2, 2], tf.int64),
        "b_units": tf.constant([2, 2, 3, 3], tf.int64),
        "a_sentence_start": tf.constant([0.0, 2.0]),
        "a_sentence_end": tf.constant([2.0, 4.0]),
        "b_sentence_start": tf.constant([0.0, 2.0]),
        "b_sentence_end": tf.constant([2.0, 4.0]),
        "unit_rate_hz": tf.constant(1.0),
    }
    out = _built(lambda: il.crosslingual_interleave(_ds(rec), v, start="b"))[0]["targets"]
    assert out == [v.speech_marker_id] + U(v, 2, 2) + [v.eos_id]  # b0 = 2 2 | a1 = 2 2: two runs


def test_crosslingual_unequal_sentence_counts_fail(vocab):
    rec = {k: (v.numpy().tolist() if v.shape.rank else v.numpy()) for k, v in _pair_record("uneven").items()}
    rec = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in rec.items()}
    rec["b_sentence_end"] = [0.5, 1.5, 2.5]
    serialized = corpus.paired_to_example(rec).SerializeToString()
    ds = tf.data.Dataset.from_tensors(serialized).map(
        lambda x: tf.io.parse_single_example(x, corpus.PAIRED_TFRECORD_FEATURES)
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="uneven"):
        _built(lambda: il.crosslingual_interleave(ds, vocab))


def test_both_sides_two_examples_per_record(vocab):
    v = vocab
    outs = _run(il.both_sides(_ds(_pair_record("p1"), _pair_record("p2")), v, lang_tags=True))
    a = [v.speech_marker_id, v.lang_tag_id("en")] + U(v, *range(8)) + [v.eos_id]
    b = [v.speech_marker_id, v.lang_tag_id("fr")] + U(v, 9, 8, 7, 6) + [v.eos_id]
    assert [o["targets"] for o in outs] == [a, b, a, b]
    assert [o["id"] for o in outs] == [b"p1", b"p1", b"p2", b"p2"]
    assert all(sorted(o) == sorted(il.OUTPUT_KEYS) for o in outs)


# --- expressive --------------------------------------------------------------------------------
def test_expressive_merge_ties_and_dedup(vocab):
    v = vocab
    hu = lambda u: v.unit_offset + u
    pi = lambda p: v.pitch_offset + p
    st = lambda s: v.style_offset + s
    rec = {
        "id": tf.constant("e"),
        "units": tf.constant([3, 3, 4, 4, 7, 5, 5, 6, 6], tf.int64),  # 4 Hz: 3@0 4@.5 7@1 5@1.25 6@1.75
        "pitch": tf.constant([1, 2, 2, 0], tf.int64),  # 2 Hz: 1@0 2@.5 0@1.5 (the second 2 is dropped)
        "style": tf.constant([2, 2], tf.int64),  # 1 Hz: 2@0 2@1 (style is NOT deduplicated)
    }
    (out,) = _run(il.expressive_merge(_ds(rec), v, hubert_rate=4.0, pitch_rate=2.0, style_rate=1.0))
    assert out["targets"] == [
        v.speech_marker_id,
        st(2),
        pi(1),
        hu(3),  # t=0: style, pitch, HuBERT
        pi(2),
        hu(4),  # t=0.5
        st(2),
        hu(7),  # t=1.0
        hu(5),
        pi(0),
        hu(6),  # t=1.25, 1.5, 1.75
        v.eos_id,
    ]
    assert out["modality"] == [3] + [2] * 10 + [3]


def test_expressive_merge_default_rates_exact_ties(vocab):
    v = vocab
    rec = {
        "id": tf.constant("d"),
        "units": tf.constant([0, 1, 2], tf.int64),  # 25 Hz: 0, .04, .08
        "pitch": tf.constant([0, 3], tf.int64),
        "style": tf.constant([1], tf.int64),
    }  # 12.5 Hz: 0, .08
    (out,) = _run(il.expressive_merge(_ds(rec), v))
    assert out["targets"] == [
        v.speech_marker_id,
        v.style_offset + 1,
        v.pitch_offset + 0,
        v.unit_offset + 0,
        v.unit_offset + 1,
        v.pitch_offset + 3,
        v.unit_offset + 2,
        v.eos_id,
    ]


# --- checkpointable pipeline -------------------------------------------------------------------
def test_word_interleave_pipeline_checkpoint_restores_exact_next(vocab, tmp_path):
    utts = [
        corpus.Utterance(
            id=f"u{k}",
            lang="en",
            units=[(f // 2 + k) % 10 for f in range(60)],
            unit_rate_hz=25.0,
            text=" ".join(WORDS[k : k + 6]),
            words=[(w, 0.4 * i, 0.4 * i + 0.3) for i, w in enumerate(WORDS[k : k + 6])],
        )
        for k in range(5)
    ]
    path = str(tmp_path / "c.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for u in utts:
            w.write(corpus.to_example(u).SerializeToString())

    with seqio.map_seed_manager(5):
        ds = tf.data.TFRecordDataset(path).repeat()
        ds = ds.map(lambda x: tf.io.parse_single_example(x, corpus.TFRECORD_FEATURES))
        ds = wi.word_interleave(ds, vocab, policy="poisson", speech_ratio=0.4, mean_span_words=2.0)
        ds = ds.map(lambda ex: {k: (v[:24] if v.shape.rank else v) for k, v in ex.items()})  # a Task trims
        ds = SLMFeatureConverter(pack=True)(ds, {"targets": 24}).batch(2)

    it = iter(ds)
    for _ in range(3):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    prefix = ckpt.write(str(tmp_path / "it"))
    expected = [next(it) for _ in range(4)]
    it2 = iter(ds)
    tf.train.Checkpoint(iterator=it2).read(prefix).assert_consumed()
    for exp in expected:
        got = next(it2)
        for k in exp:
            np.testing.assert_array_equal(got[k].numpy(), exp[k].numpy(), err_msg=k)
    assert any((e["decoder_modality"].numpy() == 1).any() for e in expected)  # text present
    assert any((e["decoder_modality"].numpy() == 2).any() for e in expected)  # speech present
