"""Peers' layouts, replayed from small files written by hand to their PUBLISHED schemas, through
`slm-jax prepare import` (CLI) and the library -> a registered corpus task -> a packed batch,
checked field by field (issue 13 kinds 1, 2 and 6).

Layouts (sources, read for the schema only):
* slamkit `extract_features` JSONL: `{"units": [...], "duration": [run lengths], "file_name": ...}`
  (slp-rl/slamkit slamkit/tokeniser/interleaving_tokeniser.py `audio_represent`, cli/extract_features.py),
  with the interleaving metadata merged in: `aligned_text` [[word, start_s, end_s], ...] and `text`
  (slamkit/utils/data_prep.py `parse_transcriptions`, cli/prepare_tokens.py). Words carry
  Whisper's leading space (slamkit joins them with '').
* textlesslib `SpeechEncoder(deduplicate=True)`: `units` + `durations` in frames
  (facebookresearch/textlesslib textless/data/speech_encoder.py), plus the clip's length in seconds;
  and its dump script's text files OUT.units / OUT.durations (tools/distributed_transcribe/transcribe.py).
* SpiritLM expressive strings (facebookresearch/spiritlm spiritlm/speech_tokenizer/spiritlm_tokenizer.py
  `units_to_string`: HuBERT at 24.99 Hz, pitch 12.5 Hz, style 1 Hz, HuBERT and pitch deduplicated).
"""
import json
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf

from slm_jax import contract
from slm_jax.cli import main as cli_main
from slm_jax.data import corpus
from slm_jax.data.corpus import BadRecordError, importers
from slm_jax.data.feature_converter import SLMFeatureConverter
from slm_jax.data.preprocessors import interleave as il
from slm_jax.data.preprocessors import word_interleave as wi
from slm_jax.data.registration import register_corpus_task
from slm_jax.data.tokenizers.spm import train_sentencepiece
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

WORDS = "the cat sat on a mat and ça coûte dix euros".split()


# --- SpiritLM's rule, transcribed in plain Python (the reference) -----------------------------
def spiritlm_string(hubert, pitch=(), style=(), hubert_rate=24.99, pitch_rate=12.5, style_rate=1):
    """SpiritLM `units_to_string`: (token, i / rate) per kept frame i (HuBERT and pitch keep the
    first frame of each run, style keeps all), concatenated style, pitch, HuBERT, then sorted
    by time with Python's stable sort."""
    timed = []
    for values, tag, rate, dedup in ((style, "St", style_rate, False), (pitch, "Pi", pitch_rate, True),
                                     (hubert, "Hu", hubert_rate, True)):
        prev = None
        for i, v in enumerate(values):
            if not dedup or v != prev:
                timed.append((f"[{tag}{v}]", i / rate))
            prev = v
    return "".join(tok for tok, _ in sorted(timed, key=lambda x: x[1]))


def _runs(values):
    """(deduplicated values, run lengths) of a list."""
    out, lengths = [], []
    for v in values:
        if out and out[-1] == v:
            lengths[-1] += 1
        else:
            out.append(v)
            lengths.append(1)
    return out, lengths


def _random_stream(rng, n, num, mean_run):
    out = []
    while len(out) < n:
        out += [rng.randrange(num)] * (1 + int(rng.expovariate(1.0 / mean_run)))
    return out[:n]


@pytest.fixture(scope="module")
def spirit_vocab():
    return SpeechTextVocabulary(None, num_units=501, num_pitch=64, num_style=100)


def _merge(vocab, records, **rates):
    """`expressive_merge` (batched: several records per draw) over in-memory frame-level records."""
    ds = tf.data.Dataset.from_generator(
        lambda: iter(records),
        output_signature={"id": tf.TensorSpec([], tf.string),
                          **{k: tf.TensorSpec([None], tf.int64) for k in ("units", "pitch", "style")}})
    merged = il.expressive_merge(ds, vocab, **rates, batch_records=3)
    return [ex["targets"].tolist() for ex in merged.as_numpy_iterator()]


