"""Pair benchmarks in the layouts their authors publish (issue 13, kind 11) and the units cache
of `slm-jax eval` keyed by what made the units (kind 7, eval half).

Every folder here is written by hand to the published layout (tiny WAV files from the stdlib
`wave` module, gold.csv with ZeroSpeech 2021's columns):
- ZeroSpeech 2021 sWUGGY / sBLIMP: zerospeech/benchmarks tasks/lm/{lexical,syntactic}.py,
  zerospeech/zerospeech2021 zerospeech2021/{lexical,syntactic}.py;
- SALMon: slp-rl/salmon salmon.py and data_generation/*.py (`sample_{index}_{option}.wav`);
- StoryCloze and the cross-modal one: slp-rl/slamkit slamkit/metric/{modelling,cross_modal}_metric.py.
"""
import collections
import csv
import dataclasses
import json
import os
import random
import wave

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from slm_jax.evaluation import benchmark_layouts as bl, benchmarks as bench, cloze
from slm_jax.evaluation.likelihood import LikelihoodScorer
from slm_jax.evaluation.results import write_eval_json
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.evaluation.sequences import modality_of_ids
from slm_jax.models.decoder import Decoder, DecoderConfig

NUM_UNITS = 20
VOCAB = SpeechTextVocabulary(None, num_units=NUM_UNITS, langs=("en", "fr"))
CFG = DecoderConfig(vocab_size=32, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4, num_kv_heads=2,
                    init_std=0.3, dtype="float32")
LEXICAL_HEADER = ["filename", "voice", "frequency", "word", "phones", "length", "correct", "id"]
SYNTACTIC_HEADER = ["filename", "type", "subtype", "transcription", "correct", "voice", "id"]


