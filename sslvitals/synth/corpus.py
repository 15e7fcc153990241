"""Synthesise a labelled multi-speaker English corpus, and read it back.

Layout written by :func:`synthesize_corpus` (``OUT`` is the output directory; ``<split>`` is
``train``, ``valid`` or ``probe``)::

    OUT/corpus.json            parameters, durations, speakers per split, framing (the marker)
    OUT/speakers.tsv           speaker_id, role, accent, variant, gender, pitch, range, rate, gap
    OUT/phones.txt             "<phone> <id>" per line, id = line number - 1; "sil" is id 0
    OUT/wav/<spk>/<utt>.wav    16 kHz mono int16
    OUT/<split>.tsv            fairseq manifest: root dir, then "<spk>/<utt>.wav<TAB>num_samples"
    OUT/<split>.phn            per manifest line: one phone id per 20 ms frame (see below)
    OUT/<split>.align.tsv      "utt<TAB>start_s<TAB>end_s<TAB>phone", contiguous segments
    OUT/<split>.words.tsv      "utt<TAB>start_s<TAB>end_s<TAB>word", one line per word (see below)
    OUT/<split>.wrd / .ltr     transcripts, one line per manifest entry (fairseq style)
    OUT/data/<split>/          Kaldi-style: wav.scp, text, utt2spk, spk2utt, spk2gender,
                               utt2num_samples (utterance ids sorted, speaker-prefixed)

Frame labels follow the convolutional framing of HuBERT / wav2vec 2.0 (receptive field 400
samples, hop 320 samples at 16 kHz): an utterance of ``n`` samples has
``(n - 400) // 320 + 1`` frames, and frame ``i`` gets the phone covering its centre,
``(320 * i + 200) / 16000`` seconds. Phone boundaries are the phoneme start events of the
synthesiser itself (:mod:`sslvitals.synth.espeak`), moved to 16 kHz; pauses and the leading
silence are ``sil``. Word alignments come from its word start events: a word runs from its
start to the next word's start, or to the first pause that begins before it; an utterance whose
word events do not match its transcript (e.g. a number read as several words) gets one
``sil`` line covering it, so it has no word frames.

Speakers are eSpeak NG accents x voice variants x pitch / pitch range / rate / word-gap
settings, drawn with the seed. With ``heldout_speakers > 0`` (default 2) the ``valid`` and
``probe`` splits are spoken only by speakers that never occur in ``train`` (held out); with
``heldout_speakers = 0`` they are new sentences from the training speakers.

The text, speaker and rate of utterance ``index`` of a split are a pure function of
``(seed, split, index)``; the utterances of one speaker in one split are synthesised in order in
a fresh process (eSpeak NG keeps state between utterances), so the corpus is byte-identical for
any ``jobs``.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from sslvitals.errors import SSLVitalsError
from sslvitals.synth.espeak import VoiceSettings, get_synthesizer, is_pause
from sslvitals.synth.text import SentenceGenerator, words_to_letters

__all__ = [
    "SAMPLE_RATE",
    "FRAME_HOP",
    "FRAME_WINDOW",
    "SPLITS",
    "SILENCE",
    "Speaker",
    "Utterance",
    "word_segments",
    "CorpusSplit",
    "Corpus",
    "num_frames",
    "frame_labels",
    "make_speakers",
    "synthesize_corpus",
    "load_corpus",
    "read_manifest",
    "read_int_lines",
    "read_phones",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME_WINDOW = 400  # receptive field of the wav2vec 2.0 / HuBERT feature extractor (samples)
FRAME_HOP = 320  # its stride (samples): 50 frames per second
SPLITS: tuple[str, ...] = ("train", "valid", "probe")
SILENCE = "sil"
CORPUS_FORMAT = 1
_META = "corpus.json"
_NATIVE_TO_16K = (320, 441)  # 22050 Hz * 320 / 441 = 16000 Hz

# Voice pools (all shipped with espeak-ng-data). Accents are voice names accepted by
# espeak_SetVoiceByName; variants are files in espeak-ng-data/voices/!v.
_ACCENTS: tuple[str, ...] = (
    "en-us", "en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
_MALE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "david", "john", "paul",
)
_FEMALE_VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5", "linda", "belinda", "steph")


def num_frames(num_samples: int) -> int:
    """Number of 20 ms frames of the conv feature extractor for ``num_samples`` at 16 kHz.

    Example:
        >>> num_frames(16000)
        49
        >>> num_frames(399)
        0
    """
    n = int(num_samples)
    return 0 if n < FRAME_WINDOW else (n - FRAME_WINDOW) // FRAME_HOP + 1


def frame_labels(starts: np.ndarray, ids: np.ndarray, num_samples: int) -> np.ndarray:
    """Label each conv frame with the segment covering its centre.

    Args:
        starts: Segment start positions in samples, shape ``(S,)``, increasing, ``starts[0] == 0``;
            segment ``s`` covers ``[starts[s], starts[s+1])`` and the last one runs to the end.
        ids: Integer label of each segment, shape ``(S,)``.
        num_samples: Length of the utterance in samples.

    Returns:
        int64 array ``(num_frames(num_samples),)``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    n = num_frames(num_samples)
    centres = FRAME_HOP * np.arange(n, dtype=np.int64) + FRAME_WINDOW // 2
    seg = np.searchsorted(starts, centres, side="right") - 1
    return ids[np.clip(seg, 0, len(ids) - 1)]


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an eSpeak NG accent and variant with fixed prosody settings.

    Attributes:
        speaker_id: ``spkNN``.
        role: ``"train"`` or ``"heldout"`` (valid / probe only).
        accent: eSpeak NG voice name, e.g. ``"en-us"``.
        variant: Voice variant, e.g. ``"m3"``, ``"f2"``, ``"klatt2"``.
        gender: ``"m"`` or ``"f"`` (that of the variant).
        pitch: Base pitch 0-100.
        pitch_range: Pitch range 0-100.
        rate: Words per minute.
        word_gap: Extra pause between words, in 10 ms units.
    """

    speaker_id: str
    role: str
    accent: str
    variant: str
    gender: str
    pitch: int
    pitch_range: int
    rate: int
    word_gap: int

    @property
    def voice(self) -> str:
        """The ``accent+variant`` string given to eSpeak NG."""
        return f"{self.accent}+{self.variant}"

    def settings(self, rate_factor: float = 1.0) -> VoiceSettings:
        """Voice settings, with the speaking rate scaled by ``rate_factor``."""
        return VoiceSettings(
            voice=self.voice, rate=int(round(self.rate * rate_factor)), pitch=self.pitch,
            pitch_range=self.pitch_range, word_gap=self.word_gap,
        )


def make_speakers(num_train: int, num_heldout: int, seed: int) -> list[Speaker]:
    """Draw distinct speakers (accent x variant pairs) with seeded prosody.

    Genders alternate so both are represented in every role.

    Args:
        num_train: Speakers of the train split (and of valid/probe if ``num_heldout == 0``).
        num_heldout: Extra speakers used only in valid and probe.
        seed: Corpus seed.

    Returns:
        ``num_train + num_heldout`` speakers, ids ``spk00``... (train ones first).
    """
    total = num_train + num_heldout
    if num_train < 1:
        raise SSLVitalsError("--speakers must be at least 1")
    rng = np.random.default_rng([int(seed), 0x5BEA])
    accents = sorted(set(_ACCENTS))
    # genders alternate within each role, so each gender may need about half of the speakers
    max_pairs = 2 * len(accents) * min(len(_MALE_VARIANTS), len(_FEMALE_VARIANTS)) - 2
    if total > max_pairs:
        raise SSLVitalsError(f"at most {max_pairs} distinct speakers are available, asked for {total}")
    used: set[tuple[str, str]] = set()
    speakers = []
    first = int(rng.integers(2))
    for i in range(total):
        role_index = i if i < num_train else i - num_train
        gender = "mf"[(first + role_index) % 2]
        pool = _MALE_VARIANTS if gender == "m" else _FEMALE_VARIANTS
        while True:
            accent = _ACCENTS[int(rng.integers(len(_ACCENTS)))]
            variant = pool[int(rng.integers(len(pool)))]
            if (accent, variant) not in used:
                used.add((accent, variant))
                break
        speakers.append(
            Speaker(
                speaker_id=f"spk{i:02d}",
                role="train" if i < num_train else "heldout",
                accent=accent,
                variant=variant,
                gender=gender,
                pitch=int(rng.integers(30, 71)),
                pitch_range=int(rng.integers(25, 86)),
                rate=int(rng.integers(140, 201)),
                word_gap=int(rng.integers(0, 2)),
            )
        )
    return speakers


@dataclass
class Utterance:
    """One synthesised utterance.

    Attributes:
        utt_id: ``<speaker_id>-<split><index>``; sorts by speaker then index.
        speaker_id: Speaker id.
        split: ``train``, ``valid`` or ``probe``.
        index: Position in the split's generation order.
        relpath: WAV path relative to ``OUT/wav``.
        num_samples: Length at 16 kHz.
        text: Text given to the synthesiser.
        words: Upper-case transcript words.
        starts: Phone segment starts in 16 kHz samples (first is 0).
        phones: Phone symbol of each segment (``sil`` for pauses).
        word_starts: The synthesiser's word start events in 16 kHz samples.
    """

    utt_id: str
    speaker_id: str
    split: str
    index: int
    relpath: str
    num_samples: int
    text: str
    words: tuple[str, ...]
    starts: list[int] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    word_starts: list[int] = field(default_factory=list)


def word_segments(utt: Utterance) -> list[tuple[int, int, str]]:
    """``(start, end, word)`` in 16 kHz samples for every transcript word of ``utt``.

    The synthesiser also reports events for punctuation and the end of the sentence; an event
    counts as a word only when a (non-pause) phone starts between it and the next event. A
    word runs from its start event to the next word's start (the end of the audio for the
    last one), cut at the first pause segment that begins inside it. Empty when the number of
    word events left differs from the number of transcript words.
    """
    ev = sorted(utt.word_starts)
    ends = ev[1:] + [utt.num_samples]
    spoken = [st for st, ph in zip(utt.starts, utt.phones) if ph != SILENCE]
    starts = [a for a, b in zip(ev, ends) if any(a <= p < b for p in spoken)]
    if len(starts) != len(utt.words) or not utt.words:
        return []
    bounds = starts[1:] + [utt.num_samples]
    pauses = [st for st, ph in zip(utt.starts, utt.phones) if ph == SILENCE]
    out = []
    for start, nxt, word in zip(starts, bounds, utt.words):
        end = min([p for p in pauses if start < p < nxt] + [nxt])
        if end > start:
            out.append((int(start), int(end), word))
    return out


@dataclass(frozen=True)
class _Job:
    utt_id: str
    split: str
    index: int
    speaker: Speaker
    text: str
    words: tuple[str, ...]
    rate_factor: float
    wav_root: str


def _segments(events: Sequence, native_len: int, out_len: int) -> tuple[list[int], list[str]]:
    """Contiguous 16 kHz segments from native-rate phoneme start events."""
    up, down = _NATIVE_TO_16K
    starts: list[int] = []
    phones: list[str] = []

    def push(pos: int, phone: str) -> None:
        pos = min(max(pos, 0), out_len)
        if starts and pos <= starts[-1]:  # zero-length predecessor: the later event wins
            starts.pop()
            phones.pop()
        if phones and phones[-1] == phone:  # merge repeats (e.g. two pauses in a row)
            return
        starts.append(pos)
        phones.append(phone)

    push(0, SILENCE)
    for ev in events:
        if ev.sample > native_len:
            continue
        pos = int(round(ev.sample * up / down))
        push(pos, SILENCE if is_pause(ev.phone) else ev.phone)
    # drop a trailing segment of zero length
    while len(starts) > 1 and starts[-1] >= out_len:
        starts.pop()
        phones.pop()
    return starts, phones


def _run_job(job: _Job) -> Utterance:
    out = get_synthesizer().synthesize(job.text, job.speaker.settings(job.rate_factor))
    if out.sample_rate != 22050:
        raise SSLVitalsError(f"unexpected eSpeak NG sample rate {out.sample_rate} (expected 22050)")
    up, down = _NATIVE_TO_16K
    wav = resample_poly(out.audio.astype(np.float32), up, down)
    wav16 = np.clip(np.round(wav), -32768, 32767).astype(np.int16)
    starts, phones = _segments(out.phones, len(out.audio), len(wav16))
    word_starts = [min(max(int(round(w * up / down)), 0), len(wav16)) for w in out.word_starts]
    relpath = f"{job.speaker.speaker_id}/{job.utt_id}.wav"
    path = Path(job.wav_root) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(str(path), SAMPLE_RATE, wav16)
    return Utterance(
        utt_id=job.utt_id, speaker_id=job.speaker.speaker_id, split=job.split, index=job.index,
        relpath=relpath, num_samples=int(len(wav16)), text=job.text, words=job.words,
        starts=starts, phones=phones, word_starts=word_starts,
    )


def _estimate_seconds(n_words: int, rate: float) -> float:
    return n_words * 60.0 / rate * 1.1 + 0.6


def _job(split: str, index: int, speakers: Sequence[Speaker], gen: SentenceGenerator, seed: int,
         wav_root: str) -> _Job:
    stream = SPLITS.index(split)
    spk = speakers[index % len(speakers)]
    sent = gen.sentence(index, stream=stream)
    jitter = np.random.default_rng([int(seed), stream, int(index), 0x7A7E]).uniform(0.94, 1.06)
    return _Job(
        utt_id=f"{spk.speaker_id}-{split}{index:05d}", split=split, index=index, speaker=spk,
        text=sent.text, words=sent.words, rate_factor=float(jitter), wav_root=wav_root,
    )


def _run_lane(jobs: list[_Job]) -> list[Utterance]:
    """Synthesise one lane (the utterances of one speaker in one split and round) in order."""
    return [_run_job(job) for job in jobs]


def _pool_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    for method in ("forkserver", "spawn"):
        if method in methods:
            ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(["sslvitals.synth.corpus"])
            return ctx
    return multiprocessing.get_context()


def _map(jobs: list[_Job], jobs_n: int, progress: bool, desc: str) -> list[Utterance]:
    """Synthesise ``jobs`` in lanes, each lane in a fresh worker process.

    eSpeak NG carries state from one utterance to the next (pitch flutter phase, noise
    generator, echo buffer), so an utterance's samples depend on what the same process
    synthesised before. Each lane therefore runs in a new process (``maxtasksperchild=1``),
    in index order: the output is the same for any number of jobs.
    """
    from tqdm.auto import tqdm

    lanes: dict[tuple[str, str], list[_Job]] = {}
    for job in jobs:
        lanes.setdefault((job.split, job.speaker.speaker_id), []).append(job)
    lane_list = [sorted(v, key=lambda j: j.index) for _, v in sorted(lanes.items())]
    lane_list.sort(key=len, reverse=True)  # longest first: better packing on few workers
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress, mininterval=1.0,
               dynamic_ncols=True)
    results: list[Utterance] = []
    try:
        ctx = _pool_context()
        with ctx.Pool(min(jobs_n, len(lane_list)), maxtasksperchild=1) as pool:
            for utts in pool.imap_unordered(_run_lane, lane_list):
                results.extend(utts)
                bar.update(len(utts))
    finally:
        bar.close()
    return results


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / _META).exists():
            raise SSLVitalsError(
                f"{out} exists, is not empty and is not an sslvitals corpus (no {_META}); "
                "choose a new directory"
            )
        if not force:
            raise SSLVitalsError(
                f"{out} already holds a corpus; pass --force (force=True) to replace it or choose "
                "another directory"
            )
        for name in list(out.iterdir()):
            if name.is_dir():
                shutil.rmtree(name)
            else:
                name.unlink()


def synthesize_corpus(
    out_dir: str | os.PathLike,
    *,
    hours: float = 1.0,
    speakers: int = 8,
    heldout_speakers: int = 2,
    valid_minutes: float = 5.0,
    probe_minutes: float = 10.0,
    seed: int = 0,
    jobs: int = 1,
    force: bool = False,
    progress: bool = True,
) -> "Corpus":
    """Synthesise the corpus described in the module docstring.

    Args:
        out_dir: Output directory (created; must be empty or an earlier corpus with ``force``).
        hours: Audio in the train split, in hours.
        speakers: Number of training speakers.
        heldout_speakers: Extra speakers for valid and probe only (0: valid/probe use the
            training speakers with new sentences).
        valid_minutes: Audio in the valid split (fairseq validation), in minutes.
        probe_minutes: Audio in the probe split (what the vitals are measured on), in minutes.
        seed: Seed of speakers, sentences and rate jitter.
        jobs: Worker processes.
        force: Replace an existing corpus in ``out_dir``.
        progress: Show a tqdm progress bar.

    Returns:
        The corpus as read back by :func:`load_corpus`.

    Raises:
        SSLVitalsError: on bad arguments, a non-corpus ``out_dir``, or a synthesiser failure.
    """
    if hours <= 0 or valid_minutes <= 0 or probe_minutes <= 0:
        raise SSLVitalsError("--hours, --valid-minutes and --probe-minutes must be positive")
    if heldout_speakers < 0:
        raise SSLVitalsError("--heldout-speakers must be >= 0")
    out = Path(out_dir).resolve()
    _check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    wav_root = out / "wav"
    t0 = time.perf_counter()
    spk = make_speakers(speakers, heldout_speakers, seed)
    train_spk = [s for s in spk if s.role == "train"]
    eval_spk = [s for s in spk if s.role == "heldout"] or train_spk
    split_speakers = {"train": train_spk, "valid": eval_spk, "probe": eval_spk}
    targets = {"train": hours * 3600.0, "valid": valid_minutes * 60.0, "probe": probe_minutes * 60.0}
    gen = SentenceGenerator(seed)
    done: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    next_index = {s: 0 for s in SPLITS}
    jobs_n = max(1, int(jobs))
    logger.info(
        "synthesising %.2f h train + %.1f min valid + %.1f min probe, %d train speakers, %d held out, "
        "%d job(s) -> %s", hours, valid_minutes, probe_minutes, speakers, heldout_speakers, jobs_n, out,
    )
    for round_no in range(1, 20):
        batch: list[_Job] = []
        for split in SPLITS:
            have = sum(u.num_samples for u in done[split]) / SAMPLE_RATE
            missing = targets[split] - have
            if missing <= 0:
                continue
            mean_rate = float(np.mean([s.rate for s in split_speakers[split]]))
            per_utt = _estimate_seconds(12, mean_rate)
            count = max(1, int(math.ceil(missing / per_utt * 1.03)))
            for _ in range(count):
                batch.append(_job(split, next_index[split], split_speakers[split], gen, seed,
                                  str(wav_root)))
                next_index[split] += 1
        if not batch:
            break
        for utt in _map(batch, jobs_n, progress, f"synth round {round_no}"):
            done[utt.split].append(utt)
    # keep, per split, the shortest prefix (in index order) that reaches the target
    for split in SPLITS:
        utts = sorted(done[split], key=lambda u: u.index)
        total = 0
        keep = []
        for u in utts:
            if total >= targets[split] * SAMPLE_RATE:
                (wav_root / u.relpath).unlink(missing_ok=True)
                continue
            keep.append(u)
            total += u.num_samples
        done[split] = sorted(keep, key=lambda u: u.utt_id)
    _write_corpus(out, done, spk, split_speakers, dict(
        hours=hours, speakers=speakers, heldout_speakers=heldout_speakers,
        valid_minutes=valid_minutes, probe_minutes=probe_minutes, seed=seed,
    ))
    elapsed = time.perf_counter() - t0
    corpus = load_corpus(out)
    secs = {s: corpus.split(s).seconds for s in SPLITS}
    logger.info(
        "corpus ready in %.1f s: %s; %d phones", elapsed,
        ", ".join(f"{s} {secs[s] / 60:.1f} min/{len(corpus.split(s))} utt" for s in SPLITS),
        len(corpus.phones),
    )
    return corpus


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def _write_corpus(out: Path, done: dict[str, list[Utterance]], speakers: list[Speaker],
                  split_speakers: dict[str, list[Speaker]], params: dict) -> None:
    phone_set = sorted({p for utts in done.values() for u in utts for p in u.phones} - {SILENCE})
    phones = [SILENCE] + phone_set
    phone_id = {p: i for i, p in enumerate(phones)}
    _write_lines(out / "phones.txt", (f"{p} {i}" for i, p in enumerate(phones)))
    _write_lines(
        out / "speakers.tsv",
        ["speaker_id\trole\taccent\tvariant\tgender\tpitch\tpitch_range\trate\tword_gap"]
        + [f"{s.speaker_id}\t{s.role}\t{s.accent}\t{s.variant}\t{s.gender}\t{s.pitch}\t"
           f"{s.pitch_range}\t{s.rate}\t{s.word_gap}" for s in speakers],
    )
    wav_root = out / "wav"
    gender = {s.speaker_id: s.gender for s in speakers}
    for split, utts in done.items():
        _write_lines(out / f"{split}.tsv", [str(wav_root)] + [f"{u.relpath}\t{u.num_samples}" for u in utts])
        phn_lines, align_lines = [], []
        for u in utts:
            ids = np.array([phone_id[p] for p in u.phones], dtype=np.int64)
            lab = frame_labels(np.array(u.starts), ids, u.num_samples)
            phn_lines.append(" ".join(map(str, lab.tolist())))
            ends = list(u.starts[1:]) + [u.num_samples]
            for s, e, p in zip(u.starts, ends, u.phones):
                align_lines.append(f"{u.utt_id}\t{s / SAMPLE_RATE:.6f}\t{e / SAMPLE_RATE:.6f}\t{p}")
        _write_lines(out / f"{split}.phn", phn_lines)
        _write_lines(out / f"{split}.align.tsv", align_lines)
        word_lines = []
        for u in utts:
            segs = word_segments(u) or [(0, u.num_samples, SILENCE)]
            word_lines.extend(f"{u.utt_id}\t{s / SAMPLE_RATE:.6f}\t{e / SAMPLE_RATE:.6f}\t{w}"
                              for s, e, w in segs)
        _write_lines(out / f"{split}.words.tsv", word_lines)
        _write_lines(out / f"{split}.wrd", (" ".join(u.words) for u in utts))
        _write_lines(out / f"{split}.ltr", (words_to_letters(u.words) for u in utts))
        kdir = out / "data" / split
        kdir.mkdir(parents=True, exist_ok=True)
        _write_lines(kdir / "wav.scp", (f"{u.utt_id} {wav_root / u.relpath}" for u in utts))
        _write_lines(kdir / "text", (f"{u.utt_id} {' '.join(u.words)}" for u in utts))
        _write_lines(kdir / "utt2spk", (f"{u.utt_id} {u.speaker_id}" for u in utts))
        _write_lines(kdir / "utt2num_samples", (f"{u.utt_id} {u.num_samples}" for u in utts))
        by_spk: dict[str, list[str]] = {}
        for u in utts:
            by_spk.setdefault(u.speaker_id, []).append(u.utt_id)
        _write_lines(kdir / "spk2utt", (f"{s} {' '.join(ids)}" for s, ids in sorted(by_spk.items())))
        _write_lines(kdir / "spk2gender", (f"{s} {gender[s]}" for s in sorted(by_spk)))
    meta = {
        "format": CORPUS_FORMAT,
        "generator": "sslvitals.synth (eSpeak NG)",
        "params": params,
        "sample_rate": SAMPLE_RATE,
        "frame": {"window": FRAME_WINDOW, "hop": FRAME_HOP,
                  "num_frames": "(num_samples - 400) // 320 + 1",
                  "label": "phone at the frame centre (320 * i + 200) / 16000 s"},
        "splits": {
            s: {"utterances": len(u), "seconds": round(sum(x.num_samples for x in u) / SAMPLE_RATE, 3),
                "speakers": [p.speaker_id for p in split_speakers[s]]}
            for s, u in done.items()
        },
        "speakers": [asdict(s) for s in speakers],
        "num_phones": len(phones),
    }
    (out / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Reading


def read_manifest(path: str | os.PathLike) -> tuple[Path, list[tuple[str, int]]]:
    """Read a fairseq audio manifest.

    Returns:
        ``(root, [(relative_path, num_samples), ...])``.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise SSLVitalsError(f"{path} is empty; a manifest starts with its root directory")
    entries = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise SSLVitalsError(f"{path}:{no}: expected 'relative/path<TAB>num_samples', got {line!r}")
        entries.append((parts[0], int(parts[1])))
    return Path(lines[0].strip()), entries