def test_issue_case_100_s_spiritlm_order(spirit_vocab):
    """2500 HuBERT frames + 1251 pitch frames: SpiritLM (24.99 Hz) has [Hu0][Pi0][Hu1] from
    token 3748, the true 25 Hz rate orders [Hu0][Hu1][Pi0]; the default merge is SpiritLM's."""
    hubert, pitch = [k % 2 for k in range(2500)], [j % 2 for j in range(1251)]
    ref = spiritlm_string(hubert, pitch)
    at25 = spiritlm_string(hubert, pitch, hubert_rate=25.0)
    tags = lambda s: s.replace("][", "] [").split()  # noqa: E731
    assert tags(ref)[3748:3751] == ["[Hu0]", "[Pi0]", "[Hu1]"]
    assert tags(at25)[3748:3751] == ["[Hu0]", "[Hu1]", "[Pi0]"]
    assert next(i for i, (a, b) in enumerate(zip(tags(ref), tags(at25))) if a != b) == 3749
    rec = {"id": b"x", "units": hubert, "pitch": pitch, "style": []}
    (default,) = _merge(spirit_vocab, [rec])
    (true_rate,) = _merge(spirit_vocab, [rec], hubert_rate=25.0)
    eos, speech = spirit_vocab.eos_id, spirit_vocab.speech_marker_id
    assert default == [speech] + spirit_vocab.encode(ref) + [eos]
    assert true_rate == [speech] + spirit_vocab.encode(at25) + [eos]
    # the per-record function is the same rule
    one = il.expressive_tokens(tf.constant(hubert), tf.constant(pitch), tf.constant([], tf.int64), spirit_vocab)
    assert one.numpy().tolist() == spirit_vocab.encode(ref)


def test_expressive_merge_equals_spiritlm_on_random_streams(spirit_vocab):
    """Random streams of random lengths (up to 300 s), several records per batch."""
    rng = random.Random(13)
    records, refs = [], []
    for k in range(7):
        seconds = rng.choice([0.3, 1.0, 99.9, 100.0, 100.1, 250.0]) if k < 4 else rng.uniform(0.1, 300.0)
        n_hu = max(1, int(seconds * 25) - rng.randint(0, 1))
        n_pi = max(0, int(seconds * 12.5) + rng.randint(-1, 1))
        n_st = int(np.ceil(seconds)) if k != 2 else 0
        hubert = _random_stream(rng, n_hu, 501, 1.5)
        pitch = _random_stream(rng, n_pi, 64, 2.0)
        style = _random_stream(rng, n_st, 100, 3.0)
        records.append({"id": f"r{k}".encode(), "units": hubert, "pitch": pitch, "style": style})
        refs.append(spiritlm_string(hubert, pitch, style))
    got = _merge(spirit_vocab, records)
    want = [[spirit_vocab.speech_marker_id] + spirit_vocab.encode(r) + [spirit_vocab.eos_id] for r in refs]
    assert got == want


# --- hand-written peer files -------------------------------------------------------------------
def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


def _slamkit_records(rng, with_alignments):
    """slamkit features at 25 Hz (mHuBERT-25Hz, 500 units): dedup units + run lengths; optionally the
    interleaving metadata (aligned_text with Whisper's leading spaces, text = ''.join(words))."""
    records = []
    for k in range(3):
        n_words = 4 + k
        frames_per_word = [rng.randint(3, 8) for _ in range(n_words)]
        frames = _random_stream(rng, sum(frames_per_word) + 1, 500, 2.0)  # a trailing frame of silence
        units, runs = _runs(frames)
        rec = {"units": units, "duration": runs, "file_name": f"/data/ll/{k}.flac"}
        if with_alignments:
            words, t = [], 0
            for i in range(n_words):
                words.append([" " + WORDS[(k + i) % len(WORDS)], t / 25.0, (t + frames_per_word[i]) / 25.0])
                t += frames_per_word[i]
            rec["aligned_text"] = words
            rec["text"] = "".join(w[0] for w in words)
        records.append((rec, frames))
    return records


def _task_rows(name, pattern, preprocessor, vocab, length):
    task = register_corpus_task(name, {"train": pattern}, [preprocessor], vocab, batched=True,
                                shuffle_buffer_size=None)
    ds = task.get_dataset({"targets": length}, split="train", shuffle=False, num_epochs=1)
    examples = [{k: v for k, v in ex.items()} for ex in ds.as_numpy_iterator()]
    packed = SLMFeatureConverter(pack=True, vocabulary=vocab)(task.get_dataset({"targets": length}, split="train", shuffle=False,
                                                              num_epochs=1), {"targets": length})
    seqio.TaskRegistry.remove(name)
    return examples, [{k: np.asarray(v) for k, v in row.items()} for row in packed.as_numpy_iterator()]


