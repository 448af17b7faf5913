"""The one text normalisation (`slm_jax.text_normalization`, issue 13 kind 6) and each place
text enters: SentencePiece training and encoding (python and TF), CTC characters (python and
TF), WER/CER, the demo's espeak-ng input and story words; plus espeak-ng errors (kind 10)."""
import os
import random
import re
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from slm_jax.cli.prepare import main as prepare_main
from slm_jax.cli.prepare_spm import spm_main
from slm_jax.data.preprocessors.ctc_targets import add_ctc_targets
from slm_jax.data.tokenizers import spm
from slm_jax.data.tokenizers.chars import CharVocabulary
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary, normalize_text_tf
from slm_jax.evaluation.metrics_text import char_error_rate, word_error_rate
from slm_jax.text_normalization import WHITESPACE, is_normalized, normalize_text
from slm_jax_demo import stories, tts

NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731

# The issue's strings: (raw spelling, normalised form).
ISSUE = [
    ("ça coûte 10\u202f000 euros", "ça coûte 10 000 euros"),
    ("Quoi\u202f? Il a dit\u00a0: «\u00a0non\u00a0»\u2026", "Quoi ? Il a dit : « non »..."),
    ("le \ufb01lm et la \ufb02eur", "le film et la fleur"),
    (NFD("un garçon à l'école près de la forêt"), "un garçon à l'école près de la forêt"),
    ("  deux\t\tespaces\u3000et\u2028une ligne  ", "deux espaces et une ligne"),
    ("ＦＵＬＬ ｗｉｄｔｈ １２", "FULL width 12"),
]
# Characters random strings are drawn from: ASCII and accented letters, combining marks,
# compatibility characters, every whitespace character, punctuation, zero-width characters.
POOL = (list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,;:!?'-") + list("éèçàœæÉÇ")
        + ["\u0301", "\u0300", "\u0327", "\u0302", "\u0308"]
        + ["\ufb01", "\ufb02", "\u2026", "\uff21", "\uff10", "\u00bd", "\u2126", "\u212b", "\u1e9b\u0323"]
        + list(WHITESPACE) + ["\u200b", "\ufeff", "\u00ad", "\u2019"])