# --- writing published layouts by hand --------------------------------------------------------
def write_wav(path, seconds=0.1, seed=0, rate=16000):
    """A short int16 mono WAV of a random tone plus noise (stdlib `wave`)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.05 * rng.standard_normal(n)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return str(path)


def random_name(rng, n=11):
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(rng.choice(list(letters), n))


def write_gold(folder, header, rows, with_wavs=True):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "gold.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(c, "") for c in header])
    if with_wavs:
        for i, row in enumerate(rows):
            write_wav(os.path.join(folder, row["filename"] + ".wav"), seed=i)
    return str(folder)


def swuggy_rows(rng, ids=("1", "2", "3"), voices=("Alex", "Victoria"), frequencies=None):
    """Word + non-word rows per (voice, id), as lexical/dev/gold.csv holds them."""
    rows = []
    for k, item in enumerate(ids):
        for voice in voices:
            freq = "" if frequencies is None else str(frequencies[k])
            rows.append(dict(filename=random_name(rng), voice=voice, frequency=freq, word=f"word{item}",
                             phones="w er d", length="3", correct="1", id=item))
            rows.append(dict(filename=random_name(rng), voice=voice, frequency="", word="",
                             phones="w er t", length="3", correct="0", id=item))
    return rows


def sblimp_rows(rng, items=(("anaphor_agreement", "anaphor_gender_agreement", "0"),
                            ("anaphor_agreement", "anaphor_number_agreement", "0"),
                            ("filler_gap", "wh_questions_object_gap", "3")), voices=("Alex", "Daniel")):
    """Grammatical then ungrammatical row per (type, subtype, id, voice), in file order."""
    rows = []
    for type_, subtype, item in items:
        for voice in voices:
            for correct, text in (("1", "the cat sleeps"), ("0", "the cat sleep")):
                rows.append(dict(filename=random_name(rng), type=type_, subtype=subtype, transcription=text,
                                 correct=correct, voice=voice, id=item))
    return rows


def write_storycloze(folder, keys=("0", "1", "2"), seed=0):
    for k, key in enumerate(keys):
        for side in ("correct", "incorrect"):
            write_wav(os.path.join(folder, f"{key}_{side}.wav"), seed=seed + 2 * k + (side == "incorrect"))
    return str(folder)


def write_salmon_part(folder, indices=(0, 1, 10), seed=0):
    for k, i in enumerate(indices):
        for option in (0, 1):
            write_wav(os.path.join(folder, f"sample_{i}_{option}.wav"), seed=seed + 2 * k + option)
    with open(os.path.join(folder, "metadata.json"), "w") as f:  # SALMon parts ship one
        json.dump([{"index": i} for i in indices], f)
    return str(folder)


def write_cm_storycloze(folder, keys=("0", "1"), texts=None):
    for k, key in enumerate(keys):
        for j, side in enumerate(("correct", "incorrect", "mutual")):
            write_wav(os.path.join(folder, f"{key}_{side}.wav"), seed=3 * k + j)
            with open(os.path.join(folder, f"{key}_{side}.txt"), "w", encoding="utf-8") as f:
                f.write(texts[(key, side)] if texts else f"{side} text {key}\n")
    return str(folder)


class CountingEncoder:
    """A stand-in audio encoder: deterministic random units per path, and a call count."""

    def __init__(self):
        self.calls, self.files = 0, 0

    def __call__(self, paths):
        self.calls += 1
        self.files += len(paths)
        out = {}
        for p in paths:
            rng = np.random.default_rng(abs(hash(os.path.basename(p))) % (2 ** 32))
            out[os.path.abspath(p)] = rng.integers(0, NUM_UNITS, rng.integers(4, 12)).tolist()
        return out


def tiny_runner():
    model = Decoder(CFG)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    return ModelRunner(model, params)


@pytest.fixture(scope="module")
def runner():
    return tiny_runner()


# --- ZeroSpeech 2021 sWUGGY -----------------------------------------------------------------
def test_swuggy_pairs_word_and_non_word_on_voice_and_id_whatever_the_row_order(tmp_path):
    rng = np.random.default_rng(0)
    rows = swuggy_rows(rng)
    random.Random(0).shuffle(rows)
    folder = write_gold(tmp_path / "lexical" / "dev", LEXICAL_HEADER, rows)
    assert bl.detect_layout(folder) == "swuggy"
    layout = bl.read_layout(folder)
    by_key = {(r["voice"], r["id"], r["correct"]): r["filename"] for r in rows}
    assert len(layout.pairs) == 6
    word_order = [f"{r['id']}/{r['voice']}" for r in rows if r["correct"] == "1"]
    assert [p.id for p in layout.pairs] == word_order  # the order of the word rows
    for pair in layout.pairs:
        item, voice = pair.id.split("/")
        assert pair.group == item
        assert os.path.basename(pair.correct.audio) == by_key[(voice, item, "1")] + ".wav"
        assert os.path.basename(pair.wrong.audio) == by_key[(voice, item, "0")] + ".wav"
        assert dict(pair.labels)["voice"] == voice


def _per_item(rows_of_pairs):
    per_item = collections.OrderedDict()
    for item, win in rows_of_pairs:
        per_item.setdefault(item, []).append(win)
    return {item: sum(v) / len(v) for item, v in per_item.items()}


def zerospeech_official(rows_of_pairs):
    """Plain transcription of ZeroSpeech's by-pair score: mean over voices per item, then over items."""
    per_item = _per_item(rows_of_pairs)
    return sum(per_item.values()) / len(per_item)


