"""A seeded grammar of parallel English/French short stories (a tiny spoken TinyStories EN-FR).

The cross-lingual interleaving recipe (SEEDS.md section 1) needs sentence-aligned parallel
stories: sentence i of the French story translates sentence i of the English one, so the
two languages can be interleaved at sentence boundaries. Real spoken TinyStories EN-FR is
~42k hours; this module generates a small stand-in with a known structure, from which
`slm_jax_demo.tts` makes speech with exact word and sentence times.

Each story has a topic (sea, forest, school, kitchen, farm, city) whose vocabulary (places,
objects, animals, landmarks) belongs to that topic only, so TopicCloze is meaningful. A story
is 4 or 5 sentences: setup, discovery, an optional middle, a complication, and an ending.
Each story also carries the two benchmark distractors (SEEDS.md, "How SLM benchmarks are
scored"): a StoryCloze wrong ending (same characters and topic, contradicts the story) and
a TopicCloze ending (the ending of another story of a different topic).

French agreement is explicit: nouns carry their gender, determiners elide before vowels
(l'arbre, d'un, jusqu'au), à/de contract with le (au, du), participles and adjectives agree
with their subject or preceding object, and pre-nominal adjectives take their pre-vowel
form (un vieil arbre, un bel œuf). Templates are format strings over a context of
pre-agreed phrases, so every template is checked by reading it once.

Every string emitted is already in slm_jax's normal form (`slm_jax.text_normalization`:
NFC letters such as `é`/`œ`, plain spaces, no compatibility characters), so normalising it at
the corpus boundary changes nothing (tests/test_text_normalization.py checks 2000 stories).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from slm_jax.text_normalization import normalize_text

TOPICS = ("sea", "forest", "school", "kitchen", "farm", "city")

# French elision happens before a vowel or a mute h; 'y' does not elide (le yaourt).
_FR_VOWELS = frozenset("aeiouàâäéèêëîïôöùûüœæ")
_FR_MUTE_H = frozenset({"hugo", "herbe", "heure", "homme", "histoire", "hiver", "hôpital"})
# English 'an' goes by sound: these vowel-letter words start with a consonant sound ...
_EN_CONSONANT_SOUND = ("uni", "use", "usu", "eu", "one", "once")
# ... and these consonant-letter words start with a vowel sound.
_EN_VOWEL_SOUND = ("hour", "honest", "honou", "heir")


# ----------------------------------------------------------------------------- grammar helpers

def _first_word(phrase: str) -> str:
    return phrase.split(" ", 1)[0].lower()


def fr_elides(phrase: str) -> bool:
    """True when a French determiner or 'de'/'que' before `phrase` must elide (l', d', qu')."""
    word = _first_word(phrase)
    return bool(word) and (word[0] in _FR_VOWELS or word in _FR_MUTE_H)


def en_indefinite(phrase: str) -> str:
    """'a' or 'an' + phrase, by the sound of the first word (an apple, a unicorn, an hour)."""
    word = _first_word(phrase)
    vowel = word[:1] in tuple("aeiou") and not word.startswith(_EN_CONSONANT_SOUND)
    return ("an " if vowel or word.startswith(_EN_VOWEL_SOUND) else "a ") + phrase


def fr_definite(phrase: str, gender: str) -> str:
    """le/la/l' + phrase; the gender is that of the head noun, elision that of the first word."""
    if fr_elides(phrase):
        return "l'" + phrase
    return ("le " if gender == "m" else "la ") + phrase


def fr_indefinite(phrase: str, gender: str) -> str:
    return ("un " if gender == "m" else "une ") + phrase


def fr_possessive(phrase: str, gender: str) -> str:
    """son/sa + phrase (3rd person singular); 'son' also before a feminine vowel (son amie)."""
    return ("son " if gender == "m" or fr_elides(phrase) else "sa ") + phrase


def fr_a(phrase: str) -> str:
    """'à' + a determined phrase, contracting à le -> au, à les -> aux."""
    if phrase.startswith("le "):
        return "au " + phrase[3:]
    if phrase.startswith("les "):
        return "aux " + phrase[4:]
    return "à " + phrase


def fr_de(phrase: str) -> str:
    """'de' + a determined phrase: de le -> du, de les -> des, de + vowel -> d' (d'un, d'Emma)."""
    if phrase.startswith("le "):
        return "du " + phrase[3:]
    if phrase.startswith("les "):
        return "des " + phrase[4:]
    return ("d'" if fr_elides(phrase) else "de ") + phrase


def fr_que(phrase: str) -> str:
    return ("qu'" if fr_elides(phrase) else "que ") + phrase


def _agree(gender: str, masculine: str, feminine: str) -> str:
    return feminine if gender == "f" else masculine


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


# ----------------------------------------------------------------------------- vocabulary

@dataclasses.dataclass(frozen=True)
class Noun:
    """A noun in both languages; `gender` ('m'/'f') drives French agreement."""
    en: str
    fr: str
    gender: str


@dataclasses.dataclass(frozen=True)
class Adjective:
    """An adjective with both French forms; `before` places it before the French noun."""
    en: str
    fr_m: str
    fr_f: str
    before: bool = False
    fr_m_vowel: str | None = None  # masculine form before a vowel (vieil, bel)

    def fr_for(self, noun: Noun) -> str:
        if noun.gender == "f":
            return self.fr_f
        if self.before and self.fr_m_vowel and fr_elides(noun.fr):
            return self.fr_m_vowel
        return self.fr_m


@dataclasses.dataclass(frozen=True)
class Place:
    """A place: English phrase with its locative preposition, French noun with its preposition.

    French uses one preposition for motion and location (aller/être à la plage, dans la
    forêt, sur l'île); English says 'to' for motion and `en_at` for location.
    """
    en: str
    en_at: str
    noun: Noun
    fr_prep: str  # "à", "dans" or "sur"

    def fr_definite(self) -> str:
        return fr_definite(self.noun.fr, self.noun.gender)

    def fr_location(self) -> str:
        definite = self.fr_definite()
        return fr_a(definite) if self.fr_prep == "à" else f"{self.fr_prep} {definite}"


@dataclasses.dataclass(frozen=True)
class Topic:
    name: str
    places: tuple[Place, ...]
    objects: tuple[Noun, ...]
    animals: tuple[Noun, ...]
    landmarks: tuple[Noun, ...]


def _nouns(*triples: tuple[str, str, str]) -> tuple[Noun, ...]:
    return tuple(Noun(*t) for t in triples)


def _place(en: str, en_at: str, fr: str, gender: str, fr_prep: str) -> Place:
    return Place(f"the {en}", en_at, Noun(en, fr, gender), fr_prep)


TOPIC_VOCAB = {
    "sea": Topic(
        "sea",
        (_place("beach", "at", "plage", "f", "à"), _place("harbor", "at", "port", "m", "à"),
         _place("island", "on", "île", "f", "sur"), _place("lighthouse", "at", "phare", "m", "à")),
        _nouns(("shell", "coquillage", "m"), ("pebble", "galet", "m"), ("bottle", "bouteille", "f"),
               ("starfish", "étoile de mer", "f"), ("bucket", "seau", "m"), ("fishing net", "filet", "m")),
        _nouns(("crab", "crabe", "m"), ("seagull", "mouette", "f"), ("turtle", "tortue", "f"),
               ("seal", "phoque", "m")),
        _nouns(("rock", "rocher", "m"), ("boat", "bateau", "m"), ("sandcastle", "château de sable", "m"),
               ("beach hut", "cabane", "f")),
    ),
    "forest": Topic(
        "forest",
        (_place("forest", "in", "forêt", "f", "dans"), _place("woods", "in", "bois", "m", "dans"),
         _place("hill", "on", "colline", "f", "sur"), _place("lake", "at", "lac", "m", "à")),
        _nouns(("pinecone", "pomme de pin", "f"), ("acorn", "gland", "m"), ("mushroom", "champignon", "m"),
               ("stick", "bâton", "m"), ("leaf", "feuille", "f"), ("flower", "fleur", "f")),
        _nouns(("fox", "renard", "m"), ("squirrel", "écureuil", "m"), ("owl", "hibou", "m"),
               ("rabbit", "lapin", "m"), ("hedgehog", "hérisson", "m"), ("frog", "grenouille", "f")),
        _nouns(("tree", "arbre", "m"), ("bush", "buisson", "m"), ("big stone", "grosse pierre", "f"),
               ("tree stump", "souche", "f")),
    ),
    "school": Topic(
        "school",
        (_place("school", "at", "école", "f", "à"), _place("library", "at", "bibliothèque", "f", "à"),
         _place("classroom", "in", "salle de classe", "f", "dans"),
         _place("playground", "in", "cour de récréation", "f", "dans")),
        _nouns(("pencil", "crayon", "m"), ("book", "livre", "m"), ("notebook", "cahier", "m"),
               ("eraser", "gomme", "f"), ("ruler", "règle", "f"), ("pencil case", "trousse", "f")),
        _nouns(("hamster", "hamster", "m"), ("ladybug", "coccinelle", "f"), ("spider", "araignée", "f"),
               ("mouse", "souris", "f"), ("bird", "oiseau", "m")),
        _nouns(("door", "porte", "f"), ("desk", "bureau", "m"), ("board", "tableau", "m"),
               ("window", "fenêtre", "f"), ("bookshelf", "étagère", "f")),
    ),
    "kitchen": Topic(
        "kitchen",
        (_place("kitchen", "in", "cuisine", "f", "dans"), _place("bakery", "at", "boulangerie", "f", "à"),
         _place("market", "at", "marché", "m", "à"), _place("cafe", "at", "café", "m", "à")),
        _nouns(("spoon", "cuillère", "f"), ("cup", "tasse", "f"), ("bowl", "bol", "m"),
               ("apple", "pomme", "f"), ("cake", "gâteau", "m"), ("egg", "œuf", "m"),
               ("cookie", "biscuit", "m")),
        _nouns(("kitten", "chaton", "m"), ("ant", "fourmi", "f"), ("fly", "mouche", "f"),
               ("bee", "abeille", "f")),
        _nouns(("table", "table", "f"), ("oven", "four", "m"), ("sink", "évier", "m"),
               ("fridge", "frigo", "m"), ("cupboard", "placard", "m")),
    ),
    "farm": Topic(
        "farm",
        (_place("farm", "on", "ferme", "f", "à"), _place("barn", "in", "grange", "f", "dans"),
         _place("field", "in", "champ", "m", "dans"), _place("orchard", "in", "verger", "m", "dans")),
        _nouns(("basket", "panier", "m"), ("hat", "chapeau", "m"), ("carrot", "carotte", "f"),
               ("rope", "corde", "f"), ("feather", "plume", "f"), ("horseshoe", "fer à cheval", "m")),
        _nouns(("cow", "vache", "f"), ("pig", "cochon", "m"), ("hen", "poule", "f"),
               ("horse", "cheval", "m"), ("duck", "canard", "m"), ("goat", "chèvre", "f"),
               ("sheep", "mouton", "m")),
        _nouns(("fence", "barrière", "f"), ("tractor", "tracteur", "m"), ("pond", "mare", "f"),
               ("well", "puits", "m"), ("haystack", "meule de foin", "f")),
    ),
    "city": Topic(
        "city",
        (_place("park", "in", "parc", "m", "dans"), _place("museum", "at", "musée", "m", "à"),
         _place("station", "at", "gare", "f", "à"), _place("zoo", "at", "zoo", "m", "à")),
        _nouns(("ticket", "ticket", "m"), ("coin", "pièce", "f"), ("key", "clé", "f"),
               ("umbrella", "parapluie", "m"), ("map", "carte", "f"), ("balloon", "ballon", "m")),
        _nouns(("pigeon", "pigeon", "m"), ("sparrow", "moineau", "m"), ("rat", "rat", "m"),
               ("butterfly", "papillon", "m")),
        _nouns(("bench", "banc", "m"), ("fountain", "fontaine", "f"), ("bridge", "pont", "m"),
               ("shop", "magasin", "m"), ("lamp post", "lampadaire", "m"), ("statue", "statue", "f")),
    ),
}

ADJECTIVES = (
    Adjective("red", "rouge", "rouge"), Adjective("yellow", "jaune", "jaune"),
    Adjective("pink", "rose", "rose"), Adjective("orange", "orange", "orange"),
    Adjective("brown", "marron", "marron"), Adjective("blue", "bleu", "bleue"),
    Adjective("green", "vert", "verte"), Adjective("white", "blanc", "blanche"),
    Adjective("black", "noir", "noire"), Adjective("shiny", "brillant", "brillante"),
    Adjective("small", "petit", "petite", before=True), Adjective("big", "gros", "grosse", before=True),
    Adjective("old", "vieux", "vieille", before=True, fr_m_vowel="vieil"),
    Adjective("beautiful", "beau", "belle", before=True, fr_m_vowel="bel"),
)

# Names are spelled the same in both languages (ASCII, so both TTS voices read them).
NAMES = (("Tom", "m"), ("Hugo", "m"), ("Lucas", "m"), ("Leo", "m"), ("Noah", "m"), ("Max", "m"),
         ("Paul", "m"), ("Adam", "m"), ("Sam", "m"), ("Theo", "m"),
         ("Emma", "f"), ("Chloe", "f"), ("Lina", "f"), ("Zoe", "f"), ("Mia", "f"), ("Anna", "f"),
         ("Nina", "f"), ("Julia", "f"), ("Alice", "f"), ("Eva", "f"))

# Companions other than a named friend ("his friend Lina" / "son amie Lina" is built per story).
COMPANIONS = _nouns(("dog", "chien", "m"), ("cat", "chat", "m"), ("little brother", "petit frère", "m"),
                    ("little sister", "petite sœur", "f"), ("mother", "mère", "f"), ("father", "père", "m"),
                    ("grandmother", "grand-mère", "f"), ("grandfather", "grand-père", "m"))


# ----------------------------------------------------------------------------- templates
# (english, french) format strings over the context built in `_context`. Suffix keys:
# {e} hero agreement, {oe} object, {ae} animal, {ce} companion, {ps} hero+companion plural.

SETUPS = (
    ("One day, {N} went to {place_en} with {comp_en}.",
     "Un jour, {N} est allé{e} {place_fr} avec {comp_fr}."),
    ("{N} and {comp_en} liked to play {place_at_en}.", "{N} et {comp_fr} aimaient jouer {place_fr}."),
    ("Every morning, {N} walked to {place_en} with {comp_en}.",
     "Chaque matin, {N} marchait jusqu'{a_place_fr} avec {comp_fr}."),
    ("It was a sunny day, and {N} was {place_at_en} with {comp_en}.",
     "Il faisait beau, et {N} était {place_fr} avec {comp_fr}."),
    ("{N} was {kid_en} who often went to {place_en} with {comp_en}.",
     "{N} était {kid_fr} qui allait souvent {place_fr} avec {comp_fr}."),
    ("On Saturday, {N} and {comp_en} went to {place_en} together.",
     "Samedi, {N} et {comp_fr} sont allé{ps} ensemble {place_fr}."),
)

DISCOVERIES = (
    ("There, {he} found {obj_a_en}.", "Là, {il} a trouvé {obj_un_fr}."),
    ("{N} saw {obj_a_en} near {lm_en}.", "{N} a vu {obj_un_fr} près {de_lm_fr}."),
    ("Next to {lm_en}, there was {obj_a_en}.", "À côté {de_lm_fr}, il y avait {obj_un_fr}."),
    ("Suddenly, {he} noticed {obj_a_en} on the ground.", "Soudain, {il} a remarqué {obj_un_fr} par terre."),
    ("While playing, {N} found {obj_a_en} behind {lm_en}.",
     "En jouant, {N} a trouvé {obj_un_fr} derrière {lm_fr}."),
)

# Middles that name the animal with {animal_a_en} introduce it; later sentences say "the".
MIDDLES = (
    ("{he} showed {obj_en} to {comp_en}.", "{il} a montré {obj_fr} à {comp_fr}."),
    ("{he} picked up {obj_en} and smiled.", "{il} a ramassé {obj_fr} et a souri."),
    ("{comp_en} thought that {obj_en} was very pretty.", "{comp_fr} trouvait {obj_fr} très joli{oe}."),
    ("{animal_a_en} came closer to look at {obj_en}.",
     "{animal_un_fr} s'est approché{ae} pour regarder {obj_fr}."),
    ("{N} held {obj_en} carefully in {his} hands.", "{N} tenait {obj_fr} avec soin dans ses mains."),
)

# problem -> (complications, correct endings, wrong endings). Wrong endings keep the story's
# characters and topic but contradict what happened (StoryCloze style). Correct endings name
# the hero (no dangling pronoun) and a topic noun, because they double as the TopicCloze
# distractors of other stories, which must be recognisably off-topic there.
PROBLEMS = {
    "steal": (
        (("But then, {animal_ref_en} took {obj_en} and ran away.",
          "Mais soudain, {animal_ref_fr} a pris {obj_fr} et s'est enfui{ae}."),
         ("Suddenly, {animal_ref_en} grabbed {obj_en} and ran off.",
          "Tout à coup, {animal_ref_fr} a attrapé {obj_fr} et s'est sauvé{ae}.")),
        (("{N} ran after {animal_en} and got {obj_en} back.",
          "{N} a couru après {animal_fr} et a récupéré {obj_fr}."),
         ("{N} followed {animal_en} and found {obj_en} near {lm_en}.",
          "{N} a suivi {animal_fr} et a retrouvé {obj_fr} près {de_lm_fr}.")),
        (("{N} was happy because {animal_en} never touched {obj_en}.",
          "{N} était content{e} parce {que_animal_fr} n'avait jamais touché {obj_fr}."),
         ("{N} kept {obj_en} in {his} pocket all day, and nobody took it.",
          "{N} a gardé {obj_fr} dans sa poche toute la journée, et personne ne l'a pris{oe}.")),
    ),
    "rain": (
        (("Then, dark clouds came and it started to rain.",
          "Puis, de gros nuages noirs sont arrivés et il a commencé à pleuvoir."),
         ("Suddenly, the sky turned grey and it began to rain hard.",
          "Soudain, le ciel est devenu gris et il s'est mis à pleuvoir très fort.")),
        (("{N} ran home with {obj_en}, wet but happy.",
          "{N} est rentré{e} à la maison avec {obj_fr}, mouillé{e} mais {heureux}."),
         ("{N} and {comp_en} took {obj_en} and waited inside until the rain stopped.",
          "{N} et {comp_fr} ont pris {obj_fr} et ont attendu à l'abri jusqu'à ce que la pluie s'arrête.")),
        (("The sun was shining, so {N} and {comp_en} stayed dry all day.",
          "Le soleil brillait, alors {N} et {comp_fr} sont resté{ps} au sec toute la journée."),
         ("{N} was happy that it did not rain at all that day.",
          "{N} était {heureux} qu'il ne pleuve pas du tout ce jour-là.")),
    ),
    "heavy": (
        (("But {obj_en} was too heavy to carry alone.",
          "Mais {obj_fr} était trop lourd{oe} pour {le_obj} porter seul{e}."),
         ("{N} tried to lift {obj_en}, but it was much too heavy.",
          "{N} a essayé de soulever {obj_fr}, mais {il_obj} était beaucoup trop lourd{oe}.")),
        (("With the help of {comp_en}, {N} carried {obj_en} home.",
          "Avec l'aide {de_comp_fr}, {N} a porté {obj_fr} jusqu'à la maison."),
         ("{N} asked {comp_en} for help, and they pushed {obj_en} home together.",
          "{N} a demandé de l'aide à {comp_fr}, et {they_fr} ont poussé {obj_fr} "
          "ensemble jusqu'à la maison.")),
        (("{N} lifted {obj_en} with one finger and threw it very far.",
          "{N} a soulevé {obj_fr} avec un seul doigt et l'a lancé{oe} très loin."),
         ("{obj_en} was as light as a feather, so {N} carried it alone.",
          "{obj_fr} était {leger} comme une plume, alors {N} l'a porté{oe} seul{e}.")),
    ),
    "lost": (
        (("Then {N} could not find {comp_en} anymore.", "Puis {N} ne trouvait plus {comp_fr}."),
         ("After a while, {comp_en} was gone.", "Au bout d'un moment, {comp_fr} avait disparu.")),
        (("{N} looked everywhere and found {comp_en} near {lm_en}.",
          "{N} a cherché partout et a retrouvé {comp_fr} près {de_lm_fr}."),
         ("{N} called loudly, and {comp_en} came out from behind {lm_en}.",
          "{N} a appelé très fort, et {comp_fr} est sorti{ce} de derrière {lm_fr}.")),
        (("{N} was glad that {comp_en} stayed next to {him} all day.",
          "{N} était content{e} {que_comp_fr} reste à côté {de_lui} toute la journée."),
         ("{N} had gone there all alone that day.",
          "{N} était allé{e} là-bas tout{e} seul{e} ce jour-là.")),
    ),
    "break": (
        (("But {obj_en} fell on the ground and broke.",
          "Mais {obj_fr} est tombé{oe} par terre et s'est cassé{oe}."),
         ("Then {he} dropped {obj_en}, and it broke into two pieces.",
          "Puis {il} a fait tomber {obj_fr}, et {il_obj} s'est cassé{oe} en deux morceaux.")),
        (("{N} and {comp_en} fixed {obj_en} with some glue.",
          "{N} et {comp_fr} ont réparé {obj_fr} avec de la colle."),
         ("{N} was sad, but {comp_en} helped {him} fix {obj_en}.",
          "{N} était triste, mais {comp_fr} l'a aidé{e} à réparer {obj_fr}.")),
        (("{N} was glad that {obj_en} was still perfect.",
          "{N} était content{e} {que_obj_fr} soit encore parfait{oe}."),
         ("{obj_en} was not broken at all, so {N} played with it all day.",
          "{obj_fr} n'était pas du tout cassé{oe}, alors {N} a joué avec toute la journée.")),
    ),
}

MIDDLE_PROB = 0.75  # else the story has 4 sentences (no middle)


# ----------------------------------------------------------------------------- stories

@dataclasses.dataclass(frozen=True)
class Story:
    """One parallel story: sentence i of `sentences_fr` translates sentence i of `sentences_en`.

    The last sentence is the ending; `wrong_ending_*` (StoryCloze) and `topic_ending_*`
    (TopicCloze, taken from story `topic_ending_source`, of another topic) replace it to
    build the benchmarks' wrong sequences.
    """
    id: str
    topic: str
    sentences_en: list[str]
    sentences_fr: list[str]
    wrong_ending_en: str
    wrong_ending_fr: str
    topic_ending_en: str
    topic_ending_fr: str
    topic_ending_source: str = ""

    def sentences(self, lang: str) -> list[str]:
        return list(_by_lang(lang, self.sentences_en, self.sentences_fr))

    def wrong_ending(self, lang: str) -> str:
        return _by_lang(lang, self.wrong_ending_en, self.wrong_ending_fr)

    def topic_ending(self, lang: str) -> str:
        return _by_lang(lang, self.topic_ending_en, self.topic_ending_fr)


def _by_lang(lang: str, en, fr):
    if lang == "en":
        return en
    if lang == "fr":
        return fr
    raise ValueError(f"unknown language {lang!r}: expected 'en' or 'fr'")


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The sampled content of one story, before any sentence is written."""
    topic: str
    hero: tuple[str, str]
    companion: Noun
    place: Place
    obj: Noun
    adjective: Adjective
    animal: Noun
    landmark: Noun


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample_frame(rng: np.random.Generator, topic: str) -> _Frame:
    vocab = TOPIC_VOCAB[topic]
    hero = _pick(rng, NAMES)
    if rng.random() < 0.3:  # a named friend instead of a family member or pet
        friend, gender = _pick(rng, [n for n in NAMES if n[0] != hero[0]])
        companion = Noun(f"friend {friend}", ("amie " if gender == "f" else "ami ") + friend, gender)
    else:
        companion = _pick(rng, COMPANIONS)
    return _Frame(topic, hero, companion, _pick(rng, vocab.places), _pick(rng, vocab.objects),
                  _pick(rng, ADJECTIVES), _pick(rng, vocab.animals), _pick(rng, vocab.landmarks))


def _object_phrases(frame: _Frame) -> tuple[str, str]:
    """'a red shell' / 'un coquillage rouge' with the adjective in its French position."""
    obj, adj = frame.obj, frame.adjective
    en = en_indefinite(f"{adj.en} {obj.en}")
    fr_adj = adj.fr_for(obj)
    fr_np = f"{fr_adj} {obj.fr}" if adj.before else f"{obj.fr} {fr_adj}"
    return en, fr_indefinite(fr_np, obj.gender)


def _context(frame: _Frame, animal_introduced: bool) -> dict[str, str]:
    """Every phrase a template may use, already agreed in gender and elided."""
    name, g = frame.hero
    obj, animal, comp, lm, place = frame.obj, frame.animal, frame.companion, frame.landmark, frame.place
    obj_fr = fr_definite(obj.fr, obj.gender)
    animal_fr = fr_definite(animal.fr, animal.gender)
    comp_fr = fr_possessive(comp.fr, comp.gender)
    lm_fr = fr_definite(lm.fr, lm.gender)
    obj_a_en, obj_un_fr = _object_phrases(frame)
    return {
        "N": name, "he": _agree(g, "he", "she"), "his": _agree(g, "his", "her"),
        "him": _agree(g, "him", "her"), "il": _agree(g, "il", "elle"),
        "e": _agree(g, "", "e"), "heureux": _agree(g, "heureux", "heureuse"),
        "de_lui": _agree(g, "de lui", "d'elle"),
        "kid_en": _agree(g, "a little boy", "a little girl"),
        "kid_fr": _agree(g, "un petit garçon", "une petite fille"),
        "comp_en": f"{_agree(g, 'his', 'her')} {comp.en}", "comp_fr": comp_fr,
        "que_comp_fr": fr_que(comp_fr), "de_comp_fr": fr_de(comp_fr), "ce": _agree(comp.gender, "", "e"),
        "ps": "es" if g == "f" and comp.gender == "f" else "s",
        "they_fr": "elles" if g == "f" and comp.gender == "f" else "ils",
        "place_en": place.en, "place_at_en": f"{place.en_at} {place.en}",
        "place_fr": place.fr_location(), "a_place_fr": fr_a(place.fr_definite()),
        "obj_a_en": obj_a_en, "obj_un_fr": obj_un_fr, "obj_en": f"the {obj.en}", "obj_fr": obj_fr,
        "que_obj_fr": fr_que(obj_fr), "oe": _agree(obj.gender, "", "e"),
        "le_obj": _agree(obj.gender, "le", "la"), "il_obj": _agree(obj.gender, "il", "elle"),
        "leger": _agree(obj.gender, "léger", "légère"),
        "animal_a_en": en_indefinite(animal.en), "animal_un_fr": fr_indefinite(animal.fr, animal.gender),
        "animal_en": f"the {animal.en}", "animal_fr": animal_fr, "que_animal_fr": fr_que(animal_fr),
        "animal_ref_en": f"the {animal.en}" if animal_introduced else en_indefinite(animal.en),
        "animal_ref_fr": animal_fr if animal_introduced else fr_indefinite(animal.fr, animal.gender),
        "ae": _agree(animal.gender, "", "e"),
        "lm_en": f"the {lm.en}", "lm_fr": lm_fr, "de_lm_fr": fr_de(lm_fr),
    }


def _render(template: tuple[str, str], ctx: dict[str, str]) -> tuple[str, str]:
    en, fr = template
    return _capitalize(en.format(**ctx)), _capitalize(fr.format(**ctx))


def _write_story(rng: np.random.Generator, frame: _Frame) -> tuple[list[tuple[str, str]], tuple[str, str]]:
    """Samples templates for `frame`: returns the (en, fr) sentences and the wrong ending."""
    middle = _pick(rng, MIDDLES) if rng.random() < MIDDLE_PROB else None
    complications, endings, wrongs = PROBLEMS[_pick(rng, sorted(PROBLEMS))]
    ctx = _context(frame, animal_introduced=middle is not None and "{animal_a_en}" in middle[0])
    templates = [_pick(rng, SETUPS), _pick(rng, DISCOVERIES)]
    templates += [middle] if middle is not None else []
    templates += [_pick(rng, complications), _pick(rng, endings)]
    return [_render(t, ctx) for t in templates], _render(_pick(rng, wrongs), ctx)


def generate_stories(num_stories: int, seed: int) -> list[Story]:
    """`num_stories` parallel EN/FR stories with ids `story00000`..., identical for the same `seed`.

    Topics are drawn uniformly. The TopicCloze ending of each story is the ending of a
    randomly chosen story of another topic; when the batch has none (tiny batches), a
    story of another topic is generated for it from the same random stream.
    ValueError: `num_stories` < 0.
    """
    if num_stories < 0:
        raise ValueError(f"num_stories must be >= 0, got {num_stories}")
    rng = np.random.default_rng(seed)
    return _assemble(rng, [_draft(rng) for _ in range(num_stories)], "story")


# The benchmark stories' own seed stream: SeedSequence(seed) with this spawn key is independent
# of `np.random.default_rng(seed)` (the corpus stories' stream) for every seed.
BENCHMARK_STREAM = 1
BENCHMARK_ID_PREFIX = "bench"
# Candidates drawn per requested story before giving up (the grammar has far more distinct
# prompts than any demo needs; a draw that rejects this much is a misconfiguration).
_MAX_DRAWS_PER_STORY = 20

BENCHMARK_EXCLUSION_RULE = ("a candidate is rejected when its prompt (every sentence but the ending) equals, "
                            "in English or in French, the prompt of an excluded story (the corpus) or of a "
                            "benchmark story drawn before it")


@dataclasses.dataclass(frozen=True)
class BenchmarkDraw:
    """Benchmark stories and what their draw rejected (`BENCHMARK_EXCLUSION_RULE`).

    `stories`: ids `bench00000`...; `candidates`: stories drawn in all; `rejected_excluded`:
    candidates whose prompt equals an excluded story's; `rejected_duplicate`: candidates whose
    prompt equals an earlier benchmark story's. candidates == len(stories) + both rejections.
    """
    stories: list[Story]
    candidates: int
    rejected_excluded: int
    rejected_duplicate: int

    def report(self) -> dict:
        """JSON-ready summary (the corpus writes it to `benchmark_stories.json`)."""
        return {"num_stories": len(self.stories), "candidates": self.candidates,
                "rejected_excluded": self.rejected_excluded, "rejected_duplicate": self.rejected_duplicate,
                "rule": BENCHMARK_EXCLUSION_RULE}


def prompt_keys(sentences_en, sentences_fr) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys `BENCHMARK_EXCLUSION_RULE` compares: (("en", *EN prompt), ("fr", *FR prompt)),
    the prompt being every sentence but the last."""
    return ("en", *sentences_en[:-1]), ("fr", *sentences_fr[:-1])


def generate_benchmark_stories(num_stories: int, seed: int, exclude=()) -> BenchmarkDraw:
    """`num_stories` stories for the cloze benchmarks, none of which repeats a story of `exclude`.

    Drawn from the grammar of `generate_stories` with the benchmark stream
    (`SeedSequence(seed, spawn_key=(BENCHMARK_STREAM,))`), so they do not depend on how many
    corpus stories there are, and the corpus stories do not depend on them. Candidates are
    drawn one at a time and rejected by `BENCHMARK_EXCLUSION_RULE`; TopicCloze endings are then
    taken among the accepted stories only. Identical for the same (`num_stories`, `seed`,
    prompts of `exclude`); a larger `num_stories` extends a smaller draw's accepted
    candidates (the TopicCloze endings are drawn afresh).
    ValueError: `num_stories` < 0, or fewer than `num_stories` accepted after
    `_MAX_DRAWS_PER_STORY * num_stories` candidates.
    """
    if num_stories < 0:
        raise ValueError(f"num_benchmark_stories must be >= 0, got {num_stories}")
    excluded = {key for story in exclude for key in prompt_keys(story.sentences_en, story.sentences_fr)}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(BENCHMARK_STREAM,)))
    drafts, seen, candidates, rejected_excluded, rejected_duplicate = [], set(), 0, 0, 0
    while len(drafts) < num_stories:
        if candidates >= _MAX_DRAWS_PER_STORY * num_stories:
            raise ValueError(f"only {len(drafts)} of {num_stories} benchmark stories after {candidates} candidates "
                             f"({rejected_excluded} equal to an excluded story, {rejected_duplicate} duplicates): "
                             f"the grammar cannot give that many distinct prompts; lower num_benchmark_stories")
        draft = _draft(rng)
        candidates += 1
        keys = prompt_keys([en for en, _ in draft[1]], [fr for _, fr in draft[1]])
        if excluded.intersection(keys):
            rejected_excluded += 1
        elif seen.intersection(keys):
            rejected_duplicate += 1
        else:
            seen.update(keys)
            drafts.append(draft)
    return BenchmarkDraw(_assemble(rng, drafts, BENCHMARK_ID_PREFIX), candidates, rejected_excluded,
                         rejected_duplicate)


