"""Pair benchmarks (sSC/sTC-style), their token format, scores vs a naive numpy model, sharded
scoring, LST, alignment metrics, run_benchmarks and `slm-jax eval`."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from slm_jax.data import corpus

from slm_jax.data.preprocessors import interleave
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
import slm_jax_demo.benchmarks as demo_bench
from slm_jax.evaluation import alignment, benchmarks as bench, cloze
from slm_jax.evaluation.likelihood import LikelihoodScorer, ScoredSequence
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.evaluation.sequences import Segment, SequenceFormat, modality_of_ids
from slm_jax.models.decoder import Decoder, DecoderConfig
from slm_jax.models.interface import ModelOutput
from slm_jax.training.optimizer import OptimizerConfig
from slm_jax.training.partitioning import DEFAULT_RULES, MeshConfig, make_mesh
from slm_jax.training.trainer import TrainConfig, Trainer
from tests.naive_decoder import naive_logits

NUM_UNITS = 20
VOCAB = SpeechTextVocabulary(None, num_units=NUM_UNITS, langs=("en", "fr"))  # 27 ids: [Text]=3 [Speech]=4 units 5..
CFG = DecoderConfig(vocab_size=32, embed_dim=32, mlp_dim=48, num_layers=2, num_heads=4, num_kv_heads=2,
                    init_std=0.3, dtype="float32")
KINDS = modality_of_ids(VOCAB, CFG.vocab_size)
SPEECH_IDS = np.flatnonzero(KINDS == 2)


def init_params(model, seed=0, std=0.3):
    """Random params of the model's shapes (eval_shape: nothing to compile)."""
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module")
def dense():
    model = Decoder(CFG)
    return ModelRunner(model, init_params(model))


def random_pairs(n, seed=0, prompt=(5, 25), langs=("en", "en")):
    """Pairs of random units; prompt: a (min, max) length range, or None for no prompt."""
    rng = np.random.default_rng(seed)
    units = lambda lo, hi: rng.integers(0, NUM_UNITS, rng.integers(lo, hi))  # noqa: E731
    return [cloze.ClozePair(f"p{i}", (Segment.speech(units(*prompt), langs[0]),) if prompt else (),
                            (Segment.speech(units(2, 10), langs[1]),), (Segment.speech(units(2, 10), langs[1]),))
            for i in range(n)]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


# --- token format = training's ---------------------------------------------------------------
def training_targets(preprocessor, record, **kwargs):
    ds = preprocessor(tf.data.Dataset.from_tensors(record), vocabulary=VOCAB, **kwargs)
    return next(iter(ds))["targets"].numpy().tolist()


def test_speech_sequence_equals_the_training_preprocessor():
    units = [3, 3, 7, 7, 7, 2, 2, 9]
    want = training_targets(interleave.speech_only, {"id": "r", "units": np.array(units, np.int64)})
    got = SequenceFormat(VOCAB).encode([Segment.speech(units[:4], "en")], [Segment.speech(units[4:], "en")])
    assert got.ids.tolist() == want  # [Speech] 3 7 2 9 EOS: deduplicated across the prompt/ending cut
    assert got.ending_start == 3  # the ending's first 7 merged into the prompt's 7: it starts at unit 2


@pytest.mark.parametrize("lang_tags", [False, True])
def test_cross_lingual_sequence_equals_crosslingual_interleave(lang_tags):
    a_units, b_units = [1, 1, 4, 4, 6, 6, 6, 8], [2, 2, 2, 5, 5, 5, 5, 9, 9]
    f32 = lambda *x: np.array(x, np.float32)  # noqa: E731
    record = {"id": tf.constant("r"), "a_lang": tf.constant("en"), "b_lang": tf.constant("fr"),
              "a_units": np.array(a_units, np.int64), "b_units": np.array(b_units, np.int64),
              "a_sentence_start": f32(0.0, 0.16), "a_sentence_end": f32(0.16, 0.32),
              "b_sentence_start": f32(0.0, 0.12), "b_sentence_end": f32(0.12, 0.36), "unit_rate_hz": np.float32(25.0)}
    want = training_targets(interleave.crosslingual_interleave, record, start="a", lang_tags=lang_tags)
    fmt = SequenceFormat(VOCAB, lang_tags=lang_tags)
    got = fmt.encode([Segment.speech(a_units[:4], "en")], [Segment.speech(b_units[3:], "fr")])
    assert got.ids.tolist() == want  # EN sentence 0 then FR sentence 1, each run deduplicated on its own
    assert got.ids[got.ending_start] == VOCAB.units_to_ids([5])[0]  # after the [FR] tag, when there is one


