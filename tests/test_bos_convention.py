"""The first token of a sequence (issue 13 kind 4): an imported model runs behind its own BOS.

slm_jax's log-likelihood of an imported tiny random Llama equals transformers'
`log p(ids | <s>)` (fp32, 1e-4, per sequence and per token); the same for Qwen2 behind its
convention (no BOS: config.json's end-of-text id, lm-evaluation-harness's prefix). Training
batches start every segment with the run's BOS, generation's first input is it (with and
without KV cache), import-hf records it (model.gin, bos.json) by a documented rule, train /
eval refuse a run configured with another one, and export-hf writes it back.
"""
import dataclasses
import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from slm_jax.data.feature_converter import DEFAULT_BOS_ID, SLMFeatureConverter, run_bos_id
from slm_jax.evaluation import generate as gen
from slm_jax.evaluation.likelihood import COUNT_ENDING, SUM_ALL, SUM_ENDING, LikelihoodScorer, ScoredSequence
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.interop import hf_export, hf_import
from slm_jax.interop.hf_import import BosConventionError, import_hf
from slm_jax.models.decoder import Decoder
from slm_jax.training import run_dir
from tests.test_hf_interop import F32, TEXT_VOCAB, imported_params, save_hf_model, save_spm_llama_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
QWEN_EOT = TEXT_VOCAB - 1  # Qwen2's <|endoftext|> plays this role (151643 in the published config.json)


@pytest.fixture(autouse=True)
def _no_gin_state():
    gin.clear_config()
    yield
    gin.clear_config()


def _edit_config(hf_dir, name="config.json", **changes):
    path = os.path.join(hf_dir, name)
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, **changes}, f)


def use_model_gin(model_dir):
    """What a run does: MODEL_DIR/model.gin after the run's gin file."""
    gin.parse_config_file(os.path.join(model_dir, "model.gin"))


def runner_of(model_dir):
    cfg = dataclasses.replace(hf_export.load_model_config(model_dir), **F32)
    return ModelRunner(Decoder(cfg), imported_params(model_dir))


def hf_token_logp(hf_dir, family, rows):
    """transformers' log p(row[i] | row[:i]) for i >= 1, per row (float64 arrays)."""
    cls = transformers.LlamaForCausalLM if family == "llama" else transformers.Qwen2ForCausalLM
    model = cls.from_pretrained(hf_dir, dtype=torch.float32)
    out = []
    with torch.no_grad():
        for row in rows:
            logits = model(torch.tensor([row])).logits[0, :-1].double()
            logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(row[1:])[:, None])[:, 0]
            out.append(logp.numpy())
    return out


def our_token_logp(scorer, seqs):
    """Per-token log p from the scorer: prefix k scored with the ending = its last token."""
    prefixes = [ScoredSequence(np.asarray(s[:k], np.int32), k - 1) for s in seqs for k in range(1, len(s) + 1)]
    sums = scorer(prefixes)
    assert (sums[:, COUNT_ENDING] == 1).all()
    out, i = [], 0
    for s in seqs:
        out.append(sums[i:i + len(s), SUM_ENDING])
        i += len(s)
    return out


