"""SpeechTextVocabulary: SpiritLM id layout, string round trips (python and TF), modality ids,
range checks, identity, and the SentencePiece trainer."""

import os
import pickle
import random

import pytest
import tensorflow as tf

from slm_jax.cli.prepare_spm import spm_main
from slm_jax.data.tokenizers.spm import train_sentencepiece
from slm_jax.data.tokenizers.token_space import (
    MODALITY_MARKER,
    MODALITY_PAD,
    MODALITY_SPEECH,
    MODALITY_TEXT,
    SpeechTextVocabulary,
)

WORDS = (
    "the cat sat on a mat dog ran to big red house and it was small blue green tree bird fish "
    "water jump quick lazy over under yellow happy sad river boat light night sun moon star sky "
    "cloud rain snow wind"
).split()


def tiny_sentences(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def make_tiny_spm(directory) -> str:
    """A 60-piece unigram model (0 PAD, 1 EOS, 2 UNK), trained in well under a second."""
    return train_sentencepiece(tiny_sentences(), os.path.join(str(directory), "tiny"), vocab_size=60)


def small_vocab(spm_path) -> SpeechTextVocabulary:
    return SpeechTextVocabulary(spm_path, num_units=10, num_pitch=4, num_style=3, langs=("en", "fr"))


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    return make_tiny_spm(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def vocab(spm_path):
    return small_vocab(spm_path)


# --- layout ---------------------------------------------------------------------------
def test_spiritlm_layout_ids():
    v = SpeechTextVocabulary.spiritlm()  # 32000 placeholder text ids: the id arithmetic of the real model
    assert (v.text_vocab_size, v.text_marker_id, v.speech_marker_id) == (32000, 32000, 32001)
    assert (v.unit_offset, v.num_units, v.pitch_offset, v.num_pitch, v.style_offset, v.num_style) == (
        32002,
        501,
        32503,
        64,
        32567,
        100,
    )
    assert v.vocab_size == 32667 and v.langs == ()
    assert v.units_to_ids([0, 500]).tolist() == [32002, 32502]
    assert v.pitch_to_ids([0, 63]).tolist() == [32503, 32566]
    assert v.style_to_ids([0, 99]).tolist() == [32567, 32666]
    s = "[Text][Speech][Hu0][Hu500][Pi0][Pi63][St0][St99]"
    ids = [32000, 32001, 32002, 32502, 32503, 32566, 32567, 32666]
    assert v.encode(s) == ids
    assert v.encode_tf(tf.constant(s)).numpy().tolist() == ids
    assert v.decode(ids) == s
    assert v.decode_tf(tf.constant(ids)).numpy().decode() == s


def test_spiritlm_rejects_a_model_without_32000_pieces(spm_path):
    with pytest.raises(ValueError, match=r"has 60 pieces.*exactly 32000"):
        SpeechTextVocabulary.spiritlm(spm_path)


def test_small_layout_with_spm(vocab):
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.bos_id) == (0, 1, 2, None)
    assert (vocab.text_vocab_size, vocab.text_marker_id, vocab.speech_marker_id) == (60, 60, 61)
    assert (vocab.unit_offset, vocab.pitch_offset, vocab.style_offset, vocab.lang_offset) == (62, 72, 76, 79)
    assert vocab.vocab_size == 81
    assert (vocab.lang_tag_id("en"), vocab.lang_tag_id("FR")) == (79, 80)
    assert vocab.lang_tags() == ["[EN]", "[FR]"]
    assert vocab.lang_tag_id_tf(tf.constant("fr")).numpy() == 80
    with pytest.raises(ValueError, match=r"unknown language 'de'.*\['en', 'fr'\]"):
        vocab.lang_tag_id("de")
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown language"):
        vocab.lang_tag_id_tf(tf.constant("de"))


def test_unit_only_layout_and_text_errors():
    v = SpeechTextVocabulary(num_units=5, extra_ids=2)
    assert (v.pad_id, v.eos_id, v.unk_id, v.text_marker_id, v.speech_marker_id, v.unit_offset) == (
        0,
        1,
        2,
        3,
        4,
        5,
    )
    assert (v.vocab_size, v.has_text_model) == (12, False)
    assert v.encode("[Speech][Hu0][Hu4]") == [4, 5, 9]
    with pytest.raises(ValueError, match="text span 'hello'.*no sentencepiece_model"):
        v.encode("[Speech][Hu0]hello")
    with pytest.raises(tf.errors.InvalidArgumentError, match="text spans but no sentencepiece_model"):
        v.encode_tf(tf.constant("[Speech][Hu0]hello"))
    with pytest.raises(ValueError, match="no sentencepiece_model"):
        v.encode_text("hello")


def test_constructor_errors(spm_path):
    with pytest.raises(ValueError, match="num_units must be an int >= 1"):
        SpeechTextVocabulary(num_units=0)
    with pytest.raises(ValueError, match="'EN' is listed twice"):
        SpeechTextVocabulary(langs=("en", "EN"))
    with pytest.raises(ValueError, match="text_vocab_size=100 but sentencepiece_model .* has 60 pieces"):
        SpeechTextVocabulary(spm_path, text_vocab_size=100)
    with pytest.raises(ValueError, match="cannot read sentencepiece_model '/nonexistent.model'"):
        SpeechTextVocabulary("/nonexistent.model")


# --- string round trips ---------------------------------------------------------------------
ROUND_TRIP = [
    "[Speech][Hu3][Hu7][Text]the cat[EN]",
    "[Text]the cat sat on a mat[Speech][Hu0][Hu9][Hu9][Text]and it was small",
    "[FR][Pi2][St1][Hu4]big red house[Pi3]",
    "the dog",
    "",
]


@pytest.mark.parametrize("s", ROUND_TRIP)
def test_round_trip_python_and_tf(vocab, s):
    ids = vocab.encode(s)
    assert vocab.encode_tf(tf.constant(s)).numpy().tolist() == ids
    assert vocab.decode(ids) == s
    assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == s


def test_encode_pins_tags_and_text_spans(vocab):
    the_cat = vocab.encode_text("the cat")
    assert the_cat and all(0 < i < 60 for i in the_cat)
    assert vocab.encode("[Speech][Hu3][Hu7][Text]the cat[EN]") == [61, 65, 69, 60] + the_cat + [79]
    # Python and TF agree on odd input too: unknown bracketed strings are text, spaces normalise.
    for s in ("a [foo] b[Hu1]", "[Text]  the   cat ", "[Hu1] [Hu2]"):
        assert vocab.encode_tf(tf.constant(s)).numpy().tolist() == vocab.encode(s)
    assert vocab.encode("[Hu1] [Hu2]") == [63, 64]


def test_tf_batch_encode_and_decode(vocab):
    strings = ["[Speech][Hu3][Text]the cat", "[Text]the dog"]
    ragged = vocab.encode_tf(tf.constant(strings))
    assert ragged.to_list() == [vocab.encode(s) for s in strings]
    rows = [vocab.encode(strings[0]) + [1, 0], vocab.encode(strings[1]) + [1, 65, 0, 0]]
    width = max(map(len, rows))
    batch = tf.constant([r + [0] * (width - len(r)) for r in rows])
    # Everything after EOS is dropped (seqio), PAD is not rendered.
    assert [x.decode() for x in vocab.decode_tf(batch).numpy()] == strings
    assert vocab.decode(rows[1]) == strings[1]
    tf_encoded = vocab.encode_text_tf(tf.constant(["the cat", "the dog"])).to_list()
    assert tf_encoded == [vocab.encode_text("the cat"), vocab.encode_text("the dog")]


def test_round_trip_without_spm():
    v = SpeechTextVocabulary(num_units=10, num_pitch=2, langs=("en",))
    s = "[Speech][Hu3][Hu7][Pi1][EN][Text]"
    ids = v.encode(s)
    assert ids == [4, 8, 12, 16, 17, 3]
    assert v.encode_tf(tf.constant(s)).numpy().tolist() == ids
    assert v.decode(ids + [1, 4]) == s
    assert v.decode_tf(tf.constant(ids + [0])).numpy().decode() == s
    assert v.decode([4, 2, 5]) == "[Speech]<unk>[Hu0]"
    assert v.decode_tf(tf.constant([4, 2, 5])).numpy().decode() == "[Speech]<unk>[Hu0]"


# --- modality ------------------------------------------------------------------------------
def test_modality_ids(vocab):
    ids = [0, 1, 2, 17, 59, 60, 61, 62, 71, 72, 75, 76, 78, 79, 80]
    want = [MODALITY_PAD, MODALITY_MARKER] + [MODALITY_TEXT] * 3 + [MODALITY_MARKER] * 2
    want += [MODALITY_SPEECH] * 6 + [MODALITY_MARKER] * 2
    assert want == [0, 3, 1, 1, 1, 3, 3, 2, 2, 2, 2, 2, 2, 3, 3]
    assert vocab.modality_ids(ids).tolist() == want
    assert vocab.modality_ids_tf(tf.constant([ids])).numpy().tolist() == [want]
    with pytest.raises(ValueError, match="id 81 is outside the vocabulary"):
        vocab.modality_ids([5, 81])
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        vocab.modality_ids_tf(tf.constant([5, 81]))


# --- range checks ----------------------------------------------------------------------------
def test_range_errors_numpy(vocab):
    assert vocab.units_to_ids([0, 9]).tolist() == [62, 71]
    with pytest.raises(ValueError, match=r"unit 10 is out of range \[0, 10\)"):
        vocab.units_to_ids([1, 10])
    with pytest.raises(ValueError, match=r"pitch -1 is out of range \[0, 4\)"):
        vocab.pitch_to_ids([-1])
    with pytest.raises(ValueError, match=r"style 3 is out of range \[0, 3\)"):
        vocab.style_to_ids([3])
    with pytest.raises(ValueError, match=r"unit 10 is out of range"):
        vocab.encode("[Speech][Hu10]")
    with pytest.raises(ValueError, match="not a unit id"):
        vocab.ids_to_units([62, 72])
    assert vocab.ids_to_units([62, 71]).tolist() == [0, 9]


def test_range_errors_tf_print_offending_values(vocab):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unit out of range \[0, 10\).*\n10, 12"):
        vocab.units_to_ids_tf(tf.constant([1, 10, 12]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"pitch out of range"):
        vocab.pitch_to_ids_tf(tf.constant([4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tag out of range:.*\n.*\[St3\]"):
        vocab.encode_tf(tf.constant("[Hu1][St3]"))
    # Inside a tf.data graph too.
    ds = tf.data.Dataset.from_tensors(tf.constant([3, 11], tf.int64)).map(vocab.units_to_ids_tf)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unit out of range.*11"):
        next(iter(ds))


# --- identity, pickling, checkpointable pipelines ----------------------------------------------
def test_eq_hash_pickle(spm_path, vocab):
    with open(spm_path, "rb") as f:
        from_bytes = small_vocab(f.read())
    assert from_bytes == vocab and hash(from_bytes) == hash(vocab)
    assert SpeechTextVocabulary(spm_path, num_units=10, num_pitch=4, num_style=3, langs=("en",)) != vocab
    assert SpeechTextVocabulary(num_units=10) != SpeechTextVocabulary(num_units=10, extra_ids=1)
    assert SpeechTextVocabulary(num_units=10) == SpeechTextVocabulary(num_units=10)
    vocab.encode_tf(tf.constant("the cat"))  # builds the lazy tokenizers first
    clone = pickle.loads(pickle.dumps(vocab))
    assert clone == vocab and clone.encode("[Hu1]the cat") == vocab.encode("[Hu1]the cat")


def test_pipeline_with_encode_tf_is_checkpointable(vocab, tmp_path):
    strings = ["[Speech][Hu1][Text]the cat", "[Text]the dog", "[Hu2][Hu3]", "[EN]big"]
    ds = tf.data.Dataset.from_tensor_slices(strings).map(vocab.encode_tf)
    it = iter(ds)
    next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "it"))
    expected = next(it).numpy().tolist()
    it2 = iter(ds)
    tf.train.Checkpoint(iterator=it2).restore(path)
    assert next(it2).numpy().tolist() == expected == vocab.encode(strings[1])


def test_newline_ids_fall_back_to_eos(vocab):
    assert vocab.newline_ids() == [vocab.eos_id]  # the tiny model normalises "\n" away
    assert SpeechTextVocabulary(num_units=3).newline_ids() == [1]


# --- SentencePiece trainer ----------------------------------------------------------------------
def test_train_sentencepiece_is_deterministic_and_t5_ordered(tmp_path, spm_path):
    import sentencepiece

    again = train_sentencepiece(tiny_sentences(), str(tmp_path / "again"), vocab_size=60)
    first = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=again)
    pieces = [(sp.IdToPiece(i), sp.GetScore(i)) for i in range(sp.get_piece_size())]
    assert pieces == [(first.IdToPiece(i), first.GetScore(i)) for i in range(first.get_piece_size())]
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id(), sp.get_piece_size()) == (0, 1, 2, -1, 60)


def test_spm_main_text_files(tmp_path, capsys):
    txt = tmp_path / "transcripts.txt"
    txt.write_text("\n".join(tiny_sentences(200, seed=1)) + "\n")
    prefix = str(tmp_path / "out" / "m")
    assert spm_main([f"--text_files={txt}", f"--model_prefix={prefix}", "--vocab_size=50"]) == 0
    assert os.path.exists(prefix + ".model")
    assert SpeechTextVocabulary(prefix + ".model", num_units=4).text_vocab_size == 50
    assert spm_main([f"--text_files={txt}", f"--model_prefix={prefix}", "--vocab_size=5000"]) == 1
    assert "vocab_size=5000" in capsys.readouterr().err
