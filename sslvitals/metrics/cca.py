"""Canonical correlation analysis between a layer's frames and a reference view.

The reference view ``y`` is any ``(N, D2)`` matrix aligned frame by frame with the layer
``x``: one-hot phone labels (:func:`one_hot`), log-mel features, another layer.

Method (all in float64):

1. centre both views and form the covariances ``Cxx``, ``Cyy``, ``Cxy`` (block by block, on
   the device of ``x``);
2. drop each view's numerically null directions (covariance eigenvalues below ``1e-10``
   times the largest; e.g. the one direction a centred one-hot matrix cannot vary in), then
   whiten with ``(C + epsilon I)^(-1/2)`` built from the eigen-decomposition;
3. the singular values of ``Wx^T Cxy Wy`` are the canonical correlations
   ``rho_1 >= rho_2 >= ...`` (``min(rank x, rank y)`` of them, clipped to ``[0, 1]``).

``method="mean"`` averages them. ``method="pwcca"`` is the projection-weighted average of
Morcos et al. (2018): the canonical variates of ``x`` are orthonormalised (in order) and
each one's weight is the sum over the neurons of ``x`` of the absolute projection of the
(centred) neuron onto it, so that directions which account for much of ``x`` count more.
Projections are formed from the covariances, never from ``(N, .)`` intermediates.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from sslvitals._validation import ArrayLike, as_labels, as_tensor_2d, degenerate
from sslvitals.errors import SSLVitalsError

__all__ = ["cca_similarity", "cca_similarity_from_gram", "canonical_correlations", "one_hot"]

logger = logging.getLogger(__name__)

#: Covariance eigenvalues below this fraction of the largest count as zero.
_NULL_RTOL = 1e-10
_METHODS = ("pwcca", "mean")


def one_hot(labels: ArrayLike, num_classes: int | None = None) -> torch.Tensor:
    """One-hot encode integer labels, e.g. frame-level phone ids, for :func:`cca_similarity`.

    Args:
        labels: Non-negative integer ids ``(N,)``.
        num_classes: Number of columns; default ``max(labels) + 1``.

    Returns:
        float64 tensor ``(N, num_classes)`` on the labels' device. All-zero columns (absent
        classes) are harmless: CCA ignores directions without variance.

    Raises:
        SSLVitalsError: if labels are not 1-D non-negative integers or exceed ``num_classes``.

    Example:
        >>> one_hot([0, 2, 1]).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    """
    lab = as_labels(labels, "labels")
    top = int(lab.max()) + 1 if lab.numel() else 0
    if num_classes is None:
        num_classes = top
    elif top > num_classes:
        raise SSLVitalsError(
            f"labels contain id {top - 1} but num_classes={num_classes}; raise num_classes"
        )
    out = torch.zeros(lab.shape[0], int(num_classes), dtype=torch.float64, device=lab.device)
    if lab.numel():
        out[torch.arange(lab.shape[0], device=lab.device), lab] = 1.0
    return out


def _moments(x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 covariances ``Cxx (D1, D1)``, ``Cyy (D2, D2)``, ``Cxy (D1, D2)`` (two passes)."""
    n = x.shape[0]
    mx = torch.sum(x, dim=0, dtype=torch.float64) / n
    my = torch.sum(y, dim=0, dtype=torch.float64).to(x.device) / n
    d1, d2 = x.shape[1], y.shape[1]
    cxx = torch.zeros(d1, d1, dtype=torch.float64, device=x.device)
    cyy = torch.zeros(d2, d2, dtype=torch.float64, device=x.device)
    cxy = torch.zeros(d1, d2, dtype=torch.float64, device=x.device)
    step = max(256, (1 << 22) // max(d1 + d2, 1))
    for s in range(0, n, step):
        xb = x[s : s + step].to(torch.float64) - mx
        yb = y[s : s + step].to(device=x.device, dtype=torch.float64) - my
        cxx.addmm_(xb.t(), xb)
        cyy.addmm_(yb.t(), yb)
        cxy.addmm_(xb.t(), yb)
    scale = 1.0 / (n - 1)
    return (cxx * scale).cpu().numpy(), (cyy * scale).cpu().numpy(), (cxy * scale).cpu().numpy()


def _whitener(cov: np.ndarray, epsilon: float) -> np.ndarray:
    """``(D, r)`` map to ``r`` whitened coordinates, null directions dropped."""
    cov = 0.5 * (cov + cov.T)
    w, v = np.linalg.eigh(cov)
    top = float(w[-1]) if w.size else 0.0
    keep = w > _NULL_RTOL * top if top > 0 else np.zeros_like(w, dtype=bool)
    return v[:, keep] / np.sqrt(w[keep] + epsilon)


def _cca(x: ArrayLike, y: ArrayLike, epsilon: float, what: str):
    """Shared checks and decomposition; returns None when degenerate (after warning)."""
    xt = as_tensor_2d(x, "x")
    yt = as_tensor_2d(y, "y")
    if xt.shape[0] != yt.shape[0]:
        raise SSLVitalsError(
            f"x has {xt.shape[0]} frames but y has {yt.shape[0]}; the two views must be aligned "
            "frame by frame (resample labels to the layer's frame rate)"
        )
    if not (epsilon >= 0 and np.isfinite(epsilon)):
        raise SSLVitalsError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    n = int(xt.shape[0])
    if n < 2:
        degenerate(what, f"{n} frames; at least 2 are needed")
        return None
    if n <= xt.shape[1] + yt.shape[1]:
        logger.warning(
            "CCA on %d frames with %d + %d dimensions: correlations are inflated when frames do "
            "not clearly outnumber dimensions", n, xt.shape[1], yt.shape[1],
        )
    cxx, cyy, cxy = _moments(xt, yt)
    return _decompose(cxx, cyy, cxy, epsilon, what)


def _decompose(cxx: np.ndarray, cyy: np.ndarray, cxy: np.ndarray, epsilon: float, what: str):
    """Whiten both views and take the SVD of the whitened cross-covariance."""
    wx = _whitener(cxx, epsilon)
    wy = _whitener(cyy, epsilon)
    if wx.shape[1] == 0 or wy.shape[1] == 0:
        degenerate(what, "one of the views is constant over all frames")
        return None
    u, rho, _ = np.linalg.svd(wx.T @ cxy @ wy, full_matrices=False)
    return cxx, wx, u, np.clip(rho, 0.0, 1.0)


def canonical_correlations(x: ArrayLike, y: ArrayLike, *, epsilon: float = 1e-6) -> np.ndarray:
    """Regularised canonical correlations between two aligned views.

    Args:
        x: ``(N, D1)`` frames of a layer.
        y: ``(N, D2)`` reference view.
        epsilon: Ridge added to both covariance diagonals before whitening.

    Returns:
        float64 array of ``min(rank x, rank y)`` correlations in ``[0, 1]``, descending; an
        array holding one NaN (with one warning) when degenerate.
    """
    out = _cca(x, y, epsilon, "canonical correlations")
    return np.array([np.nan]) if out is None else out[3]


def cca_similarity(x: ArrayLike, y: ArrayLike, *, method: str = "pwcca", epsilon: float = 1e-6) -> float:
    """Similarity of a layer ``x`` to a reference view ``y`` by regularised CCA.

    Args:
        x: ``(N, D1)`` frames of a layer.
        y: ``(N, D2)`` aligned reference: ``one_hot(phones)``, log-mel features, ...
        method: ``"pwcca"`` (projection-weighted mean of the canonical correlations, weights
            from ``x``; not symmetric) or ``"mean"`` (plain mean; symmetric).
        epsilon: Ridge added to both covariance diagonals (absolute, in the units of the
            data's variance).

    Returns:
        Similarity in ``[0, 1]``; NaN with one warning when there are fewer than 2 frames or
        a view is constant.

    Raises:
        SSLVitalsError: on NaN/Inf, misaligned views, a bad ``epsilon`` or unknown ``method``.
    """
    if method not in _METHODS:
        raise SSLVitalsError(f"method must be one of {_METHODS}, got {method!r}")
    out = _cca(x, y, epsilon, f"cca_similarity ({method})")
    return _similarity(out, method)


def _similarity(out, method: str) -> float:
    """Mean or projection-weighted mean of the canonical correlations of :func:`_decompose`."""
    if out is None:
        return float("nan")
    cxx, wx, u, rho = out
    if method == "mean":
        return float(rho.mean())
    dirs = wx @ u  # (D1, m): canonical directions of x; variates are x_centred @ dirs
    gram = dirs.T @ cxx @ dirs  # covariance of the variates
    proj = dirs.T @ cxx  # covariance of each variate with each neuron of x, (m, D1)
    try:
        chol = np.linalg.cholesky(gram)
        # Gram-Schmidt of the variates in order = multiply by inverse of the Cholesky factor.
        ortho_proj = np.linalg.solve(chol, proj)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(0.5 * (gram + gram.T))
        w = np.maximum(w, _NULL_RTOL * max(float(w[-1]), 1e-300))
        ortho_proj = (v / np.sqrt(w)) @ v.T @ proj
    weights = np.abs(ortho_proj).sum(axis=1)
    total = weights.sum()
    if not total > 0:
        return degenerate("cca_similarity (pwcca)", "x has no variance along the canonical directions")
    return float((weights / total) @ rho)


def cca_similarity_from_gram(gram: ArrayLike, col_sum: ArrayLike, count: int, dim_x: int, *,
                             method: str = "pwcca", epsilon: float = 1e-6) -> float:
    """:func:`cca_similarity` from the sufficient statistics of the joint rows ``[x, y]``.

    For rows ``z_n = [x_n, y_n]`` (``x_n`` of ``dim_x`` values), ``gram = sum_n z_n z_n^T``,
    ``col_sum = sum_n z_n`` and ``count = N`` determine the covariances
    ``C = (gram - col_sum col_sum^T / N) / (N - 1)`` that CCA uses, so the value equals
    :func:`cca_similarity` of the stacked rows (up to float64 rounding) while the statistics
    can be summed over batches and processes (e.g. a
    :class:`~sslvitals.streaming.GramAccumulator` of ``[x, y]``).

    Args:
        gram: ``(D1 + D2, D1 + D2)`` float64 sum of outer products.
        col_sum: ``(D1 + D2,)`` column sums.
        count: Number of rows ``N``.
        dim_x: ``D1``, the width of the layer's part.
        method: ``"pwcca"`` or ``"mean"``, as in :func:`cca_similarity`.
        epsilon: Ridge, as in :func:`cca_similarity`.

    Returns:
        Similarity in ``[0, 1]``; NaN (one warning) with fewer than 2 rows or a constant view.

    Raises:
        SSLVitalsError: on shapes that do not fit, non-finite statistics, a bad ``method``.
    """
    if method not in _METHODS:
        raise SSLVitalsError(f"method must be one of {_METHODS}, got {method!r}")
    g = gram.detach().cpu().double().numpy() if hasattr(gram, "detach") else np.asarray(gram, np.float64)
    m = (col_sum.detach().cpu().double().numpy() if hasattr(col_sum, "detach")
         else np.asarray(col_sum, np.float64))
    d = g.shape[0] if g.ndim == 2 else -1
    if g.ndim != 2 or g.shape[1] != d or m.shape != (d,) or not 0 < dim_x < d:
        raise SSLVitalsError(
            f"gram {g.shape} / col_sum {m.shape} / dim_x {dim_x} do not fit: give the (D, D) "
            "Gram matrix and (D,) sums of the joint rows [x, y] and 0 < dim_x < D"
        )
    if not (np.isfinite(g).all() and np.isfinite(m).all()):
        raise SSLVitalsError("the Gram statistics hold NaN or Inf")
    what = f"cca_similarity ({method})"
    n = int(count)
    if n < 2:
        degenerate(what, f"{n} rows; at least 2 are needed")
        return float("nan")
    if n <= d:
        logger.warning("CCA on %d rows with %d + %d dimensions: correlations are inflated when "
                       "rows do not clearly outnumber dimensions", n, dim_x, d - dim_x)
    cov = (g - np.outer(m, m) / n) / (n - 1)
    cov = 0.5 * (cov + cov.T)
    out = _decompose(cov[:dim_x, :dim_x], cov[dim_x:, dim_x:], cov[:dim_x, dim_x:], epsilon, what)
    return _similarity(out, method)
