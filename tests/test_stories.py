"""Tests for the parallel EN/FR story grammar (slm_jax_demo.stories)."""
import re

import numpy as np
import pytest

from slm_jax_demo import stories as st

_FR_VOWEL = "aeiouàâéèêîôûœ"
# Missed contractions/elisions: "de le", "à les", "le arbre", "que elle", "sa amie", ...
_BAD_FR = re.compile(rf"\b(de|à) les?\b|\b(le|la|de|que|ne|se) [{_FR_VOWEL}]|\bsa [{_FR_VOWEL}]|\bjusque\b",
                     re.IGNORECASE)
_BAD_EN = re.compile(r"\ba [aeiou]|\ban [^aeiou\s]", re.IGNORECASE)


@pytest.fixture(scope="module")
def corpus():
    return st.generate_stories(400, seed=0)


def _all_fr(story):
    return [*story.sentences_fr, story.wrong_ending_fr, story.topic_ending_fr]


def _all_en(story):
    return [*story.sentences_en, story.wrong_ending_en, story.topic_ending_en]


def test_story_shape(corpus):
    assert [s.id for s in corpus[:3]] == ["story00000", "story00001", "story00002"]
    for story in corpus:
        assert story.topic in st.TOPICS
        assert len(story.sentences_en) == len(story.sentences_fr)
        assert len(story.sentences_en) in (4, 5)
        assert story.wrong_ending_en != story.sentences_en[-1]
        for text in _all_en(story) + _all_fr(story):
            assert text[0].isupper() and text.endswith("."), text


def test_lengths_vary_and_topics_all_used(corpus):
    assert {len(s.sentences_en) for s in corpus} == {4, 5}
    assert {s.topic for s in corpus} == set(st.TOPICS)


def test_deterministic_and_seed_dependent():
    assert st.generate_stories(30, seed=3) == st.generate_stories(30, seed=3)
    assert st.generate_stories(30, seed=3) != st.generate_stories(30, seed=4)


def test_stories_are_diverse(corpus):
    distinct = {tuple(s.sentences_en) for s in corpus}
    assert len(distinct) >= 0.95 * len(corpus)
    assert len({tuple(s.sentences_fr) for s in corpus}) == len(distinct)


def test_topic_ending_comes_from_another_topic(corpus):
    by_id = {s.id: s for s in corpus}
    for story in corpus:
        source = by_id[story.topic_ending_source]
        assert source.topic != story.topic
        assert story.topic_ending_en == source.sentences_en[-1]
        assert story.topic_ending_fr == source.sentences_fr[-1]


def test_topic_ending_generated_when_batch_has_one_topic():
    (story,) = st.generate_stories(1, seed=0)
    assert story.topic_ending_source.startswith("generated:")
    assert story.topic_ending_source.split(":")[1] != story.topic
    assert story.topic_ending_en and story.topic_ending_fr


def _hero(story):
    """The first name in the setup sentence (a friend, if any, is named after the hero)."""
    names = {n.lower(): n for n, _ in st.NAMES}
    return next(names[w] for w in st.words(story.sentences_en[0]) if w in names)


def test_wrong_ending_keeps_hero(corpus):
    for story in corpus:
        hero = _hero(story)
        assert hero in story.wrong_ending_en and hero in story.wrong_ending_fr, story


def test_french_elision_and_contraction(corpus):
    bad = [t for s in corpus for t in _all_fr(s) if _BAD_FR.search(t)]
    assert not bad, bad[:5]


def test_english_articles(corpus):
    bad = [t for s in corpus for t in _all_en(s) if _BAD_EN.search(t)]
    assert not bad, bad[:5]


@pytest.mark.parametrize("phrase,gender,definite,indefinite", [
    ("arbre", "m", "l'arbre", "un arbre"),
    ("hibou", "m", "le hibou", "un hibou"),  # h aspiré: no elision
    ("plage", "f", "la plage", "une plage"),
    ("étoile de mer", "f", "l'étoile de mer", "une étoile de mer"),
])
def test_french_determiners(phrase, gender, definite, indefinite):
    assert st.fr_definite(phrase, gender) == definite
    assert st.fr_indefinite(phrase, gender) == indefinite