def _check_packed(rows, examples, vocab, length):
    """Field by field: the packed rows hold the examples' targets in order, one segment each, with
    positions from 0, loss on every real token, modality as the vocabulary says, inputs shifted."""
    flat = [t for ex in examples for t in ex["targets"].tolist()]
    got, seg_of = [], []
    for row in rows:
        tok, seg, pos = row["decoder_target_tokens"], row["decoder_segment_ids"], row["decoder_positions"]
        assert tok.shape == (length,)
        real = seg > 0
        np.testing.assert_array_equal(tok[~real], 0)
        np.testing.assert_array_equal(row["decoder_loss_weights"], real.astype(np.int32))
        np.testing.assert_array_equal(row[contract.DECODER_MODALITY][real], vocab.modality_ids(tok[real]))
        for s in np.unique(seg[real]):
            where = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(pos[where], np.arange(where.size))
            # inputs are targets shifted right inside a segment (the first input is the BOS convention)
            np.testing.assert_array_equal(row["decoder_input_tokens"][where[1:]], tok[where[:-1]])
            seg_of.append(tok[where].tolist())
        got += tok[real].tolist()
    assert got == flat and seg_of == [ex["targets"].tolist() for ex in examples]


@pytest.fixture(scope="module")
def text_vocab(tmp_path_factory):
    texts = [" ".join(WORDS)] * 20
    path = train_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "w"), len(set(WORDS)) + 3,
                              model_type="word")
    return SpeechTextVocabulary(path, num_units=500)


