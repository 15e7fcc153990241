"""The fixed probe set: which audio the measurements run on, read in padded batches.

A probe is a fairseq manifest (``.tsv``: first line the root folder, then
``relative/path<TAB>num_samples`` per utterance) or a Kaldi-style data folder with ``wav.scp``
(``utt-id path`` per line). Optional frame-level phone labels sit beside it:

* ``<stem>.phn``: one line per manifest entry (or ``utt-id id id ...`` lines), space-separated
  integer phone ids, one per 20 ms frame of the convolutional front-end
  (``(num_samples - 400) // 320 + 1`` frames at 16 kHz), the format of HuBERT's ``.km`` files;
* ``<stem>.align.tsv``: ``utt-id<TAB>start_s<TAB>end_s<TAB>phone`` alignments, converted to frame
  labels by the frame-centre rule (with ``phones.txt`` beside it mapping ids to symbols, or ids
  assigned in sorted symbol order).

Optional word alignments (for the word-level measures) sit beside it too: ``<stem>.words.tsv``
(``utt<TAB>start_s<TAB>end_s<TAB>word``), ``<stem>.ctm`` (Kaldi CTM) or ``<stem>.textgrid/``
(one Praat TextGrid per utterance); see :mod:`sslvitals.words`.

The choice of utterances is seeded and depends only on the probe file, so numbers are comparable
across validations and runs.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["ProbeItem", "ProbeBatch", "ProbeSet", "frame_count", "read_frame_labels",
           "MIN_SAMPLES"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: Shortest utterance, in samples, that gives a frame: the 400-sample (25 ms) receptive field
#: of the HuBERT / wav2vec 2.0 / WavLM convolutional front-end. Shorter ones give no frame.
MIN_SAMPLES = 400


def frame_count(num_samples: int, window: int = 400, hop: int = 320) -> int:
    """Frames the HuBERT / wav2vec 2.0 convolutional front-end produces for ``num_samples``.

    Example:
        >>> frame_count(16000)
        49
    """
    return max(0, (int(num_samples) - window) // hop + 1)


@dataclass
class ProbeItem:
    """One probe utterance.

    Attributes:
        uid: Utterance id (manifest path without extension, or the Kaldi utt-id).
        path: Audio file path.
        num_samples: Length in samples.
        index: Position in the full probe file (stable across selections and shards).
        labels: Frame-level phone ids ``(T,)`` at 50 Hz, or None.
        words: Frame-level word ids ``(T,)`` at 50 Hz (index into the probe's
            ``word_vocab``; -1 outside words), or None.
        word_tokens: Frame-level index of the word token in the utterance ``(T,)`` (-1
            outside words), or None.
    """

    uid: str
    path: str
    num_samples: int
    index: int
    labels: np.ndarray | None = None
    words: np.ndarray | None = None
    word_tokens: np.ndarray | None = None


@dataclass
class ProbeBatch:
    """A padded batch of probe audio.

    Attributes:
        wav: ``(B, T)`` float32 waveforms in [-1, 1], zero-padded.
        lengths: ``(B,)`` int64 valid samples per row.
        ids: Utterance ids, length B.
        index: Stable utterance indices, length B (used to seed per-frame sample keys).
        labels: Per utterance ``(T_i,)`` int64 frame labels at 50 Hz, or None.
        sample_rate: Samples per second.
        words: Per utterance ``(T_i,)`` int64 word ids at 50 Hz (-1 outside words), or None.
        word_tokens: Per utterance ``(T_i,)`` int64 word-token indices (-1 outside words).
        word_vocab: The probe's words, most frequent first (word id = position), or None.
    """

    wav: torch.Tensor
    lengths: torch.Tensor
    ids: list[str]
    index: list[int]
    labels: list[np.ndarray] | None
    sample_rate: int = SAMPLE_RATE
    words: list[np.ndarray] | None = None
    word_tokens: list[np.ndarray] | None = None
    word_vocab: tuple[str, ...] | None = None

    @property
    def padding_mask(self) -> torch.Tensor:
        """``(B, T)`` bool, True at padded samples (fairseq's convention)."""
        t = self.wav.shape[1]
        return torch.arange(t)[None, :] >= self.lengths[:, None]

    def split(self) -> list["ProbeBatch"]:
        """One batch per utterance, cut to its own length, in the same order.

        Used by :mod:`sslvitals.batching` for models whose features padding would change.

        Returns:
            ``B`` batches with ``wav (1, T_i)`` and no padding.
        """
        return [
            ProbeBatch(wav=self.wav[row:row + 1, :n], lengths=self.lengths[row:row + 1],
                       ids=self.ids[row:row + 1], index=self.index[row:row + 1],
                       labels=None if self.labels is None else self.labels[row:row + 1],
                       sample_rate=self.sample_rate,
                       words=None if self.words is None else self.words[row:row + 1],
                       word_tokens=None if self.word_tokens is None else self.word_tokens[row:row + 1],
                       word_vocab=self.word_vocab)
            for row, n in enumerate(self.lengths.tolist())
        ]


@dataclass
class ProbeSet:
    """An ordered collection of probe utterances.

    Attributes:
        items: The utterances.
        source: Where they were read from (for logs and records).
        sample_rate: Expected sample rate of every file.
    """

    items: list[ProbeItem]
    source: str = ""
    sample_rate: int = SAMPLE_RATE
    word_vocab: tuple[str, ...] | None = None
    has_labels: bool = field(init=False)
    has_words: bool = field(init=False)

    def __post_init__(self) -> None:
        self.has_labels = bool(self.items) and all(it.labels is not None for it in self.items)
        self.has_words = (self.word_vocab is not None and bool(self.items)
                          and all(it.words is not None for it in self.items))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_path(cls, path: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                  max_seconds: float | None = 3600.0, seed: int = 0,
                  sample_rate: int = SAMPLE_RATE, check_audio: bool = True,
                  min_samples: int = MIN_SAMPLES,
                  words: str | os.PathLike | None = None) -> "ProbeSet":
        """Read a probe from a fairseq ``.tsv`` manifest or a Kaldi-style folder.

        Args:
            path: Manifest file or data folder.
            labels: Frame-label file (``.phn``) or alignment file (``.align.tsv``); default: the
                ``.phn`` / ``.align.tsv`` beside the manifest (``<dir>/phn`` for a folder), if any.
            max_seconds: Keep a seeded random subset of at most this many seconds (None: all).
            seed: Seed of that choice.
            sample_rate: Required sample rate.
            check_audio: Check that every selected file exists and has ``sample_rate``.
            min_samples: Shortest utterance accepted (see :meth:`check_lengths`).
            words: Word alignments (``.words.tsv``, ``.ctm`` or a TextGrid folder; see
                :mod:`sslvitals.words`); default: the one beside the probe, if any. The word
                ids are counted over every utterance of the probe file, before selection.

        Raises:
            SSLVitalsError: if the probe or its labels cannot be read, a file is missing, a
                file's sample rate differs, no utterance fits in ``max_seconds``, or a selected
                utterance is shorter than ``min_samples``.
        """
        p = Path(path)
        if not p.exists():
            raise SSLVitalsError(
                f"probe {p} does not exist; give a fairseq manifest (.tsv) or a Kaldi-style folder "
                "with wav.scp, or 'valid' to use the validation subset"
            )
        if p.is_dir():
            items = _read_kaldi_dir(p)
            default_labels = [p / "phn", p / "align.tsv"]
        else:
            items = _read_manifest(p)
            stem = p.with_suffix("")
            default_labels = [Path(str(stem) + ".phn"), Path(str(stem) + ".align.tsv")]
        if not items:
            raise SSLVitalsError(f"probe {p} lists no utterances")
        label_path = Path(labels) if labels else next((c for c in default_labels if c.is_file()), None)
        if labels and not Path(labels).is_file():
            raise SSLVitalsError(f"probe labels {labels} do not exist")
        if label_path is not None:
            _attach_labels(items, label_path)
        vocab = None
        word_path = Path(words) if words else None
        if words and not Path(words).exists():
            raise SSLVitalsError(f"probe word alignments {words} do not exist")
        if word_path is None:
            from sslvitals.words import default_word_alignment

            word_path = default_word_alignment(p)
        if word_path is not None:
            vocab = _attach_words(items, word_path)
        probe = cls(items, source=str(p), sample_rate=sample_rate, word_vocab=vocab)
        if max_seconds is not None:
            probe = probe.select(max_seconds, seed=seed)
            if not probe.items:
                shortest = min(it.num_samples for it in items) / sample_rate
                raise SSLVitalsError(
                    f"no utterance of probe {p} fits in max_probe_seconds={max_seconds:g} (the "
                    f"shortest lasts {shortest:.2f} s): raise max_probe_seconds "
                    "(--max-probe-seconds / vitals.max_probe_seconds)"
                )
        probe.check_lengths(min_samples)
        if check_audio:
            probe.check_audio()
        return probe

    def check_lengths(self, min_samples: int = MIN_SAMPLES) -> None:
        """Check that every utterance is long enough to give at least one frame.

        Args:
            min_samples: Shortest usable utterance in samples (the receptive field of the
                model's front-end; :data:`MIN_SAMPLES` for every supported architecture).

        Raises:
            SSLVitalsError: listing the utterances that are too short, before any model runs.
        """
        short = [it for it in self.items if it.num_samples < min_samples]
        if short:
            listing = ", ".join(f"{it.uid} ({it.num_samples} samples)" for it in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            raise SSLVitalsError(
                f"{len(short)} probe utterance(s) of {self.source} are shorter than {min_samples} "
                f"samples ({min_samples / self.sample_rate * 1000:.0f} ms, the receptive field of "
                f"the convolutional front-end) and would give no frame: {listing}{more}. Remove "
                "them from the probe"
            )

    def select(self, max_seconds: float, seed: int = 0) -> "ProbeSet":
        """Return a seeded random subset of at most ``max_seconds`` of audio, in file order."""
        budget = max_seconds * self.sample_rate
        total = sum(it.num_samples for it in self.items)
        if total <= budget:
            return self
        order = np.random.default_rng(seed).permutation(len(self.items))
        chosen, acc = [], 0
        for i in order:
            n = self.items[i].num_samples
            if acc + n > budget:
                continue
            chosen.append(int(i))
            acc += n
        chosen.sort()
        return ProbeSet([self.items[i] for i in chosen], self.source, self.sample_rate,
                        self.word_vocab)

    def shard(self, rank: int, world_size: int) -> "ProbeSet":
        """Return this rank's share: utterances sorted by length, dealt round-robin."""
        if world_size <= 1:
            return self
        order = sorted(range(len(self.items)), key=lambda i: (-self.items[i].num_samples, i))
        mine = sorted(order[rank::world_size])
        return ProbeSet([self.items[i] for i in mine], self.source, self.sample_rate,
                        self.word_vocab)

    def check_audio(self) -> None:
        """Check every file exists and has the expected sample rate (header read only)."""
        import soundfile as sf

        missing = [it.path for it in self.items if not os.path.isfile(it.path)]
        if missing:
            raise SSLVitalsError(
                f"{len(missing)} probe audio file(s) are missing, e.g. {missing[:3]}; check the "
                f"manifest's root line in {self.source}"
            )
        for it in self.items:
            try:
                info = sf.info(it.path)
            except Exception as exc:  # soundfile raises several types
                raise SSLVitalsError(f"cannot read probe audio {it.path}: {exc}") from exc
            if info.samplerate != self.sample_rate:
                raise SSLVitalsError(
                    f"probe audio {it.path} has sample rate {info.samplerate} Hz, expected "
                    f"{self.sample_rate} Hz; resample the probe (e.g. sox in.wav -r 16000 out.wav)"
                )

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.items)

    @property
    def total_seconds(self) -> float:
        """Total duration in seconds."""
        return sum(it.num_samples for it in self.items) / self.sample_rate

    def fingerprint(self) -> str:
        """A short hash of what the probe holds: utterance ids, lengths and frame labels.

        Two probes with the same fingerprint feed the model the same audio (by id and length)
        and the label metrics the same labels, wherever their files live, so values measured
        on them can be compared; the path is not part of it.

        Returns:
            16 hex digits.
        """
        import hashlib

        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.uid}\t{it.num_samples}\n".encode("utf-8"))
            if it.labels is not None:
                h.update(np.ascontiguousarray(it.labels, dtype=np.int64).tobytes())
            if it.words is not None and self.word_vocab is not None:
                h.update(b"words")
                h.update(np.ascontiguousarray(it.words, dtype=np.int64).tobytes())
                h.update(np.ascontiguousarray(it.word_tokens, dtype=np.int64).tobytes())
        if self.has_words and self.word_vocab is not None:
            h.update("\n".join(self.word_vocab).encode("utf-8"))
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, object]:
        """A small dict for records and logs (with the :meth:`fingerprint`)."""
        return {"path": self.source, "utterances": len(self.items),
                "seconds": round(self.total_seconds, 2), "labels": self.has_labels,
                "fingerprint": self.fingerprint()}

    def batches(self, batch_seconds: float = 60.0, *, max_batch: int = 64) -> Iterator[ProbeBatch]:
        """Yield padded batches, utterances grouped by length to limit padding.

        These are reading batches. :class:`~sslvitals.monitor.VitalsMonitor` re-cuts them
        per model (:mod:`sslvitals.batching`): models whose features padding would change see
        one utterance per forward pass whatever ``batch_seconds`` is.

        Args:
            batch_seconds: Maximum padded audio per batch (B x longest), in seconds.
            max_batch: Maximum utterances per batch.
        """
        import soundfile as sf

        order = sorted(range(len(self.items)), key=lambda i: self.items[i].num_samples)
        budget = int(batch_seconds * self.sample_rate)
        group: list[int] = []
        for i in order + [None]:  # type: ignore[list-item]
            if i is not None:
                longest = max([self.items[j].num_samples for j in group] + [self.items[i].num_samples])
                if not group or (longest * (len(group) + 1) <= budget and len(group) < max_batch):
                    group.append(i)
                    continue
            if not group:
                break
            its = [self.items[j] for j in group]
            lengths = [it.num_samples for it in its]
            wav = torch.zeros(len(its), max(lengths), dtype=torch.float32)
            real = []
            for row, it in enumerate(its):
                data, sr = sf.read(it.path, dtype="float32", always_2d=True)
                if sr != self.sample_rate:
                    raise SSLVitalsError(
                        f"probe audio {it.path} has sample rate {sr} Hz, expected {self.sample_rate} Hz"
                    )
                mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                n = min(len(mono), wav.shape[1])
                wav[row, :n] = torch.from_numpy(mono[:n])
                real.append(n)
            labels = [it.labels for it in its] if all(it.labels is not None for it in its) else None
            words = self.has_words
            yield ProbeBatch(wav=wav, lengths=torch.tensor(real, dtype=torch.int64),
                             ids=[it.uid for it in its], index=[it.index for it in its],
                             labels=labels, sample_rate=self.sample_rate,
                             words=[it.words for it in its] if words else None,
                             word_tokens=[it.word_tokens for it in its] if words else None,
                             word_vocab=self.word_vocab if words else None)
            group = [i] if i is not None else []
            if i is None:
                break