def test_swuggy_official_score_averages_voices_per_id_and_pair_mean_is_flat(tmp_path):
    rng = np.random.default_rng(1)
    ids = [str(i) for i in range(7)]
    freqs = rng.choice([0, 1, 4, 5, 19, 20, 150], len(ids))  # OOV (0) words and band edges
    rows = []
    for row in swuggy_rows(rng, ids=ids, voices=("Alex", "Victoria", "Daniel"), frequencies=freqs):
        if not (row["id"] in ("2", "5") and row["voice"] == "Daniel"):  # items with fewer voices
            rows.append(row)
    layout = bl.read_layout(write_gold(tmp_path / "dev", LEXICAL_HEADER, rows))
    for seed in range(5):
        wins = np.random.default_rng(seed).choice([0.0, 0.5, 1.0], len(layout.pairs))
        metrics, details = bl.aggregate(layout, wins)
        pairs = [(p.group, w) for p, w in zip(layout.pairs, wins)]
        assert metrics[""] == pytest.approx(zerospeech_official(pairs))
        assert metrics["pair_mean"] == pytest.approx(wins.mean())
        in_vocab = [(g, w) for g, w in pairs if freqs[int(g)] >= 1]
        assert metrics["in_vocab"] == pytest.approx(zerospeech_official(in_vocab))
        assert details["num_groups"] == len(ids)
        bands = collections.defaultdict(list)  # pandas.cut([0, 1, 5, 20, 100, inf], right=False)
        for g, score in _per_item(pairs).items():
            f = int(freqs[int(g)])
            bands["oov" if f < 1 else "1-5" if f < 5 else "6-20" if f < 20 else "21-100" if f < 100 else ">100"].append(
                score)
        assert details["by_frequency"] == pytest.approx({b: np.mean(v) for b, v in bands.items()})
    # the two aggregations differ when items have unequal voice counts
    wins = np.array([1.0 if p.group == "2" else 0.0 for p in layout.pairs])
    metrics, _ = bl.aggregate(layout, wins)
    assert metrics[""] == pytest.approx(1 / 7) and metrics["pair_mean"] == pytest.approx(2 / 19)


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows.pop(1), r"\(voice 'Alex', id '1'\) has 1 word and 0 non-word"),
    (lambda rows: rows[1].update(correct="yes"), r"correct='yes', expected 1 \(real\) or 0"),
    (lambda rows: rows[3].update(filename=rows[0]["filename"]), "already on line 2"),
])
def test_swuggy_broken_gold_is_refused_naming_the_line(tmp_path, edit, message):
    rows = swuggy_rows(np.random.default_rng(2))
    edit(rows)
    folder = write_gold(tmp_path / "dev", LEXICAL_HEADER, rows)
    with pytest.raises(bl.LayoutError, match=message):
        bl.read_layout(folder)


def test_gold_csv_with_a_byte_order_mark_reads_the_same(tmp_path):
    rows = swuggy_rows(np.random.default_rng(12))
    plain = bl.read_layout(write_gold(tmp_path / "a", LEXICAL_HEADER, rows))
    folder = write_gold(tmp_path / "b", LEXICAL_HEADER, rows)
    gold = os.path.join(folder, "gold.csv")
    data = open(gold, "rb").read()
    open(gold, "wb").write(b"\xef\xbb\xbf" + data)
    assert [p.id for p in bl.read_layout(folder).pairs] == [p.id for p in plain.pairs]


def test_zerospeech_wav_files_must_be_exactly_the_gold_rows(tmp_path):
    rows = swuggy_rows(np.random.default_rng(3))
    folder = write_gold(tmp_path / "dev", LEXICAL_HEADER, rows)
    os.remove(os.path.join(folder, rows[2]["filename"] + ".wav"))
    with pytest.raises(bl.LayoutError, match=f"no .wav here: '{rows[2]['filename']}'"):
        bl.read_layout(folder)
    write_wav(os.path.join(folder, rows[2]["filename"] + ".wav"))
    write_wav(os.path.join(folder, "zzzExtraFile.wav"))
    with pytest.raises(bl.LayoutError, match="not in gold.csv: 'zzzExtraFile'"):
        bl.read_layout(folder)


# --- ZeroSpeech 2021 sBLIMP -----------------------------------------------------------------
def test_sblimp_pairs_in_order_and_official_score_by_type_subtype_id(tmp_path):
    rows = sblimp_rows(np.random.default_rng(4))
    folder = write_gold(tmp_path / "syntactic" / "dev", SYNTACTIC_HEADER, rows)
    assert bl.detect_layout(folder) == "sblimp"
    layout = bl.read_layout(folder)
    good, bad = [r for r in rows if r["correct"] == "1"], [r for r in rows if r["correct"] == "0"]
    assert [(os.path.basename(p.correct.audio), os.path.basename(p.wrong.audio)) for p in layout.pairs] == [
        (g["filename"] + ".wav", b["filename"] + ".wav") for g, b in zip(good, bad)]
    assert layout.pairs[0].id == "anaphor_agreement/anaphor_gender_agreement/0/Alex"
    assert layout.pairs[0].group == "anaphor_agreement/anaphor_gender_agreement/0"
    wins = np.array([1, 0, 1, 1, 0.5, 0.0])  # items: (1, 0) (1, 1) (0.5, 0)
    metrics, details = bl.aggregate(layout, wins)
    assert metrics[""] == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert metrics["pair_mean"] == pytest.approx(3.5 / 6)
    assert details["by_type"] == pytest.approx({"anaphor_agreement": 0.75, "filler_gap": 0.25})
    assert details["by_subtype"]["anaphor_agreement/anaphor_number_agreement"] == pytest.approx(1.0)


