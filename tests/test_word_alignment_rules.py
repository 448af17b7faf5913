"""Word alignments as real aligners write them (issue 13, kind 2): the one word -> frames rule.

`slm_jax.data.preprocessors.common.word_frames`: a word takes the frames whose START lies in
[start, end); a word covering no frame start (20 ms, zero-length, in the encoder's missing
last frame, past the units) takes the frame it lies in. Word interleaving (batched and per
record), cross-lingual sentences and aligned LST patches all use it, so a speech span is
never empty; `data stats` counts the repaired words (`repaired_words`).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from slm_jax.data.preprocessors import common, patch_ids
from slm_jax.data.preprocessors import interleave as il
from slm_jax.data.preprocessors import word_interleave as wi
from tests.test_interleave import U, _built, _ds, _pair_record, _record, vocab  # noqa: F401 - fixture

PLAIN = tf.constant([False])


def _spans(v, ids):
    """[(marker, body ids)] of an interleaved sequence (EOS dropped)."""
    out = []
    for t in ids:
        if t == v.eos_id:
            break
        if t in (v.text_marker_id, v.speech_marker_id):
            out.append((t, []))
        else:
            out[-1][1].append(t)
    return out


def _body(v, words, starts, ends, units, rate, mask):
    return wi.interleave_words(tf.constant(words), tf.constant(starts, tf.float32), tf.constant(ends, tf.float32),
                               tf.constant(mask), tf.constant(units, tf.int64), rate, v).numpy().tolist()


# --- the rule itself ----------------------------------------------------------------------------
def test_issue_cases_take_the_frame_they_lie_in():
    # 20 ms word at 25 Hz: frames start at 0.40 and 0.44, neither in [0.41, 0.43): frame 10
    # last word in the missing last frame: 1.0 s at 50 Hz has 49 frames, 0.975 s is frame 48
    # zero-length word at 0.5 s (25 Hz): the frame starting there, 12; past the units: the last frame
    lo, hi, repaired = common.word_frames([0.41, 0.975, 0.5, 3.0, 0.40], [0.43, 0.995, 0.5, 3.2, 0.48],
                                          [25.0, 50.0, 25.0, 25.0, 25.0], [30, 49, 30, 30, 30])
    assert lo.numpy().tolist() == [10, 48, 12, 29, 10]
    assert hi.numpy().tolist() == [11, 49, 13, 30, 12]
    assert repaired.numpy().tolist() == [True, True, True, True, False]


def test_no_units_gives_no_frames_and_no_repair():
    lo, hi, repaired = common.word_frames([0.1], [0.2], 25.0, 0)
    assert (lo.numpy().tolist(), hi.numpy().tolist(), repaired.numpy().tolist()) == ([0], [0], [False])


def test_numpy_twin_equals_tf_on_random_alignments():
    rng = np.random.default_rng(5)
    for rate, n in [(25.0, 40), (50.0, 49), (12.5, 3)]:
        edges = np.sort(rng.uniform(0, (n + 3) / rate, 60)).astype(np.float32)
        start, end = edges[0::2], edges[1::2]
        end[::5] = start[::5]  # zero-length words
        got = [x.numpy().tolist() for x in common.word_frames(start, end, rate, n)]
        want = [x.tolist() for x in common.word_frames_np(start, end, rate, n)]
        assert got == want
        assert all(h > lo for lo, h in zip(got[0], got[1]))  # never empty


# --- word interleaving: never an empty speech span --------------------------------------------------
def test_20ms_speech_word_between_text_words_is_not_empty(vocab):
    v = vocab
    units = [(3 * f) % 10 for f in range(30)]  # 25 Hz; frame 10 holds unit 0
    body = _body(v, ["the", "cat", "sat"], [0.0, 0.41, 0.60], [0.40, 0.43, 0.80], units, 25.0,
                 [False, True, False])
    spans = _spans(v, body)
    assert [m for m, _ in spans] == [v.text_marker_id, v.speech_marker_id, v.text_marker_id]
    assert spans[1][1] == U(v, units[10])


def test_last_word_in_missing_last_frame_is_not_empty(vocab):
    v = vocab
    units = [(7 * f + 1) % 10 for f in range(49)]  # 1.0 s at 50 Hz, one frame short
    body = _body(v, ["the", "cat"], [0.0, 0.975], [0.9, 0.995], units, 50.0, [False, True])
    spans = _spans(v, body)
    assert [m for m, _ in spans] == [v.text_marker_id, v.speech_marker_id]
    assert spans[1][1] == U(v, units[48])


def test_zero_length_word_as_speech_is_not_empty(vocab):
    v = vocab
    units = [(3 * f + 2) % 10 for f in range(25)]
    body = _body(v, ["the", "cat", "sat"], [0.0, 0.5, 0.5], [0.5, 0.5, 0.9], units, 25.0, [False, True, False])
    assert _spans(v, body)[1] == (v.speech_marker_id, U(v, units[12]))


def _aligner_like_records(n_records, seed):
    """Forced-aligner-like alignments: many 20 ms and zero-length words, the last word in or
    past the encoder's missing last frame, rates 25 and 50 Hz."""
    rng = np.random.default_rng(seed)
    recs = []
    for r in range(n_records):
        rate = [25.0, 50.0][r % 2]
        duration = rng.uniform(0.5, 2.0)
        n = int(duration * rate) - 1  # the encoder's missing frame
        k = int(rng.integers(2, 9))
        cuts = np.sort(rng.uniform(0, duration, 2 * k))
        starts, ends = cuts[0::2].copy(), cuts[1::2].copy()
        short = rng.random(k) < 0.4
        ends[short] = np.minimum(starts[short] + rng.choice([0.0, 0.02], short.sum()), ends[short])
        starts[-1], ends[-1] = duration - 0.025, duration - 0.005
        words = [["the", "cat", "sat", "on", "mat"][i % 5] for i in range(k)]
        recs.append(_record(rng.integers(0, 10, n).tolist(), rate, words, starts.tolist(), ends.tolist(), f"r{r}"))
    return recs