def test_markers_only_where_the_modality_changes(tmp_path):
    from tests.test_token_space import make_tiny_spm
    vocab = SpeechTextVocabulary(make_tiny_spm(tmp_path), num_units=NUM_UNITS, langs=("en", "fr"))
    fmt = SequenceFormat(vocab)
    cat = vocab.encode_text("the cat")
    got = fmt.encode([Segment.text("the cat", "en")], [Segment.speech([4, 4, 5], "en")])
    assert got.ids.tolist() == [vocab.text_marker_id, *cat, vocab.speech_marker_id,
                                *vocab.units_to_ids([4, 5]).tolist(), vocab.eos_id]
    assert got.ending_start == len(cat) + 2  # the [Speech] marker is given, not scored as the ending
    both_text = fmt.encode([Segment.text("the cat")], [Segment.text("sat on a mat")]).ids.tolist()
    assert both_text == [vocab.text_marker_id, *vocab.encode_text("the cat sat on a mat"), vocab.eos_id]
    with pytest.raises(ValueError, match="sentencepiece_model"):
        SequenceFormat(VOCAB).encode([Segment.text("the cat")])


# --- scores ---------------------------------------------------------------------------------
def naive_sums(params, seq: ScoredSequence):
    """float64 numpy log-likelihood sums of one sequence, alone, with the naive fp64 decoder."""
    ids = seq.ids
    inputs = np.concatenate([[0], ids[:-1]])[None]
    logits = naive_logits(params, CFG, inputs, np.ones_like(inputs), np.arange(len(ids))[None])[0]
    idx = np.arange(len(ids))
    full = logits[idx, ids] - np.log(np.exp(logits).sum(-1))
    within = logits[idx, ids] - np.log(np.exp(np.where(KINDS == seq.renormalize_to, logits, -np.inf)).sum(-1))
    ending = idx >= seq.ending_start
    logp = np.where(ending & (KINDS[ids] == seq.renormalize_to), within, full)
    return np.array([logp.sum(), len(ids), logp[ending].sum(), ending.sum()])


@pytest.mark.slow
def test_scores_equal_naive_numpy_in_every_mode(dense):
    pairs = random_pairs(7, seed=1)
    fmt = SequenceFormat(VOCAB)
    # plain and renormalised sequences in one call: several batches and length buckets
    seqs = cloze.encode_pairs(pairs[:3], fmt) + cloze.encode_pairs(pairs[3:], fmt, renormalize=True)
    got = LikelihoodScorer(dense, KINDS, batch_size=4)(seqs)
    want = np.stack([naive_sums(dense.params, s) for s in seqs])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    for mode in cloze.SCORE_MODES:
        np.testing.assert_allclose(cloze.scores_from_sums(got, mode), cloze.scores_from_sums(want, mode),
                                   rtol=1e-5, atol=1e-4)
    result = cloze.evaluate_pairs(LikelihoodScorer(dense, KINDS, batch_size=4), pairs[3:], fmt, "ending", True)
    scores = cloze.scores_from_sums(want[6:], "ending")
    assert result.accuracy == cloze.pair_accuracy(scores[0::2], scores[1::2])


def test_sharded_scoring_on_the_trainer_mesh_equals_unsharded(dense):
    trainer = Trainer(CFG, OptimizerConfig(), TrainConfig(), make_mesh(MeshConfig(2, 2, 2)), DEFAULT_RULES,
                      10, 8, 32)
    sharded = ModelRunner.from_trainer(trainer, dense.params)
    seqs = cloze.encode_pairs(random_pairs(5, seed=2, prompt=None), SequenceFormat(VOCAB))  # one length bucket
    got = LikelihoodScorer(sharded, KINDS, batch_size=3)(seqs)  # 3 rows -> 4, the data-parallel size
    np.testing.assert_allclose(got, LikelihoodScorer(dense, KINDS, batch_size=16)(seqs), rtol=1e-5, atol=1e-4)


