"""Input checking shared by the metric functions and accumulators."""
from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["as_tensor_2d", "as_labels", "degenerate", "ArrayLike"]

logger = logging.getLogger("sslvitals")

ArrayLike = Any  # numpy.ndarray | torch.Tensor | nested sequence


def as_tensor_2d(x: ArrayLike, name: str = "x", *, dtype: torch.dtype | None = None,
                 allow_empty: bool = True) -> torch.Tensor:
    """Convert ``x`` to a 2-D floating torch tensor ``(N, D)`` and check it is finite.

    Args:
        x: Array-like of shape ``(N, D)``; numpy arrays and tensors are not copied when
            they already have a floating dtype.
        name: Argument name used in error messages.
        dtype: Optional floating dtype to cast to (``torch.float64`` for references).
        allow_empty: If False, ``N == 0`` raises.

    Returns:
        Tensor of shape ``(N, D)`` on the input's device (CPU for numpy input).

    Raises:
        SSLVitalsError: if ``x`` is not 2-D, not numeric, or contains NaN/Inf.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number):
            raise SSLVitalsError(f"{name} must be numeric, got numpy dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise SSLVitalsError(f"{name} must be an (N, D) array or tensor: {exc}") from exc
    if t.dim() != 2:
        raise SSLVitalsError(
            f"{name} must have shape (N, D) (frames x features), got shape {tuple(t.shape)}; "
            "flatten batch and time first, e.g. x.reshape(-1, x.shape[-1])"
        )
    if not torch.is_floating_point(t):
        t = t.to(torch.float64 if dtype is None else dtype)
    elif dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.shape[0] == 0 and not allow_empty:
        raise SSLVitalsError(f"{name} is empty (0 rows); pass at least one frame")
    if t.numel() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise SSLVitalsError(
            f"{name} contains NaN or Inf in {n_bad} of {t.shape[0]} rows; the model's activations "
            "have diverged or the input is corrupt: check the checkpoint / lower the learning rate, "
            "or drop those rows before measuring"
        )
    return t


def as_labels(labels: ArrayLike, name: str = "labels", n: int | None = None) -> torch.Tensor:
    """Convert integer labels to a 1-D int64 tensor ``(N,)``.

    Args:
        labels: Array-like of integers, shape ``(N,)``.
        name: Argument name used in error messages.
        n: If given, the required length (number of rows of the matching ``x``).

    Returns:
        int64 tensor of shape ``(N,)``.

    Raises:
        SSLVitalsError: if not 1-D, not integer-valued, negative, or of the wrong length.
    """
    if isinstance(labels, torch.Tensor):
        t = labels.detach()
    else:
        arr = np.asarray(labels)
        if arr.dtype.kind == "f":
            if arr.size and not np.all(np.isfinite(arr)):
                raise SSLVitalsError(f"{name} contains NaN or Inf; labels must be integers")
            if arr.size and not np.all(arr == np.round(arr)):
                raise SSLVitalsError(f"{name} must be integers, got non-integer floats")
        elif arr.size and arr.dtype.kind not in "iub":
            raise SSLVitalsError(
                f"{name} must be integer class ids, got dtype {arr.dtype}; map strings to ids "
                "first (e.g. numpy.unique(labels, return_inverse=True)[1])"
            )
        t = torch.from_numpy(arr.astype(np.int64, copy=False).reshape(arr.shape))
    if t.dim() != 1:
        raise SSLVitalsError(f"{name} must have shape (N,), got {tuple(t.shape)}")
    if torch.is_floating_point(t):
        if t.numel() and not bool(torch.all(t == torch.round(t))):
            raise SSLVitalsError(f"{name} must be integers, got non-integer floats")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise SSLVitalsError(f"{name} must be non-negative class ids, found {int(t.min())}")
    if n is not None and t.shape[0] != n:
        raise SSLVitalsError(f"{name} has {t.shape[0]} entries but x has {n} rows; they must match")
    return t


def degenerate(what: str, reason: str) -> float:
    """Warn once (per call site message) that a metric is undefined and return NaN.

    Args:
        what: Metric name.
        reason: Why it is undefined (e.g. ``"only one cluster"``).

    Returns:
        ``float('nan')``.
    """
    msg = f"sslvitals: {what} is undefined ({reason}); returning NaN"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return float("nan")