@pytest.mark.parametrize("batch_records", [1, 16])
def test_word_interleave_never_emits_an_empty_speech_span(vocab, batch_records):
    v = vocab
    recs = _aligner_like_records(24, seed=batch_records)
    outs = _built(lambda: wi.word_interleave(_ds(*recs), v, policy="random", speech_ratio=0.5,
                                             batch_records=batch_records))
    speech_spans = 0
    for o in outs:
        for marker, body in _spans(v, o["targets"]):
            if marker == v.speech_marker_id:
                speech_spans += 1
                assert body, o["id"]
    assert speech_spans > 10


def test_batched_rows_equal_per_record_rule(vocab):
    from tests.test_interleave import reference_interleave
    v = vocab
    recs = _aligner_like_records(8, seed=3)
    batch = next(iter(_ds(*recs).ragged_batch(len(recs))))
    batch = {k: common.as_ragged(x) for k, x in batch.items()}
    masks = [[(i + k) % 2 == 0 for i in range(len(r["word_text"].numpy()))] for k, r in enumerate(recs)]
    bodies = wi.interleave_rows(batch["word_text"], batch["word_start"], batch["word_end"], tf.constant(sum(masks, [])),
                                batch["units"], batch["unit_rate_hz"], v).to_list()
    for rec, mask, body in zip(recs, masks, bodies):
        words = [w.decode() for w in rec["word_text"].numpy()]
        want = reference_interleave(v, words, rec["word_start"].numpy(), rec["word_end"].numpy(),
                                    rec["units"].numpy().tolist(), float(rec["unit_rate_hz"]), mask)
        assert body + [v.eos_id] == want, rec["id"]
        one = _body(v, words, rec["word_start"].numpy(), rec["word_end"].numpy(), rec["units"].numpy().tolist(),
                    float(rec["unit_rate_hz"]), mask)
        assert one == body


def test_record_without_units_keeps_its_words_text(vocab):
    v = vocab
    body = _body(v, ["the", "cat"], [0.0, 0.2], [0.2, 0.4], [], 25.0, [True, True])
    assert [m for m, _ in _spans(v, body)] == [v.text_marker_id]