class UnigramLM(nn.Module):
    """Planted model: the same next-token logits at every position."""

    logits: tuple
    config: DecoderConfig = CFG

    def __call__(self, tokens, segment_ids=None, positions=None, **output_flags):
        """`Decoder`'s call signature (it is run as a `DecoderConfig` family): logits only."""
        return ModelOutput(logits=jnp.broadcast_to(jnp.asarray(self.logits, jnp.float32),
                                                   (*tokens.shape, len(self.logits))))


def test_planted_model_scores_one_its_mirror_zero_and_ties_half():
    # correct endings use units 0-9, wrong ones 10-19, prompts both halves; the model prefers 0-9
    rng = np.random.default_rng(3)
    pairs = [cloze.ClozePair(f"p{i}", (Segment.speech(rng.integers(0, 20, 30)),),
                             (Segment.speech(rng.integers(0, 10, rng.integers(2, 12))),),
                             (Segment.speech(rng.integers(10, 20, rng.integers(2, 12))),)) for i in range(6)]
    preference = np.zeros(CFG.vocab_size)
    preference[VOCAB.units_to_ids(np.arange(10))] = 8.0
    preference[VOCAB.units_to_ids(np.arange(10, 20))] = -8.0
    fmt = SequenceFormat(VOCAB)
    for sign, expected in ((1.0, 1.0), (-1.0, 0.0)):
        scorer = LikelihoodScorer(ModelRunner(UnigramLM(tuple(sign * preference)), {}), KINDS)
        for mode in cloze.SCORE_MODES:
            assert cloze.evaluate_pairs(scorer, pairs, fmt, mode).accuracy == expected, (sign, mode)
    ties = [dataclasses.replace(p, wrong=p.correct) for p in pairs]
    assert cloze.evaluate_pairs(scorer, ties, fmt).accuracy == 0.5
    assert cloze.pair_accuracy([1.0, 2.0, 3.0, 4.0], [0.5, 2.0, 5.0, 4.0]) == 0.5


@pytest.mark.slow
def test_lst_scores_equal_one_call_per_sequence():
    from slm_jax.models.lst import LSTConfig, LSTModel
    cfg = LSTConfig(global_model=dataclasses.replace(CFG, num_layers=1), local_embed_dim=16, local_mlp_dim=32,
                    local_num_heads=2, patch_size=3)
    model = LSTModel(cfg)
    params = init_params(model, seed=4)
    rng = np.random.default_rng(4)
    # one length, so the reference compiles once
    seqs = [ScoredSequence(np.concatenate([[VOCAB.speech_marker_id], VOCAB.units_to_ids(rng.integers(0, 20, 12)),
                                           [VOCAB.eos_id]]), ending_start=9) for _ in range(3)]
    got = LikelihoodScorer(ModelRunner(model, params), KINDS, batch_size=4)(seqs)
    apply = jax.jit(lambda tokens, modality: model.apply({"params": params}, tokens, modality=modality).logits)
    for seq, row in zip(seqs, got):
        inputs = np.concatenate([[0], seq.ids[:-1]])[None]
        logits = apply(jnp.asarray(inputs), jnp.asarray(KINDS[seq.ids][None]))
        logp = np.asarray(jax.nn.log_softmax(logits[0]))[np.arange(len(seq.ids)), seq.ids]
        np.testing.assert_allclose(row[[0, 2]], [logp.sum(), logp[seq.ending_start:].sum()], rtol=1e-5, atol=1e-4)


# --- reading pairs ----------------------------------------------------------------------------
def demo_record(i, rng, text=False):
    side = lambda lang, n: {"lang": lang, "units": rng.integers(0, NUM_UNITS, n).tolist(),  # noqa: E731
                            "text": "the cat sat" if text else f"text {i}"}
    return {"id": f"story{i:05d}", "topic": "x", "prompt": side("en", 30), "correct": side("fr", 8),
            "wrong": side("fr", 6)}


def test_demo_and_simple_pair_records(tmp_path):
    rng = np.random.default_rng(5)
    demo = write_jsonl(tmp_path / "ssc_en_fr.jsonl", [demo_record(i, rng) for i in range(3)])
    pairs = cloze.load_pairs_jsonl(demo)
    assert [p.id for p in pairs] == ["story00000", "story00001", "story00002"]
    assert (pairs[0].prompt[0].lang, pairs[0].correct[0].lang, pairs[0].correct[0].modality) == ("en", "fr", "speech")
    cross = cloze.load_pairs_jsonl(demo, prompt_modality="text", ending_modality="speech")
    assert cross[1].prompt[0] == Segment.text("text 1", "en") and cross[1].wrong[0].modality == "speech"
    simple = write_jsonl(tmp_path / "simple.jsonl", [{"id": "a", "correct": [1, 2, 3], "wrong": [3, 2, 1]},
                                                     {"id": "b", "correct": "a word", "wrong": "a wrod"}])
    a, b = cloze.load_pairs_jsonl(simple)
    assert a.prompt == () and a.correct == (Segment.speech([1, 2, 3]),) and b.wrong == (Segment.text("a wrod"),)


