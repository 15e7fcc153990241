"""Word alignments of the synthetic corpus (``<split>.words.tsv``) and the probe reading them."""
from __future__ import annotations

import numpy as np

from sslvitals.probe import ProbeSet


def test_word_alignments_follow_the_transcripts_and_feed_the_probe(tiny_corpus):
    corpus, _ = tiny_corpus
    split = corpus.split("probe")
    rows = split.word_alignments()
    words = split.words()
    uids = split.utt_ids
    by_utt: dict[str, list] = {}
    for u, s, e, w in rows:
        by_utt.setdefault(u, []).append((s, e, w))
    assert set(by_utt) == set(uids)
    matched = 0
    for uid, transcript in zip(uids, words):
        segs = by_utt[uid]
        if [w for _, _, w in segs] == transcript:
            matched += 1
            starts = [s for s, _, _ in segs]
            assert starts == sorted(starts)
            assert all(e > s for s, e, _ in segs)
            assert all(e0 <= s1 + 1e-9 for (_, e0, _), (s1, _, _) in zip(segs, segs[1:]))
        else:  # word events that do not match the transcript: one gap line
            assert [w for _, _, w in segs] == ["sil"]
    assert matched == len(uids)  # punctuation and sentence-end events are not words
    probe = ProbeSet.from_path(split.manifest, max_seconds=None)
    assert probe.has_words and probe.has_labels
    inside = np.concatenate([it.words for it in probe.items]) >= 0
    assert 0.3 < inside.mean() < 1.0  # words cover most frames, pauses and silence do not
