"""Label-aware measures: how well clusters of frames line up with frame-level phone labels.

Everything here derives from one joint count matrix of (phone, cluster) pairs over frames,
which is what makes the measures streamable: the validation-time accumulator only sums
counts (:class:`sslvitals.streaming.ContingencyAccumulator`) and calls
:func:`purities_from_counts` / :func:`pnmi_from_counts` at the end.

Definitions (HuBERT, Hsu et al. 2021, "teacher quality"), with ``c[p, k]`` the number of
frames of phone ``p`` in cluster ``k`` and ``n`` the total number of frames:

* phone purity    = ``sum_k max_p c[p, k] / n`` (how pure each cluster is in phones);
* cluster purity  = ``sum_p max_k c[p, k] / n`` (how concentrated each phone is in clusters);
* PNMI            = ``I(phone; cluster) / H(phone)`` with natural logarithms.

Degenerate input (no frames; a single phone, so that ``H(phone) = 0``) gives NaN and one
``RuntimeWarning``.
"""
from __future__ import annotations

import logging

import numpy as np

from sslvitals._validation import ArrayLike, as_labels, degenerate
from sslvitals.errors import SSLVitalsError

__all__ = [
    "contingency_matrix",
    "purities_from_counts",
    "pnmi_from_counts",
    "mi_from_counts",
    "label_nmi_from_counts",
    "phone_purity",
    "cluster_purity",
    "pnmi",
    "mutual_information",
    "normalized_mutual_information",
]

logger = logging.getLogger(__name__)


