"""import-hf / export-hf against transformers: tiny Llama and Qwen2 models, fp32 on CPU.

Logits of the imported model equal transformers' (and again after export and reload);
the speech-vocabulary extension keeps text ids intact, draws new rows from the text rows'
distribution and extends the tokenizer at the same ids; the import is a step 0 that the
Trainer restores and trains; bad checkpoints fail early, naming the file and key.
"""
import dataclasses
import json
import math
import os
import shutil

import gin
import jax
import numpy as np
import pytest

from slm_jax.cli import export_hf as export_hf_cli, import_hf as import_hf_cli
from slm_jax.interop import hf_export, hf_import
from slm_jax.interop.hf_import import CheckpointMismatchError, import_hf
from slm_jax.interop.hf_layout import UnsupportedModelError
from slm_jax.interop.hf_vocab import VocabLayoutError
from slm_jax.models.decoder import Decoder
from slm_jax.training import checkpoints

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            rope_theta=1000.0, rms_norm_eps=1e-5, initializer_range=0.1)
TEXT_VOCAB = 300
F32 = {"dtype": "float32", "param_dtype": "float32"}
TOLERANCE = 1e-4
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "le chat est sur le tapis",
          "the quick brown fox jumps over the lazy dog", "un chien court dans le parc"] * 4


@pytest.fixture(autouse=True)
def _no_gin_state():
    """Other test modules in this worker may leave gin bindings (e.g. a tiny DecoderConfig) behind."""
    gin.clear_config()
    yield
    gin.clear_config()


def hf_classes(family):
    if family == "llama":
        return transformers.LlamaConfig, transformers.LlamaForCausalLM
    return transformers.Qwen2Config, transformers.Qwen2ForCausalLM


