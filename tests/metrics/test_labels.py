"""Purities, PNMI, MI and NMI against scikit-learn and an independent float64 numpy reference."""
from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix as sk_contingency

from sslvitals.errors import SSLVitalsError
from sslvitals.metrics import labels as L


def _teacher_quality_reference(clusters, phones):
    """HuBERT teacher-quality numbers written from the formulas, with plain Python counting.

    Returns (phone purity, cluster purity, PNMI) from p(phone, cluster) in float64.
    """
    n = len(phones)
    joint = Counter(zip(phones.tolist(), clusters.tolist()))
    p_phone = Counter(phones.tolist())
    p_clu = Counter(clusters.tolist())
    best_phone_in_cluster = {}
    best_cluster_of_phone = {}
    for (ph, cl), c in joint.items():
        best_phone_in_cluster[cl] = max(best_phone_in_cluster.get(cl, 0), c)
        best_cluster_of_phone[ph] = max(best_cluster_of_phone.get(ph, 0), c)
    phone_pur = sum(best_phone_in_cluster.values()) / n
    cluster_pur = sum(best_cluster_of_phone.values()) / n
    mi = sum(c / n * math.log((c / n) / ((p_phone[ph] / n) * (p_clu[cl] / n)))
             for (ph, cl), c in joint.items())
    h_phone = -sum(c / n * math.log(c / n) for c in p_phone.values())
    return phone_pur, cluster_pur, mi / h_phone


@pytest.fixture(scope="module")
def frames():
    """40 phones, 100 clusters; clusters depend on phones with noise (like a real layer)."""
    rng = np.random.default_rng(11)
    n = 5000
    phones = rng.integers(0, 40, n)
    clusters = (phones * 2 + rng.integers(0, 3, n)) % 100
    noise = rng.random(n) < 0.3
    clusters[noise] = rng.integers(0, 100, int(noise.sum()))
    return clusters, phones


def test_teacher_quality_matches_reference(frames):
    clusters, phones = frames
    ref = _teacher_quality_reference(clusters, phones)
    assert L.phone_purity(clusters, phones) == pytest.approx(ref[0], rel=1e-12)
    assert L.cluster_purity(clusters, phones) == pytest.approx(ref[1], rel=1e-12)
    assert L.pnmi(clusters, phones) == pytest.approx(ref[2], rel=1e-10)
    # and the numbers make sense for this construction
    assert 0.3 < ref[2] < 0.9


def test_from_counts_equal_label_functions(frames):
    clusters, phones = frames
    counts = L.contingency_matrix(phones, clusters)
    assert counts.shape == (40, 100) and counts.dtype == np.int64
    pp, cp = L.purities_from_counts(counts)
    assert pp == L.phone_purity(clusters, phones)
    assert cp == L.cluster_purity(clusters, phones)
    assert L.pnmi_from_counts(counts) == pytest.approx(L.pnmi(clusters, phones), rel=1e-14)
    # zero rows/columns (phones or clusters never seen) change nothing
    padded = np.zeros((45, 130), dtype=np.int64)
    padded[:40, :100] = counts
    assert L.pnmi_from_counts(padded) == pytest.approx(L.pnmi_from_counts(counts), rel=1e-14)
    assert L.purities_from_counts(padded) == (pp, cp)
    # torch counts are accepted too (the streaming accumulator keeps a tensor)
    assert L.pnmi_from_counts(torch.from_numpy(counts)) == pytest.approx(L.pnmi_from_counts(counts))


def test_contingency_matrix_matches_sklearn(frames):
    clusters, phones = frames
    ids_a = phones * 3 + 7  # non-contiguous ids
    np.testing.assert_array_equal(L.contingency_matrix(ids_a, clusters), sk_contingency(ids_a, clusters))
    assert L.contingency_matrix([], []).shape == (0, 0)