def assert_scores_match(scorer, seqs, hf_logp):
    whole = scorer([ScoredSequence(np.asarray(s, np.int32), len(s)) for s in seqs])[:, SUM_ALL]
    np.testing.assert_allclose(whole, [x.sum() for x in hf_logp], rtol=0, atol=TOLERANCE)
    for got, want in zip(our_token_logp(scorer, seqs), hf_logp):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Llama with a SentencePiece tokenizer that adds <s> (Llama-2's), imported."""
    root = tmp_path_factory.mktemp("llama_bos")
    hf_dir = save_hf_model(root / "hf", "llama", tie=False)
    save_spm_llama_tokenizer(hf_dir)
    model_dir = str(root / "model")
    import_hf(hf_dir, model_dir, decoder_options={**F32, "scan_layers": False})
    return hf_dir, model_dir


# --------------------------------------------------------------------------------------
# log-likelihood = transformers' log p(ids | BOS)
# --------------------------------------------------------------------------------------


def test_llama_likelihood_equals_transformers_behind_s(llama):
    hf_dir, model_dir = llama
    with open(os.path.join(model_dir, "model.gin")) as f:
        assert "run_bos_id.bos_id = 1\n" in f.read()
    assert run_dir.read_bos_record(model_dir)["bos_id"] == 1
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    # what a Hugging Face user scores: tokenizer(text) = [<s>, ids...], log p(ids | <s>)
    texts = ["the cat sat on the mat", "le chat est sur le tapis", "a quick dog"]
    rows = [tok(t)["input_ids"] for t in texts]
    assert all(r[0] == 1 for r in rows)
    rng = np.random.default_rng(0)
    rows += [[1, *rng.integers(3, TEXT_VOCAB, size=n).tolist()] for n in (5, 17)]  # any ids, any length
    hf_logp = hf_token_logp(hf_dir, "llama", rows)

    use_model_gin(model_dir)
    assert run_bos_id() == 1
    scorer = LikelihoodScorer(runner_of(model_dir), batch_size=4)
    assert scorer.bos_id == 1
    assert_scores_match(scorer, [r[1:] for r in rows], hf_logp)
    # the old convention (id 0 = <unk> first) gives other numbers: this comparison can fail
    wrong = LikelihoodScorer(runner_of(model_dir), batch_size=4, bos_id=0)
    got = wrong([ScoredSequence(np.asarray(r[1:], np.int32), len(r) - 1) for r in rows])[:, SUM_ALL]
    assert np.max(np.abs(got - [x.sum() for x in hf_logp])) > 100 * TOLERANCE


@pytest.mark.parametrize("config_bos", [None, QWEN_EOT], ids=["no_bos_token_id", "bos_token_id_is_eot"])
def test_qwen2_likelihood_equals_transformers_behind_end_of_text(tmp_path, config_bos):
    """Qwen2 has no BOS (its tokenizer adds none): the input before the first token is config.json's
    end-of-text id, as lm-evaluation-harness prefixes it, and HF users score log p(ids | eot)."""
    hf_dir = save_hf_model(tmp_path / "hf", "qwen2", tie=True)
    for name in ("config.json", "generation_config.json"):
        _edit_config(hf_dir, name, bos_token_id=config_bos, eos_token_id=QWEN_EOT)
    model_dir = str(tmp_path / "model")
    import_hf(hf_dir, model_dir, decoder_options=F32)
    record = run_dir.read_bos_record(model_dir)
    assert record["bos_id"] == QWEN_EOT
    assert ("eos_token_id" if config_bos is None else "bos_token_id") in record["source"]
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, TEXT_VOCAB - 1, size=n).tolist() for n in (4, 11, 16)]
    hf_logp = hf_token_logp(hf_dir, "qwen2", [[QWEN_EOT, *s] for s in seqs])
    use_model_gin(model_dir)
    assert_scores_match(LikelihoodScorer(runner_of(model_dir), batch_size=2), seqs, hf_logp)


# --------------------------------------------------------------------------------------
# training batches, generation
# --------------------------------------------------------------------------------------


def _ds(examples):
    return tf.data.Dataset.from_generator(lambda: ({"targets": np.asarray(e, np.int32)} for e in examples),
                                          output_signature={"targets": tf.TensorSpec([None], tf.int32)})


@pytest.mark.parametrize("pack", [True, False])
def test_training_batches_start_segments_with_the_runs_bos(pack):
    rng = np.random.default_rng(2)
    examples = [rng.integers(3, 50, size=n).tolist() + [1] for n in (4, 2, 6, 3)]
    length = 16 if pack else 8

    def rows():
        return list(SLMFeatureConverter(pack=pack)(_ds(examples), {"targets": length}).as_numpy_iterator())

    default = rows()
    gin.parse_config("run_bos_id.bos_id = 7")
    bound = rows()
    assert len(default) == len(bound) == (2 if pack else 4)
    starts = 0
    for a, b in zip(default, bound):
        seg = b["decoder_segment_ids"] if pack else (b["decoder_target_tokens"] != 0).astype(np.int32)
        first = (seg > 0) & (np.r_[0, seg[:-1]] != seg)  # the first token of every segment
        starts += first.sum()
        assert (b["decoder_input_tokens"][first] == 7).all()
        assert (a["decoder_input_tokens"][first] == DEFAULT_BOS_ID).all()
        inner = (seg > 0) & ~first  # elsewhere: the previous target, unchanged by the BOS
        np.testing.assert_array_equal(b["decoder_input_tokens"][inner], np.r_[0, b["decoder_target_tokens"][:-1]][inner])
        np.testing.assert_array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"])
    assert starts == len(examples)
    # an explicit bos_id wins over the run's
    explicit = SLMFeatureConverter(pack=pack, bos_id=5)(_ds(examples), {"targets": length})
    assert next(explicit.as_numpy_iterator())["decoder_input_tokens"][0] == 5