def random_strings(n, seed, max_len=24):
    rng = random.Random(seed)
    return ["".join(rng.choice(POOL) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


# ----------------------------------------------------------------------------- the rule
def test_whitespace_is_exactly_what_str_split_splits_on():
    assert WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


@pytest.mark.parametrize("raw,expected", ISSUE)
def test_issue_strings(raw, expected):
    assert normalize_text(raw) == expected
    assert normalize_text(NFD(raw)) == expected
    assert is_normalized(expected) and not is_normalized(raw)


def test_rule_is_nfkc_then_whitespace_collapse_and_idempotent():
    for s in random_strings(2000, seed=1):
        out = normalize_text(s)
        assert out == " ".join(unicodedata.normalize("NFKC", s).split())  # the documented rule
        assert normalize_text(out) == out  # idempotent
        assert out == out.strip() and "  " not in out
        assert not any(c.isspace() and c != " " for c in out)
        assert normalize_text(NFD(s)) == out  # NFD and NFC spell the same text


def test_rule_keeps_case_punctuation_and_non_compatibility_letters():
    s = "Œuvre, ÆTHER: l'été! \u200bzero-width \ufeffbom \u0001ctl"
    assert normalize_text(s) == s
    with pytest.raises(TypeError, match="expects str, got bytes"):
        normalize_text(b"abc")


def test_tf_rule_equals_python_rule():
    texts = random_strings(3000, seed=2) + [raw for raw, _ in ISSUE]
    got = [t.decode("utf-8") for t in normalize_text_tf(tf.constant(texts)).numpy()]
    assert got == [normalize_text(t) for t in texts]
    matrix = normalize_text_tf(tf.constant([[ISSUE[0][0], "a\u00a0 b"], ["", "\u2026"]]))
    assert matrix.shape == (2, 2)
    assert matrix.numpy().tolist() == [[ISSUE[0][1].encode(), b"a b"], [b"", b"..."]]


# ----------------------------------------------------------------------------- SentencePiece
FR_WORDS = ("le chat la forêt un garçon à l'école près de coûte euros mille œuf élève "
            "très où ça déjà noël film fleur il a dit non quoi 10 000 2").split()


def fr_sentences(n=400, seed=3):
    rng = random.Random(seed)
    return [" ".join(rng.choice(FR_WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def raw_spelling(s: str, rng: random.Random) -> str:
    """The same text as real transcripts spell it: NFD, U+202F / U+00A0 spaces, ligatures."""
    s = s.replace("fi", "\ufb01").replace("fl", "\ufb02")
    s = "".join(rng.choice([" ", "\u202f", "\u00a0", "  "]) if c == " " else c for c in s)
    return NFD(s) if rng.random() < 0.5 else s


@pytest.fixture(scope="module")
def fr_spm(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm_fr")
    return spm.train_sentencepiece(fr_sentences(), str(d / "fr"), vocab_size=56)


@pytest.fixture(scope="module")
def fr_vocab(fr_spm):
    return SpeechTextVocabulary(fr_spm, num_units=8, langs=("fr",))


def test_spm_uses_the_identity_rule(fr_spm):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(fr_spm, "rb") as f:
        proto.ParseFromString(f.read())
    assert proto.normalizer_spec.name == "identity" and not proto.normalizer_spec.precompiled_charsmap


def model_content(path):
    """(normaliser, pieces with scores and types) of a SentencePiece model: all but the trainer
    spec, which records the input and output paths."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto.normalizer_spec.SerializeToString(), [(p.piece, p.score, p.type) for p in proto.pieces]


def test_spm_trained_on_raw_spellings_equals_spm_trained_on_normalised_text(tmp_path, fr_spm):
    rng = random.Random(4)
    raw = [raw_spelling(s, rng) for s in fr_sentences()]
    assert sum(not is_normalized(s) for s in raw) > 300
    other = spm.train_sentencepiece(raw, str(tmp_path / "raw"), vocab_size=56)
    assert model_content(other) == model_content(fr_spm)


def test_ids_of_normalised_text_round_trip(fr_vocab):
    for s in fr_sentences(200, seed=5) + [ISSUE[0][1], ISSUE[3][1]]:
        assert fr_vocab.sp_processor.DecodeIds(fr_vocab.encode_text(s)) == s
        assert fr_vocab.decode([fr_vocab.text_marker_id] + fr_vocab.encode_text(s)) == "[Text]" + s


def test_no_second_rewrite_inside_sentencepiece(tmp_path):
    """Characters the rule keeps but SentencePiece's default nmt_nfkc would rewrite (a zero-width
    space and a BOM become spaces there) survive the round trip with the identity rule."""
    kept = "mot\u200bjoint \ufeffdébut"
    assert is_normalized(kept)
    path = spm.train_sentencepiece(fr_sentences() + [kept] * 5, str(tmp_path / "zw"), vocab_size=56)
    vocab = SpeechTextVocabulary(path, num_units=4)
    assert vocab.sp_processor.DecodeIds(vocab.encode_text(kept)) == kept
    assert vocab.decode_tf(vocab.encode_text_tf(tf.constant(kept))).numpy().decode() == kept


def test_encode_text_gives_the_same_ids_for_every_spelling(fr_vocab):
    rng = random.Random(6)
    plain = fr_sentences(100, seed=7)
    raw = [raw_spelling(s, rng) for s in plain]
    want = [fr_vocab.encode_text(s) for s in plain]
    assert [fr_vocab.encode_text(s) for s in raw] == want
    assert [fr_vocab.encode_text(s.encode("utf-8")) for s in raw] == want
    tf_ids = fr_vocab.encode_text_tf(tf.constant(raw))  # the TF path of text_only / word_interleave / ASR
    assert tf_ids.to_list() == want
    assert fr_vocab.encode_text_tf(tf.constant(raw[0])).numpy().tolist() == want[0]


def test_tagged_strings_normalise_their_text_spans(fr_vocab):
    plain = "[Text]ça coûte 10 000 euros[Speech][Hu3][Hu7][Text]le film"
    raw = "[Text]" + NFD("ça coûte") + " 10\u202f000 euros[Speech][Hu3][Hu7][Text]\u00a0le \ufb01lm\u2003"
    assert fr_vocab.encode(raw) == fr_vocab.encode(plain)
    assert fr_vocab.encode_tf(tf.constant(raw)).numpy().tolist() == fr_vocab.encode(plain)
    assert fr_vocab.decode(fr_vocab.encode(raw)) == plain
    # a span of Unicode spaces only is dropped in both paths, like an ASCII-space span
    assert fr_vocab.encode("[Speech][Hu1]\u202f\u00a0[Hu2]") == fr_vocab.encode("[Speech][Hu1][Hu2]")
    assert fr_vocab.encode_tf(tf.constant("[Speech][Hu1]\u202f\u00a0[Hu2]")).numpy().tolist() == \
        fr_vocab.encode("[Speech][Hu1][Hu2]")


def test_prepare_spm_text_files_normalise_and_drop_a_bom(tmp_path, capsys, fr_spm):
    rng = random.Random(8)
    (tmp_path / "a.txt").write_text("\ufeff" + "\n".join(raw_spelling(s, rng) for s in fr_sentences()[:200]) + "\n",
                                    encoding="utf-8")
    (tmp_path / "b.txt").write_text("\r\n".join(raw_spelling(s, rng) for s in fr_sentences()[200:]) + "\r\n",
                                    encoding="utf-8")
    assert spm_main([f"--text_files={tmp_path}/*.txt", f"--model_prefix={tmp_path}/cli", "--vocab_size=56"]) == 0
    assert model_content(tmp_path / "cli.model") == model_content(fr_spm)  # as from normalised sentences
    (tmp_path / "bad.bin").write_bytes(b"ok line\n\xff\xfe not utf-8\n")
    assert spm_main([f"--text_files={tmp_path}/bad.bin", f"--model_prefix={tmp_path}/x", "--vocab_size=8"]) == 1
    assert "bad.bin: not UTF-8" in capsys.readouterr().err
    assert spm_main([f"--text_files={tmp_path}/none*.txt", f"--model_prefix={tmp_path}/x", "--vocab_size=8"]) == 1
    assert "matches no file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CTC characters
CTC = CharVocabulary(" '.,!?:;-0123456789abcdefghijklmnopqrstuvwxyzàâçèéêëîïôùûüœ")


def test_ctc_ids_are_the_same_for_nfd_and_nfc():
    for raw, plain in ISSUE[:4]:
        raw, plain = raw.replace("«", "").replace("»", ""), plain.replace("«", "").replace("»", "")
        assert CTC.encode(raw) == CTC.encode(NFD(raw)) == CTC.encode(plain)
        assert CTC.decode(CTC.encode(NFD(raw))) == CTC.normalize(plain) == normalize_text(plain).lower()
    assert CTC.encode("Ça coûte 10\u202f000 euros") == CTC.encode("ça coûte 10 000 euros")
    assert len(CTC.encode(NFD("forêt"))) == 5


def test_ctc_vocabulary_is_built_from_normalised_text_and_refuses_unstable_characters():
    texts = ["ça coûte", "près de la forêt", "le \ufb01lm\u202f!"]
    assert CharVocabulary.from_texts([NFD(t) for t in texts]) == CharVocabulary.from_texts(texts)
    assert "\u0327" not in CharVocabulary.from_texts([NFD(t) for t in texts]).alphabet
    assert "\ufb01" not in CharVocabulary.from_texts(texts).alphabet
    for bad, shown in (("abc\ufb01", "U+FB01 -> 'fi'"), ("ab\u00a0", "U+00A0 -> ''"), ("ab\u2126", "U+2126")):
        with pytest.raises(ValueError, match=re.escape(shown)):
            CharVocabulary(bad)


def test_ctc_targets_tf_match_python_for_every_spelling():
    rng = random.Random(9)
    plain = ["ça coûte 10 000 euros", "près de la forêt", "un œuf, déjà !"] + [
        s.replace("l'", "l'") for s in fr_sentences(20, seed=10)]
    raw = [raw_spelling(s, rng) for s in plain]
    raw = [NFD(s) for s in raw[:3]] + raw[3:]
    ds = tf.data.Dataset.from_tensor_slices({"id": [f"r{i}" for i in range(len(raw))], "text": raw})
    got = [ex["ctc_targets"].tolist() for ex in add_ctc_targets(ds, CTC).as_numpy_iterator()]
    assert got == [CTC.encode(s) for s in plain] == [CTC.encode(s) for s in raw]


# ----------------------------------------------------------------------------- WER / CER
PERFECT = [
    ("ça coûte 10\u202f000 euros", "ça coûte 10 000 euros"),
    ("ça coûte 10\u202f000 euros", NFD("ça coûte 10\u202f000 euros")),
    ("il a dit\u00a0: non\u2026", "il a dit : non..."),
    ("le \ufb01lm et la \ufb02eur", "le film et la fleur"),
    ("  Quoi\u202f?\u3000vraiment  ", "Quoi ? vraiment"),
]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("ref,hyp", PERFECT)
def test_a_perfect_transcript_scores_zero(ref, hyp, normalize):
    assert word_error_rate([ref], [hyp], normalize=normalize) == 0.0
    assert word_error_rate([hyp], [ref], normalize=normalize) == 0.0
    assert char_error_rate([ref], [hyp], normalize=normalize) == 0.0


def test_error_rates_still_count_real_errors_after_normalisation():
    ref = "ça coûte 10\u202f000 euros"  # 5 words once U+202F is a space
    assert word_error_rate([ref], ["ça coute 10 000 euros"]) == pytest.approx(1 / 5)
    assert word_error_rate([ref], ["Ça coûte 10 000 euros"], normalize=False) == pytest.approx(1 / 5)
    assert word_error_rate([ref], ["Ça coûte 10 000 euros"]) == 0.0  # case counts only when raw
    assert char_error_rate(["10\u202f000"], ["10000"], normalize=False) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="reference 0 is empty after normalisation .*: '…'"):
        word_error_rate(["\u2026"], ["a"])  # only punctuation: nothing to score
    with pytest.raises(ValueError, match="reference 1 is empty"):
        char_error_rate(["a", "\u202f\u00a0"], ["a", "b"], normalize=False)


# ----------------------------------------------------------------------------- demo text and TTS
def test_demo_stories_are_already_normalised():
    """Normalising at the corpus boundary changes no demo string (so the demo corpus text and
    its SentencePiece ids are what they were)."""
    for story in stories.generate_stories(2000, seed=0):
        for lang in ("en", "fr"):
            for text in story.sentences(lang) + [story.wrong_ending(lang), story.topic_ending(lang)]:
                assert is_normalized(text), (story.id, text)
                assert all(is_normalized(w) for w in stories.words(text))


def test_story_words_of_raw_spellings():
    s = "L'élève a trouvé un œuf près de la forêt\u202f! Ça coûte 10\u00a0euros."
    assert stories.words(NFD(s)) == stories.words(s) == [
        "l'élève", "a", "trouvé", "un", "œuf", "près", "de", "la", "forêt", "ça", "coûte", "euros"]


@pytest.fixture
def fake_espeak(monkeypatch):
    """espeak-ng replaced by a recorder: a deterministic wave per word, and the words it saw."""
    seen = []

    def run(word, voice):
        seen.append(word)
        rng = np.random.default_rng(sum(map(ord, word)))
        return (0.5 * rng.standard_normal(3200)).astype(np.float32), tts.SAMPLE_RATE

    monkeypatch.setattr(tts, "_run_espeak", run)
    tts.clear_cache()
    yield seen
    tts.clear_cache()


def test_espeak_sees_normalised_words_and_caches_them_once(fake_espeak):
    voice = tts.Voice("fr", "fr-fr")
    nfc = tts.synthesize_word("forêt", voice)
    assert tts.synthesize_word(NFD("forêt"), voice) is nfc
    assert tts.synthesize_word("\ufb01n", voice) is tts.synthesize_word("fin", voice)
    assert fake_espeak == ["forêt", "fin"]
    _, words, sentences = tts.synthesize_utterance([[NFD("forêt"), "\ufb01n"]], voice)
    assert [w for w, _, _ in words] == ["forêt", "fin"] and sentences[0][2] == "forêt fin"
    tts.prefetch([NFD("élève"), "élève"], voice, workers=1)
    assert fake_espeak == ["forêt", "fin", "élève"]
    with pytest.raises(ValueError, match="one non-empty word without spaces, got '10 000'"):
        tts.synthesize_word("10\u202f000", voice)


# ----------------------------------------------------------------------------- espeak-ng errors
def test_missing_espeak_is_a_named_error(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(tts.EspeakNotFoundError, match="espeak-ng not found on PATH.*make espeak.*"
                                                      "apt-get install -y espeak-ng"):
        tts.ensure_espeak()


def test_missing_espeak_is_one_line_from_the_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    assert prepare_main(["demo-corpus", f"--data_dir={tmp_path}", "--num_stories=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("slm-jax prepare demo-corpus: EspeakNotFoundError: espeak-ng not found on PATH")
    assert "make espeak" in err and "apt-get install -y espeak-ng" in err
    assert not any(n.startswith(".spoken_demo_tmp") for n in os.listdir(tmp_path))  # stopped before work


@pytest.fixture
def installed_voices(monkeypatch):
    """Pretend espeak-ng knows only the English voices (a build without French data)."""
    names = frozenset(n for n in tts.BASE_VOICES["en"]) | {"en"}
    monkeypatch.setattr(tts, "_installed_voices", lambda: (names, frozenset(tts.VARIANTS)))
    monkeypatch.setattr(tts.shutil, "which", lambda name: "/usr/bin/espeak-ng")


def test_missing_french_voice_is_named_before_any_synthesis(installed_voices, tmp_path, capsys):
    tts.check_voices(tts.voices_for("en", 6, seed=0))
    with pytest.raises(tts.EspeakVoiceError, match="has no voice 'fr-.*' for language 'fr'.*espeak-ng-data"):
        tts.check_voices(tts.voices_for("fr", 2, seed=0))
    assert issubclass(tts.EspeakVoiceError, ValueError) and issubclass(tts.EspeakVoiceError, RuntimeError)
    assert prepare_main(["demo-corpus", f"--data_dir={tmp_path}", "--num_stories=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EspeakVoiceError: espeak-ng has no voice 'fr-" in err


def test_broken_espeak_is_a_named_error(monkeypatch, tmp_path):
    fake = tmp_path / "espeak-ng"
    fake.write_text("#!/bin/sh\necho 'error while loading shared libraries: libespeak-ng.so.1' >&2\nexit 127\n")
    fake.chmod(0o755)
    monkeypatch.setattr(tts.shutil, "which", lambda name: str(fake))
    tts._installed_voices.cache_clear()
    try:
        with pytest.raises(tts.EspeakError, match="--voices` failed \\(exit 127: error while loading shared"):
            tts.check_voice(tts.Voice("en", "en-us"))
    finally:
        tts._installed_voices.cache_clear()


def test_text_cloze_pairs_encode_every_spelling_alike(fr_vocab):
    """Text sides of cloze pairs (tSC-style JSONL) reach the model through `encode_text`."""
    from slm_jax.evaluation.cloze import pair_from_record
    from slm_jax.evaluation.sequences import SequenceFormat

    fmt = SequenceFormat(fr_vocab)
    plain = {"id": "p", "prompt": "il a dit non", "correct": "ça coûte 10 000 euros", "wrong": "le film"}
    raw = {"id": "p", "prompt": "il\u00a0a dit non\u2003", "correct": NFD("ça coûte 10\u202f000 euros"),
           "wrong": "le \ufb01lm"}
    pairs = [pair_from_record(r, "mem", "text", "text") for r in (plain, raw)]
    for side in ("correct", "wrong"):
        a, b = (fmt.encode(p.prompt, getattr(p, side)) for p in pairs)
        assert a.ids.tolist() == b.ids.tolist() and a.ending_start == b.ending_start


def test_missing_espeak_is_one_line_from_any_command(monkeypatch, capsys):
    """`slm-jax train|eval|data` build the demo corpus on first use too: a missing espeak-ng is one
    line from each (EspeakNotFoundError is a FileNotFoundError, which `slm-jax` prints in one line)."""
    from slm_jax import cli
    from slm_jax_demo import tts

    def train(argv):
        raise tts.EspeakNotFoundError("espeak-ng not found on PATH; install it with `make espeak`")

    monkeypatch.setattr(cli, "command", lambda name: train)
    assert cli.main(["train", "--gin_file=gin/runs/demo_cpu.gin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["slm-jax train: EspeakNotFoundError: espeak-ng not found on PATH; install it with `make espeak`"]


def test_prepare_spm_trains_on_the_words_of_records_without_text(tmp_path, capsys):
    """Records imported from slamkit's `aligned_text` carry words and no `text`: their words are the
    transcript (joined by spaces, normalised); a corpus with neither is one named line, not
    SentencePiece's "training on 0 sentences"."""
    import sentencepiece as spm

    from slm_jax.data import corpus

    words = "le chat noir dort sur le tapis rouge pendant que le chien mange".split()
    utts = [corpus.Utterance(id=f"u{i}", lang="fr", units=list(range(40)), unit_rate_hz=25.0,
                             words=[(w, 0.1 * j, 0.1 * j + 0.1) for j, w in enumerate(words[i:i + 5])])
            for i in range(8)]
    corpus.write_tfrecord_shards(str(tmp_path / "c"), "train", utts, 1)
    assert spm_main([f"--input={tmp_path}/c/train-*.tfrecord", f"--model_prefix={tmp_path}/w", "--vocab_size=30",
                     "--model_type=char"]) == 0
    sp = spm.SentencePieceProcessor(model_file=f"{tmp_path}/w.model")
    assert sp.decode(sp.encode("le chat dort")) == "le chat dort"  # every character came from the words
    bare = [corpus.Utterance(id="b", lang="fr", units=list(range(40)), unit_rate_hz=25.0)]
    corpus.write_tfrecord_shards(str(tmp_path / "b"), "train", bare, 1)
    capsys.readouterr()
    assert spm_main([f"--input={tmp_path}/b/train-*.tfrecord", f"--model_prefix={tmp_path}/x", "--vocab_size=8"]) == 1
    assert "no record has a `text` or `words` field" in capsys.readouterr().err