def test_mutual_information_and_nmi_match_sklearn(frames):
    clusters, phones = frames
    assert L.mutual_information(phones, clusters) == pytest.approx(
        skm.mutual_info_score(phones, clusters), rel=1e-10)
    assert L.normalized_mutual_information(phones, clusters) == pytest.approx(
        skm.normalized_mutual_info_score(phones, clusters, average_method="arithmetic"), rel=1e-10)


def test_pnmi_is_mi_over_phone_entropy(frames):
    clusters, phones = frames
    p = np.bincount(phones) / len(phones)
    h = -(p * np.log(p)).sum()
    assert L.pnmi(clusters, phones) == pytest.approx(skm.mutual_info_score(phones, clusters) / h, rel=1e-10)


def test_perfect_and_independent_clusterings():
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 10, 4000)
    perm = rng.permutation(10) + 50
    assert L.pnmi(perm[phones], phones) == pytest.approx(1.0, abs=1e-12)
    assert L.purities_from_counts(L.contingency_matrix(phones, perm[phones])) == (1.0, 1.0)
    assert L.normalized_mutual_information(perm[phones], phones) == pytest.approx(1.0, abs=1e-12)
    independent = rng.integers(0, 10, 4000)
    assert L.pnmi(independent, phones) < 0.01
    # one cluster holding everything: purity of phones = share of the commonest phone
    one = np.zeros_like(phones)
    assert L.phone_purity(one, phones) == pytest.approx(np.bincount(phones).max() / len(phones))
    assert L.cluster_purity(one, phones) == 1.0
    assert L.pnmi(one, phones) == 0.0


def test_published_ballpark_relations(frames):
    """Cluster purity <= phone purity when clusters outnumber phones and split them."""
    clusters, phones = frames
    assert L.cluster_purity(clusters, phones) < L.phone_purity(clusters, phones)


# --------------------------------------------------------------------------- degenerate & errors

def _warned(fn, *args):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        value = fn(*args)
    return value, [w for w in rec if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("fn", [L.pnmi, L.mutual_information, L.normalized_mutual_information])
def test_empty_labels_give_nan_and_one_warning(fn):
    value, warns = _warned(fn, np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    assert np.isnan(value) and len(warns) == 1


def test_single_phone_pnmi_is_nan_with_one_warning():
    value, warns = _warned(L.pnmi, np.array([0, 1, 2, 1]), np.array([3, 3, 3, 3]))
    assert np.isnan(value) and len(warns) == 1 and "H(phone)" in str(warns[0].message)


def test_both_constant_nmi_is_nan_with_one_warning():
    value, warns = _warned(L.normalized_mutual_information, np.ones(5, dtype=int), np.zeros(5, dtype=int))
    assert np.isnan(value) and len(warns) == 1


def test_empty_counts_purities_nan_once():
    (pp, cp), warns = _warned(L.purities_from_counts, np.zeros((3, 4)))
    assert np.isnan(pp) and np.isnan(cp) and len(warns) == 1


@pytest.mark.parametrize("counts,match", [
    (np.array([[1, -1], [0, 2]]), "non-negative"),
    (np.array([[1.0, np.nan], [0, 2]]), "NaN or Inf"),
    (np.ones(3), "2-D"),
])
def test_bad_counts_raise(counts, match):
    with pytest.raises(SSLVitalsError, match=match):
        L.pnmi_from_counts(counts)


@pytest.mark.parametrize("fn", [L.phone_purity, L.cluster_purity, L.pnmi, L.mutual_information,
                                L.normalized_mutual_information, L.contingency_matrix])
def test_bad_labels_raise(fn):
    with pytest.raises(SSLVitalsError, match="must match"):
        fn(np.zeros(5, dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(SSLVitalsError, match="non-negative"):
        fn(np.array([0, -1, 2]), np.zeros(3, dtype=int))
    with pytest.raises(SSLVitalsError, match="integer"):
        fn(np.array(["a", "b"]), np.zeros(2, dtype=int))
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        fn(np.array([0.0, np.nan]), np.zeros(2, dtype=int))
