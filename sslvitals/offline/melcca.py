"""Log-mel features and the ``cca_mel`` measure (CCA between a layer and log-mel frames).

The log-mel front-end follows the layer-wise analysis protocol of Pasad et al.: 80 mel bands,
25 ms windows (400 samples) every 10 ms (160 samples) at 16 kHz. It is computed here with
``torch.stft`` (torchaudio's compiled library is not required): periodic Hann window,
FFT size = window, no centre padding (frame ``j`` covers samples ``[160 j, 160 j + 400)``),
power spectrum, triangular filters equally spaced on the HTK mel scale
``mel(f) = 2595 log10(1 + f / 700)`` between 0 Hz and the Nyquist frequency (peak 1, no
area normalisation), then ``log(max(x, 1e-10))``.

A layer frame running at ``r`` frames per second is paired with the mean of the
``100 / r`` log-mel frames that start where it starts (two at 50 Hz), so the pairs cover the
same audio. Pairs are sampled with the project's seeded reservoir (a fixed, sharding-free
choice of frames) and compared with projection-weighted CCA.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable

import numpy as np
import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["mel_filterbank", "log_mel", "pair_with_mel", "cca_mel_scores", "MEL_RATE"]

logger = logging.getLogger(__name__)

N_MELS = 80
HOP = 160
WIN = 400
MEL_RATE = 100.0  # log-mel frames per second at 16 kHz


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = WIN, sample_rate: int = 16000,
                   fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters.

    Args:
        n_mels: Number of bands.
        n_fft: FFT size (``n_fft // 2 + 1`` frequency bins).
        sample_rate: Samples per second.
        fmin: Lowest edge in Hz.
        fmax: Highest edge in Hz (default Nyquist).

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` float64 weights, each row peaking at 1.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lo) / (centre - lo)
    falling = (hi - bins[None, :]) / (hi - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling)))


def log_mel(wav: torch.Tensor, sample_rate: int = 16000, n_mels: int = N_MELS) -> torch.Tensor:
    """Log-mel spectrogram of one waveform.

    Args:
        wav: ``(S,)`` samples at 16 kHz.
        sample_rate: Must be 16000 (the protocol's hop and window are in samples at 16 kHz).
        n_mels: Number of mel bands.

    Returns:
        ``(F, n_mels)`` float32, ``F = (S - 400) // 160 + 1`` (0 when ``S < 400``).
    """
    if sample_rate != 16000:
        raise SSLVitalsError(
            f"log-mel features are defined at 16 kHz, got {sample_rate} Hz; resample the probe"
        )
    wav = wav.detach().to(torch.float64).flatten()
    if wav.numel() < WIN:
        return torch.zeros(0, n_mels, dtype=torch.float32)
    window = torch.hann_window(WIN, periodic=True, dtype=torch.float64, device=wav.device)
    spec = torch.stft(wav, n_fft=WIN, hop_length=HOP, win_length=WIN, window=window,
                      center=False, return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2  # (n_fft//2+1, F)
    fb = mel_filterbank(n_mels, WIN, sample_rate).to(wav.device)
    mel = fb @ power
    return torch.log(torch.clamp(mel, min=1e-10)).T.contiguous().to(torch.float32)


def pair_with_mel(frames: torch.Tensor, mel: torch.Tensor, layer_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each layer frame with the mean of the log-mel frames covering the same audio.

    Args:
        frames: ``(T, D)`` one utterance's layer frames.
        mel: ``(F, n_mels)`` its log-mel frames (100 per second).
        layer_rate: The layer's frames per second.

    Returns:
        ``(x (N, D), m (N, n_mels))`` with ``N = min(T, F // f)``, ``f = round(100 / rate)``.
    """
    f = max(1, int(round(MEL_RATE / layer_rate)))
    n = min(frames.shape[0], mel.shape[0] // f)
    if n <= 0:
        return frames[:0], mel[:0]
    pooled = mel[: n * f].reshape(n, f, mel.shape[1]).mean(dim=1)
    return frames[:n], pooled


def cca_mel_scores(model: torch.nn.Module, forward_fn: Callable[[torch.nn.Module, Any], Any],
                   batches: Iterable[Any], layers: list[int], *, capacity: int = 20000,
                   seed: int = 0, tap_layers: Any = None,
                   progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> dict[int, float]:
    """PWCCA similarity between each layer and log-mel features on the probe.

    Args:
        model: The model (eval mode is set here).
        forward_fn: ``forward_fn(model, batch)``.
        batches: Probe batches (``wav``, ``lengths``, ``index``, ``sample_rate``).
        layers: Layer indices to measure.
        capacity: Frame pairs kept per layer (seeded reservoir).
        seed: Reservoir seed.
        tap_layers: LayerTap override for unknown models.
        progress: Optional wrapper of the batch iterator (e.g. tqdm).

    Returns:
        ``{layer: similarity}`` (NaN where it is undefined, with a warning).
    """
    from sslvitals.hooks import LayerTap
    from sslvitals.metrics import cca_similarity
    from sslvitals.streaming import ReservoirSampler, frame_keys

    samplers: dict[int, ReservoirSampler] = {}
    dims: dict[int, int] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerTap(model, layers=tap_layers) as tap:
            rates = tap.frame_rates()
            it = progress(batches) if progress is not None else batches
            for batch in it:
                tap.clear()
                forward_fn(model, batch)
                utts = tap.utterances()
                mels = [log_mel(batch.wav[i, : int(batch.lengths[i])], batch.sample_rate)
                        for i in range(batch.wav.shape[0])]
                for layer in layers:
                    xs, ms, keys = [], [], []
                    for i, u in enumerate(utts[layer]):
                        x, m = pair_with_mel(u.detach().float().cpu(), mels[i], rates.get(layer, 50.0))
                        if x.shape[0] == 0:
                            continue
                        xs.append(x)
                        ms.append(m)
                        keys.append(torch.as_tensor(frame_keys(batch.index[i], x.shape[0], seed)))
                    if not xs:
                        continue
                    joint = torch.cat([torch.cat(xs), torch.cat(ms)], dim=1)
                    if layer not in samplers:
                        dims[layer] = xs[0].shape[1]
                        samplers[layer] = ReservoirSampler(capacity, joint.shape[1], seed=seed)
                    samplers[layer].update(joint, keys=torch.cat(keys))
            tap.clear()
    finally:
        model.train(was_training)
    out: dict[int, float] = {}
    for layer in layers:
        if layer not in samplers:
            out[layer] = math.nan
            logger.warning("cca_mel: no frames captured on layer %d", layer)
            continue
        joint, _ = samplers[layer].sample()
        joint = torch.as_tensor(joint).double()
        d = dims[layer]
        try:
            out[layer] = float(cca_similarity(joint[:, :d], joint[:, d:], method="pwcca"))
        except SSLVitalsError as exc:
            logger.warning("cca_mel on layer %d failed: %s; reporting NaN", layer, exc)
            out[layer] = math.nan
    return out
