"""import-hf / export-hf for the text LMs spoken LMs start from today, against transformers.

One tiny random model per family (built with transformers here, fp32, no download): Llama 3.x
(llama3 RoPE scaling, its published config.json form and transformers 5's), a linear-scaled
Llama, Qwen2.5, Qwen3 (q/k norm, head_dim other than hidden / heads) and SmolLM2, tied and
untied. Logits after import equal transformers' within 1e-4, again after export and reload,
at positions beyond `original_max_position_embeddings` for llama3 scaling; KV-cache greedy
generation equals transformers' `generate(do_sample=False)` for 16 tokens; the scorer gives
transformers' log-likelihoods. Each family's tokenizer layout (tokenizer_config.json written
as published, tokenizer.json trained here) gives its BOS / EOS conventions in the run's
records. Unsupported config.json fields are refused naming the file and key, before any
weight is read.
"""
import dataclasses
import json
import os
import shutil

import gin
import numpy as np
import pytest

from slm_jax.evaluation import generate as gen
from slm_jax.evaluation.runner import ModelRunner
from slm_jax.interop import hf_export, hf_import
from slm_jax.interop.hf_layout import UnsupportedModelError
from slm_jax.models.decoder import Decoder
from slm_jax.training import run_dir
from tests.test_hf_interop import CORPUS, F32, TOLERANCE, imported_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 300
LENGTH = 48  # positions 0..47: past original_max_position_embeddings = 32 below
ORIGINAL_MAX = 32
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=1e-5, initializer_range=0.1, vocab_size=VOCAB, max_position_embeddings=256)
# theta 1000, head_dim 16: pair wavelengths 6.3, 15, 35, 84, ... -> one pair kept (< 32 / 4), one blended
# (between 32 / 4 and 32 / 1), the rest divided by the factor: every branch of the llama3 rule is used
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL_MAX}


@dataclasses.dataclass(frozen=True)
class Family:
    """A tiny stand-in for a published checkpoint family."""

    model_type: str
    tie: bool
    config: dict  # config class keyword arguments
    published_keys: dict = dataclasses.field(default_factory=dict)  # config.json edits after saving (published form)
    tokenizer: str | None = None  # a key of TOKENIZERS
    generation_eos: tuple = ()  # generation_config.json eos_token_id list, as published
    slow: bool = True


FAMILIES = {
    # meta-llama/Llama-3.2-1B: tied; config.json in transformers 4.x form (rope_theta + rope_scaling)
    "llama3.2": Family("llama", True, dict(rope_parameters={**LLAMA3_ROPE, "rope_theta": 1000.0},
                                           bos_token_id=270, eos_token_id=271),
                       {"rope_parameters": None, "rope_theta": 1000.0, "rope_scaling": LLAMA3_ROPE},
                       tokenizer="llama3", slow=False),
    # Llama 3.1 8B: untied; config.json as transformers 5 writes it (rope_parameters)
    "llama3.1": Family("llama", False, dict(rope_parameters={**LLAMA3_ROPE, "rope_theta": 1000.0},
                                            bos_token_id=270, eos_token_id=271), tokenizer="llama3"),
    # linear scaling in the old 4.x spelling ("type")
    "llama_linear": Family("llama", False, dict(rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                                 "rope_theta": 1000.0}),
                           {"rope_parameters": None, "rope_theta": 1000.0,
                            "rope_scaling": {"type": "linear", "factor": 4.0}}),
    # Qwen/Qwen2.5-0.5B: tied, q/k/v biases, a sliding_window value that use_sliding_window=false leaves unused
    "qwen2.5": Family("qwen2", True, dict(rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                                          bos_token_id=270, eos_token_id=270, use_sliding_window=False,
                                          sliding_window=32, max_window_layers=2),
                      tokenizer="qwen2.5", slow=False),
    # Qwen/Qwen3-0.6B: tied, q/k norm, head_dim 24 != 64 / 4, eos <|im_end|>
    "qwen3": Family("qwen3", True, dict(head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
                                        bos_token_id=270, eos_token_id=272, use_sliding_window=False),
                    tokenizer="qwen3", generation_eos=(272, 270), slow=False),
    # Qwen3 4B+ style: untied
    "qwen3_untied": Family("qwen3", False, dict(head_dim=24, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": 1000.0},
                                                bos_token_id=270, eos_token_id=272)),
    # HuggingFaceTB/SmolLM2-135M: llama model_type, tied, 3 heads / 1 kv head, bos = eos = 0, nanotron's keys
    "smollm2": Family("llama", True, dict(hidden_size=48, num_attention_heads=3, num_key_value_heads=1,
                                          rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                          bos_token_id=0, eos_token_id=0),
                      {"is_llama_config": True, "rope_interleaved": False, "rope_parameters": None,
                       "rope_theta": 100000, "rope_scaling": None},
                      tokenizer="smollm2"),
}
CLASSES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}