@pytest.mark.parametrize("line, message", [
    ('{"id": "x", "correct": [1, 2]}', r"bad\.jsonl:2: missing key\(s\) \['wrong'\]"),
    ('{"id": "x", "correct": [], "wrong": [1]}', r"bad\.jsonl:2 \(id 'x'\) 'correct': is empty"),
    ('{"id": "x", "correct": [1], "wrong": {"lang": "en", "text": "hi"}}', r"\(id 'x'\) 'wrong': has no 'units'"),
    ('{"id": "x", "correct": [1.5], "wrong": [1]}', r"\(id 'x'\) 'correct': expected a list of unit ints"),
    ('{"id": "ok", "correct": [1], "wrong": [2]}', r"bad\.jsonl:2: id 'ok' already used at line 1"),
    ("not json", r"bad\.jsonl:2: not JSON"),
])
def test_bad_pair_records_name_file_line_and_id(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "ok", "correct": [1], "wrong": [2]}', line])
    with pytest.raises(cloze.BadPairError, match=message):
        cloze.load_pairs_jsonl(path)


def test_unknown_or_malformed_benchmark_names_name_the_flag(tmp_path):
    with pytest.raises(bench.BenchmarkError, match="unknown benchmark 'ssc_de'.*ssc_en"):
        bench.parse_benchmarks("ssc_en,ssc_de")
    with pytest.raises(bench.BenchmarkError, match="'ssc_en:sx'.*two letters"):
        bench.parse_benchmarks("ssc_en:sx")
    with pytest.raises(bench.BenchmarkError, match="no benchmark given"):
        bench.parse_benchmarks(" , ")
    with pytest.raises(bench.BenchmarkError, match=r"\['ssc_en'\] given more than once"):
        bench.parse_benchmarks("demo,ssc_en")
    specs = bench.parse_benchmarks("ssc_en:ts,align_en_fr:sentence")
    assert [(s.kind, s.prompt_modality, s.ending_modality, s.level) for s in specs] == [
        ("cloze", "text", "speech", "utterance"), ("alignment", "speech", "speech", "sentence")]


# Benchmark folders (sSC/tSC, cross-modal StoryCloze, sWUGGY, sBLIMP, SALMon) and the units
# cache: tests/test_benchmark_layouts.py.


# --- alignment ------------------------------------------------------------------------------
def test_alignment_metrics_are_exact_on_constructed_states():
    eye = np.eye(3)
    a = np.stack([eye, eye], axis=1)  # [3 items, 2 layers, 3 dims]
    b = np.stack([2.0 * eye, np.roll(eye, 1, axis=0)], axis=1)  # layer 1: b_i = a_{i+1}
    m = alignment.alignment_metrics(a, b)
    np.testing.assert_allclose(m["cos_parallel"], [1.0, 0.0])
    np.testing.assert_allclose(m["cos_random"], [0.0, 0.5])  # layer 1: 3 of the 6 mismatched pairs are equal
    np.testing.assert_allclose(m["r1_ab"], [1.0, 0.0])
    np.testing.assert_allclose(m["r1_ba"], [1.0, 0.0])
    summary = alignment.summarize(m)
    assert summary["cos_parallel"] == 0.0 and summary["r1_en_fr"] == 0.0  # layers 1.. only
    assert summary["per_layer"]["cos_random"] == [0.0, 0.5]


def test_pooled_hidden_states_are_the_mean_over_content_tokens(dense):
    segments = [Segment.speech([1, 2, 2, 3], "en"), Segment.speech(list(range(11)), "fr")]
    fmt = SequenceFormat(VOCAB)
    got = alignment.pooled_hidden_states(dense, fmt, segments, batch_size=2)
    layers = jax.jit(lambda tokens: dense.model.apply({"params": dense.params}, tokens,
                                                      return_layer_hidden=True).layer_hidden)
    for seg, row in zip(segments, got):
        ids = fmt.encode([seg]).ids
        inputs = np.concatenate([[0], ids[:-1]])[None]  # BOS [Speech] units
        hidden = layers(jnp.asarray(inputs))
        np.testing.assert_allclose(row, np.asarray(hidden)[:, 0, 2:].mean(axis=1), rtol=1e-5, atol=1e-5)