def test_bad_bos_ids_are_refused():
    gin.parse_config("run_bos_id.bos_id = -1")
    with pytest.raises(ValueError, match=r"run_bos_id\.bos_id=-1 must be an int >= 0"):
        SLMFeatureConverter()
    with pytest.raises(ValueError, match=r"SLMFeatureConverter\(bos_id\)=True must be an int"):
        SLMFeatureConverter(bos_id=True)


def hf_greedy(hf_dir, row, n):
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    row = list(row)
    with torch.no_grad():
        for _ in range(n):
            row.append(int(model(torch.tensor([row])).logits[0, -1].argmax()))
    return row[-n:]


@pytest.mark.parametrize("cache", [True, False], ids=["kv_cache", "no_cache"])
def test_generation_reads_the_runs_bos_first(llama, cache):
    hf_dir, model_dir = llama
    use_model_gin(model_dir)
    runner = runner_of(model_dir)
    prompts = [[261, 263, 262, 40], [70, 90]]
    n = 6
    if cache:
        out = gen.generate(runner, prompts, n).tokens
    else:  # the no-cache path (sampling.sample, LST's), given the dense decoder here
        banned = gen.banned_mask(runner.dense_config.vocab_size)
        kinds_vocab = type("V", (), {"vocab_size": TEXT_VOCAB, "pad_id": 0})()
        out = gen._generate_without_cache(runner, [np.asarray(p) for p in prompts], n, gen.SamplingConfig(),
                                          banned, kinds_vocab, run_bos_id())
    for prompt, got in zip(prompts, out):
        assert list(got) == hf_greedy(hf_dir, [1, *prompt], n), prompt


def test_generate_refuses_a_bos_outside_the_vocabulary(llama):
    _, model_dir = llama
    with pytest.raises(ValueError, match=r"BOS id 5000 is outside the model's \[0, 300\)"):
        gen.generate(runner_of(model_dir), [[5]], 2, bos_id=5000)


# --------------------------------------------------------------------------------------
# import rule, MODEL_DIR record, export
# --------------------------------------------------------------------------------------


def _plan_bos(hf_dir, **kwargs):
    return hf_import.resolve_bos(hf_dir, hf_import.hf_layout.read_hf_config(hf_dir), TEXT_VOCAB, **kwargs)


def test_bos_rule(tmp_path):
    hf_dir = save_hf_model(tmp_path / "hf", "llama", tie=True)  # LlamaConfig: bos_token_id 1, eos 2
    assert _plan_bos(hf_dir).bos_id == 1 and "config.json bos_token_id" in _plan_bos(hf_dir).source
    assert _plan_bos(hf_dir, bos_id=7).bos_id == 7  # --bos_id wins
    with open(os.path.join(hf_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 5}, f)
    with pytest.raises(BosConventionError, match=r"ambiguous.*config\.json bos_token_id': 1.*generation_config"):
        _plan_bos(hf_dir)
    assert _plan_bos(hf_dir, bos_id=5).bos_id == 5
    os.remove(os.path.join(hf_dir, "generation_config.json"))
    save_spm_llama_tokenizer(hf_dir, add_bos_token=True)
    bos = _plan_bos(hf_dir)
    assert (bos.bos_id, bos.tokenizer_adds_bos) == (1, True) and "tokenizer" in bos.source
    _edit_config(hf_dir, bos_token_id=None, eos_token_id=None)
    save_spm_llama_tokenizer(hf_dir, add_bos_token=False)
    with pytest.raises(BosConventionError, match=r"no BOS convention.*pass --bos_id"):
        _plan_bos(hf_dir)
    _edit_config(hf_dir, bos_token_id=TEXT_VOCAB + 3)
    with pytest.raises(BosConventionError, match=r"BOS id 303 .* outside the model's 300 embedding rows"):
        _plan_bos(hf_dir)