@pytest.fixture(autouse=True)
def _no_gin_state():
    gin.clear_config()
    yield
    gin.clear_config()


def hf_class(model_type, kind="ForCausalLM"):
    return getattr(transformers, CLASSES[model_type] + kind)


def _edit_json(path, changes):
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    # a change to None removes the key (rope_scaling excepted: published 4.x configs write it as null)
    data = {k: v for k, v in data.items() if not (v is None and k in changes and k != "rope_scaling")}
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def save_family(path, family: Family, seed=0):
    """A random tiny model of `family` (norm scales and biases randomised too), saved as published."""
    torch.manual_seed(seed)
    model = hf_class(family.model_type)(hf_class(family.model_type, "Config")(
        **{**TINY, "tie_word_embeddings": family.tie, **family.config})).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.5)
    model.save_pretrained(path, safe_serialization=True)
    if family.published_keys:
        _edit_json(os.path.join(path, "config.json"), family.published_keys)
    if family.generation_eos:
        _edit_json(os.path.join(path, "generation_config.json"), {"eos_token_id": list(family.generation_eos)})
    if family.tokenizer:
        save_tokenizer(path, family.tokenizer)
    return str(path)


# --------------------------------------------------------------------------------------
# tokenizers in each family's published layout (tokenizer_config.json keys as published;
# a byte-level BPE trained here stands in for the vocabulary, special tokens where the family puts them)
# --------------------------------------------------------------------------------------

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SMOLLM2_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                   "<filename>"]
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _qwen_config(eos):
    """Qwen2.5 / Qwen3 tokenizer_config.json: no BOS, <|endoftext|> pads, a chat template."""
    return {"add_bos_token": False, "add_prefix_space": False, "additional_special_tokens": QWEN_SPECIAL[1:],
            "bos_token": None, "chat_template": CHAT, "clean_up_tokenization_spaces": False, "eos_token": eos,
            "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
            "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}


# name -> (special tokens before the BPE merges (ids from 0), special tokens after them, tokenizer_config.json,
#          whether tokenizer.json's post-processor puts <|begin_of_text|> first)
TOKENIZERS = {
    # meta-llama/Llama-3.2-1B: BOS added by tokenizer.json's TemplateProcessing, no add_bos_token key
    "llama3": ([], LLAMA3_SPECIAL, {"bos_token": "<|begin_of_text|>", "clean_up_tokenization_spaces": True,
                                    "eos_token": "<|end_of_text|>",
                                    "model_input_names": ["input_ids", "attention_mask"],
                                    "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast"}, True),
    "qwen2.5": ([], QWEN_SPECIAL, _qwen_config("<|endoftext|>"), False),  # Qwen/Qwen2.5-0.5B
    "qwen3": ([], QWEN_SPECIAL, _qwen_config("<|im_end|>"), False),  # Qwen/Qwen3-0.6B
    # HuggingFaceTB/SmolLM2-135M: GPT2Tokenizer, specials first, bos = eos = unk = <|endoftext|> (0), none added
    "smollm2": (SMOLLM2_SPECIAL, [], {"add_prefix_space": False, "additional_special_tokens": SMOLLM2_SPECIAL,
                                      "bos_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
                                      "eos_token": "<|endoftext|>", "model_max_length": 8192,
                                      "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>",
                                      "vocab_size": 49152}, False),
}


def save_tokenizer(path, name):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    first, last, config, adds_bos = TOKENIZERS[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=270, special_tokens=first,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in last])
    ids = {t: tok.token_to_id(t) for t in first + last}
    byte_level = processors.ByteLevel(trim_offsets=False)
    tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", ids["<|begin_of_text|>"])])]) if adds_bos else byte_level
    tok.save(os.path.join(str(path), "tokenizer.json"))
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in ids.items()}
    with open(os.path.join(str(path), "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": decoder, **config}, f, indent=2)
    return ids


