"""SeqIO tasks and mixtures over the spoken EN/FR demo corpus (`slm-jax prepare demo-corpus`).

Speech-only token space (units + [EN]/[FR] tags), shared by every speech-only task so
they mix:
  spoken_demo_speech_en / _fr     one language, units deduplicated
  spoken_demo_mixed               EN + FR monolingual utterances (the "mixed" baseline)
  spoken_demo_crosslingual        sentence-level EN<->FR interleaving (Moumen et al.)
  spoken_demo_xl_mix              cross-lingual interleaved + monolingual EN and FR
  spoken_demo_speech_ctc_en       EN speech-only + `ctc_targets`: character ids (`CTC_CHARS`)
                                  of the transcript, for mSLAM's auxiliary CTC; needs
                                  `DatasetConfig.ctc_length` (see "CTC task" below)

Speech + text token space (adds the corpus's SentencePiece model, built lazily):
  spoken_demo_interleaved_en / _fr   word-level speech-text interleaving (SpiritLM, poisson spans)
  spoken_demo_asr_en, spoken_demo_tts_en
  spoken_demo_speech_text            interleaved + speech-only + text-only, 1/3 each (SpiritLM mix)

Denoising token space (the speech + text space plus 100 span-corruption sentinels, `DENOISE_VOCAB`;
`slm_jax.data.preprocessors.span_corruption`, mSLAM's denoising half for a decoder):
  spoken_demo_denoise_speech_en / _fr   speech units (deduplicated), span-corrupted
  spoken_demo_denoise_text_en / _fr     the transcripts' SentencePiece ids, span-corrupted
  spoken_demo_lm_speech_en / _fr        plain LM on the speech, in this token space
  spoken_demo_lm_crosslingual           sentence-level EN<->FR interleaving, in this token space
  spoken_demo_denoise_mix               all of the above: denoising 1/2 of the examples, plain LM 1/2
The denoisers are gin configuration (`denoising.denoisers`; T5's 0.15 / 3 by default,
`gin/data/ul2.gin` for UL2's mixture, which gin/runs/demo_denoise_cpu.gin trains).

Importing does no I/O; the corpus is built on the first dataset request.

CTC task. `CTC_CHARS` is a fixed lowercase-only `CharVocabulary` over `CTC_ALPHABET`
(English and French letters incl. the accents and ligatures French uses, digits, space,
punctuation): every character `slm_jax_demo.stories` writes, lowercased, and some margin.
Fixed, so ids never depend on a corpus build; it is built on first access (importing
this module does not import JAX/flax). `spoken_demo_speech_ctc_en` gives the same targets
as `spoken_demo_speech_en` plus `ctc_targets` = [sentinel] + char ids of the record's
`text` (`add_ctc_targets(packing_sentinel=True, max_chars=CTC_MAX_CHARS)`), so a packed
batch is decoded with `ctc_targets_from_packed(..., leading_sentinel=True)`. A CTC example
is never split (its transcript would be copied onto every chunk): a record longer than
the sequence length fails the pipeline, naming it. Demo EN records have <= ~600 tokens
(deduplicated units + 2) and <= ~350 characters, so e.g. sequence_length=1024 with
ctc_length=1024 packs a few utterances per row. It is not an output feature: a SeqIO
Mixture keeps it only through `passthrough_features`, which `slm_jax.data.pipeline` sets
when `ctc_length` is given.
"""
import functools
import os

from slm_jax.data import corpus

from slm_jax.data.preprocessors import interleave

from slm_jax.data.preprocessors import span_corruption, task_formats

from slm_jax.data.preprocessors import word_interleave
from slm_jax.data.preprocessors.ctc_targets import add_ctc_targets
from slm_jax.data.registration import LazyVocabulary, register_corpus_task, register_mixture
from slm_jax_demo.corpus import VERSION, DemoCorpusParams, ensure_spoken_demo_corpus
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

