"""Tests for the parallel EN/FR story grammar (slm_jax_demo.stories)."""
import re

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
