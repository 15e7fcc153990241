"""MFCC features against torchaudio's Kaldi-compatible implementation, and the k-means targets."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sslvitals.synth import SPLITS, num_frames
from sslvitals.synth.targets import deltas, mel_filterbank, mfcc, mfcc_targets_features, mfcc_with_deltas


def _kaldi():
    return pytest.importorskip("torchaudio.compliance.kaldi")


def _signal(rng, n=16000):
    t = np.arange(n) / 16000.0
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_mel_filterbank_matches_torchaudio(rng):
    kaldi = _kaldi()
    ours = mel_filterbank(23, 512, 16000, 20.0, None)
    ref, _ = kaldi.get_mel_banks(23, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    ref = torch.nn.functional.pad(ref, (0, 1)).double().numpy()  # Nyquist column
    np.testing.assert_allclose(ours, ref, atol=1e-5)  # torchaudio works in float32


@pytest.mark.parametrize("n", [400, 401, 719, 720, 16000, 23457])
def test_mfcc_matches_torchaudio_kaldi(rng, n):
    kaldi = _kaldi()
    x = _signal(rng, n)
    ours = mfcc(x)
    ref = kaldi.mfcc(torch.from_numpy(x).view(1, -1), sample_frequency=16000.0, use_energy=False,
                     dither=0.0).numpy()
    assert ours.shape == ref.shape == ((n - 400) // 160 + 1, 13)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-3)


def test_deltas_match_torchaudio(rng):
    functional = pytest.importorskip("torchaudio.functional")
    c = rng.standard_normal((57, 13)).astype(np.float32)
    ref_d = functional.compute_deltas(torch.from_numpy(c.T.copy())).numpy().T
    np.testing.assert_allclose(deltas(c), ref_d, rtol=1e-5, atol=1e-5)
    full = mfcc_with_deltas(_signal(rng))
    c13 = full[:, :13]
    d = functional.compute_deltas(torch.from_numpy(c13.T.copy()))
    dd = functional.compute_deltas(d)
    ref = torch.cat([torch.from_numpy(c13.T.copy()), d, dd]).numpy().T
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n", [0, 399, 400, 719, 720, 1039, 1040, 16000, 16001])
def test_50hz_features_have_one_row_per_conv_frame(rng, n):
    x = rng.standard_normal(n).astype(np.float32) * 0.1
    f = mfcc_targets_features(x)
    assert f.shape == (num_frames(n), 39)
    if n >= 720:  # row i is the 100 Hz frame 2i, whose window starts at sample 320 i
        np.testing.assert_allclose(f[1], mfcc_with_deltas(x)[2], rtol=1e-6)
        np.testing.assert_allclose(f[1, :13], mfcc(x[320:720])[0], rtol=1e-4, atol=1e-4)


def test_km_files_match_the_phone_frames_and_the_report(tiny_corpus):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    corpus, report = tiny_corpus
    root = corpus.root
    k = report.k
    assert (root / "dict.km.txt").read_text().splitlines() == [f"{i} 1" for i in range(k)]
    saved = json.loads((root / "targets.json").read_text())
    assert saved["k"] == k and set(saved["quality"]) == set(SPLITS)
    for split in SPLITS:
        sp = corpus.split(split)
        km = sp.labels("km")
        phn = sp.frame_phones()
        assert [len(a) for a in km] == [len(p) for p in phn]
        clusters = np.concatenate(km)
        phones = np.concatenate(phn)
        assert clusters.min() >= 0 and clusters.max() < k
        # independent PNMI: I(phone; cluster) / H(phone), natural logs
        _, counts = np.unique(phones, return_counts=True)
        p = counts / counts.sum()
        h_phone = -(p * np.log(p)).sum()
        expected = sklearn_metrics.mutual_info_score(phones, clusters) / h_phone
        assert report.quality[split]["pnmi"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert report.quality[split]["frames"] == len(phones)
        # and MFCC clusters carry phone information: far above a shuffled assignment
        shuffled = np.random.default_rng(0).permutation(clusters)
        assert expected > 0.15 > sklearn_metrics.mutual_info_score(phones, shuffled) / h_phone


def test_targets_follow_the_train_centroids(tiny_corpus):
    """The train labels are a nearest-centroid assignment: cluster means nearly reproduce them."""
    corpus, report = tiny_corpus
    sp = corpus.split("train")
    feats = np.concatenate([mfcc_targets_features(sp.audio(i)) for i in range(len(sp))])
    km = np.concatenate(sp.labels("km"))
    # centroids recomputed as cluster means are a fixed point of the final assignment step
    cent = np.stack([feats[km == c].mean(0) if np.any(km == c) else np.full(39, np.inf)
                     for c in range(report.k)])
    d = ((feats[:, None, :] - cent[None]) ** 2).sum(-1)
    agree = (d.argmin(1) == km).mean()
    assert agree > 0.97