def test_sblimp_rows_paired_by_order_must_agree_or_the_file_is_refused(tmp_path):
    rows = sblimp_rows(np.random.default_rng(5))
    rows[3]["voice"] = "Victoria"  # the ungrammatical row of pair 2 says another voice
    folder = write_gold(tmp_path / "dev", SYNTACTIC_HEADER, rows)
    with pytest.raises(bl.LayoutError, match=r"lines 4 and 5 are paired by order but differ in voice"):
        bl.read_layout(folder)
    rows = sblimp_rows(np.random.default_rng(5))
    rows[1]["correct"] = "1"
    folder = write_gold(tmp_path / "dev2", SYNTACTIC_HEADER, rows)
    with pytest.raises(bl.LayoutError, match="7 grammatical and 5 ungrammatical"):
        bl.read_layout(folder)


# --- SALMon, StoryCloze, cross-modal StoryCloze ------------------------------------------------
def test_salmon_part_pairs_option_0_with_option_1(tmp_path):
    folder = write_salmon_part(tmp_path / "speaker_consistency", indices=(10, 0, 1))
    assert bl.detect_layout(folder) == "salmon"
    layout = bl.read_layout(folder)
    assert [p.id for p in layout.pairs] == ["sample_0", "sample_1", "sample_10"]
    assert [os.path.basename(p.correct.audio) for p in layout.pairs] == [
        "sample_0_0.wav", "sample_1_0.wav", "sample_10_0.wav"]
    assert all(p.wrong.audio.endswith(f"{p.id}_1.wav") for p in layout.pairs)
    write_wav(os.path.join(folder, "sample_1_2.wav"))
    with pytest.raises(bl.LayoutError, match=r"sample 1 has options \[0, 1, 2\]"):
        bl.read_layout(folder)
    os.remove(os.path.join(folder, "sample_1_2.wav"))
    os.remove(os.path.join(folder, "sample_10_1.wav"))
    with pytest.raises(bl.LayoutError, match=r"sample 10 has options \[0\]"):
        bl.read_layout(folder)


def test_storycloze_pairs_by_key_and_refuses_an_unpaired_file(tmp_path):
    folder = write_storycloze(tmp_path / "sSC", keys=("10", "2", "story_a"))
    layout = bl.read_layout(folder)
    assert bl.detect_layout(folder) == "storycloze"
    assert [p.id for p in layout.pairs] == ["2", "10", "story_a"]
    assert all(p.correct.audio.endswith(f"{p.id}_correct.wav") and p.wrong.audio.endswith(f"{p.id}_incorrect.wav")
               for p in layout.pairs)
    os.remove(os.path.join(folder, "2_incorrect.wav"))
    with pytest.raises(bl.LayoutError, match=r"'2_correct.wav' has no incorrect partner"):
        bl.read_layout(folder)


def test_cross_modal_storycloze_reads_the_sides_the_modalities_ask(tmp_path):
    texts = {(k, s): f"{s}\u202f{k} caf\u0065\u0301  " for k in ("0", "1") for s in ("correct", "incorrect", "mutual")}
    folder = write_cm_storycloze(tmp_path / "cross_ms_tSC", texts=texts)
    assert bl.detect_layout(folder) == "cm_storycloze"
    speech = bl.read_layout(folder)
    assert [p.id for p in speech.pairs] == ["0", "1"]
    assert speech.pairs[0].prompt.audio.endswith("0_mutual.wav") and speech.pairs[0].correct.audio.endswith(
        "0_correct.wav")
    mixed = bl.read_layout(folder, prompt_modality="text", ending_modality="speech")
    assert mixed.pairs[1].prompt.text == "mutual 1 café"  # NFKC, whitespace collapsed
    assert mixed.pairs[1].wrong.audio.endswith("1_incorrect.wav")
    assert mixed.audio_files() == sorted(os.path.join(folder, f"{k}_{s}.wav") for k in "01"
                                         for s in ("correct", "incorrect"))
    os.remove(os.path.join(folder, "1_mutual.txt"))
    with pytest.raises(bl.LayoutError, match=r"key '1' lacks '1_mutual.txt'"):
        bl.read_layout(folder, prompt_modality="text", ending_modality="speech")
    assert len(bl.read_layout(folder).pairs) == 2  # speech only needs the .wav files


