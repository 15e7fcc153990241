"""Rank measures of an embedding matrix: RankMe, effective rank, RankMe-t, alpha-ReQ, ...

Every measure is a function of a spectrum of the ``(N, D)`` matrix of frames ``X``:

* the *uncentered* singular values ``s_1 >= s_2 >= ... >= s_m`` of ``X`` itself
  (``m = min(N, D)``), used by :func:`rankme`, :func:`stable_rank`, :func:`numerical_rank`
  and :func:`effective_rank` with ``center=False``;
* the *centered* singular values ``c_1 >= ... >= c_m`` of ``X - mean(X, 0)``; the covariance
  eigenvalues are ``lambda_k = c_k**2 / (N - 1)``. Used by :func:`alpha_req`, :func:`nesum`
  and :func:`effective_rank` (default ``center=True``).

The functions taking ``x`` compute these spectra with an SVD in float64. The same numbers
follow from the float64 sufficient statistics ``G = X^T X`` (``(D, D)``), the column sums
``s = X^T 1`` (``(D,)``) and the row count ``N``: the uncentered singular values are the square
roots of the eigenvalues of ``G``, the centered ones those of ``G - s s^T / N``.
:func:`rank_measures_from_gram` does this; it is what the streaming
:class:`sslvitals.streaming.GramAccumulator` uses, so an hour of frames needs ``O(D^2)`` memory.

Precision of the Gram route: the eigenvalues of ``G`` are the *squared* singular values, so the
condition number is squared too. In float64 an eigenvalue carries an absolute error of about
``D * 1e-16 * lambda_max``, so a singular value is resolved down to about
``sqrt(D * 1e-16) * s_max`` (3e-7 relative at D = 768); larger ones match a direct SVD to
about 1e-7 relative or better. On embeddings with a noise floor (any real layer) all measures
agree with the SVD route to 1e-6 relative (the tests check D = 64..256). On exactly low-rank
data (a collapsed layer stored in float32) the unresolved tail can move the entropy measures
(RankMe, effective rank) by a few 1e-6 relative; stable rank, NESum, alpha-ReQ and the numerical
rank are unaffected. Centering by ``G - s s^T / N`` additionally loses
``log10(||mean||^2 / lambda)`` digits for a direction of variance ``lambda``; float64 leaves
ample room for speech features.

Numerically zero (used by :func:`numerical_rank` and by :func:`alpha_req`'s default fit range).
The measures describe the distribution of one frame, so the threshold is set on the spectrum of
the per-frame second moment ``M = X^T X / N`` (``(D, D)``; for the centered spectrum
``(X - mean)^T (X - mean) / N``), whose eigenvalues ``sigma_k**2 = s_k**2 / N`` converge as
``N`` grows. A singular value ``s_k`` is zero when

    ``s_k / sqrt(N) <= max(D * eps32 * s_1 / sqrt(N), data_eps * rms(X))``,

i.e. ``s_k <= max(D * eps32 * s_1, data_eps * rms(X) * sqrt(N))``, with ``s_1`` the largest
singular value of the same (centered or uncentered) matrix, ``eps32`` float32's machine epsilon
(1.19e-7), ``data_eps`` the epsilon of the dtype the activations were stored in
(:func:`data_eps_of`, never below ``eps32``) and ``rms(X) = ||X||_F / sqrt(N D)`` the root mean
square entry of the uncentered rows. Both terms are per frame, so the count does not grow or
shrink with the number of frames:

* ``D * eps32 * sigma_1`` is the usual matrix-rank tolerance ``max(rows, cols) * eps * ||A||_2``
  applied to the ``(D, D)`` matrix ``M^(1/2)`` (singular values ``sigma_k``) at the precision of
  float32 activations. Applying it to the ``(N, D)`` matrix ``X`` instead (``s_1 * max(N, D) *
  eps32``, the rule before this one) treats every extra frame as extra round-off: at D = 256 and
  one hour of 50 Hz frames it cut every direction below 2.1 % of the top singular value, and on
  one distribution the numerical rank fell from 110 to 56 and alpha-ReQ from 4.16 to 2.27
  between 5,000 and 180,000 frames (``benchmarks/rank_vs_n.md``). Averaging more frames
  estimates ``M`` better; it adds no round-off to it. For ``N <= D`` this term equals the old
  rule. The float64 solvers resolve singular values far below it (the Gram route down to
  ``sqrt(D * eps64) * s_1``, at least ``8 * sqrt(D)`` times lower).
* ``data_eps * rms(X)`` is the level of rounding to the storage dtype. Rounding to nearest leaves
  an entry an error of standard deviation at most ``data_eps * |x| / sqrt(12)``; the per-frame
  second moment of such errors has eigenvalues near their variance, at most
  ``(1 + sqrt(D / N))**2`` times it (Marchenko-Pastur), so below ``(data_eps * rms(X))**2``
  whenever ``N >= D / 6``. A direction that is exactly zero in the model (the one a LayerNorm
  removes) and was only lifted by bfloat16/float16 rounding therefore stays zero. For float32
  data this term only decides when the mean of the rows exceeds their spread about D-fold.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

from sslvitals._validation import ArrayLike, as_tensor_2d, degenerate
from sslvitals.errors import SSLVitalsError

__all__ = [
    "RANK_MEASURES",
    "rankme",
    "effective_rank",
    "rankme_t",
    "utterance_sums",
    "alpha_req",
    "stable_rank",
    "nesum",
    "numerical_rank",
    "singular_values_from_gram",
    "rank_measures_from_gram",
    "data_eps_of",
]

#: Measures that :func:`rank_measures_from_gram` can compute (``rankme_t`` is ``rankme`` of the
#: Gram matrix of per-utterance sums; see :func:`utterance_sums`).
RANK_MEASURES: tuple[str, ...] = (
    "rankme",
    "effective_rank",
    "alpha_req",
    "stable_rank",
    "nesum",
    "numerical_rank",
)

_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)


def data_eps_of(dtype: torch.dtype | np.dtype | None) -> float:
    """Machine epsilon that sets the "numerically zero" threshold for data of ``dtype``.

    Embeddings are treated as at most float32-precise (float64 data gets the float32 epsilon
    too, since activations are float32 at best); float16 and bfloat16 activations get their
    own, larger epsilon, because their rounding lifts eigenvalues that are zero in float32.

    Args:
        dtype: A torch or numpy floating dtype, or None (float32).

    Returns:
        ``max(eps(dtype), eps(float32))``.
    """
    if dtype is None:
        return _EPS32
    if isinstance(dtype, torch.dtype):
        eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else _EPS32
    else:
        dt = np.dtype(dtype)
        eps = float(np.finfo(dt).eps) if np.issubdtype(dt, np.floating) else _EPS32
    return max(eps, _EPS32)


def _check_data_eps(data_eps: float | None) -> float:
    if data_eps is None:
        return _EPS32
    v = float(data_eps)
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise SSLVitalsError(
            f"data_eps must be a machine epsilon in (0, 1), got {data_eps!r}; use "
            "sslvitals.metrics.rank.data_eps_of(dtype) for the dtype the embeddings were stored in"
        )
    return max(v, _EPS32)


def _zero_tol(s_1: float, n: int, d: int, data_eps: float, rms: float) -> float:
    """Singular values of the ``(N, D)`` matrix at or below this are zero (module docstring).

    Args:
        s_1: Largest singular value of the same (centered or uncentered) matrix.
        n: Number of rows ``N``.
        d: Number of columns ``D``.
        data_eps: Machine epsilon of the stored activations (at least float32's).
        rms: Root mean square entry of the uncentered rows.

    Returns:
        ``sqrt(N) * max(D * eps32 * s_1 / sqrt(N), data_eps * rms)``
        ``= max(D * eps32 * s_1, data_eps * rms * sqrt(N))``: the per-frame threshold, scaled
        back to the singular values of the ``(N, D)`` matrix.
    """
    return max(d * _EPS32 * s_1, data_eps * rms * math.sqrt(n))


def _rms(t: torch.Tensor) -> float:
    """Root mean square entry of ``t`` (``(N, D)``), accumulated in float64."""
    if t.numel() == 0:
        return 0.0
    return float(torch.linalg.vector_norm(t, dtype=torch.float64)) / math.sqrt(t.numel())


_SPECTRA = ("singular", "variance")


# --------------------------------------------------------------------------------------------
# spectra
# --------------------------------------------------------------------------------------------
def _zero_if_cancelled(c: torch.Tensor, total_energy: float, d: int) -> torch.Tensor:
    """All zeros when the centered spectrum is only cancellation noise (identical rows).

    Removing the mean from identical rows leaves rounding residue (of relative size eps64
    for an SVD of ``X - mean``, larger for ``G - s s^T / N``), not exact zeros. A centered
    spectrum with ``c_1**2 <= 8 * D * eps64 * ||X||_F**2`` is treated as zero, so constant
    input is reported as degenerate by both routes. (At D = 768 this flags rows whose spread
    is below about 1e-6 of their norm: a layer collapsed to one point up to float32 noise.)
    """
    if c.numel() and float(c[0]) ** 2 <= 8 * d * _EPS64 * total_energy:
        return torch.zeros_like(c)
    return c


def _svdvals(x: torch.Tensor, center: bool) -> torch.Tensor:
    """Singular values (descending, float64, length ``min(N, D)``) of ``x`` or of ``x - mean``."""
    x = x.to(torch.float64)
    if not center:
        return torch.linalg.svdvals(x)
    energy = float((x * x).sum())
    c = torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))
    return _zero_if_cancelled(c, energy, int(x.shape[1]))


def singular_values_from_gram(gram: ArrayLike, col_sum: ArrayLike, n: int, *,
                              center: bool) -> torch.Tensor:
    """Singular values of the ``(N, D)`` matrix summarised by its Gram matrix and column sums.

    Args:
        gram: ``(D, D)`` Gram matrix ``X^T X`` (float64 recommended; it is cast to float64).
        col_sum: ``(D,)`` column sums ``X^T 1``.
        n: Number of rows ``N`` that were accumulated.
        center: If True, return the singular values of ``X - mean(X, 0)``, from the
            eigenvalues of ``G - s s^T / N``.

    Returns:
        float64 tensor ``(min(N, D),)`` of singular values in descending order, on the device
        of ``gram`` (rounding-negative eigenvalues are clamped to zero). Values below about
        ``sqrt(D * eps64) * s_max`` are rounding noise of the eigen-solver.

    Raises:
        SSLVitalsError: if the shapes do not match or ``n`` is negative.
    """
    g = torch.as_tensor(gram).to(torch.float64)
    if g.dim() != 2 or g.shape[0] != g.shape[1]:
        raise SSLVitalsError(f"gram must be a square (D, D) matrix, got shape {tuple(g.shape)}")
    d = g.shape[0]
    s = torch.as_tensor(col_sum).to(device=g.device, dtype=torch.float64).reshape(-1)
    if s.shape[0] != d:
        raise SSLVitalsError(f"col_sum has {s.shape[0]} entries but gram is {d} x {d}")
    n = int(n)
    if n < 0:
        raise SSLVitalsError(f"row count n must be >= 0, got {n}")
    m = min(n, d)
    if m == 0:
        return torch.zeros(0, dtype=torch.float64, device=g.device)
    energy = float(torch.diagonal(g).sum())
    if center:
        g = g - torch.outer(s, s) / n
    g = 0.5 * (g + g.T)
    lam = torch.linalg.eigvalsh(g).flip(0)[:m].clamp_min(0.0)
    sv = lam.sqrt()
    return _zero_if_cancelled(sv, energy, d) if center else sv


# --------------------------------------------------------------------------------------------
# measures on a spectrum (shared by the direct and the Gram route)
# --------------------------------------------------------------------------------------------
def _entropy_rank(p: torch.Tensor) -> float:
    """exp of the Shannon entropy of the weights ``p`` (zero weights contribute nothing)."""
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def _rankme_s(s: torch.Tensor, eps: float) -> float:
    p = s / s.sum() + eps
    return math.exp(float(-(p * p.log()).sum()))


def _effective_rank_s(s: torch.Tensor, spectrum: str) -> float:
    w = s if spectrum == "singular" else s * s
    return _entropy_rank(w / w.sum())


def _stable_rank_s(s: torch.Tensor) -> float:
    return float((s * s).sum() / (s[0] * s[0]))


def _numerical_rank_s(s: torch.Tensor, n: int, d: int, tol: float | None,
                      data_eps: float = _EPS32, rms: float = 0.0) -> float:
    if tol is None:
        cut = _zero_tol(float(s[0]), n, d, data_eps, rms)
    else:  # a per-frame threshold, compared with s_k / sqrt(N)
        cut = float(tol) * math.sqrt(n)
    return float(int((s > cut).sum()))


def _nesum_s(c: torch.Tensor) -> float:
    return float((c * c).sum() / (c[0] * c[0]))


def _alpha_fit_indices(c: torch.Tensor, n: int, d: int,
                       fit_range: tuple[int, int | None] | None,
                       data_eps: float = _EPS32, rms: float = 0.0) -> tuple[int, int]:
    """1-based inclusive index range of covariance eigenvalues used by the alpha-ReQ fit."""
    usable = int((c > _zero_tol(float(c[0]), n, d, data_eps, rms)).sum())
    usable = min(usable, n - 1, d)
    first, last = 1, usable
    if fit_range is not None:
        first = int(fit_range[0])
        if fit_range[1] is not None:
            last = min(int(fit_range[1]), usable)
    return first, last


def _alpha_req_s(c: torch.Tensor, n: int, d: int,
                 fit_range: tuple[int, int | None] | None, data_eps: float = _EPS32,
                 rms: float = 0.0) -> float:
    first, last = _alpha_fit_indices(c, n, d, fit_range, data_eps, rms)
    lam = (c[first - 1:last] ** 2) / (n - 1)
    j = torch.arange(first, last + 1, dtype=torch.float64, device=c.device)
    lx, ly = j.log(), lam.log()
    lx = lx - lx.mean()
    slope = float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())
    return -slope


def _check_fit_range(fit_range: tuple[int, int | None] | None) -> None:
    if fit_range is None:
        return
    if len(fit_range) != 2:
        raise SSLVitalsError(f"fit_range must be (first, last) 1-based indices, got {fit_range!r}")
    first, last = fit_range
    if int(first) < 1 or (last is not None and int(last) < int(first) + 1):
        raise SSLVitalsError(
            f"fit_range {fit_range!r} is invalid: need 1 <= first < last (1-based, inclusive), "
            "or last=None for 'up to the last non-negligible eigenvalue'"
        )


def _check_spectrum(spectrum: str) -> None:
    if spectrum not in _SPECTRA:
        raise SSLVitalsError(f"spectrum must be one of {_SPECTRA}, got {spectrum!r}")


def _degenerate_reason(n: int, d: int, s: torch.Tensor | None, centered: bool) -> str | None:
    """Why a measure is undefined for this input, or None when it is defined."""
    if n == 0 or d == 0:
        return f"empty input ({n} x {d})"
    if n < 2:
        return f"fewer than 2 rows (N = {n})"
    if s is not None and (s.numel() == 0 or float(s[0]) <= 0.0):
        return ("all rows are identical (zero variance after centering)" if centered
                else "all-zero input")
    return None


def _prepare(x: ArrayLike) -> tuple[torch.Tensor, int, int]:
    t = as_tensor_2d(x, "x")
    return t, int(t.shape[0]), int(t.shape[1])


def _checked_spectrum(t: torch.Tensor, center: bool) -> tuple[torch.Tensor | None, str | None]:
    """Singular values of ``t`` (centered or not) and why the measures are undefined, if they are."""
    n, d = int(t.shape[0]), int(t.shape[1])
    reason = _degenerate_reason(n, d, None, center)
    if reason is not None:
        return None, reason
    s = _svdvals(t, center=center)
    return s, _degenerate_reason(n, d, s, center)


# --------------------------------------------------------------------------------------------
# public functions on (N, D) data
# --------------------------------------------------------------------------------------------
def rankme(x: ArrayLike, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023) of the raw, uncentered embeddings.

    With ``s_k`` the singular values of ``x`` (no mean removal), ``p_k = s_k / sum_j s_j + eps``
    and ``RankMe = exp(-sum_k p_k log p_k)``. It lies between about 1 and ``min(N, D)``.

    Args:
        x: Embeddings ``(N, D)``, numpy or torch, any floating dtype/device.
        eps: Added to every normalised singular value (1e-7 as for float32 in the paper).

    Returns:
        RankMe as a Python float; NaN with one RuntimeWarning for empty, single-row or
        all-zero input.

    Raises:
        SSLVitalsError: if ``x`` is not 2-D or contains NaN/Inf.

    Example:
        >>> round(rankme(np.eye(4)), 4)
        4.0
    """
    t, n, d = _prepare(x)
    s, reason = _checked_spectrum(t, center=False)
    if reason is not None:
        return degenerate("rankme", reason)
    return _rankme_s(s, eps)


def effective_rank(x: ArrayLike, *, center: bool = True, spectrum: str = "singular") -> float:
    """Effective rank (Roy & Vetterli, 2007): exp of the entropy of the normalised spectrum.

    ``p_k = w_k / sum_j w_j`` and ``erank = exp(-sum_k p_k log p_k)`` (``0 log 0 = 0``, no
    epsilon), where the weights ``w_k`` are

    * ``spectrum="singular"``: the singular values ``s_k`` of the (centered) matrix;
    * ``spectrum="variance"``: the covariance eigenvalues ``lambda_k = s_k**2 / (N - 1)``
      (with ``center=False``: the eigenvalues of the second-moment matrix ``X^T X / N``);
      the normalising constant cancels in ``p``, so this is the entropy of ``s_k**2``.

    Args:
        x: Embeddings ``(N, D)``.
        center: Remove the per-dimension mean first (default, the "global effective rank" of
            pooled frames). ``center=False`` with ``spectrum="singular"`` is RankMe without eps.
        spectrum: ``"singular"`` or ``"variance"``, see above.

    Returns:
        Effective rank in ``[1, min(N, D)]``; NaN with one RuntimeWarning for empty,
        single-row, all-zero (or, when centering, constant) input.

    Raises:
        SSLVitalsError: on a bad ``spectrum`` or non-finite input.

    Example:
        >>> x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> round(effective_rank(x), 6)
        2.0
    """
    _check_spectrum(spectrum)
    t, n, d = _prepare(x)
    s, reason = _checked_spectrum(t, center=center)
    if reason is not None:
        return degenerate("effective_rank", reason)
    return _effective_rank_s(s, spectrum)


def utterance_sums(utterances: Sequence[ArrayLike]) -> torch.Tensor:
    """One vector per utterance: the sum of its frames over time.

    Args:
        utterances: Sequence of ``(T_i, D)`` arrays/tensors, all with the same ``D``.
            Utterances with ``T_i = 0`` are skipped.

    Returns:
        float64 tensor ``(U, D)`` (``U`` = number of non-empty utterances) on the device of
        the first utterance (CPU when the sequence is empty).

    Raises:
        SSLVitalsError: if the feature dimensions differ or an utterance is not finite.
    """
    rows: list[torch.Tensor] = []
    dim: int | None = None
    device = torch.device("cpu")
    for i, u in enumerate(utterances):
        t = as_tensor_2d(u, f"utterances[{i}]")
        if dim is None:
            dim, device = int(t.shape[1]), t.device
        elif int(t.shape[1]) != dim:
            raise SSLVitalsError(
                f"utterances[{i}] has {t.shape[1]} features but utterances[0] has {dim}; all "
                "utterances must come from the same layer"
            )
        if t.shape[0]:
            rows.append(t.to(device=device, dtype=torch.float64).sum(dim=0))
    if not rows:
        return torch.zeros(0, dim or 0, dtype=torch.float64, device=device)
    return torch.stack(rows)


def rankme_t(utterances: Sequence[ArrayLike], eps: float = 1e-7) -> float:
    """RankMe-t (Aldeneh et al., 2024): RankMe over per-utterance sums of frames.

    Each utterance ``(T_i, D)`` becomes one vector ``sum_t x_t`` (see :func:`utterance_sums`),
    then :func:`rankme` is taken over the ``(U, D)`` matrix of these vectors.

    Args:
        utterances: Sequence of ``(T_i, D)`` arrays/tensors of one layer.
        eps: RankMe's epsilon.

    Returns:
        RankMe-t as a Python float; NaN with one RuntimeWarning when fewer than two non-empty
        utterances are given or all sums are zero.

    Example:
        >>> round(rankme_t([np.ones((3, 2)), np.array([[3.0, -3.0]])]), 4)
        2.0
    """
    u = utterance_sums(utterances)
    s, reason = _checked_spectrum(u, center=False)
    if reason is not None:
        return degenerate("rankme_t", reason)
    return _rankme_s(s, eps)


def alpha_req(x: ArrayLike, *, fit_range: tuple[int, int | None] | None = None,
              data_eps: float | None = None) -> float:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022): power-law decay of the covariance spectrum.

    The covariance eigenvalues ``lambda_1 >= lambda_2 >= ...`` (of the centered data, divided
    by ``N - 1``) are fitted as ``log lambda_j = c - alpha log j`` by ordinary least squares;
    the function returns ``alpha``. Good representations have ``alpha`` near 1.

    Default fit range: ``j = 1 .. K`` where ``K`` counts the eigenvalues that are not
    numerically zero and ``K <= min(N - 1, D)`` (centering removes one dimension). With
    ``c_k`` the centered singular values, ``c_k / sqrt(N)`` is the square root of an eigenvalue
    of the per-frame covariance, and ``lambda_k`` is zero when

        ``c_k / sqrt(N) <= max(D * eps32 * c_1 / sqrt(N), data_eps * rms(x))``

    (the rule of :func:`numerical_rank`, explained in the module docstring): a fixed fraction
    ``D * eps32`` (3.1e-5 at D = 256) of the top one, or the level of the storage dtype's
    rounding. Both are per frame, so ``K`` and alpha do not drift with the number of frames.
    Without the cut a direction that is exactly zero in the model (e.g. the one LayerNorm
    removes) would enter the fit at whatever level rounding left it, and alpha would depend on
    the precision the activations were stored in.

    Args:
        x: Embeddings ``(N, D)``.
        fit_range: Optional ``(first, last)`` 1-based inclusive indices of the eigenvalues to
            fit; ``last=None`` means ``K``; ``last`` is capped at ``K``.
        data_eps: Machine epsilon of the precision the embeddings were produced in (see
            :func:`data_eps_of`); None = from ``x``'s dtype (float16/bfloat16 tensors or
            arrays) or float32.

    Returns:
        ``alpha`` as a Python float; NaN with one RuntimeWarning for empty/single-row/constant
        input or when fewer than two eigenvalues fall in the fit range.

    Example:
        >>> x = np.diag([1.0, 2.0 ** -0.5, 3.0 ** -0.5, 4.0 ** -0.5])
        >>> x = np.concatenate([x, -x]) * 10
        >>> round(alpha_req(x), 6)
        1.0
    """
    _check_fit_range(fit_range)
    t, n, d = _prepare(x)
    deps = data_eps_of(t.dtype) if data_eps is None else _check_data_eps(data_eps)
    rms = _rms(t)
    c, reason = _checked_spectrum(t, center=True)
    if reason is None:
        first, last = _alpha_fit_indices(c, n, d, fit_range, deps, rms)
        if last - first + 1 < 2:
            reason = (f"fewer than 2 non-negligible covariance eigenvalues in the fit range "
                      f"[{first}, {last}]")
    if reason is not None:
        return degenerate("alpha_req", reason)
    return _alpha_req_s(c, n, d, fit_range, deps, rms)


def stable_rank(x: ArrayLike) -> float:
    """Stable rank ``sum_k s_k**2 / s_1**2 = ||X||_F**2 / ||X||_2**2`` of the uncentered matrix.

    Args:
        x: Embeddings ``(N, D)``.

    Returns:
        Stable rank in ``[1, min(N, D)]``; NaN with one RuntimeWarning for degenerate input.

    Example:
        >>> stable_rank(np.diag([2.0, 1.0, 1.0]))
        1.5
    """
    t, n, d = _prepare(x)
    s, reason = _checked_spectrum(t, center=False)
    if reason is not None:
        return degenerate("stable_rank", reason)
    return _stable_rank_s(s)


def nesum(x: ArrayLike) -> float:
    """NESum (He & Ozay, 2022): ``sum_i lambda_i / lambda_1`` over covariance eigenvalues.

    The eigenvalues are those of the covariance of the centered data (the ``1/(N-1)`` factor
    cancels in the ratio).

    Args:
        x: Embeddings ``(N, D)``.

    Returns:
        NESum in ``[1, min(N - 1, D)]``; NaN with one RuntimeWarning for degenerate input.

    Example:
        >>> x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> nesum(x)
        1.25
    """
    t, n, d = _prepare(x)
    c, reason = _checked_spectrum(t, center=True)
    if reason is not None:
        return degenerate("nesum", reason)
    return _nesum_s(c)


def numerical_rank(x: ArrayLike, tol: float | None = None, *, data_eps: float | None = None) -> float:
    """Numerical rank: how many directions of the uncentered frames are not numerically zero.

    With ``s_k`` the singular values of ``x`` (no mean removal), ``sigma_k = s_k / sqrt(N)``
    are the square roots of the eigenvalues of the per-frame second moment ``X^T X / N``, which
    do not grow with ``N``. The rank counts ``sigma_k > tol``, by default with

        ``tol = max(D * eps32 * sigma_1, data_eps * rms(x))``

    ``D * eps32 * sigma_1`` is the matrix-rank tolerance of the ``(D, D)`` matrix
    ``(X^T X / N)^(1/2)`` at float32 precision (``eps32`` = 1.19e-7); ``data_eps * rms(x)``
    (``rms(x) = ||x||_F / sqrt(N D)``) is the level below which rounding to the storage dtype
    can lift an exactly-zero direction. See the module docstring for why both are per frame.

    Args:
        x: Embeddings ``(N, D)``.
        tol: Per-frame threshold, compared with ``s_k / sqrt(N)`` (not with ``s_k``, so that a
            fixed ``tol`` gives the same rank for any number of frames); None = the default
            above.
        data_eps: Machine epsilon of the precision ``x`` was produced in (see
            :func:`data_eps_of`); None = from ``x``'s dtype or float32.

    Returns:
        The rank as a Python float (an integer value); NaN with one RuntimeWarning for
        degenerate input.

    Example:
        >>> numerical_rank(np.array([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0]]))
        1.0
        >>> x = np.random.default_rng(0).standard_normal((100, 4)) * [1.0, 1e-2, 1e-4, 1e-9]
        >>> numerical_rank(x), numerical_rank(np.tile(x, (50, 1)))  # 100 or 5,000 frames
        (3.0, 3.0)
    """
    t, n, d = _prepare(x)
    deps = data_eps_of(t.dtype) if data_eps is None else _check_data_eps(data_eps)
    s, reason = _checked_spectrum(t, center=False)
    if reason is not None:
        return degenerate("numerical_rank", reason)
    return _numerical_rank_s(s, n, d, tol, deps, _rms(t))


# --------------------------------------------------------------------------------------------
# all measures from sufficient statistics
# --------------------------------------------------------------------------------------------
def _resolve_measures(measures: Iterable[str] | str | None) -> list[str]:
    if measures is None:
        return list(RANK_MEASURES)
    if isinstance(measures, str):
        measures = [m.strip() for m in measures.split(",") if m.strip()]
    out = []
    for m in measures:
        if m == "rankme_t":
            raise SSLVitalsError(
                "rankme_t is not a measure of the frame Gram matrix: accumulate per-utterance "
                "sums (sslvitals.metrics.utterance_sums) in a separate Gram accumulator and ask "
                "it for 'rankme'"
            )
        if m not in RANK_MEASURES:
            raise SSLVitalsError(
                f"unknown rank measure {m!r}; valid measures are: {', '.join(RANK_MEASURES)}"
            )
        if m not in out:
            out.append(m)
    return out


_UNCENTERED = {"rankme", "stable_rank", "numerical_rank"}


def rank_measures_from_gram(
    gram: ArrayLike,
    col_sum: ArrayLike,
    n: int,
    *,
    measures: Iterable[str] | str | None = None,
    eps: float = 1e-7,
    center: bool = True,
    spectrum: str = "singular",
    fit_range: tuple[int, int | None] | None = None,
    tol: float | None = None,
    data_eps: float | None = None,
) -> dict[str, float]:
    """Rank measures of ``N`` rows known only through ``G = X^T X``, ``X^T 1`` and ``N``.

    Gives the same numbers as :func:`rankme`, :func:`effective_rank`, :func:`alpha_req`,
    :func:`stable_rank`, :func:`nesum` and :func:`numerical_rank` on ``X`` (to 1e-6 relative
    or better on real embeddings; see the module docstring for the precision of this route).

    Args:
        gram: ``(D, D)`` Gram matrix, ideally accumulated in float64.
        col_sum: ``(D,)`` column sums.
        n: Number of rows.
        measures: Names out of :data:`RANK_MEASURES` (list or comma-separated string);
            None means all of them.
        eps: :func:`rankme`'s epsilon.
        center: ``center`` of :func:`effective_rank`.
        spectrum: ``spectrum`` of :func:`effective_rank`.
        fit_range: ``fit_range`` of :func:`alpha_req`.
        tol: ``tol`` of :func:`numerical_rank`.
        data_eps: Machine epsilon of the precision the rows were produced in (see
            :func:`data_eps_of`; None = float32): per-frame singular values ``s_k / sqrt(N)``
            at or below ``data_eps * rms`` (``rms = sqrt(trace(G) / (N D))``) are zero for
            alpha-ReQ's fit range and the numerical rank, as are those at or below
            ``D * eps32 * s_1 / sqrt(N)`` (see the module docstring).

    Returns:
        ``{measure: value}`` in the order of ``measures``. Undefined measures (fewer than two
        rows, zero matrix, constant rows for centered measures, too short alpha fit) are NaN,
        with a single RuntimeWarning for the whole call.

    Raises:
        SSLVitalsError: on an unknown measure name, mismatched shapes or non-finite statistics.
    """
    names = _resolve_measures(measures)
    _check_spectrum(spectrum)
    _check_fit_range(fit_range)
    deps = _check_data_eps(data_eps)
    g = torch.as_tensor(gram)
    col = torch.as_tensor(col_sum)
    if (g.numel() and not bool(torch.isfinite(g).all())) or \
            (col.numel() and not bool(torch.isfinite(col).all())):
        raise SSLVitalsError(
            "gram or col_sum contains NaN or Inf: the accumulated activations were not finite "
            "(GramAccumulator rejects such rows, so these statistics were built elsewhere); "
            "rebuild them from finite activations"
        )
    n = int(n)
    d = int(g.shape[-1]) if g.dim() == 2 else 0
    need_u = any(m in _UNCENTERED or (m == "effective_rank" and not center) for m in names)
    need_c = any(m in ("alpha_req", "nesum") or (m == "effective_rank" and center)
                 for m in names)
    s_u = singular_values_from_gram(g, col_sum, n, center=False) if need_u else None
    s_c = singular_values_from_gram(g, col_sum, n, center=True) if need_c else None
    rms = (math.sqrt(max(float(torch.diagonal(g).sum()), 0.0) / (n * d))
           if n > 0 and d > 0 else 0.0)

    out: dict[str, float] = {}
    problems: list[str] = []
    for m in names:
        centered = m in ("alpha_req", "nesum") or (m == "effective_rank" and center)
        s = s_c if centered else s_u
        reason = _degenerate_reason(n, d, s, centered)
        if reason is None and m == "alpha_req":
            first, last = _alpha_fit_indices(s, n, d, fit_range, deps, rms)
            if last - first + 1 < 2:
                reason = (f"fewer than 2 non-negligible covariance eigenvalues in the fit range "
                          f"[{first}, {last}]")
        if reason is not None:
            problems.append(f"{m}: {reason}")
            out[m] = float("nan")
            continue
        if m == "rankme":
            out[m] = _rankme_s(s, eps)
        elif m == "effective_rank":
            out[m] = _effective_rank_s(s, spectrum)
        elif m == "alpha_req":
            out[m] = _alpha_req_s(s, n, d, fit_range, deps, rms)
        elif m == "stable_rank":
            out[m] = _stable_rank_s(s)
        elif m == "nesum":
            out[m] = _nesum_s(s)
        else:
            out[m] = _numerical_rank_s(s, n, d, tol, deps, rms)
    if problems:
        degenerate("rank measures from the Gram matrix", "; ".join(problems))
    return out

