"""Frame arithmetic of convolutional speech front-ends, and frame-level labels.

HuBERT and wav2vec 2.0 turn a waveform into frames with a stack of un-padded 1-D
convolutions. The default stack ``((512, 10, 5), (512, 3, 2), (512, 3, 2), (512, 3, 2),
(512, 3, 2), (512, 2, 2), (512, 2, 2))`` (``(channels, kernel, stride)`` per layer) has a
receptive field of 400 samples and a hop of 320 samples, so at 16 kHz frame ``i`` sees samples
``[320 i, 320 i + 400)``, its centre lies at ``(320 i + 200) / 16000`` seconds, and an input of
``S >= 400`` samples gives ``(S - 400) // 320 + 1`` frames (50 frames per second).

Timing convention used by every helper here: a frame ``i`` of a layer running at ``r`` frames
per second represents the interval ``[i / r, (i + 1) / r)`` shifted by one constant
``shift`` (seconds) common to all layers of a model, so its centre is
``i / r + 0.5 / r + shift``. For the default stack at 16 kHz, ``shift = 0.0125 - 0.01 =
0.0025`` s.

MR-HuBERT's lower-rate layers do not follow that convention: its down-sampler is a stride-2
convolution padded to keep frames centred, plus a skip connection that takes every second
frame, so its 25 Hz frame ``j`` sits on 50 Hz frame ``2 j`` (centre ``j / 25 + 0.0125`` s at
16 kHz), not between frames ``2 j`` and ``2 j + 1``. :func:`resample_labels` gives exactly
that (50 Hz -> 25 Hz takes the earlier of the two frames; 25 Hz -> 50 Hz repeats each frame
twice, as the up-sampler does), and it is how the monitor labels such layers: labels are built
at the front-end's 50 Hz and resampled. :func:`frame_centres` and
:func:`alignments_to_frame_labels` at 25 Hz use the generic convention (centre ``j / 25 +
0.0225``), so label an MR-HuBERT layer by resampling 50 Hz labels, not directly at 25 Hz.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from sslvitals.errors import SSLVitalsError

__all__ = [
    "DEFAULT_CONV_LAYERS",
    "DEFAULT_SAMPLE_RATE",
    "conv_num_frames",
    "receptive_field",
    "frame_shift",
    "frame_centres",
    "alignments_to_frame_labels",
    "resample_labels",
]

ConvSpec = Sequence[Sequence[int]]

#: The conv feature extractor of HuBERT / wav2vec 2.0 as ``(channels, kernel, stride)``.
DEFAULT_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    (512, 10, 5),
    (512, 3, 2),
    (512, 3, 2),
    (512, 3, 2),
    (512, 3, 2),
    (512, 2, 2),
    (512, 2, 2),
)
#: Sample rate of every HuBERT / wav2vec 2.0 model.
DEFAULT_SAMPLE_RATE: int = 16000


def _kernels_strides(conv_layers: ConvSpec) -> list[tuple[int, int]]:
    out = []
    for i, layer in enumerate(conv_layers):
        if len(layer) == 3:
            _, kernel, stride = layer
        elif len(layer) == 2:
            kernel, stride = layer
        else:
            raise SSLVitalsError(
                f"conv layer {i} is {tuple(layer)!r}; give (channels, kernel, stride) or "
                "(kernel, stride) per layer"
            )
        if int(kernel) < 1 or int(stride) < 1:
            raise SSLVitalsError(
                f"conv layer {i} has kernel {kernel} and stride {stride}; both must be >= 1"
            )
        out.append((int(kernel), int(stride)))
    return out


def receptive_field(conv_layers: ConvSpec = DEFAULT_CONV_LAYERS) -> tuple[int, int]:
    """Receptive field and hop (both in samples) of a stack of un-padded 1-D convolutions.

    Args:
        conv_layers: ``(channels, kernel, stride)`` (or ``(kernel, stride)``) per layer.

    Returns:
        ``(field, hop)``: frame ``i`` depends on samples ``[hop * i, hop * i + field)``.

    Example:
        >>> receptive_field()
        (400, 320)
    """
    field, hop = 1, 1
    for kernel, stride in _kernels_strides(conv_layers):
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


def conv_num_frames(
    samples: int | np.ndarray | torch.Tensor,
    conv_layers: ConvSpec = DEFAULT_CONV_LAYERS,
) -> int | np.ndarray | torch.Tensor:
    """Number of frames a stack of un-padded convolutions produces from ``samples`` inputs.

    Applies ``n <- floor((n - kernel) / stride) + 1`` layer by layer (0 when the input is
    shorter than the kernel). For the default HuBERT / wav2vec 2.0 stack this equals
    ``(samples - 400) // 320 + 1`` for ``samples >= 400``.

    Args:
        samples: Input length(s) in samples: an int, or an integer array / tensor of shape
            ``(B,)``.
        conv_layers: ``(channels, kernel, stride)`` per layer.

    Returns:
        Frame count(s), same type as ``samples`` (int64 for arrays / tensors).

    Raises:
        SSLVitalsError: on a negative length or a malformed conv specification.

    Example:
        >>> conv_num_frames(16000)
        49
        >>> conv_num_frames(399)
        0
    """
    ks = _kernels_strides(conv_layers)
    if isinstance(samples, torch.Tensor):
        n = samples.to(torch.int64)
        if n.numel() and int(n.min()) < 0:
            raise SSLVitalsError(f"sample counts must be >= 0, got {int(n.min())}")
        for kernel, stride in ks:
            n = torch.where(n >= kernel, torch.div(n - kernel, stride, rounding_mode="floor") + 1,
                            torch.zeros_like(n))
        return n
    if isinstance(samples, np.ndarray) or not np.isscalar(samples):
        arr = np.asarray(samples)
        if arr.size and arr.dtype.kind not in "iu":
            raise SSLVitalsError(f"sample counts must be integers, got dtype {arr.dtype}")
        n = arr.astype(np.int64)
        if n.size and int(n.min()) < 0:
            raise SSLVitalsError(f"sample counts must be >= 0, got {int(n.min())}")
        for kernel, stride in ks:
            n = np.where(n >= kernel, (n - kernel) // stride + 1, 0)
        return n
    if int(samples) != samples or samples < 0:
        raise SSLVitalsError(f"samples must be a non-negative integer, got {samples!r}")
    m = int(samples)
    for kernel, stride in ks:
        m = (m - kernel) // stride + 1 if m >= kernel else 0
    return m


def frame_shift(
    conv_layers: ConvSpec = DEFAULT_CONV_LAYERS, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> float:
    """The constant ``shift`` (seconds) of the timing convention in the module docstring.

    Frame ``i`` of the conv stack is centred at ``(hop * i + field / 2) / sample_rate``; written
    as ``(i + 0.5) * hop / sample_rate + shift`` this gives ``shift = (field - hop) / 2 /
    sample_rate``.

    Example:
        >>> frame_shift()
        0.0025
    """
    field, hop = receptive_field(conv_layers)
    return (field - hop) / 2.0 / sample_rate


def frame_centres(
    num_frames: int,
    frame_rate: float = 50.0,
    offset: float | None = None,
) -> np.ndarray:
    """Centre time (seconds) of each frame of a layer running at ``frame_rate``.

    Args:
        num_frames: Number of frames ``T``.
        frame_rate: Frames per second of the layer.
        offset: Centre of frame 0 in seconds; default ``0.5 / frame_rate + frame_shift()``
            (0.0125 s at 50 Hz, 0.0225 s at 25 Hz for the default conv stack at 16 kHz).

    Returns:
        float64 array ``(T,)``: ``offset + i / frame_rate``.
    """
    if frame_rate <= 0:
        raise SSLVitalsError(f"frame_rate must be > 0, got {frame_rate}")
    if num_frames < 0:
        raise SSLVitalsError(f"num_frames must be >= 0, got {num_frames}")
    if offset is None:
        offset = 0.5 / frame_rate + frame_shift()
    return offset + np.arange(int(num_frames), dtype=np.float64) / float(frame_rate)


def alignments_to_frame_labels(
    alignments: Sequence[tuple[float, float, int]],
    num_frames: int,
    frame_rate: float = 50.0,
    offset: float | None = None,
    *,
    fill: int | None = None,
) -> np.ndarray:
    """Turn a time alignment into one label per frame: the segment covering the frame centre.

    Segments are half-open ``[start_s, end_s)``. A frame whose centre no segment covers (a
    gap, or past the last segment) takes the label of the nearest segment boundary when
    ``fill`` is None (ties go to the earlier segment), else ``fill``.

    Args:
        alignments: ``(start_s, end_s, phone_id)`` per segment, in seconds; need not be sorted
            but must not overlap.
        num_frames: Number of frames ``T`` of the layer (e.g. ``conv_num_frames(samples)``).
        frame_rate: Frames per second of the layer (50 for HuBERT / wav2vec 2.0).
        offset: Centre of frame 0 in seconds; default as in :func:`frame_centres`, i.e.
            ``200 / 16000`` at 50 Hz (frame ``i`` covers samples ``[320 i, 320 i + 400)``).
        fill: Label for uncovered frames, or None for the nearest segment.

    Returns:
        int64 array ``(T,)`` of labels.

    Raises:
        SSLVitalsError: on empty or overlapping alignments, ``end < start``, negative ids.

    Example:
        >>> alignments_to_frame_labels([(0.0, 0.05, 3), (0.05, 0.2, 7)], 5).tolist()
        [3, 3, 7, 7, 7]
    """
    centres = frame_centres(num_frames, frame_rate, offset)
    if len(alignments) == 0:
        if fill is None or num_frames == 0:
            if num_frames == 0:
                return np.zeros(0, dtype=np.int64)
            raise SSLVitalsError(
                "alignments is empty; give at least one (start_s, end_s, phone_id) segment, "
                "or pass fill=<label> to label every frame with it"
            )
        return np.full(int(num_frames), int(fill), dtype=np.int64)
    try:
        arr = np.asarray([(float(s), float(e), int(p)) for s, e, p in alignments], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SSLVitalsError(
            f"alignments must be a list of (start_s, end_s, phone_id) tuples: {exc}"
        ) from exc
    order = np.argsort(arr[:, 0], kind="stable")
    starts, ends, ids = arr[order, 0], arr[order, 1], arr[order, 2].astype(np.int64)
    if np.any(ends < starts):
        j = int(np.argmax(ends < starts))
        raise SSLVitalsError(
            f"segment ({starts[j]}, {ends[j]}) ends before it starts; alignments are "
            "(start_s, end_s, phone_id)"
        )
    if np.any(ids < 0):
        raise SSLVitalsError("phone ids must be >= 0; map phones to non-negative integers")
    if len(starts) > 1 and np.any(starts[1:] < ends[:-1] - 1e-9):
        j = int(np.argmax(starts[1:] < ends[:-1] - 1e-9))
        raise SSLVitalsError(
            f"segments ({starts[j]}, {ends[j]}) and ({starts[j + 1]}, {ends[j + 1]}) overlap; "
            "give a non-overlapping alignment (one phone per instant)"
        )
    # Latest-starting segment with start <= centre; it covers the centre if centre < end.
    idx = np.searchsorted(starts, centres, side="right") - 1
    prev = np.clip(idx, 0, len(starts) - 1)
    covered = (idx >= 0) & (centres < ends[prev])
    labels = np.empty(len(centres), dtype=np.int64)
    labels[covered] = ids[prev[covered]]
    if not covered.all():
        if fill is not None:
            labels[~covered] = int(fill)
        else:
            nxt = np.clip(idx + 1, 0, len(starts) - 1)
            d_prev = np.where(idx >= 0, centres - ends[prev], np.inf)
            d_next = np.where(idx + 1 < len(starts), starts[nxt] - centres, np.inf)
            nearest = np.where(d_prev <= d_next, prev, nxt)
            labels[~covered] = ids[nearest[~covered]]
    return labels


def _as_fraction(rate: float, name: str) -> Fraction:
    if not (isinstance(rate, (int, float, Fraction)) and math.isfinite(rate) and rate > 0):
        raise SSLVitalsError(f"{name} must be a positive frame rate, got {rate!r}")
    return Fraction(rate).limit_denominator(1_000_000)


def resample_labels(
    labels: np.ndarray | torch.Tensor | Sequence[int],
    src_rate: float,
    dst_rate: float,
    n_dst: int,
) -> np.ndarray:
    """Re-time frame labels to another frame rate: each target frame takes the source frame
    whose interval contains its centre (nearest centre).

    With the timing convention of this module (frame ``i`` at rate ``r`` covers
    ``[i / r, (i + 1) / r)`` plus a common shift), target frame ``j`` takes source frame
    ``floor((j + 0.5) * src_rate / dst_rate)``; when the target centre falls exactly on a
    boundary of two source frames (e.g. 50 Hz -> 25 Hz), the earlier one is taken, which is
    the frame MR-HuBERT's stride-2 down-sampler centres its output on (see the module doc). Indices past
    the end of ``labels`` are clamped to the last frame. The arithmetic is exact (rational).

    Args:
        labels: Source labels ``(T_src,)``.
        src_rate: Source frames per second (e.g. 50).
        dst_rate: Target frames per second (e.g. 25 for an MR-HuBERT low-resolution layer).
        n_dst: Number of target frames ``T_dst`` (the layer's frame count).

    Returns:
        int64 array ``(T_dst,)``.

    Example:
        >>> resample_labels([1, 2, 3, 4, 5, 6], 50, 25, 3).tolist()
        [1, 3, 5]
        >>> resample_labels([7, 8], 25, 50, 4).tolist()
        [7, 7, 8, 8]
    """
    if isinstance(labels, torch.Tensor):
        src = labels.detach().cpu().numpy()
    else:
        src = np.asarray(labels)
    if src.ndim != 1:
        raise SSLVitalsError(f"labels must have shape (T,), got {tuple(src.shape)}")
    if n_dst < 0:
        raise SSLVitalsError(f"n_dst must be >= 0, got {n_dst}")
    if n_dst == 0:
        return np.zeros(0, dtype=np.int64)
    if src.shape[0] == 0:
        raise SSLVitalsError("labels is empty; cannot resample zero source frames")
    fs, fd = _as_fraction(src_rate, "src_rate"), _as_fraction(dst_rate, "dst_rate")
    # index = floor((2j + 1) * fs / (2 fd)) = floor(num / den), with exact integers.
    j = np.arange(int(n_dst), dtype=np.int64)
    num = (2 * j + 1) * (fs.numerator * fd.denominator)
    den = 2 * fs.denominator * fd.numerator
    idx = num // den
    idx = np.where((num % den == 0) & (idx > 0), idx - 1, idx)
    idx = np.minimum(idx, src.shape[0] - 1)
    return src[idx].astype(np.int64)
