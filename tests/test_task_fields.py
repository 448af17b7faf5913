"""A task whose preprocessor needs a record field that a record lacks fails naming the task,
the field and the first record, or (asked with `on_missing_field='skip'`) drops and counts
such records (issue 13, kind 1: word interleaving over records without `words` used to
yield records of EOS only, without a word)."""
import functools

import pytest
import seqio
import tensorflow as tf

from slm_jax.data import corpus, inspect_data, registration
from slm_jax.data.preprocessors import common, interleave, patch_ids, task_formats, word_interleave
from slm_jax.data.preprocessors.ctc_targets import add_ctc_targets
from tests.test_interleave import vocab  # noqa: F401 - fixture


def _utt(i, words=True, text=True):
    units = [(3 * f + i) % 10 for f in range(40)]  # 1.6 s at 25 Hz
    return corpus.Utterance(
        id=f"utt{i}", lang="en", units=units, unit_rate_hz=25.0, text="the cat sat" if text else None,
        words=[("the", 0.0, 0.4), ("cat", 0.4, 0.8), ("sat", 0.8, 1.2)] if words else [])


@pytest.fixture()
def files(tmp_path):
    """utt0, utt1 with words; utt2 without words (as imported from a layout without alignments);
    utt3 without text."""
    utts = [_utt(0), _utt(1), _utt(2, words=False), _utt(3, text=False)]
    corpus.write_tfrecord_shards(str(tmp_path), "train", utts, 1)
    return {"train": str(tmp_path / "train-*.tfrecord")}


def _read(task):
    return list(task.get_dataset(None, split="train", shuffle=False, num_epochs=1).as_numpy_iterator())


@pytest.mark.parametrize("batched", [False, True])
def test_word_interleave_over_records_without_words_names_task_field_record(vocab, files, batched):
    fn = word_interleave.word_interleave_batches if batched else word_interleave.word_interleave
    task = registration.register_corpus_task(f"fields_wi_{batched}", files, [functools.partial(fn, vocabulary=vocab)],
                                             vocab, batched=batched)
    assert task.required_record_fields == {
        f: fn.__name__ for f in ("units", "word_text", "word_start", "word_end", "unit_rate_hz")}
    with seqio.map_seed_manager(1), pytest.raises(tf.errors.InvalidArgumentError,
                                                  match=r"fields_wi_.*utt2.*lacks field.*word_text"):
        _read(task)


@pytest.mark.parametrize("batched", [False, True])
def test_skip_drops_and_counts_records_without_words(vocab, files, batched):
    fn = word_interleave.word_interleave_batches if batched else word_interleave.word_interleave
    task = registration.register_corpus_task(f"fields_skip_{batched}", files,
                                             [functools.partial(fn, vocabulary=vocab)], vocab, batched=batched,
                                             on_missing_field="skip")
    with seqio.map_seed_manager(1):
        ids = [ex["id"].decode() for ex in _read(task)]
    assert ids == ["utt0", "utt1", "utt3"]
    report = registration.missing_field_report(task, "train")
    assert report["records"] == 1
    assert report["fields"]["word_text"] == {"records": 1, "first": "utt2", "needed_by": fn.__name__}
    assert set(report["fields"]) == {"word_text", "word_start", "word_end"}
    row = inspect_data.stats(task.name)[task.name]
    assert (row["skipped_records"], row["examples"], row["repaired_words"]) == (1, 3, 0)
    assert "1 lack 'word_text'" in row["skipped_because"]


def test_data_stats_names_the_missing_field_before_reading(vocab, files):
    task = registration.register_corpus_task(
        "fields_stats", files, [functools.partial(word_interleave.word_interleave_batches, vocabulary=vocab)], vocab,
        batched=True)
    with pytest.raises(ValueError, match=r"task 'fields_stats': record 'utt2' lacks field 'word_text'"):
        inspect_data.stats(task.name)


def test_asr_without_text_names_record(vocab, files):
    task = registration.register_corpus_task(
        "fields_asr", files, [functools.partial(task_formats.format_asr, vocabulary=vocab)], vocab)
    assert set(task.required_record_fields) == {"units", "text"}
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"fields_asr.*utt3.*lacks field.*text"):
        _read(task)


def test_ctc_task_over_records_without_text_names_record(vocab, files):
    from slm_jax.data.tokenizers.chars import CharVocabulary
    task = registration.register_corpus_task(
        "fields_ctc", files, [functools.partial(add_ctc_targets, char_vocabulary=CharVocabulary("abcehst ")),
                              functools.partial(interleave.speech_only, vocabulary=vocab, passthrough=("ctc_targets",))],
        vocab, split_long_examples=False)
    assert task.required_record_fields == {"text": "add_ctc_targets", "units": "speech_only"}
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"fields_ctc.*utt3.*lacks field.*text"):
        _read(task)