# --- folders of several benchmarks; refusals ---------------------------------------------------
def test_parent_folder_gives_one_benchmark_per_sub_folder_never_merged(tmp_path):
    root = tmp_path / "bench"
    write_storycloze(root / "sSC")
    write_storycloze(root / "tSC", keys=("0", "1"), seed=50)
    found = bl.find_benchmarks(str(root))
    assert found.benchmarks == (("sSC", "storycloze"), ("tSC", "storycloze"))
    specs = bench.parse_benchmarks(str(root))
    assert [(s.name, s.layout) for s in specs] == [(f"{root}/sSC", "storycloze"), (f"{root}/tSC", "storycloze")]
    assert bench.parse_benchmarks(str(root / "sSC"))[0].name == str(root / "sSC")


def test_zerospeech_and_salmon_roots_give_one_result_per_task_split_and_part(tmp_path):
    rng = np.random.default_rng(6)
    zr = tmp_path / "zerospeech2021"
    write_gold(zr / "lexical" / "dev", LEXICAL_HEADER, swuggy_rows(rng))
    write_wav(zr / "lexical" / "test" / f"{random_name(rng)}.wav")  # published without gold.csv
    write_gold(zr / "syntactic" / "dev", SYNTACTIC_HEADER, sblimp_rows(rng))
    write_wav(zr / "phonetic" / "dev-clean" / "84-121123-0000.wav")
    write_wav(zr / "semantic" / "dev" / "synthetic" / "aAbcsWWKCz.wav")
    found = bl.find_benchmarks(str(zr))
    assert found.benchmarks == (("lexical/dev", "swuggy"), ("syntactic/dev", "sblimp"))
    assert [rel for rel, _ in found.skipped] == ["lexical/test", "phonetic", "semantic"]
    with pytest.raises(bl.LayoutError, match="fit no published layout"):  # given directly: refused
        bl.find_benchmarks(str(zr / "lexical" / "test"))
    salmon = tmp_path / "salmon"
    for k, part in enumerate(("bg_alignment", "speaker_consistency")):
        write_salmon_part(salmon / part, seed=10 * k)
    assert [s.name for s in bench.parse_benchmarks(str(salmon))] == [f"{salmon}/bg_alignment",
                                                                     f"{salmon}/speaker_consistency"]


def test_ambiguous_or_unknown_folders_are_refused_naming_what_was_found(tmp_path):
    mixed = tmp_path / "mixed"
    write_storycloze(mixed, keys=("0",))
    write_salmon_part(mixed, indices=(0,))
    with pytest.raises(bl.LayoutError, match=r"mixes SALMon names \(2 files.*StoryCloze names \(2 files"):
        bl.find_benchmarks(str(mixed))
    nested = tmp_path / "nested"
    write_storycloze(nested, keys=("0",))
    write_storycloze(nested / "tSC", keys=("0",))
    with pytest.raises(bl.LayoutError, match=r"holds benchmark files .* AND sub-folders with more \('tSC'\)"):
        bl.find_benchmarks(str(nested))
    odd = tmp_path / "odd"
    write_wav(odd / "readme_audio.wav")
    with pytest.raises(bl.LayoutError, match="'readme_audio.wav' fit no published layout"):
        bl.find_benchmarks(str(odd))
    flac = tmp_path / "flac"
    flac.mkdir()
    (flac / "0_correct.flac").write_bytes(b"fLaC")
    with pytest.raises(bl.LayoutError, match="audio other than WAV .'0_correct.flac'"):
        bl.find_benchmarks(str(flac))
    with pytest.raises(bench.BenchmarkError, match=r"the :ts suffix needs slamkit's cross-modal.*sSC \(storycloze\)"):
        bench.parse_benchmarks(f"{write_storycloze(tmp_path / 'p' / 'sSC')}:ts")


