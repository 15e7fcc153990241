"""HuBERT first-iteration targets: k-means on 39-dim MFCC + deltas, at the 50 Hz label rate.

The features follow what HuBERT's first iteration feeds to k-means (Kaldi-style MFCC of the
waveform in [-1, 1], no energy term, no normalisation, first and second order deltas):

* frames of 25 ms (400 samples) every 10 ms (160 samples), only frames that fit entirely in
  the signal (Kaldi's ``snip_edges``): ``(n - 400) // 160 + 1`` frames;
* per frame: DC removal, pre-emphasis 0.97, Povey window (Hann to the power 0.85), 512-point
  power spectrum, 23 triangular mel filters from 20 Hz to Nyquist, natural log floored at the
  float32 epsilon, orthonormal DCT-II keeping 13 cepstra (c0 included), cepstral liftering
  with L = 22;
* deltas over +-2 frames with replicated edges (``sum_n n (c[t+n] - c[t-n]) / 10``), and
  deltas of the deltas, giving ``[c, d, dd]`` of dimension 39.

The 100 Hz frames are then taken every other frame: 10 ms frame ``2 i`` covers samples
``[320 i, 320 i + 400)``, exactly the receptive field of conv frame ``i`` of HuBERT's feature
extractor, so every utterance gets ``(n - 400) // 320 + 1`` labels at 50 Hz (``label_rate=50``).

k-means (:func:`sslvitals.metrics.kmeans`, FAISS when available) is fitted on the train split
and applied to every split; :func:`make_mfcc_targets` writes ``<split>.km`` and
``dict.km.txt``, the files fairseq's ``hubert_pretraining`` task reads with
``task.labels='["km"]' task.label_dir=<corpus>``, and reports PNMI / purities of the clusters
against the synthesiser's frame phone labels.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sslvitals.errors import SSLVitalsError
from sslvitals.synth.corpus import SPLITS, load_corpus, num_frames

__all__ = [
    "MFCC_WINDOW",
    "MFCC_HOP",
    "mel_filterbank",
    "mfcc",
    "deltas",
    "mfcc_with_deltas",
    "mfcc_targets_features",
    "TargetReport",
    "make_mfcc_targets",
]

logger = logging.getLogger(__name__)

MFCC_WINDOW = 400
MFCC_HOP = 160
_N_FFT = 512
_EPS = float(np.finfo(np.float32).eps)


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_filterbank(num_bins: int = 23, n_fft: int = _N_FFT, sample_rate: int = 16000,
                   low_freq: float = 20.0, high_freq: float | None = None) -> np.ndarray:
    """Triangular filters equally spaced on the mel scale ``1127 ln(1 + f / 700)``.

    Args:
        num_bins: Number of filters.
        n_fft: FFT size; the filters cover bins ``0 .. n_fft // 2`` (the Nyquist bin has weight 0).
        sample_rate: Sampling rate in Hz.
        low_freq: Lower edge of the first filter in Hz.
        high_freq: Upper edge of the last filter in Hz; None for Nyquist.

    Returns:
        float64 array ``(num_bins, n_fft // 2 + 1)``.
    """
    nyquist = sample_rate / 2.0
    high = nyquist if high_freq is None or high_freq <= 0 else float(high_freq)
    if not 0 <= low_freq < high <= nyquist:
        raise SSLVitalsError(f"mel filter edges must satisfy 0 <= low < high <= {nyquist} Hz")
    lo, hi = _mel(low_freq), _mel(high)
    step = (hi - lo) / (num_bins + 1)
    left = lo + step * np.arange(num_bins)
    centre = left + step
    right = centre + step
    bins = np.arange(n_fft // 2 + 1)
    freq_mel = _mel(bins * sample_rate / n_fft)[None, :]
    up = (freq_mel - left[:, None]) / (centre - left)[:, None]
    down = (right[:, None] - freq_mel) / (right - centre)[:, None]
    fb = np.where(freq_mel <= centre[:, None], up, down)
    fb = np.where((freq_mel > left[:, None]) & (freq_mel < right[:, None]), fb, 0.0)
    fb[:, n_fft // 2] = 0.0
    return fb


def _dct_matrix(num_ceps: int, num_bins: int) -> np.ndarray:
    """Orthonormal DCT-II rows ``(num_ceps, num_bins)``."""
    k = np.arange(num_ceps)[:, None]
    n = np.arange(num_bins)[None, :]
    m = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (n + 0.5) * k)
    m[0] = np.sqrt(1.0 / num_bins)
    return m


_FB = mel_filterbank()
_DCT = _dct_matrix(13, 23)
_LIFTER = 1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0)
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(MFCC_WINDOW) / (MFCC_WINDOW - 1))) ** 0.85


def mfcc(wav: np.ndarray) -> np.ndarray:
    """13 Kaldi-style MFCCs at 100 Hz of a 16 kHz waveform.

    Args:
        wav: Waveform ``(T,)``, float in [-1, 1].

    Returns:
        float32 array ``(F, 13)`` with ``F = (T - 400) // 160 + 1`` (0 rows if ``T < 400``).
    """
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if x.shape[0] < MFCC_WINDOW:
        return np.zeros((0, 13), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, MFCC_WINDOW)[::MFCC_HOP].copy()
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= 0.97 * frames[:, :-1].copy()
    frames[:, 0] *= 1.0 - 0.97
    frames *= _WINDOW
    power = np.abs(np.fft.rfft(frames, n=_N_FFT, axis=1)) ** 2
    logmel = np.log(np.maximum(power @ _FB.T, _EPS))
    ceps = (logmel @ _DCT.T) * _LIFTER
    return ceps.astype(np.float32)


def deltas(feats: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas over ``+-width`` frames with replicated edge frames.

    ``d[t] = sum_{n=1..width} n (c[t+n] - c[t-n]) / (2 sum_{n=1..width} n^2)``.

    Args:
        feats: ``(F, D)``.
        width: Half-window.

    Returns:
        ``(F, D)``, same dtype.
    """
    f = np.asarray(feats)
    if f.shape[0] == 0:
        return f.copy()
    padded = np.concatenate([np.repeat(f[:1], width, 0), f, np.repeat(f[-1:], width, 0)], axis=0)
    num = np.zeros(f.shape, dtype=np.float64)
    n_frames = f.shape[0]
    for n in range(1, width + 1):
        num += n * (padded[width + n: width + n + n_frames] - padded[width - n: width - n + n_frames])
    denom = 2.0 * sum(n * n for n in range(1, width + 1))
    return (num / denom).astype(f.dtype)


def mfcc_with_deltas(wav: np.ndarray) -> np.ndarray:
    """MFCC + deltas + delta-deltas at 100 Hz: ``(F, 39)`` float32 (see :func:`mfcc`)."""
    c = mfcc(wav)
    d = deltas(c)
    return np.concatenate([c, d, deltas(d)], axis=1)


def mfcc_targets_features(wav: np.ndarray) -> np.ndarray:
    """The 39-dim features at 50 Hz, one row per conv frame.

    Args:
        wav: 16 kHz waveform ``(T,)`` in [-1, 1].

    Returns:
        float32 ``((T - 400) // 320 + 1, 39)``: the 100 Hz frames ``0, 2, 4, ...``.
    """
    feats = mfcc_with_deltas(wav)[::2]
    n = num_frames(len(wav))
    if feats.shape[0] != n:  # cannot happen for 400/160 vs 400/320 framing; keep the invariant
        raise SSLVitalsError(f"internal framing mismatch: {feats.shape[0]} MFCC rows for {n} frames")
    return feats


@dataclass
class TargetReport:
    """What :func:`make_mfcc_targets` did.

    Attributes:
        k: Number of clusters.
        seed: k-means seed.
        backend: k-means backend that ran.
        fit_frames: Frames the k-means was fitted on (train split).
        inertia: Mean squared distance to the centroid on the fit frames.
        quality: Per split: ``{"pnmi", "phone_purity", "cluster_purity", "frames"}`` against
            the synthesiser's frame phone labels.
        seconds: Wall time.
    """

    k: int
    seed: int
    backend: str
    fit_frames: int
    inertia: float
    quality: dict
    seconds: float


def _split_features(split) -> list[np.ndarray]:
    return [mfcc_targets_features(split.audio(i)) for i in range(len(split))]


def make_mfcc_targets(corpus_dir: str | os.PathLike, k: int = 100, seed: int = 0, *,
                      niter: int = 20, max_fit_frames: int = 100_000, backend: str = "auto",
                      progress: bool = True) -> TargetReport:
    """Fit k-means on train MFCCs and write ``<split>.km`` for every split plus ``dict.km.txt``.

    Args:
        corpus_dir: A corpus from :func:`sslvitals.synth.synthesize_corpus`.
        k: Number of clusters (HuBERT used 100 for its MFCC iteration).
        seed: Seed of the frame subsample and of k-means.
        niter: Lloyd iterations.
        max_fit_frames: Fit on at most this many train frames (seeded uniform subsample).
        backend: k-means backend (``auto``, ``faiss``, ``torch``).
        progress: Show a progress bar over utterances.

    Returns:
        :class:`TargetReport`; also written to ``<corpus>/targets.json``.
    """
    from tqdm.auto import tqdm

    from sslvitals.metrics import assign, kmeans
    from sslvitals.metrics.labels import pnmi, purities_from_counts, contingency_matrix

    t0 = time.perf_counter()
    corpus = load_corpus(corpus_dir)
    feats: dict[str, list[np.ndarray]] = {}
    total = sum(len(corpus.split(s)) for s in SPLITS)
    with tqdm(total=total, desc="MFCC", unit="utt", disable=not progress, mininterval=1.0,
              dynamic_ncols=True) as bar:
        for s in SPLITS:
            sp = corpus.split(s)
            rows = []
            for i in range(len(sp)):
                rows.append(mfcc_targets_features(sp.audio(i)))
                bar.update(1)
            feats[s] = rows
    train = np.concatenate(feats["train"], axis=0)
    if train.shape[0] > max_fit_frames:
        pick = np.sort(np.random.default_rng(seed).choice(train.shape[0], max_fit_frames, replace=False))
        train = train[pick]
    logger.info("k-means k=%d on %d train frames x %d dims", k, train.shape[0], train.shape[1])
    res = kmeans(train, k, niter=niter, seed=seed, backend=backend)
    centroids = res.centroids
    fit_inertia = float(res.inertia) / max(1, train.shape[0])
    root = Path(corpus.root)
    quality: dict[str, dict[str, float]] = {}
    for s in SPLITS:
        lens = [f.shape[0] for f in feats[s]]
        x = np.concatenate(feats[s], axis=0)
        lab, _ = assign(x, centroids)
        lab = lab.cpu().numpy().astype(np.int64)
        pieces = np.split(lab, np.cumsum(lens)[:-1])
        tmp = root / f"{s}.km.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for p in pieces:
                f.write(" ".join(map(str, p.tolist())) + "\n")
        os.replace(tmp, root / f"{s}.km")
        phones = np.concatenate(corpus.split(s).frame_phones())
        if phones.shape[0] != lab.shape[0]:
            raise SSLVitalsError(
                f"{s}.phn has {phones.shape[0]} frames but the MFCC targets have {lab.shape[0]}; "
                "the corpus is inconsistent: re-create it with 'sslvitals synth --force'"
            )
        counts = contingency_matrix(phones, lab)
        ppur, cpur = purities_from_counts(counts)
        quality[s] = {"pnmi": float(pnmi(lab, phones)), "phone_purity": float(ppur),
                      "cluster_purity": float(cpur), "frames": int(lab.shape[0])}
        logger.info("MFCC k-means targets on %s: PNMI %.4f, phone purity %.4f, cluster purity %.4f",
                    s, quality[s]["pnmi"], ppur, cpur)
    (root / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(k)), encoding="utf-8")
    report = TargetReport(k=int(k), seed=int(seed), backend=str(res.backend),
                          fit_frames=int(train.shape[0]), inertia=fit_inertia, quality=quality,
                          seconds=time.perf_counter() - t0)
    (root / "targets.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report