LANGS = ("en", "fr")
NUM_UNITS = DemoCorpusParams.num_units
SPLITS = ("train", "validation")

SPEECH_VOCAB = SpeechTextVocabulary(None, num_units=NUM_UNITS, langs=LANGS)
TEXT_VOCAB = LazyVocabulary(
    f"spoken_demo_v{VERSION}_spm",
    lambda: SpeechTextVocabulary(os.path.join(ensure_spoken_demo_corpus(), "spm.model"), num_units=NUM_UNITS,
                                 langs=LANGS))
DENOISE_SENTINELS = 100  # T5's count; UL2's X-denoisers at 512 tokens need up to 64
DENOISE_VOCAB = LazyVocabulary(
    f"spoken_demo_v{VERSION}_spm_sentinels{DENOISE_SENTINELS}",
    lambda: SpeechTextVocabulary(os.path.join(ensure_spoken_demo_corpus(), "spm.model"), num_units=NUM_UNITS,
                                 langs=LANGS, num_sentinels=DENOISE_SENTINELS))


def _speech_files(lang):
    return {split: f"speech/{split}-{lang}-*.tfrecord" for split in SPLITS}


PAIRED_FILES = {split: f"paired/{split}-*.tfrecord" for split in SPLITS}
_ROOT = ensure_spoken_demo_corpus

# Record fields each kind of task reads (parsing only these is markedly faster).
SPEECH_FIELDS = ("id", "units")
TEXT_FIELDS = ("id", "text")
WORD_FIELDS = ("id", "units", "unit_rate_hz", "word_text", "word_start", "word_end", "word_token_ids",
               "word_token_lengths", "word_token_model")
ASR_FIELDS = ("id", "units", "text")

# --- character CTC targets (mSLAM) ---------------------------------------------------------
CTC_ALPHABET = (" '-.,!?;:\"" "0123456789" "abcdefghijklmnopqrstuvwxyz" "àâäæçèéêëîïôöùûüÿœ")
CTC_MAX_CHARS = 400  # demo transcripts: <= ~380 characters (EN <= ~350), checked, never cut
_ctc_chars = None


def ctc_chars():
    """`CharVocabulary(CTC_ALPHABET)`, built (and `slm_jax.models.ctc` imported) on first use."""
    global _ctc_chars
    if _ctc_chars is None:
        from slm_jax.data.tokenizers.chars import CharVocabulary
        _ctc_chars = CharVocabulary(CTC_ALPHABET)
    return _ctc_chars


def __getattr__(name):  # `CTC_CHARS` is lazy (PEP 562), like TEXT_VOCAB
    if name == "CTC_CHARS":
        return ctc_chars()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def speech_only_with_ctc(dataset, vocabulary, max_chars=CTC_MAX_CHARS, dedup=True, units_key="units",
                         text_key="text"):
    """`interleave.speech_only`'s `[Speech] u1 u2 ... EOS` plus `ctc_targets`: the sentinel then
    the `CTC_CHARS` ids of `ex[text_key]`."""
    dataset = add_ctc_targets(dataset, ctc_chars(), text_key=text_key, max_chars=max_chars, packing_sentinel=True)
    return interleave.speech_only(dataset, vocabulary, dedup=dedup, units_key=units_key,
                                  passthrough=("ctc_targets",))


def _speech_task(name, lang, vocabulary, *then):
    """Speech-only examples (deduplicated units) of one language, then the preprocessors `then`."""
    register_corpus_task(
        name, _speech_files(lang),
        [functools.partial(interleave.speech_only_batches, vocabulary=vocabulary, dedup=True), *then],
        vocabulary, features=SPEECH_FIELDS, root_fn=_ROOT, batched=True)


def _text_task(name, lang, vocabulary, *then):
    """Text-only examples (the transcripts' SentencePiece ids) of one language, then `then`."""
    register_corpus_task(
        name, _speech_files(lang), [functools.partial(interleave.text_only_batches, vocabulary=vocabulary), *then],
        vocabulary, features=TEXT_FIELDS, root_fn=_ROOT, batched=True)