def _label_pair(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate two label vectors of equal length and return them as int64 numpy arrays."""
    ta = as_labels(a, name_a)
    tb = as_labels(b, name_b, n=int(ta.shape[0]))
    return ta.cpu().numpy(), tb.cpu().numpy()


def _counts_from_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Joint counts of two int64 label vectors; rows follow sorted distinct ``a``, cols ``b``."""
    if a.size == 0:
        return np.zeros((0, 0), dtype=np.int64)
    a_vals, a_idx = np.unique(a, return_inverse=True)
    b_vals, b_idx = np.unique(b, return_inverse=True)
    n_b = b_vals.shape[0]
    flat = a_idx.astype(np.int64) * n_b + b_idx.astype(np.int64)
    counts = np.bincount(flat, minlength=a_vals.shape[0] * n_b)
    return counts.reshape(a_vals.shape[0], n_b).astype(np.int64, copy=False)


def contingency_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Count how often each pair of label values occurs together.

    Args:
        a: Integer labels ``(N,)`` (e.g. phones); non-negative ids.
        b: Integer labels ``(N,)`` (e.g. clusters), same length as ``a``.

    Returns:
        int64 array ``(n_a, n_b)`` where ``n_a`` / ``n_b`` are the numbers of distinct values
        of ``a`` / ``b``; row ``i`` is the ``i``-th smallest value of ``a``, column ``j`` the
        ``j``-th smallest value of ``b``. Empty input gives a ``(0, 0)`` array.

    Raises:
        SSLVitalsError: if the labels are not 1-D non-negative integers of equal length.

    Example:
        >>> contingency_matrix([0, 0, 1, 1], [5, 7, 7, 7]).tolist()
        [[1, 1], [0, 2]]
    """
    av, bv = _label_pair(a, b, "a", "b")
    return _counts_from_labels(av, bv)


def _as_counts(counts: ArrayLike) -> np.ndarray:
    """Validate a ``(n_phones, n_clusters)`` count matrix and return it as float64."""
    arr = counts.detach().cpu().numpy() if hasattr(counts, "detach") else np.asarray(counts)
    if arr.ndim != 2:
        raise SSLVitalsError(
            f"counts must be a 2-D (n_phones, n_clusters) matrix, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise SSLVitalsError(f"counts must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.size and not np.all(np.isfinite(arr)):
        raise SSLVitalsError("counts contains NaN or Inf; pass raw frame counts")
    if arr.size and float(arr.min()) < 0:
        raise SSLVitalsError("counts must be non-negative frame counts, found a negative entry")
    return arr


def _entropy(p: np.ndarray) -> float:
    """Shannon entropy (nats) of a probability vector (zeros ignored)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _mutual_information_counts(c: np.ndarray) -> float:
    """Mutual information (nats) of the joint distribution given by float64 counts ``c``."""
    n = c.sum()
    pxy = c / n
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    ratio = pxy[nz] / (px @ py)[nz]
    mi = float((pxy[nz] * np.log(ratio)).sum())
    # Round-off can make an exactly independent table come out at -1e-17.
    return max(mi, 0.0)


def purities_from_counts(counts: ArrayLike) -> tuple[float, float]:
    """Phone purity and cluster purity from a joint count matrix.

    Args:
        counts: ``(n_phones, n_clusters)`` non-negative frame counts.

    Returns:
        ``(phone_purity, cluster_purity)``; both in ``(0, 1]``, NaN (with one warning) when the
        matrix holds no frames.

    Raises:
        SSLVitalsError: if ``counts`` is not a finite non-negative 2-D matrix.
    """
    c = _as_counts(counts)
    total = c.sum()
    if c.size == 0 or total <= 0:
        nan = degenerate("phone/cluster purity", "no frames were counted")
        return nan, nan
    phone_pur = float(c.max(axis=0).sum() / total)
    cluster_pur = float(c.max(axis=1).sum() / total)
    return phone_pur, cluster_pur


def pnmi_from_counts(counts: ArrayLike) -> float:
    """Phone-normalised mutual information ``I(phone; cluster) / H(phone)`` from counts.

    Args:
        counts: ``(n_phones, n_clusters)`` non-negative frame counts.

    Returns:
        PNMI in ``[0, 1]``: the fraction of the phone uncertainty removed by knowing the
        cluster. NaN (with one warning) when there are no frames or only one phone occurs.

    Raises:
        SSLVitalsError: if ``counts`` is not a finite non-negative 2-D matrix.
    """
    c = _as_counts(counts)
    total = c.sum()
    if c.size == 0 or total <= 0:
        return degenerate("pnmi", "no frames were counted")
    h_phone = _entropy(c.sum(axis=1) / total)
    if h_phone <= 0:
        return degenerate("pnmi", "only one phone occurs, so H(phone) = 0")
    return _mutual_information_counts(c) / h_phone


def mi_from_counts(counts: ArrayLike) -> float:
    """Mutual information ``I(label; cluster)`` in nats from a joint count matrix.

    Args:
        counts: ``(n_labels, n_clusters)`` non-negative frame counts.

    Returns:
        MI in nats (>= 0); NaN (with one warning) when the matrix holds no frames.

    Raises:
        SSLVitalsError: if ``counts`` is not a finite non-negative 2-D matrix.

    Example:
        >>> round(mi_from_counts([[5, 0], [0, 5]]), 6)  # one bit
        0.693147
    """
    c = _as_counts(counts)
    if c.size == 0 or c.sum() <= 0:
        return degenerate("mutual information", "no frames were counted")
    return _mutual_information_counts(c)


def label_nmi_from_counts(counts: ArrayLike, what: str = "label") -> float:
    """Label-normalised mutual information ``I(label; cluster) / H(label)`` from counts.

    PNMI (:func:`pnmi_from_counts`) is this with phones as the labels; with word ids it is
    the word-level measure ``nmi_word``.

    Args:
        counts: ``(n_labels, n_clusters)`` non-negative frame counts.
        what: Name of the labels, for the warning.

    Returns:
        Value in ``[0, 1]``; NaN (with one warning) with no frames or a single label.
    """
    c = _as_counts(counts)
    total = c.sum()
    if c.size == 0 or total <= 0:
        return degenerate(f"{what}-normalised MI", "no frames were counted")
    h = _entropy(c.sum(axis=1) / total)
    if h <= 0:
        return degenerate(f"{what}-normalised MI", f"only one {what} occurs, so its entropy is 0")
    return _mutual_information_counts(c) / h


def phone_purity(clusters: ArrayLike, phones: ArrayLike) -> float:
    """Phone purity: average over frames of how dominant their cluster's majority phone is.

    ``sum over clusters of (count of the cluster's most frequent phone) / N``.

    Args:
        clusters: Cluster id per frame ``(N,)``.
        phones: Phone id per frame ``(N,)``.

    Returns:
        Value in ``(0, 1]``; NaN with one warning for empty input.
    """
    cl, ph = _label_pair(clusters, phones, "clusters", "phones")
    return purities_from_counts(_counts_from_labels(ph, cl))[0]


def cluster_purity(clusters: ArrayLike, phones: ArrayLike) -> float:
    """Cluster purity: average over frames of how dominant their phone's majority cluster is.

    ``sum over phones of (count of the phone's most frequent cluster) / N``.

    Args:
        clusters: Cluster id per frame ``(N,)``.
        phones: Phone id per frame ``(N,)``.

    Returns:
        Value in ``(0, 1]``; NaN with one warning for empty input.
    """
    cl, ph = _label_pair(clusters, phones, "clusters", "phones")
    return purities_from_counts(_counts_from_labels(ph, cl))[1]


def pnmi(clusters: ArrayLike, phones: ArrayLike) -> float:
    """Phone-normalised mutual information between cluster ids and phone labels.

    Args:
        clusters: Cluster id per frame ``(N,)``.
        phones: Phone id per frame ``(N,)``.

    Returns:
        ``I(phone; cluster) / H(phone)`` in ``[0, 1]``; NaN with one warning when the input
        is empty or holds a single phone.
    """
    cl, ph = _label_pair(clusters, phones, "clusters", "phones")
    return pnmi_from_counts(_counts_from_labels(ph, cl))


def mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """Mutual information between two labelings, in nats.

    Args:
        a: Integer labels ``(N,)``.
        b: Integer labels ``(N,)``.

    Returns:
        ``I(a; b) >= 0`` (natural logarithm); NaN with one warning for empty input.
    """
    av, bv = _label_pair(a, b, "a", "b")
    if av.size == 0:
        return degenerate("mutual_information", "the labelings are empty")
    return _mutual_information_counts(_counts_from_labels(av, bv).astype(np.float64))


def normalized_mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """Mutual information divided by the arithmetic mean of the two entropies.

    ``NMI = I(a; b) / ((H(a) + H(b)) / 2)``, symmetric in ``a`` and ``b``.

    Args:
        a: Integer labels ``(N,)``.
        b: Integer labels ``(N,)``.

    Returns:
        Value in ``[0, 1]``. NaN with one warning when the input is empty or both labelings
        are constant (both entropies 0; scikit-learn returns 1.0 there).
    """
    av, bv = _label_pair(a, b, "a", "b")
    if av.size == 0:
        return degenerate("normalized_mutual_information", "the labelings are empty")
    c = _counts_from_labels(av, bv).astype(np.float64)
    n = c.sum()
    h_a = _entropy(c.sum(axis=1) / n)
    h_b = _entropy(c.sum(axis=0) / n)
    denom = 0.5 * (h_a + h_b)
    if denom <= 0:
        return degenerate("normalized_mutual_information", "both labelings are constant")
    return min(_mutual_information_counts(c) / denom, 1.0)