# --------------------------------------------------------------------------------------
# one import per family
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Imported:
    name: str
    family: Family
    hf_dir: str
    model_dir: str
    cfg: object
    params: dict
    hf_model: object


def _family_params():
    return [pytest.param(name, marks=[] if f.slow is False else [pytest.mark.slow]) for name, f in FAMILIES.items()]


@pytest.fixture(scope="module", params=_family_params())
def imported(request, tmp_path_factory):
    name = request.param
    family = FAMILIES[name]
    root = tmp_path_factory.mktemp(name.replace(".", "_"))
    hf_dir = save_family(root / "hf", family)
    model_dir = str(root / "model")
    cfg = hf_import.import_hf(hf_dir, model_dir, decoder_options={**F32, "scan_layers": True})
    hf_model = hf_class(family.model_type).from_pretrained(hf_dir, dtype=torch.float32)
    # greedy generation runs the full 16 tokens on both sides (transformers would stop at an EOS; a
    # GenerationConfig's eos_token_id=None falls back to the model's)
    hf_model.generation_config.eos_token_id = None
    return Imported(name, family, hf_dir, model_dir, cfg, imported_params(model_dir), hf_model)


def tokens_of(seed=0, rows=2):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(rows, LENGTH)).astype(np.int32)


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def our_logits(cfg, params, tokens):
    return np.asarray(Decoder(cfg).apply({"params": params}, tokens).logits)


def test_logits_equal_transformers_after_import_and_after_export(imported, tmp_path):
    family, cfg = imported.family, imported.cfg
    assert (cfg.tie_embeddings, cfg.use_qkv_bias, cfg.qk_norm) == (family.tie, family.model_type == "qwen2",
                                                                  family.model_type == "qwen3")
    tokens = tokens_of()
    want = hf_logits(imported.hf_model, tokens)
    assert np.std(want) > 0.1, "logits too small for the comparison to mean anything"
    got = our_logits(cfg, imported.params, tokens)
    imported_diff = float(np.abs(got - want).max())
    assert imported_diff <= TOLERANCE, imported_diff
    if cfg.rope_type != "default":  # the scaling matters, most past the original context
        plain = dataclasses.replace(cfg, rope_type="default", rope_scaling_factor=1.0, rope_low_freq_factor=1.0,
                                    rope_high_freq_factor=4.0, rope_original_max_positions=8192)
        assert np.abs(our_logits(plain, imported.params, tokens) - want)[:, ORIGINAL_MAX:].max() > 100 * TOLERANCE

    out = str(tmp_path / "exported")
    result = hf_export.export_hf(imported.model_dir, out)
    assert result.family == family.model_type
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    # transformers 4.x reads rope_theta + rope_scaling, transformers 5 rope_parameters: both written
    assert config["rope_theta"] == cfg.rope_theta and config["rope_parameters"]["rope_theta"] == cfg.rope_theta
    assert config["rope_parameters"]["rope_type"] == cfg.rope_type
    if cfg.rope_type == "default":
        assert config["rope_scaling"] is None
    else:
        assert config["rope_scaling"]["rope_type"] == cfg.rope_type
        assert config["rope_scaling"]["factor"] == config["rope_parameters"]["factor"] == cfg.rope_scaling_factor
    reloaded = hf_class(family.model_type).from_pretrained(out, dtype=torch.float32)
    if cfg.qk_norm:
        np.testing.assert_array_equal(reloaded.model.layers[1].self_attn.k_norm.weight.detach().numpy(),
                                      imported.hf_model.model.layers[1].self_attn.k_norm.weight.detach().numpy())
    exported_diff = float(np.abs(hf_logits(reloaded, tokens) - want).max())
    assert exported_diff <= TOLERANCE, exported_diff
    print(f"{imported.name}: max |logit diff| after import {imported_diff:.2e}, after export {exported_diff:.2e}")