def test_a_broken_benchmark_fails_before_any_audio_is_encoded(tmp_path):
    good = write_storycloze(tmp_path / "sSC")
    rows = sblimp_rows(np.random.default_rng(7))
    rows[2]["id"] = "99"
    broken = write_gold(tmp_path / "syntactic" / "dev", SYNTACTIC_HEADER, rows)
    encoder = CountingEncoder()
    specs = bench.parse_benchmarks([good, broken])
    with pytest.raises(bl.LayoutError, match="differ in id"):
        bench.BenchmarkSuite(specs, VOCAB, bench.EvalOptions(), audio_encoder=encoder)
    assert encoder.calls == 0
    # text sides need a text model: refused before encoding too
    cm = write_cm_storycloze(tmp_path / "cm")
    with pytest.raises(bench.BenchmarkError, match="pair '0'.*SentencePiece|pair '0'.*sentencepiece"):
        bench.BenchmarkSuite(bench.parse_benchmarks(f"{cm}:ts"), VOCAB, bench.EvalOptions(), audio_encoder=encoder)
    assert encoder.calls == 0
    # no codebook: refused before anything is read from audio
    with pytest.raises(bench.BenchmarkError, match="needs --centroids"):
        bench.BenchmarkSuite(bench.parse_benchmarks(good), VOCAB, bench.EvalOptions())


def test_suite_scores_each_benchmark_alone_with_its_official_aggregation_and_audit_trail(tmp_path, runner):
    rng = np.random.default_rng(8)
    root = tmp_path / "all"
    write_storycloze(root / "sSC", keys=[str(i) for i in range(5)])
    write_storycloze(root / "tSC", keys=[str(i) for i in range(3)], seed=40)
    swuggy = write_gold(tmp_path / "lexical" / "dev", LEXICAL_HEADER,
                        swuggy_rows(rng, ids=("1", "2", "3", "4"), frequencies=(0, 3, 7, 1)))
    encoder = CountingEncoder()
    options = bench.EvalOptions(batch_size=4)
    suite = bench.BenchmarkSuite(bench.parse_benchmarks([str(root), swuggy]), VOCAB, options, audio_encoder=encoder)
    assert encoder.calls == 3  # one call per benchmark, after all three were read
    detailed = suite.run_detailed(runner)
    scorer = LikelihoodScorer(runner, modality_of_ids(VOCAB, CFG.vocab_size), batch_size=4)
    for name, n in ((f"{root}/sSC", 5), (f"{root}/tSC", 3)):
        alone = cloze.evaluate_pairs(scorer, suite.items[name], suite.fmt)
        assert detailed[name] == alone.accuracy and detailed[f"{name}/num_pairs"] == n
        assert detailed[f"{name}/pairs"] == [{"id": i, "correct": float(c), "wrong": float(w)} for i, c, w in
                                             zip(alone.ids, alone.correct_scores, alone.wrong_scores)]
    assert str(root) not in detailed  # never one merged number
    pairs = detailed[f"{swuggy}/pairs"]
    assert len(pairs) == 8 and {"id", "correct", "wrong", "voice", "files", "frequency"} <= set(pairs[0])
    wins = [1.0 if p["correct"] > p["wrong"] else 0.5 if p["correct"] == p["wrong"] else 0.0 for p in pairs]
    official = zerospeech_official([(p["id"].split("/")[0], w) for p, w in zip(pairs, wins)])
    assert detailed[swuggy] == pytest.approx(official)
    assert detailed[f"{swuggy}/pair_mean"] == pytest.approx(np.mean(wins))
    assert detailed[f"{swuggy}/layout"] == "swuggy"
    path = write_eval_json(str(tmp_path / "eval"), 7, detailed, options, "run")
    record = json.loads(open(path).read())
    assert record["details"][f"{swuggy}/pairs"] == pairs and record["metrics"][swuggy] == detailed[swuggy]


def test_max_pairs_reads_and_encodes_only_the_first_pairs(tmp_path):
    folder = write_salmon_part(tmp_path / "gender_consistency", indices=range(6))
    encoder = CountingEncoder()
    suite = bench.BenchmarkSuite(bench.parse_benchmarks(folder), VOCAB, bench.EvalOptions(max_pairs=2),
                                 audio_encoder=encoder)
    assert [p.id for p in suite.items[folder]] == ["sample_0", "sample_1"] and encoder.files == 4


