"""Corpus schema, JSONL/TFRecord round trips, validator, parallel pairing and importers."""

import json
import logging
import os

import pytest
import tensorflow as tf

from slm_jax.data import corpus

from slm_jax.cli import prepare_import
from slm_jax.data.corpus import importers
from slm_jax.data.corpus import BadRecordError, Utterance


def _full_utt() -> Utterance:
    """Every optional field set; times are decimals that float32 cannot hold exactly."""
    return Utterance(
        id="en-0001",
        lang="en",
        units=[5, 5, 7, 7, 7, 1, 0, 3, 3, 9],
        unit_rate_hz=50.0,
        pitch=[3, 3, 60],
        pitch_rate_hz=12.5,
        style=[4],
        style_rate_hz=1.0,
        text="the cat sat",
        words=[("the", 0.0, 0.06), ("cat", 0.06, 0.1), ("sat", 0.12, 0.2)],
        sentences=[(0.0, 0.1, "the cat"), (0.1, 0.2, "sat")],
        parallel_id="story-1/0",
    )


def _min_utt(uid="fr-0001", lang="fr") -> Utterance:
    return Utterance(id=uid, lang=lang, units=[1, 2, 3], unit_rate_hz=25.0)


# --- schema and round trips -------------------------------------------------------------
def test_duration_and_container_normalisation():
    import numpy as np

    u = Utterance(
        id="a", lang="en", units=np.array([1, 2, 3, 4]), unit_rate_hz=50.0, words=[["w", 0.0, 0.04]]
    )
    assert u.units == [1, 2, 3, 4] and u.words == [("w", 0.0, 0.04)]
    assert u.duration_s == pytest.approx(0.08)


def test_jsonl_round_trip(tmp_path):
    utts = [_full_utt(), _min_utt()]
    path = str(tmp_path / "c.jsonl")
    assert corpus.write_jsonl(path, utts) == 2
    first = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert first["words"][0] == ["the", 0.0, 0.06] and first["sentences"][1] == [0.1, 0.2, "sat"]
    assert list(corpus.read_jsonl(str(tmp_path / "*.jsonl"))) == utts
    assert list(corpus.iter_utterances(path)) == utts


def test_tfrecord_round_trip_and_shards(tmp_path):
    utts = [_full_utt(), _min_utt()] + [_min_utt(f"fr-{i}") for i in range(3)]
    paths = corpus.write_tfrecord_shards(str(tmp_path), "train", utts, num_shards=2)
    assert [os.path.basename(p) for p in paths] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert list(corpus.read_tfrecord(str(tmp_path / "train-*"))) == utts  # contiguous shards keep the order
    assert list(corpus.iter_utterances(str(tmp_path / "*.tfrecord"))) == utts
    assert corpus.from_example(corpus.to_example(_full_utt()).SerializeToString()) == _full_utt()
    with pytest.raises(FileExistsError, match="another shard count"):
        corpus.write_tfrecord_shards(str(tmp_path), "train", utts, num_shards=3)


def test_parse_minimal_record_has_every_key():
    raw = corpus.to_example(_min_utt()).SerializeToString()
    ex = tf.io.parse_single_example(raw, corpus.TFRECORD_FEATURES)
    assert (
        set(ex)
        == set(corpus.TFRECORD_FEATURES)
        == {
            "id",
            "lang",
            "units",
            "unit_rate_hz",
            "pitch",
            "pitch_rate_hz",
            "style",
            "style_rate_hz",
            "text",
            "word_text",
            "word_start",
            "word_end",
            "sentence_text",
            "sentence_start",
            "sentence_end",
            "parallel_id",
            "word_token_ids",
            "word_token_lengths",
            "word_token_model",
        }
    )
    assert all(isinstance(v, tf.Tensor) for v in ex.values())  # dense, not sparse
    assert ex["units"].numpy().tolist() == [1, 2, 3] and ex["units"].dtype == tf.int64
    assert ex["unit_rate_hz"].numpy() == 25.0 and ex["pitch_rate_hz"].numpy() == 0.0
    assert ex["id"].numpy() == b"fr-0001" and ex["text"].numpy() == b"" and ex["parallel_id"].numpy() == b""
    for key in ("pitch", "style", "word_text", "word_start", "word_end", "sentence_text", "sentence_start"):
        assert ex[key].shape == (0,), key
    # Every key is physically present (not just defaulted by the parser).
    assert set(tf.train.Example.FromString(raw).features.feature) == set(corpus.TFRECORD_FEATURES)


