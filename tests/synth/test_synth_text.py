"""The seeded sentence generator."""
from __future__ import annotations

from sslvitals.synth.text import VOCABULARY, SentenceGenerator, normalize_words, words_to_letters


def test_same_seed_same_sentences_and_streams_differ():
    a, b = SentenceGenerator(seed=5), SentenceGenerator(seed=5)
    assert [a.sentence(i) for i in range(50)] == [b.sentence(i) for i in range(50)]
    other_seed = [SentenceGenerator(seed=6).sentence(i).text for i in range(50)]
    other_stream = [a.sentence(i, stream=1).text for i in range(50)]
    mine = [a.sentence(i).text for i in range(50)]
    assert sum(x == y for x, y in zip(mine, other_seed)) < 3
    assert sum(x == y for x, y in zip(mine, other_stream)) < 3


def test_words_are_the_text_without_punctuation_and_within_bounds():
    gen = SentenceGenerator(seed=0, min_words=6, max_words=24)
    vocab = {w.upper() for pool in VOCABULARY.values() for w in pool} | {"AN"}
    lengths = []
    for i in range(300):
        s = gen.sentence(i)
        assert s.text[0].isupper() and s.text.endswith(".")
        assert s.words == normalize_words(s.text)
        assert set(s.words) <= vocab
        lengths.append(len(s.words))
    assert min(lengths) >= 6 and max(lengths) <= 24
    assert len(set(lengths)) > 5  # varied lengths


def test_letter_transcript_format():
    assert words_to_letters(("AB", "C")) == "A B | C |"
    assert normalize_words("Well, it's done.") == ("WELL", "IT'S", "DONE")