# ---------------------------------------------------------------------- file formats
def _read_manifest(path: Path) -> list[ProbeItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SSLVitalsError(f"cannot read probe manifest {path}: {exc}") from exc
    if not lines:
        raise SSLVitalsError(f"probe manifest {path} is empty")
    root = Path(lines[0].strip())
    if not root.is_absolute():
        root = (path.parent / root).resolve() if not root.exists() else root
    items = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise SSLVitalsError(
                f"{path}:{lineno}: expected 'relative/path<TAB>num_samples', got {line!r}; a fairseq "
                "manifest's first line is the audio root folder"
            )
        try:
            n = int(parts[1])
        except ValueError as exc:
            raise SSLVitalsError(f"{path}:{lineno}: num_samples {parts[1]!r} is not an integer") from exc
        rel = parts[0]
        uid = os.path.splitext(rel)[0]
        items.append(ProbeItem(uid=uid, path=str(root / rel), num_samples=n, index=len(items)))
    return items


def _read_kaldi_dir(path: Path) -> list[ProbeItem]:
    scp = path / "wav.scp"
    if not scp.is_file():
        raise SSLVitalsError(f"probe folder {path} has no wav.scp; give a Kaldi-style data folder")
    import soundfile as sf

    items = []
    for lineno, line in enumerate(scp.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise SSLVitalsError(f"{scp}:{lineno}: expected 'utt-id path', got {line!r}")
        uid, wav = parts[0], parts[1].strip()
        if wav.endswith("|") or ".ark:" in wav:
            raise SSLVitalsError(
                f"{scp}:{lineno}: piped commands and ark entries are not supported for the probe; "
                "write the probe audio to .wav/.flac files first"
            )
        wav_path = Path(wav)
        if not wav_path.is_absolute():
            wav_path = Path(os.getcwd()) / wav_path
        try:
            n = sf.info(str(wav_path)).frames
        except Exception as exc:
            raise SSLVitalsError(f"{scp}:{lineno}: cannot read {wav_path}: {exc}") from exc
        items.append(ProbeItem(uid=uid, path=str(wav_path), num_samples=int(n), index=len(items)))
    return items


def read_frame_labels(path: str | os.PathLike, items: Sequence[ProbeItem]) -> list[np.ndarray]:
    """Read a ``.phn`` (or ``.km``) file into one int64 array per item.

    Lines are matched by position, or by utterance id when every line starts with one.

    Raises:
        SSLVitalsError: on a count mismatch or non-integer labels.
    """
    p = Path(path)
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    by_id: dict[str, list[str]] = {}
    ids = {it.uid for it in items}
    keyed = bool(lines) and all(ln.split(maxsplit=1)[0] in ids for ln in lines[: min(5, len(lines))])
    if keyed:
        for ln in lines:
            head, *rest = ln.split()
            by_id[head] = rest
        missing = [it.uid for it in items if it.uid not in by_id]
        if missing:
            raise SSLVitalsError(f"labels {p} have no line for {len(missing)} utterances, e.g. {missing[:3]}")
        rows = [by_id[it.uid] for it in items]
    else:
        n_items = max(it.index for it in items) + 1 if items else 0
        if len(lines) < n_items:
            raise SSLVitalsError(
                f"labels {p} have {len(lines)} lines but the probe manifest lists {n_items} "
                "utterances; there must be one line per manifest entry"
            )
        rows = [lines[it.index].split() for it in items]
    out = []
    for it, row in zip(items, rows):
        try:
            arr = np.asarray([int(v) for v in row], dtype=np.int64)
        except ValueError as exc:
            raise SSLVitalsError(f"labels {p} for {it.uid} are not integers: {exc}") from exc
        expected = frame_count(it.num_samples)
        if abs(len(arr) - expected) > 2:
            raise SSLVitalsError(
                f"labels {p} give {len(arr)} frames for {it.uid} but its {it.num_samples} samples "
                f"make {expected} frames at 50 Hz; labels must be per 20 ms frame of the "
                "convolutional front-end ((num_samples - 400) // 320 + 1)"
            )
        out.append(arr)
    return out


def _attach_words(items: list[ProbeItem], path: Path) -> tuple[str, ...]:
    """Read word alignments, give every item its per-frame word ids and token indices, and
    return the word list (ids), counted over the whole file's utterances that the probe lists."""
    from sslvitals.words import read_word_alignments, word_frames, word_vocabulary

    alignments = read_word_alignments(path)
    # an utterance is found by its id, or by its file name (manifest ids keep the folders)
    key = {it.uid: it.uid if it.uid in alignments else Path(it.uid).name for it in items}
    missing = [it.uid for it in items if key[it.uid] not in alignments]
    if missing:
        raise SSLVitalsError(
            f"word alignments {path} have no entry for {len(missing)} probe utterance(s), e.g. "
            f"{missing[:3]}; give every probe utterance at least one line (its id or file name)"
        )
    vocab = word_vocabulary({key[it.uid]: alignments[key[it.uid]] for it in items})
    index = {w: i for i, w in enumerate(vocab)}
    for it in items:
        it.words, it.word_tokens = word_frames(alignments[key[it.uid]], it.num_samples, index)
    return vocab


def _attach_labels(items: list[ProbeItem], path: Path) -> None:
    if path.name.endswith(".align.tsv") or path.name == "align.tsv":
        arrays = _alignments_to_labels(path, items)
    else:
        arrays = read_frame_labels(path, items)
    for it, arr in zip(items, arrays):
        it.labels = arr


def _alignments_to_labels(path: Path, items: Sequence[ProbeItem]) -> list[np.ndarray]:
    rows: dict[str, list[tuple[float, float, str]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise SSLVitalsError(f"{path}:{lineno}: expected 'utt<TAB>start<TAB>end<TAB>phone'")
        try:
            rows.setdefault(parts[0], []).append((float(parts[1]), float(parts[2]), parts[3].strip()))
        except ValueError as exc:
            raise SSLVitalsError(f"{path}:{lineno}: start/end must be seconds: {exc}") from exc
    phones_file = path.parent / "phones.txt"
    if phones_file.is_file():
        table = {}
        for ln in phones_file.read_text(encoding="utf-8").splitlines():
            if ln.strip():
                a, b = ln.split()[:2]
                # accept both "id symbol" and "symbol id"
                if a.isdigit():
                    table[b] = int(a)
                else:
                    table[a] = int(b)
    else:
        table = {s: i for i, s in enumerate(sorted({ph for r in rows.values() for _, _, ph in r}))}
    out = []
    for it in items:
        segs = rows.get(it.uid)
        if segs is None:
            raise SSLVitalsError(f"alignments {path} have no segment for utterance {it.uid}")
        n = frame_count(it.num_samples)
        centres = (np.arange(n) * 320 + 200) / SAMPLE_RATE
        lab = np.full(n, -1, dtype=np.int64)
        for start, end, ph in segs:
            if ph not in table:
                raise SSLVitalsError(f"phone {ph!r} in {path} is missing from {phones_file}")
            lab[(centres >= start) & (centres < end)] = table[ph]
        if (lab < 0).any():
            # frames outside every segment take the nearest segment's phone
            idx = np.where(lab >= 0)[0]
            if idx.size == 0:
                raise SSLVitalsError(f"alignments for {it.uid} cover none of its frames")
            nearest = idx[np.clip(np.searchsorted(idx, np.arange(n)), 0, idx.size - 1)]
            lab = np.where(lab >= 0, lab, lab[nearest])
        out.append(lab)
    return out


def _ceil_div(a: int, b: int) -> int:  # pragma: no cover - tiny helper
    return int(math.ceil(a / b))