# --- the units cache is keyed by what made the units (kind 7) -----------------------------------
def test_units_cache_key_holds_codebook_features_rates_and_a_change_re_encodes(tmp_path):
    rng = np.random.default_rng(9)
    files = [write_wav(tmp_path / "wavs" / f"{i}_correct.wav", seconds=0.2, seed=i) for i in range(3)]
    km_a, km_b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(km_a, rng.standard_normal((8, 80)).astype(np.float32))
    np.save(km_b, rng.standard_normal((8, 80)).astype(np.float32))
    cache = str(tmp_path / "cache")
    first = cloze.AudioUnitsEncoder(str(km_a), "logmel", frame_stack=4, cache_dir=cache)
    assert first.key["features"] == "logmel" and first.key["frame_stack"] == 4
    assert first.key["unit_rate_hz"] == 25.0 and first.key["sample_rate_hz"] == 16000
    assert len(first.key["codebook_sha256"]) == 64 and first.key["codebook_shape"] == [8, 80]
    units = first(files)
    assert first.encoded == 3 and all(5 <= len(u) <= 6 for u in units.values())  # 0.2 s at 25 Hz
    again = cloze.AudioUnitsEncoder(str(km_a), "logmel", frame_stack=4, cache_dir=cache)
    assert again(files) == units and again.encoded == 0  # same key: read back
    for other in (cloze.AudioUnitsEncoder(str(km_b), "logmel", frame_stack=4, cache_dir=cache),
                  cloze.AudioUnitsEncoder(str(km_a), "logmel", frame_stack=2, cache_dir=cache)):
        assert other.cache_path != first.cache_path
        other(files)
        assert other.encoded == 3  # another codebook / frame stack never reuses old units
    write_wav(files[1], seconds=0.3, seed=99)  # the audio changed: only it is encoded again
    third = cloze.AudioUnitsEncoder(str(km_a), "logmel", frame_stack=4, cache_dir=cache)
    redone = third(files)
    assert third.encoded == 1 and len(redone[os.path.abspath(files[1])]) in (7, 8)
    # a cache file copied over another key's name is refused, naming the field
    os.replace(cloze.AudioUnitsEncoder(str(km_b), "logmel", frame_stack=4, cache_dir=cache).cache_path,
               first.cache_path)
    with pytest.raises(cloze.UnitsCacheError, match="codebook_sha256: cache '"):
        cloze.AudioUnitsEncoder(str(km_a), "logmel", frame_stack=4, cache_dir=cache)(files)


def test_units_cache_drops_a_line_cut_by_a_kill_and_codebook_dim_is_checked_first(tmp_path):
    rng = np.random.default_rng(10)
    files = [write_wav(tmp_path / f"sample_{i}_0.wav", seconds=0.15, seed=i) for i in range(2)]
    km = tmp_path / "km.npy"
    np.save(km, rng.standard_normal((6, 80)).astype(np.float32))
    enc = cloze.AudioUnitsEncoder(str(km), "logmel", frame_stack=4, cache_dir=str(tmp_path / "c"))
    units = enc(files)
    with open(enc.cache_path, "rb+") as f:
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[:-9])  # the last record cut off mid-line
    enc2 = cloze.AudioUnitsEncoder(str(km), "logmel", frame_stack=4, cache_dir=str(tmp_path / "c"))
    assert enc2(files) == units and enc2.encoded == 1
    np.save(tmp_path / "km13.npy", rng.standard_normal((6, 13)).astype(np.float32))
    with pytest.raises(ValueError, match="dim 13 but the features have dim 80"):
        cloze.AudioUnitsEncoder(str(tmp_path / "km13.npy"), "logmel")
    folder = str(tmp_path)
    with pytest.raises(bench.BenchmarkError, match="--centroids=.*km13.npy --features=logmel"):
        bench.BenchmarkSuite(bench.parse_benchmarks(write_salmon_part(tmp_path / "part")), VOCAB,
                             bench.EvalOptions(centroids=str(tmp_path / "km13.npy")))
    assert os.path.isdir(folder)