def test_slamkit_features_without_alignments_to_speech_only_batch(tmp_path, text_vocab, capsys):
    rng = random.Random(1)
    recs = _slamkit_records(rng, with_alignments=False)
    src = _write_jsonl(tmp_path / "features.jsonl", [r for r, _ in recs])
    out = str(tmp_path / "corpus" / "sk")
    assert cli_main(["prepare", "import", "--format=slamkit", f"--input={src}", f"--output={out}",
                     "--unit_rate_hz=25"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 record(s)" in printed and "  run_lengths_expanded: 3" in printed
    assert "  rate_from_flag: 3" in printed
    utts = list(corpus.read_tfrecord(out + "-*"))
    for utt, (rec, frames) in zip(utts, recs):
        assert (utt.id, utt.lang, utt.units, utt.unit_rate_hz) == (rec["file_name"], "en", frames, 25.0)
        assert utt.words == [] and utt.text is None
    examples, rows = _task_rows("real_sk_speech", out + "-*", il.speech_only_batches, text_vocab, 64)
    for ex, (rec, _) in zip(examples, recs):
        body = [text_vocab.unit_offset + u for u in rec["units"]]  # slamkit's dedup units, as trained
        assert ex["targets"].tolist() == [text_vocab.speech_marker_id] + body + [text_vocab.eos_id]
        assert ex["loss_mask"].tolist() == [1] * len(ex["targets"])
    _check_packed(rows, examples, text_vocab, 64)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_slamkit_interleaving_data_to_word_interleaved_batch(tmp_path, text_vocab, ratio):
    """All words text (speech_ratio 0) or all words speech (speech_ratio 1): both deterministic."""
    rng = random.Random(2)
    recs = _slamkit_records(rng, with_alignments=True)
    src = _write_jsonl(tmp_path / "interleave.jsonl", [r for r, _ in recs])
    summary = importers.import_to_tfrecord("slamkit", src, str(tmp_path / "c" / "il"), unit_rate_hz=25.0)
    assert summary["written"] == 3
    assert summary["report"]["text_fields_normalised"] == sum(len(r["aligned_text"]) + 1 for r, _ in recs)
    utts = list(corpus.read_tfrecord(summary["shards"]))
    for utt, (rec, frames) in zip(utts, recs):
        assert utt.units == frames and utt.unit_rate_hz == 25.0
        assert utt.words == [(w.strip(), pytest.approx(s), pytest.approx(e)) for w, s, e in rec["aligned_text"]]
        assert utt.text == " ".join(w.strip() for w, _, _ in rec["aligned_text"])
    pre = lambda ds, output_features=None: wi.word_interleave_batches(  # noqa: E731
        ds, policy="random", speech_ratio=ratio, output_features=output_features)
    examples, rows = _task_rows(f"real_sk_words_{ratio}", summary["shards"][0], pre, text_vocab, 48)
    for ex, utt in zip(examples, utts):
        if ratio == 0.0:
            want = [text_vocab.text_marker_id] + text_vocab.encode_text(utt.text)
        else:  # the frames of the words' span [first start, last end), deduplicated
            end = int(round(utt.words[-1][2] * 25))
            want = [text_vocab.speech_marker_id] + [text_vocab.unit_offset + u for u in _runs(utt.units[:end])[0]]
        assert ex["targets"].tolist() == want + [text_vocab.eos_id]
    _check_packed(rows, examples, text_vocab, 48)


def test_textlesslib_units_and_durations_to_packed_batch(tmp_path, text_vocab, capsys):
    """HuBERT 50 Hz, deduplicated with `durations`; the clip length in seconds gives the rate
    (a frame short of duration * 50, as encoders emit)."""
    rng = random.Random(3)
    records, frames_of = [], []
    for k in range(3):
        n = rng.randint(30, 90)
        frames = _random_stream(rng, n, 100, 2.5)
        units, durations = _runs(frames)
        records.append({"audio": f"clips/{k}.wav", "units": units, "durations": durations,
                        "duration": (n + 1) / 50.0})
        frames_of.append(frames)
    src = _write_jsonl(tmp_path / "textless.jsonl", records)
    out = str(tmp_path / "c" / "tl")
    assert cli_main(["prepare", "import", "--format=slamkit", f"--input={src}", f"--output={out}",
                     "--num_units=100"]) == 0
    printed = capsys.readouterr().out
    assert "  rate_snapped_to_50_hz: 3" in printed and "  run_lengths_expanded: 3" in printed
    utts = list(corpus.read_tfrecord(out + "-*"))
    assert [u.units for u in utts] == frames_of  # never shrunk: one entry per frame
    assert [u.unit_rate_hz for u in utts] == [50.0] * 3 and [u.id for u in utts] == [r["audio"] for r in records]
    examples, rows = _task_rows("real_textless", out + "-*", il.speech_only_batches, text_vocab, 40)
    for ex, rec in zip(examples, records):
        assert ex["targets"].tolist() == ([text_vocab.speech_marker_id]
                                          + [text_vocab.unit_offset + u for u in rec["units"]] + [text_vocab.eos_id])
    _check_packed(rows, examples, text_vocab, 40)


def test_spiritlm_strings_with_run_lengths_round_trip_through_the_task(tmp_path, spirit_vocab):
    """SpiritLM strings built at 24.99 Hz from frame-level streams, imported with their run
    lengths, give back SpiritLM's ids through an expressive task and the packer."""
    rng = random.Random(4)
    records, strings = [], []
    for k in range(3):
        seconds = rng.uniform(2.0, 120.0) if k else 100.3
        hubert = _random_stream(rng, int(seconds * 25) - 1, 501, 1.5)
        hubert[0] = 500  # [Hu500] is a SpiritLM id
        pitch = _random_stream(rng, int(seconds * 12.5), 64, 2.0)
        style = _random_stream(rng, int(np.ceil(seconds)), 100, 3.0)
        s = spiritlm_string(hubert, pitch, style)
        records.append({"id": f"sp{k}", "units": "[Speech]" + s, "durations": _runs(hubert)[1],
                        "pitch_durations": _runs(pitch)[1]})
        strings.append(s)
    src = _write_jsonl(tmp_path / "spirit.jsonl", records)
    summary = importers.import_to_tfrecord("spiritlm", src, str(tmp_path / "c" / "sp"), num_pitch=64,
                                           num_style=100)
    assert summary["report"] == {"durations_expanded": 3, "pitch_durations_expanded": 3,
                                 "rate_spiritlm_default": 3}
    utts = list(corpus.read_tfrecord(summary["shards"]))
    assert [(u.unit_rate_hz, u.pitch_rate_hz, u.style_rate_hz) for u in utts] == [(25.0, 12.5, 1.0)] * 3
    pre = lambda ds, output_features=None: il.expressive_merge_batches(  # noqa: E731
        ds, output_features=output_features)
    length = max(len(spirit_vocab.encode(s)) for s in strings) + 2
    examples, rows = _task_rows("real_spirit", summary["shards"][0], pre, spirit_vocab, length)
    for ex, s in zip(examples, strings):
        assert ex["targets"].tolist() == [spirit_vocab.speech_marker_id] + spirit_vocab.encode(s) + [spirit_vocab.eos_id]
    _check_packed(rows, examples, spirit_vocab, length)


def test_cli_bad_peer_record_exit_1_one_line(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "bad.jsonl", [
        {"audio": "ok.wav", "units": [1, 2], "durations": [24, 25], "duration": 1.0},
        {"audio": "short.wav", "units": [1, 2, 3], "duration": 0.1},
    ])
    assert cli_main(["prepare", "import", "--format=slamkit", f"--input={src}",
                     f"--output={tmp_path / 'o' / 'x'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{src}:2: record 'short.wav': unit_rate_hz: 3 units over duration 0.1 s" in err
    assert "pass --unit_rate_hz" in err


def _transcribe_files(tmp_path, rng, names=True, durations=True):
    """textlesslib tools/distributed_transcribe/transcribe.py output: OUT.units (+ OUT.durations),
    one utterance per line, `name<TAB>` with --preserve_name, values joined by ' '."""
    units_lines, dur_lines, frames_of = [], [], []
    for k in range(3):
        frames = _random_stream(rng, rng.randint(20, 60), 100, 2.5)
        units, runs = _runs(frames) if durations else (frames, None)
        prefix = f"/audio/utt{k}.flac\t" if names else ""
        units_lines.append(prefix + " ".join(map(str, units)))
        if durations:
            dur_lines.append(prefix + " ".join(map(str, runs)))
        frames_of.append(frames)
    (tmp_path / "out.units").write_text("\n".join(units_lines) + "\n")
    if durations:
        (tmp_path / "out.durations").write_text("\n".join(dur_lines) + "\n")
    return str(tmp_path / "out.units"), frames_of


def test_textlesslib_transcribe_files_to_packed_batch(tmp_path, text_vocab, capsys):
    units_path, frames_of = _transcribe_files(tmp_path, random.Random(5))
    out = str(tmp_path / "c" / "tt")
    assert cli_main(["prepare", "import", "--format=textlesslib", f"--input={units_path}", f"--output={out}",
                     "--unit_rate_hz=50"]) == 0
    printed = capsys.readouterr().out
    assert "  run_lengths_expanded: 3" in printed and "ids_from_line_numbers" not in printed
    utts = list(corpus.read_tfrecord(out + "-*"))
    assert [u.id for u in utts] == [f"/audio/utt{k}.flac" for k in range(3)]
    assert [u.units for u in utts] == frames_of and {u.unit_rate_hz for u in utts} == {50.0}
    examples, rows = _task_rows("real_transcribe", out + "-*", il.speech_only_batches, text_vocab, 32)
    for ex, frames in zip(examples, frames_of):
        assert ex["targets"].tolist() == ([text_vocab.speech_marker_id]
                                          + [text_vocab.unit_offset + u for u in _runs(frames)[0]] + [text_vocab.eos_id])
    _check_packed(rows, examples, text_vocab, 32)


def test_textlesslib_transcribe_files_neighbours(tmp_path, capsys):
    # no names, frame-level units, no durations file: ids from line numbers
    units_path, _ = _transcribe_files(tmp_path, random.Random(6), names=False, durations=False)
    summary = importers.import_to_tfrecord("textlesslib", units_path, str(tmp_path / "c" / "a"), unit_rate_hz=50.0)
    assert summary["report"]["ids_from_line_numbers"] == 3
    assert [u.id for u in corpus.read_tfrecord(summary["shards"])] == ["out:1", "out:2", "out:3"]
    # --deduplicate without --durations: 50+ units with no equal neighbours are refused
    (tmp_path / "d.units").write_text("u1\t" + " ".join(str(k % 7) for k in range(60)) + "\n")
    with pytest.raises(BadRecordError, match=r"d\.units:1: record 'u1': units: 60 units with no two equal "
                                             r"neighbours look deduplicated"):
        importers.import_to_tfrecord("textlesslib", str(tmp_path / "d.units"), str(tmp_path / "c" / "d"),
                                     unit_rate_hz=50.0)
    # a durations file out of step: line count, names, values
    (tmp_path / "e.units").write_text("a\t1 2\nb\t3\n")
    for durations, pattern in (("a\t1 2\n", r"e\.units has 2 utterance line\(s\) but .*e\.durations has 1"),
                               ("a\t1 2\nc\t4\n", r"e\.units:2: record 'b': .*e\.durations:2 is named 'c'"),
                               ("a\t1 x\nb\t4\n", r"e\.durations:1: record 'a': durations '1 x' are not"),
                               ("a\t1 2 3\nb\t4\n", (r"e\.units:1: record 'a': durations has 3 value\(s\); "
                                                      r"expected a list of 2"))):
        (tmp_path / "e.durations").write_text(durations)
        with pytest.raises(BadRecordError, match=pattern):
            importers.import_to_tfrecord("textlesslib", str(tmp_path / "e.units"), str(tmp_path / "c" / "e"),
                                         unit_rate_hz=50.0)
    # no rate: textlesslib files carry no seconds
    (tmp_path / "e.durations").write_text("a\t1 2\nb\t4\n")
    assert cli_main(["prepare", "import", "--format=textlesslib", f"--input={tmp_path / 'e.units'}",
                     f"--output={tmp_path / 'c' / 'f'}"]) == 1
    assert "e.units:1: record 'a': unit_rate_hz: no 'unit_rate_hz' key and no 'duration'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"expected a textlesslib '.units' file"):
        importers.import_to_tfrecord("textlesslib", str(tmp_path / "e.durations"), str(tmp_path / "c" / "g"),
                                     unit_rate_hz=50.0)