def test_runs_configured_with_another_bos_are_refused(llama, tmp_path):
    _, model_dir = llama
    run_dir.check_bos(model_dir, 1)
    with pytest.raises(run_dir.IncompatibleModelDirError,
                       match=r"records BOS id 1 .* but the run uses 0: pass MODEL_DIR/model\.gin"):
        run_dir.check_bos(model_dir, 0)
    run_dir.check_bos(str(tmp_path), 0)  # a run from scratch records none: anything goes, default 0


def test_eval_and_generate_refuse_a_run_without_model_gin(llama, capsys):
    """`slm-jax generate` on the imported MODEL_DIR with the shapes bound but not the BOS: refused."""
    from slm_jax.cli import generate as generate_cli

    _, model_dir = llama
    with open(os.path.join(model_dir, "model.gin")) as f:
        shapes = [line for line in f.read().splitlines() if line.startswith("DecoderConfig.")]
    argv = ["--gin_file=gin/runs/test_cpu.gin", f"--gin.MODEL_DIR='{model_dir}'",
            *[f"--gin.{line.replace(' = ', '=')}" for line in shapes], "--prompt_units=1 2 3"]
    with pytest.raises(run_dir.IncompatibleModelDirError, match="records BOS id 1"):
        generate_cli.cmd_generate(argv)


def test_export_writes_the_same_bos_everywhere(llama, tmp_path):
    hf_dir, model_dir = llama
    out = str(tmp_path / "exported")
    result = hf_export.export_hf(model_dir, out)
    assert "BOS: id 1" in result.bos and "the tokenizer adds it" in result.bos
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["bos_token_id"] == 1
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f)["bos_token_id"] == 1
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.bos_token_id == 1 and tok("the cat")["input_ids"][0] == 1
    assert transformers.GenerationConfig.from_pretrained(out).bos_token_id == 1
    with open(os.path.join(out, "README.md")) as f:
        assert "BOS: id 1" in f.read()


def test_export_of_a_model_without_bos_says_to_prepend_it(tmp_path):
    hf_dir = save_hf_model(tmp_path / "hf", "qwen2", tie=True)
    for name in ("config.json", "generation_config.json"):
        _edit_config(hf_dir, name, bos_token_id=None, eos_token_id=QWEN_EOT)
    model_dir = str(tmp_path / "model")
    import_hf(hf_dir, model_dir)
    out = str(tmp_path / "exported")
    result = hf_export.export_hf(model_dir, out)
    assert f"BOS: id {QWEN_EOT}" in result.bos and "no tokenizer" in result.bos
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert (config["bos_token_id"], config["eos_token_id"]) == (QWEN_EOT, QWEN_EOT)
    with open(os.path.join(out, "README.md")) as f:
        assert f"put id {QWEN_EOT} before every prompt" in f.read()


def test_alignment_reads_segments_behind_the_runs_bos(llama):
    """Hidden-state alignment feeds each segment behind the run's BOS, as training does."""
    from slm_jax.data.tokenizers.unit_vocab import UnitVocabulary
    from slm_jax.evaluation.alignment import pooled_hidden_states
    from slm_jax.evaluation.sequences import Segment, SequenceFormat

    _, model_dir = llama
    runner = runner_of(model_dir)
    fmt = SequenceFormat(UnitVocabulary(50))
    rng = np.random.default_rng(3)
    segments = [Segment.speech(rng.integers(0, 50, size=n)) for n in (5, 9)]
    behind_0 = pooled_hidden_states(runner, fmt, segments, bos_id=0)
    use_model_gin(model_dir)
    run = pooled_hidden_states(runner, fmt, segments)
    np.testing.assert_array_equal(run, pooled_hidden_states(runner, fmt, segments, bos_id=1))
    assert np.abs(run[:, 1:] - behind_0[:, 1:]).max() > 1e-3  # layer states see the first input


def test_export_of_a_run_from_scratch_names_bos_0(tmp_path):
    """A MODEL_DIR without bos.json (a run from scratch) was trained behind id 0: the export says so."""
    model_dir = str(tmp_path / "model")
    import_hf(save_hf_model(tmp_path / "hf", "llama", tie=True), model_dir)
    for name in (run_dir.BOS_FILE, hf_import.IMPORT_RECORD):
        os.remove(os.path.join(model_dir, name))
    out = str(tmp_path / "exported")
    result = hf_export.export_hf(model_dir, out)
    assert "BOS: id 0 (slm_jax's default for runs from scratch" in result.bos
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(out, name)) as f:
            assert json.load(f)["bos_token_id"] == DEFAULT_BOS_ID == 0