def _crosslingual_task(name, vocabulary):
    """Sentence-level EN<->FR interleaving of the paired records, strict alternation."""
    register_corpus_task(
        name, PAIRED_FILES,
        [functools.partial(interleave.crosslingual_interleave_batches, vocabulary=vocabulary, switch_prob=1.0)],
        vocabulary, feature_description=corpus.PAIRED_TFRECORD_FEATURES, root_fn=_ROOT, batched=True)


for _lang in LANGS:
    _speech_task(f"spoken_demo_speech_{_lang}", _lang, SPEECH_VOCAB)
    register_corpus_task(
        f"spoken_demo_interleaved_{_lang}", _speech_files(_lang),
        [functools.partial(word_interleave.word_interleave_batches, vocabulary=TEXT_VOCAB, policy="poisson")],
        TEXT_VOCAB, features=WORD_FIELDS, root_fn=_ROOT, batched=True)
    _text_task(f"spoken_demo_text_{_lang}", _lang, TEXT_VOCAB)
    _speech_task(f"spoken_demo_speech_tv_{_lang}", _lang, TEXT_VOCAB)

_crosslingual_task("spoken_demo_crosslingual", SPEECH_VOCAB)
register_corpus_task(
    "spoken_demo_asr_en", _speech_files("en"),
    [functools.partial(task_formats.format_asr, vocabulary=TEXT_VOCAB)], TEXT_VOCAB, features=ASR_FIELDS,
    root_fn=_ROOT)
register_corpus_task(
    "spoken_demo_tts_en", _speech_files("en"),
    [functools.partial(task_formats.format_tts, vocabulary=TEXT_VOCAB)], TEXT_VOCAB, features=ASR_FIELDS,
    root_fn=_ROOT)

register_corpus_task(
    "spoken_demo_speech_ctc_en", _speech_files("en"),
    [functools.partial(speech_only_with_ctc, vocabulary=SPEECH_VOCAB, dedup=True)], SPEECH_VOCAB,
    features=ASR_FIELDS, root_fn=_ROOT, split_long_examples=False)  # a transcript belongs to the whole utterance

# --- denoising (span corruption / UL2) ------------------------------------------------------
_denoise = functools.partial(span_corruption.denoise_batches, vocabulary=DENOISE_VOCAB)  # gin's denoisers
for _lang in LANGS:
    _speech_task(f"spoken_demo_denoise_speech_{_lang}", _lang, DENOISE_VOCAB, _denoise)
    _text_task(f"spoken_demo_denoise_text_{_lang}", _lang, DENOISE_VOCAB, _denoise)
    _speech_task(f"spoken_demo_lm_speech_{_lang}", _lang, DENOISE_VOCAB)
_crosslingual_task("spoken_demo_lm_crosslingual", DENOISE_VOCAB)

register_mixture("spoken_demo_mixed", ["spoken_demo_speech_en", "spoken_demo_speech_fr"])
register_mixture("spoken_demo_xl_mix", [("spoken_demo_crosslingual", 2.0), ("spoken_demo_speech_en", 1.0),
                                        ("spoken_demo_speech_fr", 1.0)])
register_mixture("spoken_demo_speech_text", ["spoken_demo_interleaved_en", "spoken_demo_speech_tv_en",
                                             "spoken_demo_text_en"])
register_mixture("spoken_demo_denoise_mix", [
    ("spoken_demo_denoise_speech_en", 1.0), ("spoken_demo_denoise_speech_fr", 1.0),
    ("spoken_demo_denoise_text_en", 0.5), ("spoken_demo_denoise_text_fr", 0.5),
    ("spoken_demo_lm_crosslingual", 1.0), ("spoken_demo_lm_speech_en", 1.0), ("spoken_demo_lm_speech_fr", 1.0)])