def test_kv_cache_greedy_generation_equals_transformers(imported):
    """16 new tokens from two prompts of different lengths in one left-padded batch, behind the run's BOS,
    = transformers' greedy generate on [BOS, *prompt], token for token (past 32 positions)."""
    bos = run_dir.read_bos_record(imported.model_dir)["bos_id"]
    rows = tokens_of(seed=1)
    prompts = [rows[0, :30].tolist(), rows[1, :19].tolist()]
    ours = gen.generate(ModelRunner(Decoder(imported.cfg), imported.params), prompts, 16, bos_id=bos).tokens
    config = transformers.GenerationConfig(max_new_tokens=16, do_sample=False, pad_token_id=0)
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([[bos, *prompt]])
        with torch.no_grad():
            want = imported.hf_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        assert got.tolist() == want[0, ids.shape[1]:].tolist(), (imported.name, len(prompt))


def test_scorer_equals_transformers_log_likelihood(imported):
    """The scorer (the scoring path) gives transformers' log p(ids | BOS) past the original context."""
    from slm_jax.evaluation.likelihood import SUM_ALL, LikelihoodScorer, ScoredSequence

    bos = run_dir.read_bos_record(imported.model_dir)["bos_id"]
    seqs = [row[: n].tolist() for row, n in zip(tokens_of(seed=2), (LENGTH - 1, 20))]
    scorer = LikelihoodScorer(ModelRunner(Decoder(imported.cfg), imported.params), batch_size=2, bos_id=bos)
    got = scorer([ScoredSequence(np.asarray(s, np.int32), len(s)) for s in seqs])[:, SUM_ALL]
    want = []
    for s in seqs:
        logits = torch.tensor(hf_logits(imported.hf_model, np.asarray([[bos, *s[:-1]]])))[0].double()
        want.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(s)[:, None]).sum()))
    np.testing.assert_allclose(got, want, rtol=0, atol=10 * TOLERANCE)


# --------------------------------------------------------------------------------------
# the run's records: model.gin, model_config.json, BOS / EOS conventions
# --------------------------------------------------------------------------------------

# family -> (bos token, tokenizer adds it, eos tokens in order: config.json, generation_config.json, tokenizer)
CONVENTIONS = {
    "llama3.2": ("<|begin_of_text|>", True, ["<|end_of_text|>"]),
    "llama3.1": ("<|begin_of_text|>", True, ["<|end_of_text|>"]),
    "qwen2.5": ("<|endoftext|>", False, ["<|endoftext|>"]),
    "qwen3": ("<|endoftext|>", False, ["<|im_end|>", "<|endoftext|>"]),
    "smollm2": ("<|endoftext|>", False, ["<|endoftext|>"]),
}


def test_token_conventions_are_recorded(imported):
    if imported.name not in CONVENTIONS:
        pytest.skip("no tokenizer in this fixture")
    bos_token, adds_bos, eos_tokens = CONVENTIONS[imported.name]
    tok = transformers.AutoTokenizer.from_pretrained(imported.hf_dir)
    with open(os.path.join(imported.model_dir, hf_import.IMPORT_RECORD)) as f:
        record = json.load(f)["tokens"]
    assert (record["bos_token"], record["tokenizer_adds_bos"]) == (bos_token, adds_bos)
    assert record["bos_id"] == tok.convert_tokens_to_ids(bos_token)
    assert record["eos_tokens"] == eos_tokens and record["eos_ids"] == tok.convert_tokens_to_ids(eos_tokens)
    assert record["tokenizer_adds_eos"] is False
    assert record["chat_template"] == imported.family.model_type.startswith("qwen")
    # what a Hugging Face user's tokenizer(text) gives is what the record says
    ids = tok("the cat sat")["input_ids"]
    assert (ids[0] == record["bos_id"]) == adds_bos
    bos = run_dir.read_bos_record(imported.model_dir)
    assert bos["bos_id"] == record["bos_id"] and bos["eos_ids"] == record["eos_ids"]
    assert bos["tokenizer_adds_bos"] == adds_bos
    source = "tokenizer BOS" if adds_bos else "config.json bos_token_id"
    assert bos["source"].startswith(source)
    with open(os.path.join(imported.model_dir, "model.gin")) as f:
        assert f"run_bos_id.bos_id = {record['bos_id']}\n" in f.read()


