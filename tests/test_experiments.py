"""The cross-lingual interleaving experiment (gin/experiments/crosslingual/, slm_jax_experiments)
and `slm-jax prepare pair`, which builds the paired shards its interleaved arm reads."""
from __future__ import annotations

import glob
import os
import re

import gin
import pytest

from slm_jax.data import corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(REPO, "gin", "experiments", "crosslingual")
ARMS = ("baseline", "interleaved")


@pytest.fixture(autouse=True)
def _clear_gin():
    yield
    gin.clear_config()


def _settings(path: str) -> list[str]:
    """The binding/include/import lines of a gin file (comments and blank lines dropped)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def _pairs():
    files = sorted(glob.glob(os.path.join(EXP, "*_baseline.gin")))
    assert files, f"no experiment files in {EXP}"
    return [(f, f.replace("_baseline.gin", "_interleaved.gin")) for f in files]


@pytest.mark.parametrize("baseline,interleaved", _pairs(), ids=lambda p: os.path.basename(p))
def test_arms_differ_only_in_their_data_and_model_dir(baseline, interleaved):
    """A matched comparison: everything but the mixture and where it is written is shared."""
    a, b = _settings(baseline), _settings(interleaved)
    differ = sorted(set(a) ^ set(b))
    names = {re.split(r"\s*=", line)[0] for line in differ}
    assert names == {"MIXTURE_OR_TASK_NAME", "MODEL_DIR"}, differ
    assert "MIXTURE_OR_TASK_NAME = 'xl_" in "\n".join(a) and "_baseline'" in "\n".join(a)


RUN_FILES = sorted(f for arm in ARMS for f in glob.glob(os.path.join(EXP, f"*_{arm}.gin")))


@pytest.mark.parametrize("path", RUN_FILES, ids=os.path.basename)
def test_every_run_file_configures_a_token_budget_run(path):
    from slm_jax import gin_utils
    from slm_jax.training.train import TrainRun
    import seqio
    gin_utils.setup([f"--gin_file={os.path.relpath(path, REPO)}"], what="experiment")
    run = TrainRun()
    assert isinstance(run.train_tokens, int) and run.train_tokens > 0
    mixture = seqio.get_mixture_or_task(run.train_dataset.mixture_or_task_name)
    assert isinstance(mixture, seqio.Mixture)
    # the model's embedding covers the speech-only token space
    assert run.model.vocab_size >= mixture.output_features["targets"].vocabulary.vocab_size


@pytest.mark.parametrize("arm,shares", [("baseline", "BASELINE_SHARES"), ("interleaved", "INTERLEAVED_SHARES")])
def test_mixture_rates_give_the_designed_token_shares(arm, shares):
    """The rates are what `data stats --token_shares` prints for the design's shares, given the
    recorded tokens per example; a member's token share is rate * tokens/example, normalised."""
    from slm_jax_experiments import crosslingual as xl
    design = getattr(xl, shares)
    rates = xl.MINI_RATES[arm]
    by_role = {name.replace("spoken_demo_", ""): name for name in rates}
    per_example = {name: xl.MINI_TOKENS_PER_EXAMPLE[name] for name in rates}
    # what `slm-jax data stats spoken_demo_xl_mix --token_shares=...` printed on the demo corpus (baseline: spoken_demo_mixed)
    printed = {"baseline": {"spoken_demo_speech_en": 0.467172, "spoken_demo_speech_fr": 0.532828},
               "interleaved": {"spoken_demo_crosslingual": 0.504157, "spoken_demo_speech_en": 0.231644,
                               "spoken_demo_speech_fr": 0.264199}}[arm]
    for name, rate in rates.items():
        assert rate == pytest.approx(printed[name], abs=2e-6), name
    total = sum(rates[n] * per_example[n] for n in rates)
    for role, share in design.items():
        assert rates[by_role[role]] * per_example[by_role[role]] / total == pytest.approx(share, abs=1e-5)
    # the paper-scale mixtures use the same design
    assert {k.replace("xl_tinystories_", "") for k in xl.TINYSTORIES_RATES[arm]} == set(design)


def test_tinystories_corpus_dir_is_named_when_unset(monkeypatch):
    from slm_jax_experiments import crosslingual as xl
    monkeypatch.delenv(xl.CORPUS_ENV, raising=False)
    with pytest.raises(ValueError, match="crosslingual_corpus_dir.path.*SLM_JAX_XL_CORPUS"):
        xl.crosslingual_corpus_dir()
    monkeypatch.setenv(xl.CORPUS_ENV, "/data/xl")
    assert xl.crosslingual_corpus_dir() == "/data/xl"


# --- slm-jax prepare pair -------------------------------------------------------------------
def _utt(uid, lang, pid, n_sent, rate=25.0):
    units = [(7 * i + len(lang)) % 50 for i in range(10 * n_sent)]
    sentences = [(i * 0.4, (i + 1) * 0.4, f"{lang} sentence {i}") for i in range(n_sent)]
    return corpus.Utterance(id=uid, lang=lang, units=units, unit_rate_hz=rate, parallel_id=pid,
                            text=" ".join(s[2] for s in sentences), sentences=sentences)


def test_prepare_pair_joins_by_parallel_id(tmp_path, capsys):
    from slm_jax.cli.prepare_pair import pair_main
    utts = [_utt("s1-en", "en", "s1", 3), _utt("s2-fr", "fr", "s2", 2), _utt("s1-fr", "fr", "s1", 3),
            _utt("s2-en", "en", "s2", 2), _utt("lonely-en", "en", None, 1)]
    corpus.write_tfrecord_shards(str(tmp_path / "speech"), "train", utts, num_shards=2)
    rc = pair_main([f"--input={tmp_path}/speech/train-*.tfrecord", f"--output={tmp_path}/paired/train",
                    "--num_shards=2"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote 2 en/fr pair(s) to 2 shard(s)" in capsys.readouterr().out
    records = {r["id"]: r for r in corpus.read_paired_tfrecord(f"{tmp_path}/paired/train-*.tfrecord")}
    assert sorted(records) == ["s1", "s2"]
    s1 = records["s1"]
    assert s1["a_lang"] == "en" and s1["b_lang"] == "fr"
    assert list(s1["a_units"]) == _utt("s1-en", "en", "s1", 3).units
    assert list(s1["b_units"]) == _utt("s1-fr", "fr", "s1", 3).units
    assert len(s1["a_sentence_start"]) == 3


def test_prepare_pair_names_a_bad_group_or_skips_it(tmp_path, capsys):
    from slm_jax.cli.prepare_pair import pair_main
    utts = [_utt("s1-en", "en", "s1", 3), _utt("s1-fr", "fr", "s1", 2),  # sentence counts differ
            _utt("s2-en", "en", "s2", 2), _utt("s2-fr", "fr", "s2", 2)]
    corpus.write_tfrecord_shards(str(tmp_path / "speech"), "train", utts, num_shards=1)
    args = [f"--input={tmp_path}/speech/train-*.tfrecord", f"--output={tmp_path}/paired/train"]
    assert pair_main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("slm-jax prepare pair: error:") and "s1" in err
    assert pair_main(args + ["--on_bad_record=skip"]) == 0
    assert [r["id"] for r in corpus.read_paired_tfrecord(f"{tmp_path}/paired/train-*.tfrecord")] == ["s2"]
    assert pair_main([f"--input={tmp_path}/nothing-*.tfrecord", f"--output={tmp_path}/p/train"]) == 1
