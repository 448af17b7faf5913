"""Tasks and mixtures of the cross-lingual interleaving comparison (arXiv 2512.01865, SEEDS.md §1).

The paper trains the same decoder twice under a matched training-token budget:

  baseline     EN and FR monolingual speech units (no cross-lingual sequence)
  interleaved  the same speech, part of it as sentence-level EN<->FR interleaved sequences of
               parallel stories (sentence i in one language, sentence i+1 in the other)

and compares sSC/sTC in EN, FR, EN->FR, FR->EN and the EN/FR hidden-state alignment.

Two corpora, one recipe (the token shares below are the experiment's design, fixed before any
result was looked at; the mixture RATES are what gives those token shares on each corpus,
measured with `slm-jax data stats MIXTURE --token_shares=...`, see `rates_for_token_shares`):

  baseline:    EN 50% / FR 50% of the target tokens
  interleaved: cross-lingual 50% / EN 25% / FR 25% of the target tokens

- `xl_mini_baseline` / `xl_mini_interleaved`: the CPU miniature on the spoken demo corpus
  (`slm_jax_demo.tasks`; `gin/experiments/crosslingual/mini_*.gin`, `make experiment`).
- `xl_tinystories_baseline` / `xl_tinystories_interleaved`: the paper's scale, over a corpus in the
  slm_jax layout that you build from the released EN-FR TinyStories audio (mHuBERT 25 Hz units,
  500 clusters): `speech/{train,validation}-{en,fr}-*.tfrecord` (`slm-jax prepare import`) and
  `paired/{train,validation}-*.tfrecord` (`slm-jax prepare pair`). Its folder is the gin binding
  `crosslingual_corpus_dir.path` (or $SLM_JAX_XL_CORPUS); `gin/experiments/crosslingual/tpu_*.gin`.
  Its rates assume the demo corpus's per-example token ratios until you measure yours: rerun
  `slm-jax data stats xl_tinystories_interleaved --module_import=slm_jax_experiments.crosslingual
  --token_shares=xl_tinystories_crosslingual=0.5,xl_tinystories_speech_en=0.25,xl_tinystories_speech_fr=0.25`
  on your corpus and put its tokens per example into `TINYSTORIES_TOKENS_PER_EXAMPLE`.
"""
from __future__ import annotations

import functools
import os

import gin

from slm_jax.data import corpus
from slm_jax.data.inspect_data import rates_for_token_shares
from slm_jax.data.preprocessors import interleave
from slm_jax.data.registration import register_corpus_task, register_mixture
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

LANGS = ("en", "fr")
SPLITS = ("train", "validation")
SPEECH_FIELDS = ("id", "units")

# Token shares of the design (fractions of the target tokens of a run).
BASELINE_SHARES = {"speech_en": 0.5, "speech_fr": 0.5}
INTERLEAVED_SHARES = {"crosslingual": 0.5, "speech_en": 0.25, "speech_fr": 0.25}

# Target tokens per example of each demo task (train split), measured with
#   slm-jax data stats spoken_demo_xl_mix --module_import=slm_jax_demo.tasks
# (tokens / examples: cross-lingual 135,294 / 360, EN 147,229 / 360, FR 129,087 / 360). The rates
# below are what `--token_shares=` prints for the design's shares from these figures.
MINI_TOKENS_PER_EXAMPLE = {"spoken_demo_crosslingual": 135294 / 360, "spoken_demo_speech_en": 147229 / 360,
                           "spoken_demo_speech_fr": 129087 / 360}


def _rates(prefix: str, shares: dict[str, float], tokens_per_example: dict[str, float]) -> dict[str, float]:
    """Mixture rates of `{prefix}{role}` tasks giving `shares` of the target tokens."""
    members = {f"{prefix}{role}": share for role, share in shares.items()}
    per_example = {name: tokens_per_example[name] for name in members}
    return rates_for_token_shares(per_example, members)


MINI_RATES = {"baseline": _rates("spoken_demo_", BASELINE_SHARES, MINI_TOKENS_PER_EXAMPLE),
              "interleaved": _rates("spoken_demo_", INTERLEAVED_SHARES, MINI_TOKENS_PER_EXAMPLE)}
# Until measured on your TinyStories corpus (module docstring): the demo corpus's per-example ratios.
TINYSTORIES_TOKENS_PER_EXAMPLE = {k.replace("spoken_demo_", "xl_tinystories_"): v
                                  for k, v in MINI_TOKENS_PER_EXAMPLE.items()}
TINYSTORIES_RATES = {"baseline": _rates("xl_tinystories_", BASELINE_SHARES, TINYSTORIES_TOKENS_PER_EXAMPLE),
                     "interleaved": _rates("xl_tinystories_", INTERLEAVED_SHARES, TINYSTORIES_TOKENS_PER_EXAMPLE)}
TINYSTORIES_NUM_UNITS = 500  # mHuBERT 25 Hz, 500 clusters (the paper's and SpiritLM's units)
TINYSTORIES_VOCAB = SpeechTextVocabulary(None, num_units=TINYSTORIES_NUM_UNITS, langs=LANGS)
CORPUS_ENV = "SLM_JAX_XL_CORPUS"


@gin.configurable
def crosslingual_corpus_dir(path: str | None = None) -> str:
    """The TinyStories EN-FR corpus folder: gin `crosslingual_corpus_dir.path`, else $SLM_JAX_XL_CORPUS.
    Called when a dataset is first read (not at import). ValueError naming both when neither is set."""
    path = path or os.environ.get(CORPUS_ENV)
    if not path:
        raise ValueError(f"the TinyStories EN-FR corpus folder is not set: bind crosslingual_corpus_dir.path "
                         f"(--gin.crosslingual_corpus_dir.path=\"'gs://BUCKET/tinystories_en_fr'\") or set ${CORPUS_ENV}")
    return path


def _speech_files(lang: str) -> dict[str, str]:
    return {split: f"speech/{split}-{lang}-*.tfrecord" for split in SPLITS}


def _register_tinystories() -> None:
    root = crosslingual_corpus_dir
    for lang in LANGS:
        register_corpus_task(
            f"xl_tinystories_speech_{lang}", _speech_files(lang),
            [functools.partial(interleave.speech_only_batches, vocabulary=TINYSTORIES_VOCAB, dedup=True)],
            TINYSTORIES_VOCAB, features=SPEECH_FIELDS, root_fn=root, batched=True)
    register_corpus_task(
        "xl_tinystories_crosslingual", {split: f"paired/{split}-*.tfrecord" for split in SPLITS},
        [functools.partial(interleave.crosslingual_interleave_batches, vocabulary=TINYSTORIES_VOCAB,
                           switch_prob=1.0)],
        TINYSTORIES_VOCAB, feature_description=corpus.PAIRED_TFRECORD_FEATURES, root_fn=root, batched=True)


def _register_mixtures(prefix: str, rates: dict[str, dict[str, float]]) -> None:
    for arm, members in rates.items():
        register_mixture(f"{prefix}_{arm}", list(members.items()))


def register() -> None:
    """Registers the TinyStories tasks and both experiments' mixtures (the demo tasks come from
    `slm_jax_demo.tasks`, imported here so the mini mixtures can name them)."""
    import slm_jax_demo.tasks  # noqa: F401  (registers spoken_demo_speech_en/fr, spoken_demo_crosslingual)
    _register_tinystories()
    _register_mixtures("xl_mini", MINI_RATES)
    _register_mixtures("xl_tinystories", TINYSTORIES_RATES)


register()