def test_french_prepositions():
    assert st.fr_a("le port") == "au port"
    assert st.fr_a("la plage") == "à la plage"
    assert st.fr_de("le rocher") == "du rocher"
    assert st.fr_de("l'arbre") == "de l'arbre"
    assert st.fr_de("un arbre") == "d'un arbre"
    assert st.fr_possessive("amie Lina", "f") == "son amie Lina"
    assert st.fr_possessive("mère", "f") == "sa mère"


def test_french_adjective_forms():
    old = next(a for a in st.ADJECTIVES if a.en == "old")
    assert old.fr_for(st.Noun("egg", "œuf", "m")) == "vieil"
    assert old.fr_for(st.Noun("bowl", "bol", "m")) == "vieux"
    assert old.fr_for(st.Noun("cup", "tasse", "f")) == "vieille"


def test_english_indefinite():
    assert st.en_indefinite("orange shell") == "an orange shell"
    assert st.en_indefinite("red egg") == "a red egg"
    assert st.en_indefinite("unicorn") == "a unicorn"


def test_agreement_with_hero_gender(corpus):
    genders = dict(st.NAMES)
    checked = 0
    for story in corpus:
        hero = _hero(story)
        for text in _all_fr(story)[:-1]:  # the topic ending belongs to another hero
            for masculine, feminine in (("est allé", "est allée"), ("était content", "était contente")):
                if text.startswith(f"{hero} {masculine}") or f", {hero} {masculine}" in text:
                    assert (feminine in text) == (genders[hero] == "f"), text
                    checked += 1
    assert checked > 20


@pytest.mark.parametrize("sentence,expected", [
    ("L'écureuil a vu Tom.", ["l'écureuil", "a", "vu", "tom"]),
    ("Mais la bouteille, soudain, est tombée!", ["mais", "la", "bouteille", "soudain", "est", "tombée"]),
    ("Chaque matin, Tom marchait jusqu'au port avec sa grand-mère.",
     ["chaque", "matin", "tom", "marchait", "jusqu'au", "port", "avec", "sa", "grand-mère"]),
    ("Aujourd\u2019hui, Emma's dog ran.", ["aujourd'hui", "emma's", "dog", "ran"]),
    ("It is 'red' -- 3 times.", ["it", "is", "red", "times"]),
])
def test_words(sentence, expected):
    assert st.words(sentence) == expected


def test_by_language_accessors(corpus):
    story = corpus[0]
    assert story.sentences("fr") == story.sentences_fr
    assert story.wrong_ending("en") == story.wrong_ending_en
    assert story.topic_ending("fr") == story.topic_ending_fr
    with pytest.raises(ValueError, match="unknown language 'de'"):
        story.sentences("de")


# ----------------------------------------------------------------------------- benchmark stories
def _prompts(stories):
    return {key for s in stories for key in st.prompt_keys(s.sentences_en, s.sentences_fr)}


def test_benchmark_stories_never_repeat_a_corpus_prompt(corpus):
    draw = st.generate_benchmark_stories(400, seed=0, exclude=corpus)
    assert [s.id for s in draw.stories[:2]] == ["bench00000", "bench00001"]
    assert len({s.id for s in draw.stories}) == 400
    assert not _prompts(draw.stories) & _prompts(corpus)
    assert len(_prompts(draw.stories)) == 2 * 400  # no two benchmark stories share a prompt either
    assert draw.candidates == 400 + draw.rejected_excluded + draw.rejected_duplicate
    assert draw.report()["rejected_excluded"] == draw.rejected_excluded and "prompt" in draw.report()["rule"]
    by_id = {s.id: s for s in draw.stories}
    for story in draw.stories:  # TopicCloze endings come from accepted benchmark stories of another topic
        source = by_id[story.topic_ending_source]
        assert source.topic != story.topic and story.topic_ending_fr == source.sentences_fr[-1]


def test_benchmark_stream_is_its_own():
    """Not the corpus stream (same seed), deterministic, and a larger draw extends a smaller one."""
    small, large = st.generate_benchmark_stories(20, seed=3), st.generate_benchmark_stories(30, seed=3)
    assert small == st.generate_benchmark_stories(20, seed=3)
    assert [s.sentences_en for s in large.stories[:20]] == [s.sentences_en for s in small.stories]
    assert not _prompts(small.stories) & _prompts(st.generate_stories(20, seed=3))
    assert _prompts(small.stories) != _prompts(st.generate_benchmark_stories(20, seed=4).stories)


