"""`slm-jax data show|stats` helpers and the matched-token-budget mixture rates."""

import numpy as np
import pytest

from slm_jax.data import inspect_data
from slm_jax.data.tokenizers.token_space import SpeechTextVocabulary

VOCAB = SpeechTextVocabulary(None, num_units=10, langs=("en", "fr"))


def test_rates_for_token_shares_match_token_budgets():
    rates = inspect_data.rates_for_token_shares({"a": 100.0, "b": 400.0}, {"a": 0.5, "b": 0.5})
    # b's examples are 4x longer, so it is sampled 4x less often for the same token share.
    assert rates == pytest.approx({"a": 0.8, "b": 0.2})
    tokens = {t: rates[t] * n for t, n in {"a": 100.0, "b": 400.0}.items()}
    assert tokens["a"] == pytest.approx(tokens["b"])
    with pytest.raises(ValueError, match=r"no token statistics for tasks \['c'\]"):
        inspect_data.rates_for_token_shares({"a": 1.0}, {"c": 1.0})


def test_example_stats_counts_modalities_and_runs():
    ids = np.array([VOCAB.speech_marker_id, *VOCAB.units_to_ids([1, 2, 3]), VOCAB.lang_tag_id("fr"),
                    *VOCAB.units_to_ids([4]), VOCAB.eos_id, 0, 0])
    stats = inspect_data.example_stats(VOCAB, ids)
    assert stats == {"tokens": 7, "marker": 3, "speech": 4, "modality_runs": 5}


def test_render_without_colour_uses_tags_and_with_colour_marks_modalities():
    ids = np.array([VOCAB.speech_marker_id, *VOCAB.units_to_ids([7, 7]), VOCAB.eos_id])
    assert inspect_data.render_example(VOCAB, ids, colour=False) == "[Speech][Hu7][Hu7]"
    coloured = inspect_data.render_example(VOCAB, ids, colour=True)
    assert "\033[36m[Hu7]" in coloured and "\033[1;35m[Speech]" in coloured


def test_show_and_stats_on_a_registered_task(demo_data_dir):
    import slm_jax.testing.tasks  # noqa: F401
    text = inspect_data.show("demo_units_mix", n=2, split="validation", colour=False)
    assert "== demo_units_en (validation)" in text and "== demo_units_fr (validation)" in text
    assert text.count("-- [") == 4
    table = inspect_data.stats("demo_units_en", split="validation")
    row = table["demo_units_en"]
    assert row["examples"] == 100 and row["tokens"] == row["speech"] > 0
