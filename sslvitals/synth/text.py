"""Seeded English sentence generator with an embedded vocabulary (no downloads).

The sentences only need to be pronounceable by a rule-based synthesiser and varied enough to
cover the English phone inventory in many contexts; they are built from a small phrase
grammar over a hand-written word list. The same ``(seed, stream, index)`` always yields the
same sentence, on any machine and in any process, so a corpus can be synthesised in parallel
and still be reproducible.

Example:
    >>> gen = SentenceGenerator(seed=0)
    >>> gen.sentence(3) == SentenceGenerator(seed=0).sentence(3)
    True
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["Sentence", "SentenceGenerator", "VOCABULARY", "words_to_letters", "normalize_words"]

# --- Vocabulary -------------------------------------------------------------------------------
# Ordinary words chosen for coverage of English sounds (fricatives, affricates, nasals, glides,
# diphthongs, r-coloured vowels). Written for this project.
_NOUNS = """
apple anchor arrow autumn bakery basket beach bottle bridge brother bucket butter cabin camera
candle canyon captain carpet castle cellar chair cheese cherry chimney circle city cliff clock
cloud coffee collar cottage cousin cradle crystal cupboard curtain daughter desert diamond dinner
doctor dragon drawer dream engine evening factory farmer feather fence field finger forest
fountain garden giant ginger glacier guitar hammer harbor harvest helmet highway hunter island
jacket jewel journey judge jungle kettle kitchen ladder lantern lawyer leather lemon letter
library lizard machine magnet market meadow message mirror monkey morning mountain museum needle
neighbor notebook ocean office orange orchard oyster painter palace paper parcel pebble pencil
pepper pillow pilot planet pocket potato puzzle quarter rabbit railway river rocket saddle sailor
salad scholar season shadow shelter shoulder silver singer sister soldier spider station stone
stranger street summer sunset surgeon sweater table teacher thunder ticket tiger tomato tower
treasure tunnel turtle umbrella valley village violin visitor voyage wagon walnut window winter
wizard yellow yogurt zebra measure vision treasure chamber ship shoe thread throne feather
""".split()
_VERBS = """
admired answered borrowed brought buried carried caught changed chased cleaned climbed collected
covered crossed described discovered dropped earned enjoyed explained fetched filled finished
followed gathered grabbed guarded hid heard held joined judged kept kicked lifted loaded
measured mended missed moved noticed opened ordered packed painted passed pushed pulled reached
repaired returned saved searched served shared showed signed smelled solved sorted spotted
splashed squeezed stitched stored studied touched traded visited waited washed watched weighed
whispered wrapped wrote
""".split()
_INTRANSITIVE = """
appeared arrived belonged coughed danced drifted faded flourished giggled hurried jumped laughed
listened paused rested shivered sighed smiled sneezed stumbled swayed trembled vanished waved
wandered yawned
""".split()
_ADJECTIVES = """
ancient angry bitter bright broken busy careful cheerful clever cloudy cold crooked curious dark
dusty eager early elegant empty enormous famous fragile frozen gentle gigantic golden graceful
green grumpy heavy hollow honest huge humble icy jealous joyful lazy little lonely loud lucky
massive modern muddy narrow noisy odd orange patient plain polite precious proud purple quick
quiet rapid rough round rusty shiny silent slippery smooth smoky soft sour strange sturdy
sunny tall tender thirsty tidy tiny usual velvet warm wealthy weary wild wise wooden young zealous
""".split()
_ADVERBS = """
quickly slowly quietly loudly gently eagerly carefully happily rarely suddenly barely badly
boldly calmly easily fairly gladly nearly proudly warmly wisely yearly thoroughly
""".split()
_NAMES = """
Alice Arthur Bella Charles Chloe Daniel Edward Eleanor George Grace Hannah Henry Isaac Joseph
Julia Kevin Laura Lucy Martin Maya Nathan Oliver Olivia Peter Rachel Samuel Sophie Thomas
Victor Violet William Zoe
""".split()
_PLACES = """
near beside behind below under above across inside outside through toward around beyond
""".split()
_DETERMINERS = "the a this that every some one another my your his her our their".split()
_TIMES = """
yesterday tomorrow today tonight afterwards meanwhile eventually sometimes usually later
""".split()
_CONJUNCTIONS = "and but while because although since until whereas".split()

#: All words the generator can produce, by part of speech (read-only, for inspection/tests).
VOCABULARY: dict[str, tuple[str, ...]] = {
    "noun": tuple(dict.fromkeys(_NOUNS)),
    "verb": tuple(_VERBS),
    "intransitive": tuple(_INTRANSITIVE),
    "adjective": tuple(_ADJECTIVES),
    "adverb": tuple(_ADVERBS),
    "name": tuple(_NAMES),
    "preposition": tuple(_PLACES),
    "determiner": tuple(_DETERMINERS),
    "time": tuple(_TIMES),
    "conjunction": tuple(_CONJUNCTIONS),
}

_VOWEL_START = re.compile(r"^[aeiou]", re.IGNORECASE)


@dataclass(frozen=True)
class Sentence:
    """One generated sentence.

    Attributes:
        text: What is given to the synthesiser (capitalised, with commas and a full stop).
        words: The spoken words, upper case, without punctuation (LibriSpeech-style
            transcript).
    """

    text: str
    words: tuple[str, ...]


def normalize_words(text: str) -> tuple[str, ...]:
    """Turn synthesiser text into upper-case words without punctuation.

    Example:
        >>> normalize_words("Yesterday, Alice smiled.")
        ('YESTERDAY', 'ALICE', 'SMILED')
    """
    return tuple(w.upper() for w in re.findall(r"[A-Za-z']+", text))


def words_to_letters(words: tuple[str, ...] | list[str]) -> str:
    """fairseq letter transcript: letters separated by spaces, ``|`` after every word.

    Example:
        >>> words_to_letters(("HI", "YOU"))
        'H I | Y O U |'
    """
    return " ".join(" ".join(list(w)) + " |" for w in words)


class SentenceGenerator:
    """Reproducible random sentences from a small phrase grammar.

    Args:
        seed: Corpus seed; sentences for different seeds are independent.
        min_words: Sentences shorter than this are extended with a second clause.
        max_words: Sentences are cut back to at most this many words (at a phrase boundary).
    """

    def __init__(self, seed: int = 0, *, min_words: int = 6, max_words: int = 24) -> None:
        self.seed = int(seed)
        self.min_words = int(min_words)
        self.max_words = int(max_words)

    # -- phrase builders (each returns a list of tokens; "," is a pause token) --
    @staticmethod
    def _pick(rng: np.random.Generator, pool: tuple[str, ...]) -> str:
        return pool[int(rng.integers(len(pool)))]

    def _noun_phrase(self, rng: np.random.Generator) -> list[str]:
        if rng.random() < 0.15:
            return [self._pick(rng, VOCABULARY["name"])]
        det = self._pick(rng, VOCABULARY["determiner"])
        words = []
        if rng.random() < 0.55:
            words.append(self._pick(rng, VOCABULARY["adjective"]))
        words.append(self._pick(rng, VOCABULARY["noun"]))
        if det == "a" and _VOWEL_START.match(words[0]):
            det = "an"
        return [det] + words

    def _clause(self, rng: np.random.Generator) -> list[str]:
        subject = self._noun_phrase(rng)
        out = list(subject)
        if rng.random() < 0.2:
            out.append(self._pick(rng, VOCABULARY["adverb"]))
        if rng.random() < 0.3:
            out.append(self._pick(rng, VOCABULARY["intransitive"]))
        else:
            out.append(self._pick(rng, VOCABULARY["verb"]))
            out.extend(self._noun_phrase(rng))
        if rng.random() < 0.5:
            out.append(self._pick(rng, VOCABULARY["preposition"]))
            out.extend(self._noun_phrase(rng))
        return out

    def sentence(self, index: int, stream: int = 0) -> Sentence:
        """Return sentence number ``index`` of ``stream`` (e.g. one stream per split).

        Args:
            index: Non-negative sentence index.
            stream: Independent sub-sequence number.

        Returns:
            The :class:`Sentence`; identical for identical ``(seed, stream, index)``.
        """
        rng = np.random.default_rng([self.seed, int(stream), int(index), 0x5E7])
        tokens: list[str] = []
        if rng.random() < 0.25:
            tokens += [self._pick(rng, VOCABULARY["time"]), ","]
        tokens += self._clause(rng)
        while sum(t != "," for t in tokens) < self.min_words or rng.random() < 0.35:
            tokens += [",", self._pick(rng, VOCABULARY["conjunction"])] + self._clause(rng)
            if sum(t != "," for t in tokens) >= self.max_words:
                break
        # cut back to max_words at a pause
        while sum(t != "," for t in tokens) > self.max_words and "," in tokens:
            tokens = tokens[: len(tokens) - 1 - tokens[::-1].index(",")]
        words = [t for t in tokens if t != ","]
        text = " ".join(tokens).replace(" ,", ",")
        text = text[0].upper() + text[1:] + "."
        return Sentence(text=text, words=normalize_words(" ".join(words)))