def _draft(rng: np.random.Generator):
    """One story before its TopicCloze ending: (topic, [(en, fr) sentences], (en, fr) wrong ending)."""
    topic = _pick(rng, TOPICS)
    sentences, wrong = _write_story(rng, _sample_frame(rng, topic))
    return topic, sentences, wrong


def _assemble(rng: np.random.Generator, drafts, id_prefix: str) -> list[Story]:
    """Stories `{id_prefix}{i:05d}` from `drafts`, each with a TopicCloze ending of another draft."""
    stories = []
    for i, (topic, sentences, wrong) in enumerate(drafts):
        (topic_en, topic_fr), source = _topic_ending(rng, drafts, topic, id_prefix)
        stories.append(Story(
            id=f"{id_prefix}{i:05d}", topic=topic,
            sentences_en=[en for en, _ in sentences], sentences_fr=[fr for _, fr in sentences],
            wrong_ending_en=wrong[0], wrong_ending_fr=wrong[1],
            topic_ending_en=topic_en, topic_ending_fr=topic_fr, topic_ending_source=source))
    return stories


def _topic_ending(rng: np.random.Generator, drafts, topic: str, id_prefix: str) -> tuple[tuple[str, str], str]:
    """The ending of a random draft of another topic, and that draft's story id."""
    others = [j for j, draft in enumerate(drafts) if draft[0] != topic]
    if others:
        j = _pick(rng, others)
        return drafts[j][1][-1], f"{id_prefix}{j:05d}"
    foreign = _pick(rng, [t for t in TOPICS if t != topic])
    sentences, _ = _write_story(rng, _sample_frame(rng, foreign))
    return sentences[-1], f"generated:{foreign}"


# ----------------------------------------------------------------------------- spoken words

# A spoken word: letters, possibly joined by apostrophes or hyphens (l'arbre, jusqu'au,
# grand-mère); digits and underscores are not letters, other punctuation is dropped.
_WORD_RE = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*")


def words(sentence: str) -> list[str]:
    """The spoken words of a sentence, lowercased for TTS input.

    The sentence is normalised first (`slm_jax.text_normalization.normalize_text`), so a
    decomposed accent (NFD "e" + U+0301) stays inside its word and U+202F / U+00A0 separate
    words. Punctuation is dropped; an apostrophe or hyphen between letters keeps its word whole
    ("l'arbre", "aujourd'hui", "grand-mère" are each one spoken word), and typographic
    apostrophes are normalised to "'".
    """
    text = normalize_text(sentence).replace("\u2019", "'").replace("\u02bc", "'").lower()
    return _WORD_RE.findall(text)