# --- cross-lingual sentences use the same rule -----------------------------------------------------
def test_crosslingual_sentence_shorter_than_a_frame_takes_its_frame(vocab):
    v = vocab
    rec = _pair_record()
    rec = dict(rec)
    rec["a_sentence_start"] = tf.constant([0.0, 0.41], tf.float32)
    rec["a_sentence_end"] = tf.constant([0.40, 0.43], tf.float32)
    rec["b_sentence_start"] = tf.constant([0.0, 0.41], tf.float32)
    rec["b_sentence_end"] = tf.constant([0.40, 0.43], tf.float32)
    rec["unit_rate_hz"] = tf.constant(25.0)
    out = _built(lambda: il.crosslingual_interleave(_ds(rec), v, switch_prob=1.0, start="a", dedup=False))[0]
    a, b = rec["a_units"].numpy().tolist(), rec["b_units"].numpy().tolist()
    assert out["targets"] == [v.speech_marker_id] + U(v, *a[0:10]) + U(v, b[10]) + [v.eos_id]


# --- aligned LST patches ------------------------------------------------------------------------------
def test_aligned_patches_give_repaired_words_their_frame():
    # 25 Hz, 20 frames. the 20 ms word (frame 10) and the zero-length word at 0.61 s (frame 15)
    # lie on silence frames: each is its own patch
    ids = patch_ids.aligned_patch_ids(20, 25.0, [0.0, 0.20, 0.41, 0.50, 0.61], [0.2, 0.28, 0.43, 0.60, 0.61])
    assert ids.numpy().tolist() == [0] * 5 + [1] * 2 + [2] * 3 + [3] + [4] * 2 + [5] * 2 + [6] + [7] * 4


def test_aligned_patches_repaired_word_on_a_held_frame_shares_it():
    # word 2 (0.47-0.475) lies in frame 11, which word 1 (0.40-0.47: frames 10, 11) holds: word 1
    # keeps both frames, word 2 shares its patch; the word in the missing last frame takes frame 19
    ids = patch_ids.aligned_patch_ids(20, 25.0, [0.0, 0.40, 0.47, 0.79], [0.40, 0.47, 0.475, 0.795])
    assert ids.numpy().tolist() == [0] * 10 + [1] * 2 + [2] * 7 + [3]


def test_aligned_patches_unchanged_for_frame_aligned_words():
    # words on frame boundaries: the base rule alone (what the demo corpus has)
    ids = patch_ids.aligned_patch_ids(10, 25.0, [0.04, 0.2], [0.12, 0.32])
    assert ids.numpy().tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 4, 4]


# --- the count `data stats` shows ---------------------------------------------------------------------
def test_repaired_word_count_of_records():
    from slm_jax.data import inspect_data
    records = [
        {"units": np.zeros(30), "unit_rate_hz": 25.0, "word_start": np.float32([0.0, 0.41]),
         "word_end": np.float32([0.40, 0.43])},
        {"units": np.zeros(49), "unit_rate_hz": 50.0, "word_start": np.float32([0.975]),
         "word_end": np.float32([0.995])},
        {"units": np.zeros(10), "unit_rate_hz": 25.0, "word_start": np.float32([]), "word_end": np.float32([])},
    ]
    assert inspect_data.repaired_word_count(records) == {"words": 3, "repaired_words": 2}
    assert math.isclose(common.FRAME_SNAP, 0.01)


def test_evaluation_cuts_sentences_by_the_same_rule():
    from slm_jax.evaluation import alignment
    record = {"id": "s", "a_lang": "en", "b_lang": "fr", "unit_rate_hz": 25.0,
              "a_units": list(range(12)), "a_sentence_start": [0.0, 0.41], "a_sentence_end": [0.40, 0.43],
              "b_units": list(range(20, 31)), "b_sentence_start": [0.0, 0.41], "b_sentence_end": [0.40, 0.43]}
    items = alignment.parallel_items([record], level="sentence")
    assert [list(x.a.content) for x in items] == [list(range(10)), [10]]
    assert [list(x.b.content) for x in items] == [list(range(20, 30)), [30]]