def test_a_declared_field_left_unparsed_is_refused_at_registration(vocab, files):
    with pytest.raises(ValueError, match=r"fields_unparsed.*word_interleave_batches needs record field 'word_start'"):
        registration.register_corpus_task(
            "fields_unparsed", files, [functools.partial(word_interleave.word_interleave_batches, vocabulary=vocab)],
            vocab, batched=True, features=("id", "units", "unit_rate_hz", "word_text", "word_end"))
    with pytest.raises(ValueError, match="on_missing_field"):
        registration.register_corpus_task("fields_bad_option", files, [], vocab, on_missing_field="drop")


def test_declared_fields_follow_the_arguments():
    rf = common.required_fields
    assert rf(functools.partial(word_interleave.word_interleave, unit_rate_hz=25.0)) == (
        "units", "word_text", "word_start", "word_end")
    assert rf(functools.partial(patch_ids.add_patch_ids, strategy="aligned")) == (
        "units", "unit_rate_hz", "word_start", "word_end")
    assert rf(patch_ids.add_patch_ids) == ("units",)
    assert rf(functools.partial(task_formats.format_continuation, modality="text")) == ("text",)
    assert rf(functools.partial(interleave.text_only_batches, text_key="sentence")) == ("sentence",)
    assert rf(functools.partial(interleave.crosslingual_interleave_batches, lang_tags=True))[-2:] == ("a_lang", "b_lang")
    assert rf(functools.partial(interleave.monolingual_side, side="b")) == ("b_units",)
    assert rf(lambda ds: ds) is None


def test_expressive_without_pitch_names_record(vocab, tmp_path):
    utts = [corpus.Utterance(id="e0", lang="en", units=[1, 2, 3], unit_rate_hz=25.0, pitch=[1, 2], pitch_rate_hz=12.5,
                             style=[0], style_rate_hz=1.0),
            corpus.Utterance(id="e1", lang="en", units=[1, 2, 3], unit_rate_hz=25.0)]
    corpus.write_tfrecord_shards(str(tmp_path), "train", utts, 1)
    task = registration.register_corpus_task(
        "fields_expressive", {"train": str(tmp_path / "train-*.tfrecord")},
        [functools.partial(interleave.expressive_merge, vocabulary=vocab)], vocab)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"fields_expressive.*e1.*lacks field.*pitch"):
        _read(task)


def test_legacy_unit_task_over_records_without_units_names_record(tmp_path):
    def example(rid, units):
        return tf.train.Example(features=tf.train.Features(feature={
            "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[rid])),
            "units": tf.train.Feature(int64_list=tf.train.Int64List(value=units))})).SerializeToString()
    with tf.io.TFRecordWriter(str(tmp_path / "u.tfrecord")) as w:
        w.write(example(b"a", [1, 2, 2]))
        w.write(example(b"b", []))
    task = registration.register_unit_task("fields_units", {"train": str(tmp_path / "u.tfrecord")}, num_units=5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"fields_units.*\[b\].*lacks field.*units"):
        _read(task)


def test_cli_prints_a_missing_field_in_one_line(vocab, files, capsys):
    """`slm-jax data show` (and `train`, which reads the same way) over records lacking a needed
    field: one line naming the task, record and field, exit code 2, no traceback."""
    from slm_jax import cli

    registration.register_corpus_task("fields_cli", files, [functools.partial(word_interleave.word_interleave,
                                                                               vocabulary=vocab)], vocab)
    assert cli.main(["data", "show", "fields_cli"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("slm-jax data: MissingFieldError:")
    assert "fields_cli" in err[0] and "utt2" in err[0] and "word_text" in err[0] and "Traceback" not in err[0]


def test_repaired_words_are_counted_only_for_tasks_that_read_word_times(vocab, tmp_path):
    """A 20 ms word (0.41-0.43 s at 25 Hz covers no frame start): `data stats` counts it as
    repaired for a word-interleaving task and says nothing about words for a speech-only task
    over the same records (which never read them)."""
    utt = corpus.Utterance(id="short", lang="en", units=[(5 * f) % 10 for f in range(25)], unit_rate_hz=25.0,
                           words=[("a", 0.0, 0.4), ("b", 0.41, 0.43), ("c", 0.5, 0.9)])
    corpus.write_tfrecord_shards(str(tmp_path), "train", [utt], 1)
    files = {"train": str(tmp_path / "train-*.tfrecord")}
    words = registration.register_corpus_task(
        "repairs_words", files, [functools.partial(word_interleave.word_interleave_batches, vocabulary=vocab)], vocab,
        batched=True)
    speech = registration.register_corpus_task(
        "repairs_speech", files, [functools.partial(interleave.speech_only_batches, vocabulary=vocab)], vocab,
        batched=True)
    assert inspect_data.stats(words.name)[words.name]["repaired_words"] == 1
    assert "repaired_words" not in inspect_data.stats(speech.name)[speech.name]