def test_parallel_items_cut_sentences_by_the_corpus_frame_rule():
    record = {"id": "s1", "a_lang": "fr", "b_lang": "en", "unit_rate_hz": 25.0,
              "a_units": list(range(10)), "a_sentence_start": [0.0, 0.2], "a_sentence_end": [0.2, 0.4],
              "b_units": list(range(20, 28)), "b_sentence_start": [0.0, 0.12], "b_sentence_end": [0.12, 0.32]}
    whole = alignment.parallel_items([record])
    assert whole[0].a == Segment.speech(range(20, 28), "en") and whole[0].b.lang == "fr"  # oriented en -> fr
    items = alignment.parallel_items([record], level="sentence")
    assert [(x.id, list(x.a.content), list(x.b.content)) for x in items] == [
        ("s1#0", [20, 21, 22], [0, 1, 2, 3, 4]), ("s1#1", [23, 24, 25, 26, 27], [5, 6, 7, 8, 9])]


# --- suites: demo names, run_benchmarks, slm-jax eval ---------------------------------------
def fake_demo_corpus(data_dir, rng):
    """The demo corpus layout the benchmarks read: a completion marker, cloze files, paired records."""
    from slm_jax_demo.corpus import MARKER, VERSION, DemoCorpusParams, default_root
    root = default_root(str(data_dir))
    os.makedirs(os.path.join(root, "cloze"))
    with open(os.path.join(root, MARKER), "w") as f:
        json.dump({"version": VERSION, **dataclasses.asdict(DemoCorpusParams())}, f)
    for name in demo_bench.DEMO_CLOZE:
        write_jsonl(os.path.join(root, "cloze", f"{name}.jsonl"), [demo_record(i, rng) for i in range(3)])
    paired = [{"id": f"p{i}", "a_lang": "en", "b_lang": "fr", "unit_rate_hz": 25.0,
               "a_units": rng.integers(0, NUM_UNITS, 12).tolist(), "a_sentence_start": [0.0], "a_sentence_end": [0.5],
               "b_units": rng.integers(0, NUM_UNITS, 14).tolist(), "b_sentence_start": [0.0], "b_sentence_end": [0.6]}
              for i in range(4)]
    corpus.write_paired_tfrecord_shards(os.path.join(root, "paired"), "validation", paired, 1)
    return root


@pytest.mark.slow
def test_run_benchmarks_on_the_trainer_mesh_and_demo_table(tmp_path, monkeypatch, dense):
    monkeypatch.delenv("SLM_JAX_DEMO_NUM_STORIES", raising=False)
    monkeypatch.delenv("SLM_JAX_DEMO_NUM_BENCHMARK_STORIES", raising=False)
    fake_demo_corpus(tmp_path, np.random.default_rng(7))
    trainer = Trainer(CFG, OptimizerConfig(), TrainConfig(), make_mesh(MeshConfig(2, 4, 1)), DEFAULT_RULES,
                      10, 8, 32)
    options = bench.EvalOptions(data_dir=str(tmp_path), batch_size=4)
    results = bench.run_benchmarks(trainer, dense.params, "demo", VOCAB, options)
    assert sorted(results) == sorted([*demo_bench.DEMO_CLOZE, *(f"align_en_fr/{k}" for k in (
        "cos_parallel", "cos_random", "r1_en_fr", "r1_fr_en"))])
    suite = bench.BenchmarkSuite(bench.parse_benchmarks("ssc_en_fr"), VOCAB, options)
    scorer = LikelihoodScorer(dense, KINDS)
    assert results["ssc_en_fr"] == cloze.evaluate_pairs(scorer, suite.items["ssc_en_fr"], suite.fmt).accuracy
    table = demo_bench.format_demo_table(results)
    assert table.splitlines()[0].split() == ["EN", "FR", "EN->FR", "FR->EN"]
    assert table.splitlines()[1].split()[3] == f"{100 * results['ssc_en_fr']:.1f}" and "cos parallel" in table


