"""Word alignments of the probe and the word representations CCA-word compares layers with.

The word-level measures (``mi_word``, ``nmi_word``, ``cca_word``) need to know which word each
probe frame belongs to. Three alignment formats are read:

* a TSV file, ``utt<TAB>start_s<TAB>end_s<TAB>word`` per word (any whitespace between the four
  columns works): what ``sslvitals synth`` writes as ``<split>.words.tsv``;
* a Kaldi CTM file (suffix ``.ctm``), ``utt channel start_s duration_s word [confidence]``;
* Praat TextGrids (a ``.TextGrid`` file named after its utterance, or a folder of
  ``<utt>.TextGrid`` files, as the Montreal Forced Aligner writes them): the intervals of the
  tier named ``words`` (any case), else of the first interval tier.

Entries whose word is empty or one of :data:`GAP_WORDS` (silence, spoken noise) are gaps.

Frames follow the probe's 50 Hz convolutional framing: frame ``i`` of an utterance is centred at
``(320 i + 200) / 16000`` s and belongs to the word whose ``[start, end)`` covers that centre;
frames in no word get ``-1``. Each utterance gives two per-frame arrays: the word's id in the
probe's word list (:func:`word_vocabulary`: words by decreasing count over the whole alignment
file, ties in string order, so the ids are the same on every rank and for any batching) and the
index of the word token in the utterance (for pooling a token's frames).

The word representation of CCA-word is, by default, the one-hot identity of the
``word_vocab_size`` most frequent words (:func:`word_table`); with a word-vector text file
(``word v1 v2 ... vE`` per line, e.g. GloVe; a word2vec-style ``count dim`` header line is
skipped) each word is represented by its vector, looked up as written, then lower-cased.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sslvitals.errors import SSLVitalsError

__all__ = [
    "GAP_WORDS",
    "WordSegment",
    "read_word_alignments",
    "word_vocabulary",
    "word_frames",
    "word_table",
    "default_word_alignment",
]

logger = logging.getLogger(__name__)

#: Words that mark a gap rather than a word (compared lower-cased).
GAP_WORDS: frozenset[str] = frozenset({"", "<eps>", "sil", "<sil>", "sp", "spn", "<unk>",
                                       "<noise>", "[noise]", "<s>", "</s>"})

#: ``(start_s, end_s, word)`` of one word token.
WordSegment = tuple[float, float, str]

_SAMPLE_RATE = 16000
_HOP, _HALF_FIELD = 320, 200


def default_word_alignment(probe: str | os.PathLike) -> Path | None:
    """The word alignment file beside a probe, if there is one.

    For a manifest ``<stem>.tsv``: ``<stem>.words.tsv``, ``<stem>.ctm`` or a folder
    ``<stem>.textgrid``; for a Kaldi-style folder: ``words.tsv``, ``ctm`` or ``textgrid/``
    inside it.

    Returns:
        The first that exists, or None.
    """
    p = Path(probe)
    if p.is_dir():
        cands = [p / "words.tsv", p / "ctm", p / "textgrid"]
    else:
        stem = str(p.with_suffix(""))
        cands = [Path(stem + ".words.tsv"), Path(stem + ".ctm"), Path(stem + ".textgrid")]
    return next((c for c in cands if c.exists()), None)


def _is_gap(word: str) -> bool:
    return word.strip().lower() in GAP_WORDS


def _seconds(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError as exc:
        raise SSLVitalsError(f"{where}: {text!r} is not a time in seconds") from exc
    if not math.isfinite(v) or v < 0:
        raise SSLVitalsError(f"{where}: time {text!r} must be a finite number >= 0")
    return v


def _read_tsv(path: Path) -> dict[str, list[WordSegment]]:
    out: dict[str, list[WordSegment]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) == 3:  # a gap with an empty word column
            parts = parts + [""]
        if len(parts) != 4:
            raise SSLVitalsError(
                f"{path}:{lineno}: expected 'utt<TAB>start_s<TAB>end_s<TAB>word', got {line!r}"
            )
        where = f"{path}:{lineno}"
        start, end = _seconds(parts[1], where), _seconds(parts[2], where)
        out.setdefault(parts[0].strip(), []).append((start, end, parts[3].strip()))
    return out


def _read_ctm(path: Path) -> dict[str, list[WordSegment]]:
    out: dict[str, list[WordSegment]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith(";;"):
            continue
        if len(parts) not in (5, 6):
            raise SSLVitalsError(
                f"{path}:{lineno}: a CTM line is 'utt channel start_s duration_s word "
                f"[confidence]', got {line!r}"
            )
        where = f"{path}:{lineno}"
        start, dur = _seconds(parts[2], where), _seconds(parts[3], where)
        out.setdefault(parts[0], []).append((start, start + dur, parts[4]))
    return out


_TG_TIER = re.compile(r'class\s*=\s*"IntervalTier"\s*name\s*=\s*"([^"]*)"(.*?)(?=class\s*=|\Z)',
                      re.S)
_TG_INTERVAL = re.compile(
    r'xmin\s*=\s*([-0-9.eE+]+)\s*xmax\s*=\s*([-0-9.eE+]+)\s*text\s*=\s*"((?:[^"]|"")*)"', re.S)


def _read_textgrid_file(path: Path) -> list[WordSegment]:
    text = path.read_text(encoding="utf-8", errors="replace")
    tiers = _TG_TIER.findall(text)
    if not tiers:
        raise SSLVitalsError(
            f"{path} holds no interval tier; give a long-format Praat TextGrid with a 'words' tier"
        )
    body = next((b for name, b in tiers if name.strip().lower() == "words"), tiers[0][1])
    segs = []
    for a, b, word in _TG_INTERVAL.findall(body):
        where = str(path)
        segs.append((_seconds(a, where), _seconds(b, where), word.replace('""', '"').strip()))
    return segs


def _read_textgrids(path: Path) -> dict[str, list[WordSegment]]:
    files = sorted(path.glob("*.TextGrid")) + sorted(path.glob("*.textgrid")) if path.is_dir() \
        else [path]
    if not files:
        raise SSLVitalsError(f"{path} holds no <utt>.TextGrid file")
    return {f.stem: _read_textgrid_file(f) for f in files}


def read_word_alignments(path: str | os.PathLike,
                         uids: Sequence[str] | None = None) -> dict[str, list[WordSegment]]:
    """Read word alignments (TSV, Kaldi CTM or TextGrid; see the module doc).

    Args:
        path: The alignment file, or a folder of TextGrids.
        uids: When given, every one of these utterances must have an entry (an utterance
            without any word is given as a gap line, e.g. ``utt 0 1.2 sil``).

    Returns:
        ``{utt: [(start_s, end_s, word), ...]}`` sorted by start, gaps removed.

    Raises:
        SSLVitalsError: on an unreadable or malformed file, a segment ending before it starts,
            overlapping words, or a missing utterance.
    """
    p = Path(path)
    if not p.exists():
        raise SSLVitalsError(f"word alignments {p} do not exist")
    try:
        if p.is_dir() or p.suffix.lower() == ".textgrid":
            raw = _read_textgrids(p)
        elif p.suffix.lower() == ".ctm":
            raw = _read_ctm(p)
        else:
            raw = _read_tsv(p)
    except (OSError, UnicodeDecodeError) as exc:
        raise SSLVitalsError(f"cannot read word alignments {p}: {exc}") from exc
    out: dict[str, list[WordSegment]] = {}
    for utt, segs in raw.items():
        segs = sorted(segs, key=lambda s: (s[0], s[1]))
        for s, e, w in segs:
            if e < s:
                raise SSLVitalsError(f"{p}: word {w!r} of {utt} ends ({e}) before it starts ({s})")
        words = [s for s in segs if not _is_gap(s[2])]
        for (s0, e0, w0), (s1, _e1, w1) in zip(words, words[1:]):
            if s1 < e0 - 1e-3:  # CTM start + duration rounding may overlap by < 1 ms
                raise SSLVitalsError(
                    f"{p}: words {w0!r} ({s0}-{e0}) and {w1!r} (from {s1}) of {utt} overlap; give "
                    "one word per instant"
                )
        out[utt] = words
    if uids is not None:
        missing = [u for u in uids if u not in out]
        if missing:
            raise SSLVitalsError(
                f"word alignments {p} have no entry for {len(missing)} probe utterance(s), e.g. "
                f"{missing[:3]}; give every probe utterance at least one line"
            )
    return out


def word_vocabulary(alignments: Mapping[str, Sequence[WordSegment]]) -> tuple[str, ...]:
    """Every word of the alignments, most frequent first (ties in string order).

    Example:
        >>> word_vocabulary({"a": [(0, 1, "the"), (1, 2, "cat")], "b": [(0, 1, "the")]})
        ('the', 'cat')
    """
    counts = Counter(w for segs in alignments.values() for _, _, w in segs)
    return tuple(sorted(counts, key=lambda w: (-counts[w], w)))


def word_frames(segments: Sequence[WordSegment], num_samples: int,
                vocab_index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame word ids and word-token indices of one utterance at the 50 Hz framing.

    Args:
        segments: The utterance's words, sorted, gaps removed.
        num_samples: Its length in samples at 16 kHz.
        vocab_index: Word -> id.

    Returns:
        ``(ids, tokens)``: int64 ``(T,)`` each, ``T = (num_samples - 400) // 320 + 1``; ``-1``
        for frames in no word.

    Example:
        >>> ids, tok = word_frames([(0.0, 0.05, "a"), (0.07, 0.2, "b")], 3600, {"a": 0, "b": 1})
        >>> ids.tolist(), tok.tolist()
        ([0, 0, -1, 1, 1, 1, 1, 1, 1, 1, -1], [0, 0, -1, 1, 1, 1, 1, 1, 1, 1, -1])
    """
    n = max(0, (int(num_samples) - 2 * _HALF_FIELD) // _HOP + 1)
    centres = (np.arange(n) * _HOP + _HALF_FIELD) / _SAMPLE_RATE
    ids = np.full(n, -1, dtype=np.int64)
    tokens = np.full(n, -1, dtype=np.int64)
    for j, (start, end, word) in enumerate(segments):
        inside = (centres >= start) & (centres < end)
        ids[inside] = vocab_index[word]
        tokens[inside] = j
    return ids, tokens


def word_table(vocab: Sequence[str], size: int, vectors: str | os.PathLike | None = None
               ) -> np.ndarray:
    """The word representation of the ``size`` most frequent words, one row per word id.

    Args:
        vocab: The probe's words, most frequent first (:func:`word_vocabulary`).
        size: How many of them are represented (``word_vocab_size``).
        vectors: A word-vector text file, or None for one-hot identity.

    Returns:
        float64 ``(min(size, len(vocab)), E)``: the identity matrix without ``vectors``; else
        the vectors, with a row of NaN for a word the file lacks (its tokens are not counted).

    Raises:
        SSLVitalsError: if the file cannot be read, has rows of unequal length, or holds no
            vector for any of the words.
    """
    words = list(vocab[: max(0, int(size))])
    if vectors is None:
        return np.eye(len(words), dtype=np.float64)
    p = Path(vectors)
    wanted: dict[str, list[int]] = {}
    for i, w in enumerate(words):
        wanted.setdefault(w, []).append(i)
    lower: dict[str, list[int]] = {}
    for i, w in enumerate(words):
        lower.setdefault(w.lower(), []).append(i)
    rows: dict[int, np.ndarray] = {}
    exact: set[int] = set()
    dim = None
    try:
        with p.open(encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if len(parts) < 2:
                    continue
                if lineno == 1 and len(parts) == 2 and all(x.isdigit() for x in parts):
                    continue  # word2vec text header
                word = parts[0]
                hit = wanted.get(word)
                low = lower.get(word.lower())
                if hit is None and low is None:
                    continue
                try:
                    vec = np.asarray([float(x) for x in parts[1:]], dtype=np.float64)
                except ValueError as exc:
                    raise SSLVitalsError(f"{p}:{lineno}: not 'word v1 v2 ...': {exc}") from exc
                if dim is None:
                    dim = vec.shape[0]
                elif vec.shape[0] != dim:
                    raise SSLVitalsError(
                        f"{p}:{lineno}: vector of {vec.shape[0]} values, earlier rows have {dim}"
                    )
                for i in hit or []:
                    rows[i] = vec
                    exact.add(i)
                for i in low or []:
                    if i not in exact:
                        rows[i] = vec
    except OSError as exc:
        raise SSLVitalsError(f"cannot read word vectors {p}: {exc}") from exc
    if not rows or dim is None:
        raise SSLVitalsError(
            f"word vectors {p} hold none of the probe's {len(words)} most frequent words (e.g. "
            f"{words[:3]}); give a 'word v1 v2 ...' text file covering the probe's words"
        )
    table = np.full((len(words), dim), np.nan, dtype=np.float64)
    for i, vec in rows.items():
        table[i] = vec
    if len(rows) < len(words):
        logger.info("word vectors %s: %d of the %d most frequent probe words have no vector; "
                    "their tokens are left out of cca_word", p, len(words) - len(rows), len(words))
    return table