def test_benchmark_draw_rejects_excluded_prompts():
    first = st.generate_benchmark_stories(8, seed=1).stories
    draw = st.generate_benchmark_stories(5, seed=1, exclude=first[:3])  # the first 3 candidates are excluded
    assert (draw.rejected_excluded, draw.rejected_duplicate, draw.candidates) == (3, 0, 8)
    assert [s.sentences_fr for s in draw.stories] == [s.sentences_fr for s in first[3:]]


def test_benchmark_draw_rejects_duplicates_and_gives_up(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = st._draft(rng), st._draft(rng)
    sequence = iter([a, a, b, a])
    monkeypatch.setattr(st, "_draft", lambda rng: next(sequence))
    draw = st.generate_benchmark_stories(2, seed=0)
    assert (draw.rejected_excluded, draw.rejected_duplicate, draw.candidates) == (0, 1, 3)
    assert [s.sentences_en for s in draw.stories] == [[en for en, _ in a[1]], [en for en, _ in b[1]]]
    monkeypatch.setattr(st, "_draft", lambda rng: a)
    with pytest.raises(ValueError, match=r"only 1 of 2 benchmark stories after 40 candidates .*39 duplicates"):
        st.generate_benchmark_stories(2, seed=0)
    with pytest.raises(ValueError, match="num_benchmark_stories must be >= 0"):
        st.generate_benchmark_stories(-1, seed=0)


# The corpus's benchmark size rule (slm_jax_demo.corpus; no espeak-ng needed).
@pytest.mark.parametrize("env,expected", [
    ({}, (400, 400)),
    ({"SLM_JAX_DEMO_NUM_STORIES": "12"}, (12, 12)),
    ({"SLM_JAX_DEMO_NUM_STORIES": "1000"}, (1000, 400)),
    ({"SLM_JAX_DEMO_NUM_STORIES": "12", "SLM_JAX_DEMO_NUM_BENCHMARK_STORIES": "5"}, (12, 5)),
    ({"SLM_JAX_DEMO_NUM_BENCHMARK_STORIES": "0"}, (400, 0)),
])
def test_corpus_params_from_env(monkeypatch, env, expected):
    from slm_jax_demo import corpus as demo_corpus
    for name in ("SLM_JAX_DEMO_NUM_STORIES", "SLM_JAX_DEMO_NUM_BENCHMARK_STORIES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    params = demo_corpus.params_from_env()
    assert (params.num_stories, params.num_benchmark_stories) == expected
    assert params.seed == demo_corpus.DemoCorpusParams.seed


@pytest.mark.parametrize("name,value", [("SLM_JAX_DEMO_NUM_STORIES", "0"),
                                        ("SLM_JAX_DEMO_NUM_BENCHMARK_STORIES", "many")])
def test_corpus_params_from_env_refuse_bad_values(monkeypatch, name, value):
    from slm_jax_demo import corpus as demo_corpus
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}='{value}': expected an integer >= "):
        demo_corpus.params_from_env()


@pytest.mark.parametrize("argv,env,expected", [
    ([], {}, (400, 400)),
    (["--num_stories=12"], {}, (12, 12)),
    (["--num_stories=12", "--num_benchmark_stories=7"], {}, (12, 7)),
    ([], {"SLM_JAX_DEMO_NUM_STORIES": "20"}, (20, 20)),
    (["--num_stories=12"], {"SLM_JAX_DEMO_NUM_BENCHMARK_STORIES": "3"}, (12, 3)),
])
def test_demo_corpus_command_builds_what_train_reads(monkeypatch, argv, env, expected):
    """`slm-jax prepare demo-corpus` without flags builds the corpus `ensure_spoken_demo_corpus()`
    (train, eval) reads under the same environment."""
    from slm_jax_demo import corpus as demo_corpus
    for name in ("SLM_JAX_DEMO_NUM_STORIES", "SLM_JAX_DEMO_NUM_BENCHMARK_STORIES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    requested = []

    class Stop(Exception):
        pass

    def fake_ensure(data_dir, params):
        requested.append(params)
        raise Stop

    monkeypatch.setattr(demo_corpus, "ensure_spoken_demo_corpus", fake_ensure)
    with pytest.raises(Stop):
        demo_corpus.demo_corpus_main(argv)
    assert (requested[0].num_stories, requested[0].num_benchmark_stories) == expected
    if not argv:
        assert requested[0] == demo_corpus.params_from_env()