def test_suite_encodes_audio_with_the_codebook_and_caches_under_the_given_folder(tmp_path, runner):
    rng = np.random.default_rng(11)
    km = tmp_path / "km.npy"
    np.save(km, rng.standard_normal((NUM_UNITS, 80)).astype(np.float32))
    folder = write_storycloze(tmp_path / "sSC", keys=("0", "1"))
    options = bench.EvalOptions(centroids=str(km), frame_stack=4, units_cache_dir=str(tmp_path / "units"))
    suite = bench.BenchmarkSuite(bench.parse_benchmarks(folder), VOCAB, options)
    enc = cloze.AudioUnitsEncoder(str(km), "logmel", frame_stack=4)
    pair = suite.items[folder][1]
    assert pair.correct[0].content == tuple(enc.encode_file(os.path.join(folder, "1_correct.wav")))
    assert [os.path.basename(p) for p in os.listdir(tmp_path / "units")][0].startswith("units-")
    assert 0.0 <= suite.run(runner)[folder] <= 1.0
    # the library default caches beside the benchmark, in a hidden folder the next read ignores
    bench.BenchmarkSuite(bench.parse_benchmarks(folder), VOCAB, dataclasses.replace(options, units_cache_dir=None))
    assert os.listdir(os.path.join(folder, ".slm_jax_units"))
    assert [s.name for s in bench.parse_benchmarks(folder)] == [folder]


def test_cross_modal_storycloze_text_prompt_and_text_only_through_the_suite(tmp_path):
    from tests.test_token_space import make_tiny_spm
    vocab = SpeechTextVocabulary(make_tiny_spm(tmp_path), num_units=NUM_UNITS, langs=("en", "fr"))
    folder = write_cm_storycloze(tmp_path / "cross_ms_sSC", keys=("0", "1", "2"))
    encoder = CountingEncoder()
    suite = bench.BenchmarkSuite(bench.parse_benchmarks(f"{folder}:ts"), vocab, bench.EvalOptions(),
                                 audio_encoder=encoder)
    pair = suite.items[f"{folder}:ts"][0]
    assert pair.prompt[0].content == "mutual text 0" and pair.prompt[0].modality == "text"
    assert pair.correct[0].modality == "speech" and encoder.files == 6  # endings only: no mutual.wav
    encoded = suite.fmt.encode(pair.prompt, pair.correct)  # what the scorer reads: [Text] prompt [Speech] units
    assert encoded.ids[0] == vocab.text_marker_id
    assert encoded.ids[encoded.ending_start - 1] == vocab.speech_marker_id
    for name in ("0", "1", "2"):  # text only: no audio, so no codebook needed
        for side in ("correct", "incorrect", "mutual"):
            os.remove(os.path.join(folder, f"{name}_{side}.wav"))
    text_only = bench.BenchmarkSuite(bench.parse_benchmarks(f"{folder}:tt"), vocab, bench.EvalOptions())
    assert text_only.items[f"{folder}:tt"][2].wrong[0].content == "incorrect text 2"


def test_units_cache_key_digests_a_model_encoders_folder(tmp_path):
    model = tmp_path / "mhubert"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 2}')
    (model / "model.safetensors").write_bytes(b"x" * 10)
    first = cloze._model_dir_digest(f"hubert:{model}:11")
    assert first and cloze._model_dir_digest(f"whisper:{model}") == first
    assert cloze._model_dir_digest("logmel") is None
    (model / "config.json").write_text('{"num_hidden_layers": 3}')
    assert cloze._model_dir_digest(f"hubert:{model}:11") != first


def test_units_cache_is_written_and_repaired_by_process_0_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(13)
    files = [write_wav(tmp_path / f"{i}_correct.wav", seconds=0.15, seed=i) for i in range(2)]
    np.save(tmp_path / "km.npy", rng.standard_normal((6, 80)).astype(np.float32))
    monkeypatch.setattr(cloze, "_is_first_process", lambda: False)
    other = cloze.AudioUnitsEncoder(str(tmp_path / "km.npy"), "logmel", frame_stack=4, cache_dir=str(tmp_path / "c"))
    units = other(files)
    assert other.encoded == 2 and not os.path.exists(other.cache_path)
    monkeypatch.setattr(cloze, "_is_first_process", lambda: True)
    first = cloze.AudioUnitsEncoder(str(tmp_path / "km.npy"), "logmel", frame_stack=4, cache_dir=str(tmp_path / "c"))
    assert first(files) == units
    with open(first.cache_path, "ab") as f:
        f.write(b'{"path": "/being/writ')  # process 0 is mid-line
    size = os.path.getsize(first.cache_path)
    monkeypatch.setattr(cloze, "_is_first_process", lambda: False)
    reader = cloze.AudioUnitsEncoder(str(tmp_path / "km.npy"), "logmel", frame_stack=4, cache_dir=str(tmp_path / "c"))
    assert reader(files) == units and reader.encoded == 0 and os.path.getsize(first.cache_path) == size