def read_int_lines(path: str | os.PathLike) -> list[np.ndarray]:
    """Read a label file with one line of space-separated integers per utterance.

    Returns:
        One int64 array ``(T_i,)`` per line.
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(np.array(line.split(), dtype=np.int64))
    return out


def read_phones(path: str | os.PathLike) -> list[str]:
    """Read ``phones.txt`` (``<phone> <id>`` per line) into a list indexed by id."""
    pairs = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SSLVitalsError(f"{path}:{no}: expected '<phone> <id>', got {line!r}")
        pairs.append((int(parts[1]), parts[0]))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise SSLVitalsError(f"{path}: ids must be 0..N-1 without gaps")
    return [p for _, p in pairs]


@dataclass
class CorpusSplit:
    """One split of a corpus on disk.

    Attributes:
        name: ``train``, ``valid`` or ``probe``.
        root: Directory the manifest paths are relative to.
        entries: ``(relative_path, num_samples)`` per utterance, manifest order.
        utt_ids: Utterance ids (file stems), manifest order.
        speaker_ids: Speaker of each utterance (first path component).
        corpus_dir: The corpus directory (where ``<name>.phn`` and friends live).
    """

    name: str
    root: Path
    entries: list[tuple[str, int]]
    utt_ids: list[str]
    speaker_ids: list[str]
    corpus_dir: Path

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def seconds(self) -> float:
        """Total audio duration in seconds."""
        return sum(n for _, n in self.entries) / SAMPLE_RATE

    @property
    def manifest(self) -> Path:
        """Path of the fairseq manifest."""
        return self.corpus_dir / f"{self.name}.tsv"

    def path(self, i: int) -> Path:
        """Absolute WAV path of utterance ``i``."""
        return self.root / self.entries[i][0]

    def audio(self, i: int) -> np.ndarray:
        """Waveform of utterance ``i`` as float32 in [-1, 1], shape ``(T,)``."""
        rate, data = wavfile.read(self.path(i))
        if rate != SAMPLE_RATE:
            raise SSLVitalsError(f"{self.path(i)} has {rate} Hz, expected {SAMPLE_RATE}")
        return data.astype(np.float32) / 32768.0

    def frame_phones(self) -> list[np.ndarray]:
        """Frame-level phone ids (``<split>.phn``), one int64 array per utterance."""
        return read_int_lines(self.corpus_dir / f"{self.name}.phn")

    def labels(self, ext: str) -> list[np.ndarray]:
        """Any integer label file ``<split>.<ext>`` (e.g. ``"km"``), one array per utterance."""
        return read_int_lines(self.corpus_dir / f"{self.name}.{ext}")

    def _read_segments(self, suffix: str) -> list[tuple[str, float, float, str]]:
        rows = []
        for line in (self.corpus_dir / f"{self.name}.{suffix}").read_text(encoding="utf-8").splitlines():
            u, s, e, label = line.split("\t")
            rows.append((u, float(s), float(e), label))
        return rows

    def alignments(self) -> list[tuple[str, float, float, str]]:
        """Rows of ``<split>.align.tsv``: ``(utt_id, start_s, end_s, phone)``."""
        return self._read_segments("align.tsv")

    def word_alignments(self) -> list[tuple[str, float, float, str]]:
        """Rows of ``<split>.words.tsv``: ``(utt_id, start_s, end_s, word)``."""
        return self._read_segments("words.tsv")

    def words(self) -> list[list[str]]:
        """Transcript words per utterance (``<split>.wrd``)."""
        text = (self.corpus_dir / f"{self.name}.wrd").read_text(encoding="utf-8")
        return [line.split() for line in text.splitlines()]


@dataclass
class Corpus:
    """A corpus written by :func:`synthesize_corpus` (see the module docstring for the layout).

    Attributes:
        root: The corpus directory.
        meta: Content of ``corpus.json``.
        phones: Phone symbols indexed by id (``phones[0] == "sil"``).
    """

    root: Path
    meta: dict
    phones: list[str]
    _splits: dict[str, CorpusSplit] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> CorpusSplit:
        """The split ``name`` (``train``, ``valid`` or ``probe``)."""
        if name not in self._splits:
            manifest = self.root / f"{name}.tsv"
            if not manifest.exists():
                raise SSLVitalsError(f"{manifest} does not exist; splits are {', '.join(SPLITS)}")
            root, entries = read_manifest(manifest)
            utt_ids = [Path(p).stem for p, _ in entries]
            spk_ids = [Path(p).parts[0] for p, _ in entries]
            self._splits[name] = CorpusSplit(name, root, entries, utt_ids, spk_ids, self.root)
        return self._splits[name]

    @property
    def kaldi_dir(self) -> Path:
        """Parent of the Kaldi-style data directories (``<kaldi_dir>/<split>``)."""
        return self.root / "data"


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Open a corpus written by :func:`synthesize_corpus`.

    Raises:
        SSLVitalsError: if ``path`` holds no ``corpus.json``.
    """
    root = Path(path).resolve()
    meta_path = root / _META
    if not meta_path.exists():
        raise SSLVitalsError(
            f"{root} is not an sslvitals corpus (no {_META}); create one with 'sslvitals synth {path}'"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return Corpus(root=root, meta=meta, phones=read_phones(root / "phones.txt"))