def test_seqio_source_reads_shards(tmp_path):
    import seqio

    corpus.write_tfrecord_shards(str(tmp_path), "c", [_full_utt()], num_shards=1)
    src = seqio.TFExampleDataSource(
        {"train": str(tmp_path / "c-*")}, feature_description=corpus.TFRECORD_FEATURES
    )
    ex = next(iter(src.get_dataset("train", shuffle=False)))
    assert ex["word_text"].numpy().tolist() == [b"the", b"cat", b"sat"]
    assert ex["sentence_end"].numpy().tolist() == pytest.approx([0.1, 0.2])


def test_old_demo_style_record_reads_with_defaults():
    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        "lang": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"en"])),
        "units": tf.train.Feature(int64_list=tf.train.Int64List(value=[4, 4])),
        "unit_rate_hz": tf.train.Feature(float_list=tf.train.FloatList(value=[50.0])),
    }
    raw = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    assert corpus.from_example(raw) == Utterance(id="x", lang="en", units=[4, 4], unit_rate_hz=50.0)


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(_min_utt().to_dict()) + "\n" + '{"id": "r2", "lang": "en", "units": [1, 2.5], '
        '"unit_rate_hz": 50}\n'
    )
    with pytest.raises(BadRecordError, match=r"bad\.jsonl:2: record 'r2': units\[1\]=2\.5 is not an integer"):
        list(corpus.read_jsonl(str(path)))
    with pytest.raises(FileNotFoundError, match="nothing-"):
        list(corpus.read_jsonl(str(tmp_path / "nothing-*.jsonl")))


# --- validation ---------------------------------------------------------------------------
def _with(**kw) -> Utterance:
    d = _full_utt().to_dict()
    d.update(kw)
    return Utterance.from_dict(d)