def test_model_gin_and_model_config_carry_rope_and_qk_norm(imported):
    """A run's gin file followed by MODEL_DIR/model.gin is the imported model, RoPE variant and q/k norm
    included; model_config.json records them."""
    from slm_jax import gin_utils
    from slm_jax.training.train import TrainRun

    cfg = imported.cfg
    fields = ("rope_theta", "rope_type", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
              "rope_original_max_positions", "qk_norm", "head_dim", "norm_eps")
    gin_utils.parse_gin(["gin/runs/test_cpu.gin", os.path.join(imported.model_dir, "model.gin")],
                        [f"MODEL_DIR = '{imported.model_dir}'"])
    run = TrainRun()
    assert {f: getattr(run.model, f) for f in fields} == {f: getattr(cfg, f) for f in fields}
    assert run.model.shape_dict() == cfg.shape_dict()
    saved = run_dir.read_model_config(imported.model_dir)
    assert {f: saved[f] for f in fields} == {f: getattr(cfg, f) for f in fields}


# --------------------------------------------------------------------------------------
# refusals: config.json alone, before any weight is read (the weights file is gone)
# --------------------------------------------------------------------------------------

REFUSALS = {
    "yarn": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
             r"config\.json: rope_scaling\.rope_type='yarn' is not supported; slm_jax's RoPE variants are "
             r"\['default', 'linear', 'llama3'\]"),
    "dynamic_v5": ("qwen2", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
                   r"config\.json: rope_parameters\.rope_type='dynamic' is not supported"),
    "unknown_rope_key": ("llama", {"rope_scaling": {**LLAMA3_ROPE, "mscale": 1.0}},
                         r"config\.json: rope_scaling\.mscale=1\.0 is not supported with rope_type='llama3'"),
    "missing_rope_key": ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0}},
                         r"config\.json: rope_scaling\.original_max_position_embeddings is missing"),
    "rope_forms_disagree": ("llama", {"rope_scaling": LLAMA3_ROPE,
                                      "rope_parameters": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e4}},
                            r"config\.json: rope_scaling=.* and rope_parameters=.* describe different RoPEs"),
    "rope_theta_ambiguous": ("llama", {"rope_theta": 500000.0, "rope_scaling": None,
                                       "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
                             r"config\.json: the RoPE base is ambiguous"),
    "per_layer_rope": ("qwen3", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                                                     "sliding_attention": {"rope_type": "default",
                                                                           "rope_theta": 1e4}}},
                       r"config\.json: rope_parameters holds RoPE parameters per layer type"),
    "llama3_bands": ("llama", {"rope_scaling": {**LLAMA3_ROPE, "low_freq_factor": 4.0}},
                     r"config\.json: rope_scaling\.low_freq_factor=4\.0 and rope_scaling\.high_freq_factor=4\.0 must "
                     r"satisfy 0 < low < high"),
    "linear_factor": ("llama", {"rope_scaling": {"type": "linear", "factor": 0}},
                      r"config\.json: rope_scaling\.factor=0 must be > 0"),
    "partial_rotary": ("llama", {"partial_rotary_factor": 0.5},
                       r"config\.json: partial_rotary_factor=0\.5 is not supported"),
    "interleaved_rope": ("llama", {"rope_interleaved": True}, r"config\.json: rope_interleaved=True is not supported"),
    "qwen3_sliding_window": ("qwen3", {"use_sliding_window": True, "sliding_window": 16},
                             r"config\.json: use_sliding_window=True is not supported"),
    "qwen3_sliding_layers": ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]},
                             r"config\.json: layer_types has \['sliding_attention'\] layers"),
    "qwen2_sliding_window": ("qwen2", {"use_sliding_window": True}, r"config\.json: use_sliding_window=True"),
    "qwen3_attention_bias": ("qwen3", {"attention_bias": True},
                             r"config\.json: attention_bias=True is not supported .*q/k/v/o projections"),
    "llama_attention_bias": ("llama", {"attention_bias": True}, r"config\.json: attention_bias=True is not supported"),
    "llama_mlp_bias": ("llama", {"mlp_bias": True}, r"config\.json: mlp_bias=True is not supported"),
    "activation": ("qwen3", {"hidden_act": "gelu"}, r"config\.json: hidden_act='gelu' is not supported"),
    "quantized": ("llama", {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
                  r"config\.json: quantization_config is not supported"),
    "kv_heads": ("llama", {"num_key_value_heads": 3},
                 r"config\.json: its values do not make a valid DecoderConfig: .*num_kv_heads=3"),
}
BASES = {"llama": "llama3.2", "qwen2": "qwen2.5", "qwen3": "qwen3"}


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    """One saved model per model_type (config.json and weights)."""
    root = tmp_path_factory.mktemp("refusal_bases")
    return {t: save_family(root / t, dataclasses.replace(FAMILIES[name], tokenizer=None))
            for t, name in BASES.items()}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsupported_fields_are_refused_before_any_weight_is_read(base_dirs, tmp_path, case):
    model_type, changes, message = REFUSALS[case]
    hf_dir = str(tmp_path / "hf")
    shutil.copytree(base_dirs[model_type], hf_dir)
    os.remove(os.path.join(hf_dir, "model.safetensors"))  # config.json alone must decide
    path = os.path.join(hf_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, **changes}, f)
    with pytest.raises(UnsupportedModelError, match=message) as err:
        hf_import.plan_import(hf_dir)
    assert str(err.value).startswith(path)  # the file, then the key
    model_dir = str(tmp_path / "model")
    with pytest.raises(UnsupportedModelError):
        hf_import.import_hf(hf_dir, model_dir)
    assert not os.path.exists(model_dir)


