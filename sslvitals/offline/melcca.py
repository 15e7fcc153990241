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

Cost: the pass is linear in the probe's audio. The reservoir keeps the pairs with the
smallest frame keys, and an update costs a sort of everything it holds; so pairs are offered
in blocks of at least a quarter of its capacity (not one utterance at a time, which made the
sorting grow with capacity x utterances), and once it is full only pairs whose key is below
its current largest one (the only ones that can still enter) are built and kept. The sample,
and so the value, is exactly the one of per-utterance updates
(``benchmarks/melcca.md``).
"""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def _filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """The default-range filterbank, built once per shape (read-only: callers copy it)."""
    return mel_filterbank(n_mels, n_fft, sample_rate)


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
    fb = _filterbank(n_mels, WIN, sample_rate).to(wav.device)
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


class _PairBuffer:
    """Pairs of one layer waiting to enter its reservoir, offered in large blocks.

    Once the reservoir is full, a pair whose key is not below the reservoir's largest key can
    never enter it (that largest key only decreases), so such pairs are dropped at once.
    """

    def __init__(self, sampler: Any, block: int) -> None:
        self.sampler = sampler
        self.block = block
        self.rows: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.n = 0
        self.threshold: int | None = None  # largest kept key once the reservoir is full

    def admit(self, keys: torch.Tensor) -> torch.Tensor | None:
        """Which of ``keys`` can still enter: a boolean mask, or None for all of them."""
        return None if self.threshold is None else keys < self.threshold

    def add(self, joint: torch.Tensor, keys: torch.Tensor) -> None:
        self.rows.append(joint)
        self.keys.append(keys)
        self.n += int(keys.shape[0])
        if self.n >= self.block:
            self.flush()

    def flush(self) -> None:
        if not self.n:
            return
        self.sampler.update(torch.cat(self.rows), keys=torch.cat(self.keys))
        self.rows, self.keys, self.n = [], [], 0
        if len(self.sampler) == self.sampler.capacity:
            self.threshold = int(self.sampler.keys[-1])


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

    buffers: dict[int, _PairBuffer] = {}
    dims: dict[int, int] = {}
    block = max(1024, capacity // 4)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), LayerTap(model, layers=tap_layers) as tap:
            rates = tap.frame_rates()
            it = progress(batches) if progress is not None else batches
            for batch in it:
                tap.clear()
                lengths = getattr(batch, "lengths", None)
                if lengths is not None:  # frames of the unpadded audio, as the monitor counts
                    tap.set_input_lengths(lengths)
                forward_fn(model, batch)
                utts = tap.utterances()
                mels: dict[int, torch.Tensor] = {}
                for layer in layers:
                    buf = buffers.get(layer)
                    for i, u in enumerate(utts[layer]):
                        if i not in mels:
                            mels[i] = log_mel(batch.wav[i, : int(batch.lengths[i])], batch.sample_rate)
                        x, m = pair_with_mel(u.detach().float().cpu(), mels[i], rates.get(layer, 50.0))
                        if x.shape[0] == 0:
                            continue
                        keys = torch.as_tensor(frame_keys(batch.index[i], x.shape[0], seed))
                        if buf is None:
                            dims[layer] = x.shape[1]
                            buf = buffers[layer] = _PairBuffer(
                                ReservoirSampler(capacity, x.shape[1] + m.shape[1], seed=seed), block)
                        mask = buf.admit(keys)
                        if mask is not None:
                            if not bool(mask.any()):
                                continue
                            x, m, keys = x[mask], m[mask], keys[mask]
                        buf.add(torch.cat([x, m], dim=1), keys)
            tap.clear()
        for buf in buffers.values():
            buf.flush()
    finally:
        model.train(was_training)
    out: dict[int, float] = {}
    for layer in layers:
        if layer not in buffers or len(buffers[layer].sampler) == 0:
            out[layer] = math.nan
            logger.warning("cca_mel: no frames captured on layer %d", layer)
            continue
        joint, _ = buffers[layer].sampler.sample()
        joint = torch.as_tensor(joint).double()
        d = dims[layer]
        try:
            out[layer] = float(cca_similarity(joint[:, :d], joint[:, d:], method="pwcca"))
        except SSLVitalsError as exc:
            logger.warning("cca_mel on layer %d failed: %s; reporting NaN", layer, exc)
            out[layer] = math.nan
    return out
