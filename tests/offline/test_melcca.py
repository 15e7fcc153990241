"""Log-mel front-end against librosa, and the frame pairing of cca_mel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sslvitals.errors import SSLVitalsError
from sslvitals.offline.melcca import log_mel, mel_filterbank, pair_with_mel


def test_log_mel_matches_librosa():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(16000 + 123)).astype(np.float32)
    ours = log_mel(torch.from_numpy(wav)).numpy()
    ref = librosa.feature.melspectrogram(
        y=wav.astype(np.float64), sr=16000, n_fft=400, hop_length=160, win_length=400,
        window="hann", center=False, power=2.0, n_mels=80, htk=True, norm=None, fmin=0.0, fmax=8000.0,
    )
    ref = np.log(np.maximum(ref, 1e-10)).T
    assert ours.shape == ref.shape == ((len(wav) - 400) // 160 + 1, 80)
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)
    fb = mel_filterbank().numpy()
    ref_fb = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, htk=True, norm=None)
    np.testing.assert_allclose(fb, ref_fb, atol=1e-6)


def test_log_mel_rejects_other_rates_and_short_input():
    with pytest.raises(SSLVitalsError, match="16 kHz"):
        log_mel(torch.zeros(8000), sample_rate=8000)
    assert log_mel(torch.zeros(399)).shape == (0, 80)


def test_pairing_averages_the_mel_frames_of_each_layer_frame():
    frames = torch.arange(10.0).reshape(5, 2)
    mel = torch.arange(22.0).reshape(11, 2)  # 11 mel frames at 100 Hz
    x, m = pair_with_mel(frames, mel, 50.0)
    assert x.shape == (5, 2) and m.shape == (5, 2)
    torch.testing.assert_close(m[1], (mel[2] + mel[3]) / 2)
    x, m = pair_with_mel(frames, mel, 25.0)  # MR-HuBERT's slow layers: 4 mel frames each
    assert x.shape[0] == 2
    torch.testing.assert_close(m[1], mel[4:8].mean(0))