BAD_CASES = {
    "unit out of range": (_with(units=[1, 500, 2]), r"units\[1\]=500 out of range; expected \[0, 500\)"),
    "negative unit": (_with(units=[-1, 2]), r"units\[0\]=-1"),
    "pitch out of range": (_with(pitch=[1, 64]), r"pitch\[1\]=64 out of range; expected \[0, 64\)"),
    "style out of range": (_with(style=[100]), r"style\[0\]=100 out of range; expected \[0, 100\)"),
    "empty units": (_with(units=[], words=[], sentences=[]), "units are empty"),
    "missing lang": (_with(lang=""), "lang is missing"),
    "missing id": (_with(id=""), "<missing id>.*id is missing"),
    "word after end": (_with(words=[["w", 0.0, 1.5]]), r"words\[0\] \(0.0, 1.5\) lies outside \[0, 0.2\]"),
    "word negative": (_with(words=[["w", -0.1, 0.1]]), r"words\[0\].*lies outside"),
    "word start>end": (_with(words=[["w", 0.1, 0.09]]), r"words\[0\] starts at 0.1 but ends at 0.09; expected start <= end"),
    "sentence start==end": (_with(sentences=[[0.1, 0.1, "s"]]), r"sentences\[0\] starts at 0.1 but ends at 0.1; expected start < end"),
    "word empty after normalisation": (_with(words=[["\u202f ", 0.0, 0.1]]), r"words\[0\]\[0\]='\\u202f ' is empty after text normalisation"),
    "word overlap": (_with(words=[["a", 0.0, 0.1], ["b", 0.08, 0.12]]), r"words\[1\] starts at 0.08, before"),
    "sentence after end": (_with(sentences=[[0.0, 0.5, "s"]]), r"sentences\[0\].*lies outside"),
    "sentence overlap": (
        _with(sentences=[[0.0, 0.1, "a"], [0.05, 0.2, "b"]]),
        r"sentences\[1\] starts at 0.05",
    ),
    "pitch without rate": (_with(pitch_rate_hz=None), "pitch_rate_hz must be a positive number"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validate_bad_records(case):
    utt, pattern = BAD_CASES[case]
    with pytest.raises(BadRecordError, match=pattern) as e:
        corpus.validate(utt, num_units=500, num_pitch=64, num_style=100, source="data/en.jsonl:7")
    assert "data/en.jsonl:7" in str(e.value)
    if utt.id:
        assert f"record {utt.id!r}" in str(e.value)


def test_validate_good_and_tolerance():
    corpus.validate(_full_utt(), num_units=10, num_pitch=64, num_style=100)
    # A word may end up to one unit frame (1/50 s) after the last unit (aligners see the audio).
    corpus.validate(_with(words=[["w", 0.0, 0.215]]), num_units=10)
    with pytest.raises(BadRecordError):
        corpus.validate(_with(words=[["w", 0.0, 0.215]]), num_units=10, time_tolerance_s=0.0)


def test_validate_all_error_and_skip(caplog):
    good = [_full_utt(), _min_utt()]
    bad = [("a.jsonl:3", _with(id="b1", units=[999])), ("a.jsonl:4", _with(id="b2", lang=""))]
    with pytest.raises(BadRecordError, match=r"a\.jsonl:3: record 'b1'"):
        corpus.validate_all(good + bad, num_units=500)
    with caplog.at_level(logging.WARNING, logger="slm_jax.data.corpus"):
        kept, skipped = corpus.validate_all(bad[:1] + good + bad[1:], num_units=500, on_bad_record="skip")
    assert kept == good and skipped == 2
    assert "skipped 2 bad record(s) of 4" in caplog.text and "'b1'" in caplog.text and "'b2'" in caplog.text
    with pytest.raises(ValueError, match="on_bad_record"):
        corpus.validate_all(good, num_units=500, on_bad_record="ignore")


# --- parallel pairs -----------------------------------------------------------------------
def _en_fr():
    en = Utterance(
        id="en-7",
        lang="en",
        units=[1, 1, 2, 3, 4],
        unit_rate_hz=50.0,
        parallel_id="p7",
        sentences=[(0.0, 0.04, "Hi."), (0.04, 0.1, "Bye.")],
    )
    fr = Utterance(
        id="fr-7",
        lang="fr",
        units=[5, 6, 6, 7],
        unit_rate_hz=50.0,
        parallel_id="p7",
        sentences=[(0.0, 0.02, "Salut."), (0.02, 0.08, "Adieu.")],
    )
    return en, fr


def test_pair_parallel_exact(tmp_path):
    en, fr = _en_fr()
    other = _min_utt("de-1", "de")  # other languages / no parallel_id do not take part
    pairs = corpus.pair_parallel([fr, other, en])
    assert pairs == [
        {
            "id": "p7",
            "a_lang": "en",
            "a_units": [1, 1, 2, 3, 4],
            "a_sentence_start": [0.0, 0.04],
            "a_sentence_end": [0.04, 0.1],
            "b_lang": "fr",
            "b_units": [5, 6, 6, 7],
            "b_sentence_start": [0.0, 0.02],
            "b_sentence_end": [0.02, 0.08],
            "unit_rate_hz": 50.0,
        }
    ]
    corpus.write_paired_tfrecord_shards(str(tmp_path), "pairs", pairs, num_shards=1)
    assert list(corpus.read_paired_tfrecord(str(tmp_path / "pairs-*"))) == pairs
    raw = corpus.paired_to_example(pairs[0]).SerializeToString()
    ex = tf.io.parse_single_example(raw, corpus.PAIRED_TFRECORD_FEATURES)
    assert set(ex) == {
        "id",
        "a_lang",
        "a_units",
        "a_sentence_start",
        "a_sentence_end",
        "b_lang",
        "b_units",
        "b_sentence_start",
        "b_sentence_end",
        "unit_rate_hz",
    }
    assert ex["b_units"].numpy().tolist() == [5, 6, 6, 7]


def test_pair_parallel_errors(caplog):
    en, fr = _en_fr()
    fr2 = Utterance(**{**fr.__dict__, "id": "fr-7b"})
    with pytest.raises(BadRecordError, match=r"'p7': record\(s\) \['en-7'\] \(en\) have no 'fr' partner"):
        corpus.pair_parallel([en])
    with pytest.raises(BadRecordError, match=r"'p7': 2 'fr' records \['fr-7', 'fr-7b'\]"):
        corpus.pair_parallel([en, fr, fr2])
    fr_rate = Utterance(**{**fr.__dict__, "unit_rate_hz": 25.0})
    with pytest.raises(BadRecordError, match=r"'en-7' has unit_rate_hz 50.0 but 'fr-7' has 25.0"):
        corpus.pair_parallel([en, fr_rate])
    fr_one = Utterance(**{**fr.__dict__, "sentences": fr.sentences[:1]})
    with pytest.raises(BadRecordError, match=r"'en-7' has 2 sentence\(s\) but 'fr-7' has 1"):
        corpus.pair_parallel([en, fr_one])
    lonely = Utterance(id="fr-9", lang="fr", units=[1], unit_rate_hz=50.0, parallel_id="p9")
    with caplog.at_level(logging.WARNING, logger="slm_jax.data.corpus"):
        pairs = corpus.pair_parallel([en, fr, lonely], on_bad_record="skip")
    assert [p["id"] for p in pairs] == ["p7"]
    assert "skipped 1 bad record(s) of 2" in caplog.text and "'fr-9'" in caplog.text


# --- importers ----------------------------------------------------------------------------
def test_slamkit_records():
    u = importers.from_slamkit(
        {"file_name": "a/1.flac", "units": "12 13 13 5 5 5 6 6 1 2", "duration": 0.2}, lang="fr", source="s.jsonl:1"
    )
    assert u == Utterance(id="a/1.flac", lang="fr", units=[12, 13, 13, 5, 5, 5, 6, 6, 1, 2], unit_rate_hz=50.0)
    u = importers.from_slamkit(
        {"audio": "y", "units": [3, 9], "duration": [2, 3], "lang": "en"}, unit_rate_hz=25
    )
    assert u == Utterance(id="y", lang="en", units=[3, 3, 9, 9, 9], unit_rate_hz=25.0)
    with pytest.raises(BadRecordError, match=r"s\.jsonl:4: record 'y': unit_rate_hz: no 'unit_rate_hz' key.*"
                                             r"pass --unit_rate_hz"):
        importers.from_slamkit({"audio": "y", "units": [3], "duration": [2]}, source="s.jsonl:4")
    with pytest.raises(BadRecordError, match=r"record 'z': units: 10 frames at 50 Hz cover 0.200 s but duration"):
        importers.from_slamkit({"id": "z", "units": [1] * 10, "duration": 1.0}, unit_rate_hz=50)
    with pytest.raises(BadRecordError, match=r"s\.jsonl:2: no record id"):
        importers.from_slamkit({"units": [1]}, source="s.jsonl:2")


# The issue's records: real encoders emit a frame or so fewer than duration * rate.
ISSUE_RATES = [(12, 0.5, 25.0), (37, 1.5, 25.0), (75, 3.0, 25.0), (49, 1.0, 50.0), (74, 1.5, 50.0)]


@pytest.mark.parametrize("n,duration,rate", ISSUE_RATES)
def test_unit_rate_snaps_to_the_encoder_rate(n, duration, rate):
    counts = importers.collections.Counter()
    units = [k // 2 for k in range(n)]  # frame-level units repeat
    u = importers.from_slamkit({"id": "r", "units": units, "duration": duration}, counts=counts)
    assert u.unit_rate_hz == rate and len(u.units) == n
    assert counts == {f"rate_snapped_to_{rate:g}_hz": 1}


def test_snap_rule_matches_its_plain_transcription():
    """|n - d * R| <= 2 frames for exactly one standard R, else refused (random n, d)."""
    import random

    rng = random.Random(13)
    for _ in range(2000):
        rate = rng.choice([12.5, 25.0, 50.0, 100.0, 33.3, 75.0])
        d = rng.choice([0.05, 0.1, 0.2, 0.32, 0.5, 1.0]) if rng.random() < 0.3 else rng.uniform(0.05, 30.0)
        n = max(1, round(d * rate) + rng.randint(-3, 3))
        near = [r for r in (12.5, 25.0, 50.0, 100.0) if abs(n - d * r) <= 2.0]
        if len(near) == 1:
            assert importers.snap_unit_rate(n, d) == near[0]
        else:
            with pytest.raises(BadRecordError, match="pass --unit_rate_hz"):
                importers.snap_unit_rate(n, d, where="f.jsonl:3: record 'x'")


def test_unit_rate_refusals_name_record_and_flag():
    with pytest.raises(BadRecordError, match=r"f:1: record 'far': unit_rate_hz: 30 units over duration 1 s "
                                             r"is 30 Hz, not within 2 frames.*pass --unit_rate_hz"):
        importers.from_slamkit({"id": "far", "units": [1] * 30, "duration": 1.0}, source="f:1")
    # 3 frames over 0.1 s: 12.5, 25 and 50 Hz (1.25, 2.5, 5 frames) are all within 2 frames
    with pytest.raises(BadRecordError, match=r"record 'short'.*several standard rates \[12.5, 25.0, 50.0\].*"
                                             r"--unit_rate_hz"):
        importers.from_slamkit({"id": "short", "units": [1, 2, 3], "duration": 0.1})
    # the record's own key wins (slm-jax units encode writes it), even far from a standard rate
    counts = importers.collections.Counter()
    u = importers.from_slamkit({"id": "own", "units": [1] * 30, "duration": 1.0, "unit_rate_hz": 30.0},
                               counts=counts)
    assert u.unit_rate_hz == 30.0 and counts == {"rate_from_record": 1}
    with pytest.raises(BadRecordError, match=r"record 'own': unit_rate_hz=30.0 in the record but "
                                             r"--unit_rate_hz=50.0"):
        importers.from_slamkit({"id": "own", "units": [1] * 30, "unit_rate_hz": 30.0}, unit_rate_hz=50.0)
    for bad in (0, -25.0, "25", True):
        with pytest.raises(BadRecordError, match=r"record 'b': unit_rate_hz=.*expected a number of Hz > 0"):
            importers.from_slamkit({"id": "b", "units": [1], "unit_rate_hz": bad})
    for bad in (0, -1.0, "1.0", float("nan")):
        with pytest.raises(BadRecordError, match=r"record 'd': duration=.*expected seconds > 0"):
            importers.from_slamkit({"id": "d", "units": [1], "duration": bad}, unit_rate_hz=25.0)


def test_deduplicated_units_without_run_lengths_are_refused():
    dedup = [k % 7 for k in range(50)]  # 50 Hz HuBERT deduplicated: ~25 per second, no repeats
    with pytest.raises(BadRecordError, match=r"f:2: record 'dd': units: 50 units with no two equal neighbours "
                                             r"look deduplicated.*'durations'.*--unit_rate_hz"):
        importers.from_slamkit({"id": "dd", "units": dedup, "duration": 2.0}, source="f:2")
    # one repeat, fewer than 50 units, or an explicit rate: read as frame-level
    assert importers.from_slamkit({"id": "a", "units": dedup[:49] + [dedup[48]], "duration": 2.0}).unit_rate_hz == 25.0
    assert importers.from_slamkit({"id": "b", "units": dedup[:49], "duration": 1.96}).unit_rate_hz == 25.0
    assert importers.from_slamkit({"id": "c", "units": dedup, "duration": 2.0}, unit_rate_hz=25.0).units == dedup


def test_textlesslib_durations_rebuild_frames_never_shrink():
    """textlesslib's SpeechEncoder(deduplicate=True): `units` + `durations` in frames."""
    import random

    rng = random.Random(7)
    units = [rng.randrange(100)]
    while len(units) < 15:
        u = rng.randrange(100)
        if u != units[-1]:
            units.append(u)
    runs = [1] * 15
    for _ in range(36 - 15):
        runs[rng.randrange(15)] += 1
    assert sum(runs) == 36
    counts = importers.collections.Counter()
    u = importers.from_slamkit({"id": "t", "units": units, "durations": runs}, unit_rate_hz=50.0, counts=counts)
    assert len(u.units) == 36 and u.units == [x for x, r in zip(units, runs) for _ in range(r)]
    assert counts == {"run_lengths_expanded": 1, "rate_from_flag": 1}
    # with the audio length in seconds too, the 36 frames give the rate (36 / 0.74 s -> 50 Hz)
    u = importers.from_slamkit({"id": "t", "units": units, "durations": runs, "duration": 0.74})
    assert u.unit_rate_hz == 50.0 and len(u.units) == 36


TEXTLESS_BAD = {
    "length mismatch": ({"units": [1, 2, 3], "durations": [1, 2]},
                        r"durations has 2 value\(s\); expected a list of 3 run lengths"),
    "zero run": ({"units": [1, 2], "durations": [1, 0]}, r"durations\[1\]=0; expected a positive integer"),
    "float run": ({"units": [1, 2], "durations": [1, 2.5]}, r"durations\[1\]=2.5; expected a positive integer"),
    "string runs": ({"units": [1, 2], "durations": "1 2"}, r"durations has str value\(s\)"),
    "both run lengths": ({"units": [1, 2], "durations": [1, 2], "duration": [1, 2]},
                         r"duration \(a list\) and durations: two sets of run lengths"),
    "units as strings": ({"units": ["1", "2"], "durations": [1, 2]}, r"units\[0\]='1' is not an integer"),
    "empty units": ({"units": [], "durations": []}, r"units are empty"),
}


@pytest.mark.parametrize("case", sorted(TEXTLESS_BAD))
def test_textlesslib_bad_records_are_named(case):
    obj, pattern = TEXTLESS_BAD[case]
    with pytest.raises(BadRecordError, match=r"t\.jsonl:5: record 'x': " + pattern):
        importers.from_slamkit({"id": "x", **obj}, unit_rate_hz=25.0, source="t.jsonl:5")


def test_slamkit_aligned_text_becomes_normalised_words():
    rec = {"file_name": "a.flac", "units": [4, 5, 6], "duration": [10, 10, 5],
           "text": " Ça  coûte 10\u202f000", "aligned_text": [[" Ça", 0.0, 0.3], [" cou\u0302te", 0.3, 0.6],
                                                            [" 10\u202f000", 0.6, 0.6]]}
    u = importers.from_slamkit(rec, unit_rate_hz=25.0)
    assert u.words == [("Ça", 0.0, 0.3), ("coûte", 0.3, 0.6), ("10 000", 0.6, 0.6)]
    assert u.text == "Ça coûte 10 000"
    for bad, pattern in (([["a", 0.0]], r"aligned_text\[0\]=\['a', 0.0\]; expected \[word, start_s, end_s\]"),
                         ([["a", "0", 1.0]], r"aligned_text\[0\]="),
                         ([[" ", 0.0, 0.1]], r"aligned_text\[0\]\[0\]=' ' is empty after text normalisation"),
                         ("the cat", r"aligned_text must be a list")):
        with pytest.raises(BadRecordError, match=r"s:1: record 'a.flac': " + pattern):
            importers.from_slamkit({**rec, "aligned_text": bad}, unit_rate_hz=25.0, source="s:1")


def test_repair_words_rule():
    # 1 s of units at 50 Hz (50 frames); tolerance one frame (0.02 s)
    base = dict(id="w", lang="en", units=list(range(50)), unit_rate_hz=50.0)
    inside = Utterance(**base, words=[("a", 0.0, 0.5), ("b", 0.5, 0.5), ("c", 0.98, 1.015)])
    out, counts = corpus.repair_words(inside)
    assert out == inside and counts == {"zero_length_words": 1, "words_clipped_to_audio": 0}
    past = Utterance(**base, words=[("a", 0.0, 0.5), ("b", 0.6, 1.3), ("c", 1.4, 1.9)])
    out, counts = corpus.repair_words(past)
    assert out.words == [("a", 0.0, 0.5), ("b", 0.6, 1.0), ("c", 1.0, 1.0)]
    assert counts == {"zero_length_words": 1, "words_clipped_to_audio": 2}
    corpus.validate(out, num_units=50)
    before = Utterance(**base, words=[("a", -0.2, 0.1), ("b", 0.1, 0.2)])
    assert corpus.repair_words(before)[0].words == [("a", 0.0, 0.1), ("b", 0.1, 0.2)]
    far = Utterance(**base, words=[("a", 0.0, 0.5), ("b", 0.6, 2.5)])  # 1.5 s past the end: other audio
    assert corpus.repair_words(far)[0] == far
    with pytest.raises(BadRecordError, match=r"words\[1\] \(0.6, 2.5\) lies outside"):
        corpus.validate(far, num_units=50)


def test_import_counts_repairs_and_normalisation(tmp_path, capsys):
    src = tmp_path / "feats.jsonl"
    recs = [
        {"file_name": "a", "units": [k // 3 for k in range(49)], "duration": 1.0,
         "aligned_text": [["the", 0.0, 0.2], ["cat", 0.2, 0.2], ["sat", 0.9, 1.4]], "text": "the  cat sat"},
        {"file_name": "b", "units": [1, 2], "durations": [30, 44], "duration": 1.5, "text": "caf\u0065\u0301",
         "split_sentence": [["caf\u00e9", 0.0, 1.5]], "f0": [1.0, 2.0]},
    ]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    out = str(tmp_path / "o" / "c")
    assert prepare_import.import_main(["--format=slamkit", f"--input={src}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    for line in ("rate_snapped_to_50_hz: 2", "run_lengths_expanded: 1", "zero_length_words: 1",
                 "words_clipped_to_audio: 1", "text_fields_normalised: 2", "ignored_key_split_sentence: 1",
                 "ignored_key_f0: 1"):
        assert f"  {line}" in printed
    a, b = corpus.read_tfrecord(out + "-*")
    assert a.words == [("the", 0.0, 0.2), ("cat", 0.2, 0.2), ("sat", 0.9, 0.98)] and a.text == "the cat sat"
    assert b.units == [1] * 30 + [2] * 44 and b.unit_rate_hz == 50.0 and b.text == "café"


def test_import_bad_input_exit_1_names_file_line_record_field(tmp_path, capsys):
    src = tmp_path / "feats.jsonl"
    src.write_text(json.dumps({"file_name": "ok", "units": [1] * 25, "duration": 1.0}) + "\n\n"
                   + json.dumps({"file_name": "bad", "units": [1, 2], "durations": [3]}) + "\n")
    argv = ["--format=slamkit", f"--input={src}", f"--output={tmp_path / 'o' / 'c'}", "--unit_rate_hz=25"]
    assert prepare_import.import_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{src}:3: record 'bad': durations has 1 value(s); expected a list of 2 run lengths" in err
    assert err.count("\n") == 1  # one line


def test_writer_normalises_text_and_refuses_empty_words(tmp_path):
    utt = Utterance(id="n1", lang="fr", units=[1, 2, 3, 4], unit_rate_hz=25.0, text="c\u0327a  cou\u0302te\u2026",
                    words=[("c\u0327a", 0.0, 0.04), ("ﬁn", 0.04, 0.08)], sentences=[(0.0, 0.16, " ça\u00a0va ")])
    back = corpus.from_example(corpus.to_example(utt).SerializeToString())
    assert back.text == "ça coûte..." and [w[0] for w in back.words] == ["ça", "fin"]
    assert back.sentences[0][2] == "ça va"
    jsonl = tmp_path / "n.jsonl"
    corpus.write_jsonl(str(jsonl), [utt])
    assert list(corpus.read_jsonl(str(jsonl))) == [back]
    with_ids = Utterance(**{**utt.to_dict(), "word_token_ids": [[3], [4]], "word_token_model": "ab" * 32})
    with pytest.raises(BadRecordError, match="record 'n1': words\\[0\\]\\[0\\]='c\u0327a' is not normalised but has "
                                             r"word_token_ids; expected ids computed from normalize_text"):
        corpus.to_example(with_ids)
    empty = Utterance(**{**utt.to_dict(), "words": [["ok", 0.0, 0.04], ["\u3000", 0.04, 0.08]]})
    with pytest.raises(BadRecordError, match=r"record 'n1': words\[1\]\[0\]='\\u3000' is empty after text "
                                             r"normalisation"):
        corpus.write_tfrecord_shards(str(tmp_path), "x", [empty], num_shards=1)


def test_spiritlm_strings():
    s = "[Speech][St5][Pi3][Hu12][Hu7][Pi9][Hu7][St6]"
    u = importers.parse_spiritlm(s, utt_id="sp-1", lang="en")
    assert u == Utterance(
        id="sp-1",
        lang="en",
        units=[12, 7, 7],
        unit_rate_hz=25.0,
        pitch=[3, 9],
        pitch_rate_hz=12.5,
        style=[5, 6],
        style_rate_hz=1.0,
    )
    u = importers.parse_spiritlm(
        "[Hu1][Hu2][Pi4]", utt_id="sp-2", durations=[2, 1], pitch_durations=[3], unit_rate_hz=50.0
    )
    assert (u.units, u.pitch, u.style, u.style_rate_hz) == ([1, 1, 2], [4, 4, 4], None, None)
    with pytest.raises(
        BadRecordError,
        match=r"f\.jsonl:3: record 'sp-3': the string contains \[Text\] at "
        r"character 13; this importer takes speech-only",
    ):
        importers.parse_spiritlm("[Speech][Hu1][Text]the cat", utt_id="sp-3", source="f.jsonl:3")
    with pytest.raises(BadRecordError, match=r"record 'sp-4': unexpected text at character 5"):
        importers.parse_spiritlm("[Hu1]<Un3>", utt_id="sp-4")
    with pytest.raises(BadRecordError, match=r"durations has 1 value\(s\); expected a list of 2"):
        importers.parse_spiritlm("[Hu1][Hu2]", utt_id="sp-5", durations=[1])


def test_import_main_end_to_end(tmp_path, capsys, caplog):
    src = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "units": "[Hu1][Pi2][Hu3]", "lang": "fr"},
        {"id": "b", "units": "[Hu499][Hu500]"},  # unit 500 out of range
        {"id": "a", "units": "[Hu4]"},
    ]  # duplicate id
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = str(tmp_path / "out" / "sp")
    argv = ["--format=spiritlm", f"--input={src}", f"--output={out}", "--num_units=500"]
    assert prepare_import.import_main(argv) == 1
    assert "in.jsonl:2: record 'b': units[1]=500 out of range" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="slm_jax.data.corpus"):
        assert prepare_import.import_main(argv + ["--on_bad_record=skip", "--num_shards=2"]) == 0
    assert "skipped 2 bad record(s) of 3" in caplog.text and "duplicate id (first at" in caplog.text
    assert "wrote 1 record(s) to 2 shard(s)" in capsys.readouterr().out
    assert list(corpus.read_tfrecord(out + "-*")) == [
        Utterance(id="a", lang="fr", units=[1, 3], unit_rate_hz=25.0, pitch=[2], pitch_rate_hz=12.5)
    ]


def test_spiritlm_501_hubert_ids_by_default(tmp_path, capsys):
    src = tmp_path / "sp.jsonl"
    src.write_text(json.dumps({"id": "a", "units": "[Hu0][Pi3][Hu499][Hu500]"}) + "\n")
    out = str(tmp_path / "o" / "sp")
    assert prepare_import.import_main(["--format=spiritlm", f"--input={src}", f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "spiritlm_strings_without_durations: 1" in printed
    assert "spiritlm_strings_without_pitch_durations: 1" in printed
    assert list(corpus.read_tfrecord(out + "-*"))[0].units == [0, 499, 500]
    src.write_text(json.dumps({"id": "b", "units": "[Hu501]"}) + "\n")
    assert prepare_import.import_main(["--format=spiritlm", f"--input={src}", f"--output={out}"]) == 1
    assert "sp.jsonl:1: record 'b': units[0]=501 out of range; expected [0, 501)" in capsys.readouterr().err


def test_spiritlm_encode_units_dict_is_frame_level():
    """SpiritLMTokenizer.encode_units: space-separated frame-level streams, no dedup."""
    counts = importers.collections.Counter()
    u = importers.from_spiritlm({"audio": "x.wav", "hubert": "1 1 2 2 3", "pitch": "15 15 20", "style": "7",
                                 "text": "a\u00a0b"}, counts=counts)
    assert u == Utterance(id="x.wav", lang="en", units=[1, 1, 2, 2, 3], unit_rate_hz=25.0, pitch=[15, 15, 20],
                          pitch_rate_hz=12.5, style=[7], style_rate_hz=1.0, text="a b")
    assert counts == {"rate_spiritlm_default": 1, "text_fields_normalised": 1}
    with pytest.raises(BadRecordError, match=r"record 'x.wav': pitch=\[15\]; expected space-separated"):
        importers.from_spiritlm({"audio": "x.wav", "hubert": "1", "pitch": [15]})


def test_import_slamkit_file(tmp_path):
    src = tmp_path / "feats.jsonl"
    src.write_text(json.dumps({"file_name": "x.flac", "units": [7, 8], "duration": [1, 2]}) + "\n\n")
    summary = importers.import_to_tfrecord(
        "slamkit", str(src), str(tmp_path / "u"), lang="en", unit_rate_hz=25.0
    )
    assert summary["written"] == 1 and summary["skipped"] == 0
    assert list(corpus.read_tfrecord(summary["shards"])) == [
        Utterance(id="x.flac", lang="en", units=[7, 8, 8], unit_rate_hz=25.0)
    ]


def test_mistyped_tfrecord_feature_names_file_and_record(tmp_path):
    ex = corpus.to_example(_min_utt())
    ex.features.feature["units"].CopyFrom(tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])))
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(ex.SerializeToString())
    with pytest.raises(
        BadRecordError,
        match=r"bad\.tfrecord#0: feature 'units' is a float_list; expected a "
        r"int64_list",
    ):
        list(corpus.read_tfrecord(path))


def test_word_token_ids_round_trip_and_validation(tmp_path):
    utt = corpus.Utterance(id="u1", lang="en", units=[1, 2, 3, 4], unit_rate_hz=25.0,
                           words=[("the", 0.0, 0.04), ("cat", 0.08, 0.16)],
                           word_token_ids=[[7], [9, 11]], word_token_model="ab" * 32)
    back = corpus.from_example(corpus.to_example(utt).SerializeToString())
    assert back.word_token_ids == [[7], [9, 11]] and back.word_token_model == "ab" * 32
    assert corpus.Utterance.from_dict(utt.to_dict()) == utt
    corpus.validate(utt, num_units=10, source="f.jsonl")
    bad = corpus.Utterance(**{**utt.to_dict(), "word_token_ids": [[7]]})
    with pytest.raises(corpus.BadRecordError, match=r"f.jsonl: record 'u1': 1 word_token_ids entries for 2 words"):
        corpus.validate(bad, num_units=10, source="f.jsonl")
    no_model = corpus.Utterance(**{**utt.to_dict(), "word_token_model": None})
    with pytest.raises(corpus.BadRecordError, match="without word_token_model"):
        corpus.validate(no_model, num_units=10, source="f.jsonl")