def save_hf_model(path, family, tie, vocab_size=TEXT_VOCAB, seed=0, **save_kwargs):
    """A random tiny model, norms and biases randomised too so every tensor matters."""
    config_cls, model_cls = hf_classes(family)
    torch.manual_seed(seed)
    # Qwen2's published config.json names <|endoftext|> as bos and eos (151643); Qwen2Config's defaults name none
    ids = {"bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1} if family == "qwen2" else {}
    model = model_cls(config_cls(vocab_size=vocab_size, tie_word_embeddings=tie, **ids, **TINY)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.5)
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    return str(path)


def save_tiny_tokenizer(path):
    """A byte-level BPE trained here (no downloads), saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")
    assert len(fast) < TEXT_VOCAB  # ids [len, 300) are model rows without a token: a gap to fill
    fast.save_pretrained(path)
    return fast


def save_spm_llama_tokenizer(path, legacy=False, add_bos_token=True, sentences=CORPUS):
    """A Llama-2-style SentencePiece BPE (<unk> 0, <s> 1, </s> 2, byte fallback, 300 pieces) trained
    here, saved as tokenizer.model + tokenizer_config.json (Llama-2's published keys); returns the
    model path. transformers builds its Llama tokenizer from these files (no downloads)."""
    import sentencepiece as spm

    os.makedirs(path, exist_ok=True)
    prefix = os.path.join(str(path), "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences) * 5), model_prefix=prefix, vocab_size=TEXT_VOCAB, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        hard_vocab_limit=False, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": None, "add_bos_token": add_bos_token, "add_eos_token": False, "legacy": legacy,
              "clean_up_tokenization_spaces": False}
    with open(os.path.join(str(path), "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return prefix + ".model"


def random_tokens(vocab_size, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, size=(2, 24)).astype(np.int32)


def hf_logits(model_or_path, tokens, family="llama"):
    model = model_or_path
    if isinstance(model_or_path, str):
        model = hf_classes(family)[1].from_pretrained(model_or_path, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def imported_params(model_dir, step=None):
    return checkpoints.restore_params_to_host(os.path.join(model_dir, "checkpoints"), step)[1]


def our_logits(model_dir, tokens):
    cfg = dataclasses.replace(hf_export.load_model_config(model_dir), **F32)
    return np.asarray(Decoder(cfg).apply({"params": imported_params(model_dir)}, tokens).logits)


def assert_close(got, want):
    assert got.shape == want.shape
    assert np.std(want) > 0.1, "logits too small for the comparison to mean anything"
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,tie,scan,sharded", [
    ("llama", False, True, False),
    ("llama", True, True, False),
    ("qwen2", True, False, False),
    ("qwen2", False, True, True),
])
@pytest.mark.slow
def test_import_and_export_match_transformers(tmp_path, family, tie, scan, sharded):
    save_kwargs = {"max_shard_size": "40KB"} if sharded else {}
    hf_dir = save_hf_model(tmp_path / "hf", family, tie, **save_kwargs)
    assert os.path.isfile(os.path.join(hf_dir, hf_import.INDEX_FILE)) == sharded
    model_dir = str(tmp_path / "model")
    cfg = import_hf(hf_dir, model_dir, decoder_options={**F32, "scan_layers": scan})
    assert (cfg.vocab_size, cfg.tie_embeddings, cfg.use_qkv_bias) == (TEXT_VOCAB, tie, family == "qwen2")
    assert (cfg.rope_theta, cfg.norm_eps) == (TINY["rope_theta"], TINY["rms_norm_eps"])
    tokens = random_tokens(TEXT_VOCAB)
    want = hf_logits(hf_dir, tokens, family)
    assert_close(our_logits(model_dir, tokens), want)

    out = str(tmp_path / "exported")
    result = hf_export.export_hf(model_dir, out, max_shard_size="40KB" if sharded else "2GB")
    assert (len(result.files) > 1) == sharded
    assert os.path.isfile(os.path.join(out, hf_import.INDEX_FILE)) == sharded
    assert_close(hf_logits(out, tokens, family), want)


def test_command_line_round_trip_and_model_gin(tmp_path, capsys):
    hf_dir = save_hf_model(tmp_path / "hf", "llama", tie=False)
    model_dir, out = str(tmp_path / "model"), str(tmp_path / "exported")
    assert import_hf_cli.cmd_import_hf([hf_dir, "--out", model_dir, "--no_scan_layers"]) == 0
    assert "model.gin" in capsys.readouterr().out
    with open(os.path.join(model_dir, "model.gin")) as f:
        bindings = dict(line.split(" = ") for line in f.read().splitlines() if not line.startswith("#"))
    assert bindings["DecoderConfig.vocab_size"] == str(TEXT_VOCAB)
    assert bindings["DecoderConfig.scan_layers"] == "False"
    assert bindings["DecoderConfig.rope_theta"] == "1000.0"
    assert export_hf_cli.cmd_export_hf([model_dir, "--out", out, "--dtype", "bfloat16"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["dtype"] == "bfloat16"
    tokens = random_tokens(TEXT_VOCAB)
    np.testing.assert_allclose(hf_logits(out, tokens), hf_logits(hf_dir, tokens), atol=0.1)  # bf16 weights
    assert import_hf_cli.cmd_import_hf([hf_dir, "--out", model_dir]) == 2
    assert "already holds a model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# speech vocabulary
# --------------------------------------------------------------------------------------

SPEECH = dict(layout="speech", num_units=500, num_pitch=64, num_style=100, langs=("en", "fr"))


def assert_drawn_from(new_rows, text_rows):
    """New rows ~ N(mean, cov) of the text rows: per-dim mean z-scores and the total variance."""
    n = new_rows.shape[0]
    mean, var = text_rows.mean(0), text_rows.var(0, ddof=1)
    z = (new_rows.mean(0) - mean) / np.sqrt(var / n)
    assert np.max(np.abs(z)) < 5.0, np.max(np.abs(z))
    assert new_rows.var(0, ddof=1).sum() / var.sum() == pytest.approx(1.0, abs=0.1)


def test_speech_vocabulary_extension(tmp_path):
    hf_dir = save_hf_model(tmp_path / "hf", "llama", tie=False)
    source_tok = save_tiny_tokenizer(hf_dir)
    model_dir = str(tmp_path / "model")
    cfg = import_hf(hf_dir, model_dir, vocab=SPEECH, seed=3, decoder_options=F32)
    vocab = hf_import.VocabExtension.create(**{**SPEECH, "text_vocab_size": TEXT_VOCAB}).vocabulary
    assert vocab.vocab_size == TEXT_VOCAB + 2 + 500 + 64 + 100 + 2
    assert cfg.vocab_size == math.ceil(vocab.vocab_size / 128) * 128 == 1024

    # text rows kept exactly; new rows drawn from the text rows' distribution (embedding and lm_head)
    params = imported_params(model_dir)
    hf = hf_classes("llama")[1].from_pretrained(hf_dir, dtype=torch.float32)
    hf_embed = hf.model.embed_tokens.weight.detach().numpy()
    hf_head = hf.lm_head.weight.detach().numpy()
    np.testing.assert_array_equal(params["embed"]["embedding"][:TEXT_VOCAB], hf_embed)
    np.testing.assert_array_equal(params["lm_head"]["kernel"][:, :TEXT_VOCAB], hf_head.T)
    assert_drawn_from(params["embed"]["embedding"][TEXT_VOCAB:], hf_embed)
    assert_drawn_from(params["lm_head"]["kernel"][:, TEXT_VOCAB:].T, hf_head)

    # text logits unchanged (on text inputs)
    tokens = random_tokens(TEXT_VOCAB)
    want = hf_logits(hf, tokens)
    assert_close(our_logits(model_dir, tokens)[..., :TEXT_VOCAB], want)

    # the tokenizer: speech tokens at our ids, text ids unchanged
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    for tag, want_id in (("[Text]", vocab.text_marker_id), ("[Speech]", vocab.speech_marker_id),
                         ("[Hu0]", vocab.unit_offset), ("[Hu499]", vocab.unit_offset + 499),
                         ("[Pi3]", vocab.pitch_offset + 3), ("[St99]", vocab.style_offset + 99),
                         ("[FR]", vocab.lang_tag_id("fr"))):
        assert tok.convert_tokens_to_ids(tag) == want_id, tag
    text = "the cat sat on the lazy dog"
    ids = source_tok.encode(text)
    assert tok.encode(text) == ids
    assert tok.decode(ids) == source_tok.decode(ids) == text
    assert tok.encode("[Speech][Hu3][Hu7]") == [vocab.speech_marker_id, *vocab.units_to_ids([3, 7]).tolist()]

    # export: every id (speech ones too) gives our logits in transformers; the tokenizer goes along
    out = str(tmp_path / "exported")
    result = hf_export.export_hf(model_dir, out)
    assert "speech tokens" in result.tokenizer
    all_tokens = random_tokens(cfg.vocab_size, seed=1)
    assert_close(hf_logits(out, all_tokens), our_logits(model_dir, all_tokens))
    exported_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert exported_tok.convert_tokens_to_ids("[Hu3]") == vocab.unit_offset + 3
    assert exported_tok.decode(ids) == text


def test_spiritlm_layout(tmp_path):
    with pytest.raises(VocabLayoutError, match="32000-token Llama-2 vocabulary.*300 embedding rows"):
        hf_import.plan_import(save_hf_model(tmp_path / "small", "llama", tie=True), {"layout": "spiritlm"})

    hf_dir = save_hf_model(tmp_path / "hf", "llama", tie=True, vocab_size=32000)
    model_dir = str(tmp_path / "model")
    cfg = import_hf(hf_dir, model_dir, vocab={"layout": "spiritlm"}, decoder_options=F32)
    assert cfg.vocab_size == 32768  # 32667 SpiritLM ids, padded
    # no tokenizer in the source: export lists the speech tokens' ids instead
    out = str(tmp_path / "exported")
    assert "none" in hf_export.export_hf(model_dir, out).tokenizer
    with open(os.path.join(out, hf_export.SPEECH_TOKENS_FILE)) as f:
        ids = json.load(f)
    assert (ids["[Text]"], ids["[Speech]"], ids["[Hu0]"], ids["[Hu500]"]) == (32000, 32001, 32002, 32502)
    assert (ids["[Pi0]"], ids["[Pi63]"], ids["[St0]"], ids["[St99]"]) == (32503, 32566, 32567, 32666)


# --------------------------------------------------------------------------------------
# training continues from the import
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trainer_restores_the_import_and_its_training_exports(tmp_path):
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.partitioning import MeshConfig, make_mesh
    from slm_jax.training.train import check_model_dir_compatible
    from slm_jax.training.trainer import TrainConfig, Trainer

    hf_dir = save_hf_model(tmp_path / "hf", "qwen2", tie=False)
    model_dir = str(tmp_path / "model")
    cfg = import_hf(hf_dir, model_dir, decoder_options=F32)
    check_model_dir_compatible(model_dir, cfg)  # what `slm-jax train` checks before resuming
    # one device, not the import's 8 (orbax reshards on restore), and a faster compile
    mesh_cfg = MeshConfig(data=1, fsdp=1, tensor=1)
    trainer = Trainer(cfg, OptimizerConfig(warmup_steps=0), TrainConfig(z_loss=0.0),
                      make_mesh(mesh_cfg, jax.devices()[:1]), mesh_cfg.logical_axis_rules, total_steps=2,
                      batch_size=8, sequence_length=16)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    with checkpoints.CheckpointManager(ckpt_dir, save_period=1, async_save=False) as ckpt:
        assert ckpt.all_steps() == [0]
        state = ckpt.restore(trainer.abstract_state, step=0)
        assert int(state["step"]) == 0

        rng = np.random.default_rng(0)
        inputs, targets = (rng.integers(0, TEXT_VOCAB, size=(8, 16)) for _ in range(2))
        batch = {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
                 "decoder_loss_weights": np.ones_like(inputs), "decoder_segment_ids": np.ones_like(inputs),
                 "decoder_positions": np.broadcast_to(np.arange(16), inputs.shape)}
        logits = torch.tensor(hf_logits(hf_dir, inputs, "qwen2"))
        want_loss = float(torch.nn.functional.cross_entropy(logits.reshape(-1, TEXT_VOCAB),
                                                            torch.tensor(targets).reshape(-1)))
        state, first = trainer.train_step(state, trainer.global_batch(batch))
        state, second = trainer.train_step(state, trainer.global_batch(batch))
        # the first loss is the imported params' (before their first update); training lowers it
        assert float(first["loss"]) == pytest.approx(want_loss, rel=1e-4)
        assert int(state["step"]) == 2 and float(second["loss"]) < want_loss
        ckpt.save(2, state, force=True)

    # a trained checkpoint exports too, also without the import record (config.json from model_config.json)
    os.remove(os.path.join(model_dir, hf_import.IMPORT_RECORD))
    out = str(tmp_path / "exported")
    result = hf_export.export_hf(model_dir, out)
    assert (result.step, result.family) == (2, "qwen2")
    tokens = random_tokens(TEXT_VOCAB)
    assert_close(hf_logits(out, tokens, "qwen2"), our_logits(model_dir, tokens))


def test_model_gin_makes_the_run_match_the_import(tmp_path):
    """A run gin file followed by MODEL_DIR/model.gin describes the imported model (train's own check)."""
    from slm_jax import gin_utils
    from slm_jax.training.train import TrainRun, check_model_dir_compatible

    model_dir = str(tmp_path / "model")
    cfg = import_hf(save_hf_model(tmp_path / "hf", "qwen2", tie=True), model_dir, vocab={"layout": "speech"})
    gin_utils.parse_gin(["gin/runs/test_cpu.gin", os.path.join(model_dir, "model.gin")],
                        [f"MODEL_DIR = '{model_dir}'"])
    run = TrainRun()
    assert run.model.shape_dict() == cfg.shape_dict()
    assert (run.model.rope_theta, run.model.norm_eps) == (cfg.rope_theta, cfg.norm_eps)
    check_model_dir_compatible(run.model_dir, run.model)


# --------------------------------------------------------------------------------------
# errors: raised before anything is written, naming the file and key
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    return save_hf_model(tmp_path_factory.mktemp("hf_errors") / "hf", "llama", tie=False)


def _edit_config(hf_dir, **changes):
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, **changes}, f)


def _edit_tensors(hf_dir, drop=(), add=None):
    from safetensors.numpy import load_file, save_file

    path = os.path.join(hf_dir, "model.safetensors")
    tensors = {k: v for k, v in load_file(path).items() if k not in drop}
    save_file({**tensors, **(add or {})}, path, metadata={"format": "pt"})


def _write_index(hf_dir, extra_file):
    from safetensors import safe_open

    with safe_open(os.path.join(hf_dir, "model.safetensors"), "np") as f:
        weight_map = dict.fromkeys(f.keys(), "model.safetensors")
    weight_map["lm_head.weight"] = extra_file
    with open(os.path.join(hf_dir, hf_import.INDEX_FILE), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


BREAKAGES = {
    "architecture": (lambda d: _edit_config(d, model_type="gpt2"), UnsupportedModelError,
                     r"config\.json: model_type='gpt2' is not supported"),
    "rope_scaling": (lambda d: _edit_config(d, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
                     UnsupportedModelError, r"config\.json: rope_parameters\.rope_type='yarn' is not supported"),
    "no_config": (lambda d: os.remove(os.path.join(d, "config.json")), FileNotFoundError,
                  r"hf/config\.json: no such file"),
    "no_weights": (lambda d: os.remove(os.path.join(d, "model.safetensors")), FileNotFoundError,
                   r"no model\.safetensors or model\.safetensors\.index\.json"),
    "missing_shard": (lambda d: _write_index(d, "model-00002-of-00002.safetensors"), FileNotFoundError,
                      r"model\.safetensors\.index\.json lists .*model-00002-of-00002\.safetensors, which does not"),
    "missing_tensor": (lambda d: _edit_tensors(d, drop=["model.layers.1.mlp.up_proj.weight"]),
                       CheckpointMismatchError,
                       r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing"),
    "shape": (lambda d: _edit_config(d, intermediate_size=100), CheckpointMismatchError,
              (r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(172, 64\), "
               r"but config\.json implies \(100, 64\)")),
    "unexpected_tensor": (lambda d: _edit_tensors(d, add={"model.layers.0.self_attn.o_proj.bias": np.zeros(64)}),
                          CheckpointMismatchError, r"model\.safetensors: 1 tensor\(s\) the Decoder has no place for"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_bad_checkpoints_fail_early(hf_model_dir, tmp_path, breakage):
    hf_dir = str(tmp_path / "hf")
    shutil.copytree(hf_model_dir, hf_dir)
    damage, error, message = BREAKAGES[breakage]
    damage(hf_dir)
    model_dir = str(tmp_path / "model")
    with pytest.raises(error, match=message):
        import_hf(hf_dir, model_dir)
    assert not os.path.exists(model_dir)


def test_export_refuses_a_model_dir_without_a_checkpoint(tmp_path, capsys):
    assert export_hf_cli.cmd_export_hf([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "model_config.json: no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_slm_jax_train_continues_from_the_import(demo_data_dir, tmp_path):
    """`slm-jax train`'s loop restores the imported step 0 (which has no data position) and trains on."""
    from slm_jax import gin_utils
    from slm_jax.training.train import TrainRun, run_training

    model_dir = str(tmp_path / "model")
    import_hf(save_hf_model(tmp_path / "hf", "llama", tie=False), model_dir)
    gin.clear_config()
    gin_utils.parse_gin(["gin/runs/test_cpu.gin", os.path.join(model_dir, "model.gin")],
                        [f"MODEL_DIR = '{model_dir}'", "TRAIN_STEPS = 2", "CHECKPOINT_PERIOD = 2",
                         "SEQUENCE_LENGTH = 32", "train.log_period = 1", "train.eval_period = 0"])
    try:
        assert run_training(TrainRun())["step"] == 2
    finally:
        gin.clear_config()
    assert checkpoints.list_complete_steps(os.path.join(model_dir, "checkpoints")) == [0, 2]


def test_train_refuses_a_task_vocabulary_other_than_the_imported_layout(tmp_path):
    """A run made by import-hf with the speech layout trains only on tasks whose SpeechTextVocabulary
    has the imported text block and streams: another text size or unit count would put every speech
    id on another embedding row than the one the import initialised (found by a new user's run)."""
    import types

    from slm_jax.data.registration import register_corpus_task
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
    from slm_jax.data.tokenizers.unit_vocab import UnitVocabulary
    from slm_jax.training.train import ModelDataMismatchError, check_imported_vocabulary

    model_dir = str(tmp_path / "model")
    import_hf(save_hf_model(tmp_path / "hf", "llama", tie=True), model_dir,
              vocab={"layout": "speech", "num_units": 10}, decoder_options=F32)
    files = {"train": str(tmp_path / "none-*.tfrecord")}  # never read: the check needs the vocabulary only
    cases = {"match": SpeechTextVocabulary(None, num_units=10, text_vocab_size=TEXT_VOCAB),
             "text": SpeechTextVocabulary(None, num_units=10, text_vocab_size=TEXT_VOCAB - 40),
             "units": SpeechTextVocabulary(None, num_units=500, text_vocab_size=TEXT_VOCAB),
             "sentinels": SpeechTextVocabulary(None, num_units=10, text_vocab_size=TEXT_VOCAB, num_sentinels=100),
             "unit_vocab": UnitVocabulary(10)}
    for name, vocab in cases.items():
        register_corpus_task(f"imported_layout_{name}", files, [], vocab)
    run = lambda name: types.SimpleNamespace(  # noqa: E731
        model_dir=model_dir, eval_dataset=None,
        train_dataset=types.SimpleNamespace(mixture_or_task_name=f"imported_layout_{name}"))
    check_imported_vocabulary(run("match"))
    with pytest.raises(ModelDataMismatchError, match=rf"text_vocab_size={TEXT_VOCAB - 40}.*text_vocab_size={TEXT_VOCAB}"):
        check_imported_vocabulary(run("text"))
    with pytest.raises(ModelDataMismatchError, match=r"num_units=500.*num_units=10"):
        check_imported_vocabulary(run("units"))
    with pytest.raises(ModelDataMismatchError, match=r"num_sentinels=100.*num_sentinels=0"):  # import --num_sentinels
        check_imported_vocabulary(run("sentinels"))
    with pytest.raises(ModelDataMismatchError, match=r"uses UnitVocabulary, but .* 'speech' speech layout"):
        check_imported_vocabulary(run("unit_vocab"))  # has num_units too, not the layout's other fields



def test_unit_tasks_on_a_byte_level_import_end_with_the_checkpoints_eos(tmp_path, caplog):
    """A byte-level LLM (no SentencePiece model) trains unit-only tasks with a placeholder text block;
    `eos_id` puts the checkpoint's own EOS at the end of every sequence (id 1 would be an ordinary
    token); a task that keeps the placeholder EOS is warned about, naming the recorded ids."""
    import logging
    import types

    from slm_jax.data.registration import register_corpus_task
    from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
    from slm_jax.training.train import check_imported_vocabulary

    model_dir = str(tmp_path / "model")
    import_hf(save_hf_model(tmp_path / "hf", "qwen2", tie=True), model_dir,
              vocab={"layout": "speech", "num_units": 10}, decoder_options=F32)
    with open(os.path.join(model_dir, hf_import.IMPORT_RECORD)) as f:
        eos = json.load(f)["tokens"]["eos_ids"]
    assert eos == [TEXT_VOCAB - 1]  # the fixture's <|endoftext|>
    good = SpeechTextVocabulary(None, num_units=10, text_vocab_size=TEXT_VOCAB, eos_id=eos[0])
    assert good.eos_id == eos[0] and good.modality_ids([eos[0], 1])[0] == 3  # a marker, id 1 a text token
    files = {"train": str(tmp_path / "none-*.tfrecord")}
    for name, vocab in (("eos_good", good), ("eos_placeholder",
                                             SpeechTextVocabulary(None, num_units=10, text_vocab_size=TEXT_VOCAB))):
        register_corpus_task(f"imported_{name}", files, [], vocab)
    run = lambda name: types.SimpleNamespace(  # noqa: E731
        model_dir=model_dir, eval_dataset=None,
        train_dataset=types.SimpleNamespace(mixture_or_task_name=f"imported_{name}"))
    with caplog.at_level(logging.WARNING, logger="slm_jax"):
        check_imported_vocabulary(run("eos_good"))
        assert "EOS" not in caplog.text
        check_imported_vocabulary(run("eos_placeholder"))
    assert f"ends every sequence with id 1" in caplog.text and f"eos_id={eos[0]}" in caplog.text
    with pytest.raises(ValueError, match=r"eos_id must be an int in \[1, text_vocab_size=300\)"):
        SpeechTextVocabulary(None, num_units=10, text_vocab_size=TEXT_VOCAB, eos_id=0)


def test_speech_layout_with_span_corruption_sentinels(tmp_path):
    """--num_sentinels appends T5's <extra_id_N> after the speech tokens (SpiritLM's ids kept), in the
    tokenizer too, so an imported text LM can train denoising tasks (slm_jax.data.preprocessors.span_corruption)."""
    hf_dir = save_hf_model(tmp_path / "hf", "llama", tie=False)
    save_tiny_tokenizer(hf_dir)
    model_dir = str(tmp_path / "model")
    layout = {**SPEECH, "num_sentinels": 100}
    cfg = import_hf(hf_dir, model_dir, vocab=layout, seed=3, decoder_options=F32)
    vocab = hf_import.VocabExtension.create(**{**layout, "text_vocab_size": TEXT_VOCAB}).vocabulary
    plain = hf_import.VocabExtension.create(**{**SPEECH, "text_vocab_size": TEXT_VOCAB}).vocabulary
    assert vocab.sentinel_offset == plain.vocab_size and vocab.vocab_size == plain.vocab_size + 100
    assert cfg.vocab_size == math.ceil(vocab.vocab_size / 128) * 128
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    for k in (0, 1, 99):
        assert tok.convert_tokens_to_ids(f"<extra_id_{k}>") == vocab.sentinel_id(k)
    assert tok.encode("[Speech][Hu3]<extra_id_0>") == [vocab.speech_marker_id, vocab.unit_offset + 3,
                                                       vocab.sentinel_id(0)]
    with open(os.path.join(model_dir, hf_import.IMPORT_RECORD)) as f:
        assert json.load(f)["vocab"]["num_sentinels"] == 100
    with pytest.raises(VocabLayoutError, match="--num_sentinels needs a speech layout"):
        hf_import.VocabExtension.create("none", TEXT_VOCAB, num_sentinels=10)
    spirit = hf_import.VocabExtension.create("spiritlm", 32000, num_sentinels=100).vocabulary
    assert (spirit.style_offset + 99, spirit.sentinel_id(99), spirit.sentinel_id(0)) == (32666, 32667, 32766)
