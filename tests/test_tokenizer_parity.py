"""Tokenizer parity after export (issue 13 kind 5).

The tokenizer `export-hf` writes (the imported Llama SentencePiece tokenizer plus the speech
tokens) gives `SpeechTextVocabulary`'s ids on interleaved strings and decodes them back, for
both settings of the source's Llama `legacy` flag and `use_fast` True/False. The rule the
export sets (`hf_vocab.SPAN_RULE`: every text span with SentencePiece's dummy prefix) is
recorded in the tokenizer config and the export's README; transformers' own Llama pipeline
does not follow it (checked: that is why the export sets it).
"""
import os

import gin
import pytest

from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary
from slm_jax.interop import hf_export
from slm_jax.interop.hf_import import import_hf
from slm_jax.interop.hf_vocab import SPAN_RULE
from tests.test_hf_interop import F32, TEXT_VOCAB, save_hf_model, save_spm_llama_tokenizer, save_tiny_tokenizer

transformers = pytest.importorskip("transformers")

STREAMS = dict(num_units=10, num_pitch=4, num_style=3, langs=("en", "fr"))
# interleaved strings in the SpeechTextVocabulary string form, and their neighbours
STRINGS = [
    "[Text]the cat[Speech][Hu3][Hu7][Text] sat on the mat",  # the example: leading space after a marker
    "[Speech][Hu1][Text]the cat",  # text right after [Text]
    "[Text] the cat",  # a leading space right after the first marker
    "[Speech]the cat",  # text right after [Speech]
    "[Speech][Hu3][Text]sat[Speech][Hu2]",  # text between speech runs
    "[Speech][Hu3][Pi2][St1][Hu4][Pi0][Text]a dog",  # expressive tokens (SpiritLM's [Pi]/[St])
    "[EN][Text]the cat[FR][Speech][Hu9][Text]le chat",  # language tags
    "[Text]le chat[FR] ça coûte 10\u202f000 euros…",  # unicode after a tag: byte fallback, NNBSP, ellipsis
    "[Text]e\u0301te\u0301 \ufb01n",  # decomposed accents and a ligature: NFKC in both tokenizers
    "the cat sat",  # no tag at all
    " the  cat ",  # repeated and edge spaces
    "[Hu3]the[Hu4]",  # text right after a unit tag
]
# strings whose spans are already normalised (no edge or repeated spaces, NFKC): decode gives them back exactly
CANONICAL = [STRINGS[i] for i in (1, 3, 4, 5, 6, 9, 11)] + ["[Text]the cat[Speech][Hu3][Hu7][Text]sat on the mat"]
WHITESPACE_SPAN = "[Speech][Hu3] [Text]a"  # whitespace-only spans are dropped (SpeechTextVocabulary's rule)


@pytest.fixture(autouse=True)
def _no_gin_state():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "not_legacy"])
def exported(request, tmp_path_factory):
    """(export dir, SpeechTextVocabulary of the same SentencePiece model, MODEL_DIR) for one `legacy` setting."""
    root = tmp_path_factory.mktemp(f"parity_{request.param}")
    hf_dir = save_hf_model(root / "hf", "llama", tie=True)
    spm_path = save_spm_llama_tokenizer(hf_dir, legacy=request.param)
    vocab = SpeechTextVocabulary(spm_path, **STREAMS)
    assert vocab.text_vocab_size == TEXT_VOCAB  # the model's rows are the tokenizer's pieces
    model_dir = str(root / "model")
    import_hf(hf_dir, model_dir, vocab={"layout": "speech", **STREAMS}, decoder_options=F32)
    out = str(root / "exported")
    result = hf_export.export_hf(model_dir, out)
    assert "slm_jax's text-span rule" in result.tokenizer
    return out, vocab, model_dir


@pytest.mark.parametrize("legacy_at_load", [None, True, False], ids=["as_saved", "load_legacy", "load_not_legacy"])
@pytest.mark.parametrize("use_fast", [True, False], ids=["fast", "slow"])
def test_exported_tokenizer_gives_speech_text_vocabulary_ids(exported, use_fast, legacy_at_load):
    """transformers 5 has one Llama tokenizer implementation (use_fast=False loads the same class);
    both flags are still passed, as a user of either transformers generation would."""
    out, vocab, _ = exported
    kwargs = {} if legacy_at_load is None else {"legacy": legacy_at_load}
    tok = transformers.AutoTokenizer.from_pretrained(out, use_fast=use_fast, **kwargs)
    for s in STRINGS:
        ids = vocab.encode(s)
        assert tok(s, add_special_tokens=False)["input_ids"] == ids, s
        # both decode to the string with each text span normalised (normalize_text); its ids are the same ids
        assert tok.decode(ids) == vocab.decode(ids), s
        assert vocab.encode(vocab.decode(ids)) == ids, s
        if s in CANONICAL:
            assert vocab.decode(ids) == s, s
    ids = vocab.encode(WHITESPACE_SPAN)
    assert tok(WHITESPACE_SPAN, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode(ids) == vocab.decode(ids) == "[Speech][Hu3][Text]a"
    # BOS still first for a Hugging Face user's tokenizer(text), as before the rewrite
    assert tok(STRINGS[0])["input_ids"] == [1, *vocab.encode(STRINGS[0])]


def test_the_export_says_which_rule_it_set(exported):
    out, _, _ = exported
    config = transformers.AutoTokenizer.from_pretrained(out).init_kwargs
    assert config["slm_jax_text_spans"] == SPAN_RULE and config["legacy"] is True
    with open(os.path.join(out, "README.md")) as f:
        assert SPAN_RULE in f.read()


def test_transformers_llama_pipeline_differs_which_is_why_export_sets_it(exported):
    """The imported tokenizer (transformers' own Llama pipeline, speech tokens added) does not give
    slm_jax's ids after a marker: without the export's rule the parity test above would fail."""
    _, vocab, model_dir = exported
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    s = STRINGS[1]  # transformers gives no dummy prefix to the text right after a special token
    assert tok(s, add_special_tokens=False)["input_ids"] != vocab.encode(s)


def test_byte_level_tokenizers_are_exported_as_they_are(tmp_path):
    """Byte-level BPE (Qwen2/GPT-2 style) has no dummy prefix and no SentencePiece model for
    SpeechTextVocabulary to mirror: copied unchanged, and the export says nothing was set."""
    hf_dir = save_hf_model(tmp_path / "hf", "llama", tie=True)
    source = save_tiny_tokenizer(hf_dir)
    model_dir = str(tmp_path / "model")
    import_hf(hf_dir, model_dir, vocab={"layout": "speech", **STREAMS}, decoder_options=F32)
    result = hf_export.export_hf(model_dir, str(tmp_path / "out"))
    assert "text-span rule" not in result.tokenizer
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    text = "the cat sat on the mat"
    assert tok(text)["input_ids"] == source(text)["input_ids"]