def test_supported_spellings_are_read(base_dirs):
    """The RoPE spellings in circulation: 4.x `type`, 4.x `rope_type` + top-level theta, 5's rope_parameters,
    both forms at once when they agree, and a partial rotary factor of 1."""
    from slm_jax.interop.hf_layout import decoder_fields_from_hf, read_hf_config

    config = read_hf_config(base_dirs["llama"])
    for key in ("rope_scaling", "rope_parameters", "rope_theta"):
        config.pop(key, None)
    want = dict(rope_theta=5e5, rope_type="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                rope_high_freq_factor=4.0, rope_original_max_positions=ORIGINAL_MAX)
    spellings = [
        {"rope_theta": 5e5, "rope_scaling": LLAMA3_ROPE},
        {"rope_parameters": {**LLAMA3_ROPE, "rope_theta": 5e5}},
        {"rope_theta": 5e5, "rope_scaling": LLAMA3_ROPE, "rope_parameters": {**LLAMA3_ROPE, "rope_theta": 5e5}},
        {"rope_theta": 5e5, "rope_scaling": {**LLAMA3_ROPE, "type": "llama3", "partial_rotary_factor": 1.0}},
    ]
    for spelling in spellings:
        fields = decoder_fields_from_hf({**config, **spelling})[1]
        assert {k: fields[k] for k in want} == want, spelling
    fields = decoder_fields_from_hf({**config, "rope_scaling": {"type": "linear", "factor": 2.0}})[1]
    assert (fields["rope_type"], fields["rope_scaling_factor"], fields["rope_theta"]) == ("linear", 2.0, 1e4)
    fields = decoder_fields_from_hf({**config, "rope_scaling": None, "rope_theta": 1e6})[1]
    assert (fields["rope_type"], fields["rope_theta"]) == ("default", 1e6)


def test_export_writes_back_the_sources_generation_config(base_dirs, tmp_path):
    """export-hf keeps the imported generation_config.json (Qwen3's EOS list, pad id, sampling defaults)
    and puts the run's BOS in it, so the exported model stops where the source did."""
    hf_dir = str(tmp_path / "hf")
    shutil.copytree(base_dirs["qwen3"], hf_dir)
    path = os.path.join(hf_dir, "generation_config.json")
    with open(path) as f:
        source = json.load(f)
    source.update({"eos_token_id": [7, 9], "pad_token_id": 9, "do_sample": True, "temperature": 0.6, "top_p": 0.95})
    with open(path, "w") as f:
        json.dump(source, f)
    model_dir, out = str(tmp_path / "model"), str(tmp_path / "out")
    hf_import.import_hf(hf_dir, model_dir, decoder_options=F32)
    hf_export.export_hf(model_dir, out)
    with open(os.path.join(out, "generation_config.json")) as f:
        exported = json.load(f)
    with open(os.path.join(model_dir, "bos.json")) as f:
        bos = json.load(f)["bos_id"]
    assert exported["eos_token_id"] == [7, 9] and exported["pad_token_id"] == 9
    assert (exported["do_sample"], exported["temperature"], exported["top_p"]) == (True, 0.6, 0.95)
    assert exported["bos_token_id"] == bos