@pytest.mark.slow
def test_eval_cli_writes_json_per_checkpoint_plot_and_table(tmp_path, capsys):
    from slm_jax.cli import eval as eval_cli
    from slm_jax.evaluation.results import plot_accuracy
    from slm_jax.training.checkpoints import CheckpointManager
    model_dir = tmp_path / "run"
    gin_args = ["--gin_file=gin/runs/test_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'"]
    _, trainer, _ = eval_cli.setup_run(gin_args)
    state = trainer.init_state(seed=0)
    with CheckpointManager(str(model_dir / "checkpoints"), save_period=1, async_save=False) as ckpt:
        for step in (10, 20):
            ckpt.save(step, state, force=True)
    rng = np.random.default_rng(8)
    pairs = write_jsonl(tmp_path / "units_pairs.jsonl", [
        {"id": f"u{i}", "prompt": rng.integers(0, 50, 20).tolist(), "correct": rng.integers(0, 50, 6).tolist(),
         "wrong": rng.integers(0, 50, 6).tolist()} for i in range(4)])
    assert eval_cli.cmd_eval([*gin_args, f"--benchmarks={pairs}", "--all_checkpoints", "--score=ending"]) == 0
    record = json.loads((model_dir / "eval" / "20.json").read_text())
    assert record["step"] == 20 and record["options"]["score"] == "ending" and pairs in record["metrics"]
    assert record["details"][f"{pairs}/num_pairs"] == 4
    audit = record["details"][f"{pairs}/pairs"]  # every pair's id and both scores
    assert [p["id"] for p in audit] == ["u0", "u1", "u2", "u3"]
    assert record["metrics"][pairs] == np.mean([1.0 if p["correct"] > p["wrong"] else
                                                0.5 if p["correct"] == p["wrong"] else 0.0 for p in audit])
    assert (model_dir / "eval" / "10.json").exists()
    out = capsys.readouterr().out
    assert "steps: 10 20" in out and pairs in out
    m = record["metrics"]  # each accuracy with its 95% bootstrap interval, printed and recorded
    assert m[f"{pairs}/ci_low"] <= m[pairs] <= m[f"{pairs}/ci_high"] and record["intervals"]["resamples"] == 2000
    assert f"{100 * m[pairs]:.1f} [{100 * m[f'{pairs}/ci_low']:.1f}, {100 * m[f'{pairs}/ci_high']:.1f}]" in out
    if plot_accuracy(str(model_dir / "eval")):
        assert (model_dir / "eval" / "accuracy.png").stat().st_size > 1000
    assert eval_cli.cmd_eval([*gin_args, "--benchmarks=nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert eval_cli.cmd_eval([*gin_args, f"--benchmarks={pairs}", "--step=15"]) == 2
    assert "--step=15" in capsys.readouterr().err
    # a benchmark folder as published (a SALMon root): one result per part, units cached in eval/units
    from tests.test_benchmark_layouts import write_salmon_part, write_storycloze
    salmon = tmp_path / "salmon"
    for k, part in enumerate(("bg_alignment", "speaker_consistency")):
        write_salmon_part(str(salmon / part), indices=range(3), seed=10 * k)
    np.save(tmp_path / "km.npy", rng.standard_normal((8, 80)).astype(np.float32))
    folder_args = [*gin_args, f"--benchmarks={salmon}", f"--centroids={tmp_path / 'km.npy'}", "--frame_stack=4"]
    assert eval_cli.cmd_eval(folder_args) == 0
    record = json.loads((model_dir / "eval" / "20.json").read_text())
    assert f"{salmon}/bg_alignment/pair_mean/ci_low" in record["metrics"]  # a folder's interval: its pair mean
    assert sorted(k for k in record["metrics"] if "pair_mean" not in k) == [
        f"{salmon}/bg_alignment", f"{salmon}/speaker_consistency"]
    assert [p["id"] for p in record["details"][f"{salmon}/bg_alignment/pairs"]] == ["sample_0", "sample_1", "sample_2"]
    assert len(os.listdir(model_dir / "eval" / "units")) == 1
    capsys.readouterr()
    write_storycloze(str(salmon / "bg_alignment"), keys=("0",))  # now a mixed folder: refused, one line
    assert eval_cli.cmd_eval(folder_args) == 2
    assert "LayoutError" in capsys.readouterr().err
