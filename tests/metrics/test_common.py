"""Invariances every metric must have, checked over lists of metrics (one test, every metric).

* cluster scores: label permutation / renaming, row order, translation, rotation, scale;
* label scores: renaming either labeling, row order, symmetry where it holds;
* CCA: row order, phone renaming, scale;
* rank measures: row order, rotation, scale, frame repetition (same distribution, 3x the frames);
* every metric on frames: NaN/Inf raises SSLVitalsError, the result is a Python float.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from sslvitals.errors import SSLVitalsError
from sslvitals.metrics import cca as CCA
from sslvitals.metrics import cluster as C
from sslvitals.metrics import labels as L
from sslvitals.metrics import rank as R  # an import error is a bug: fail, never skip

CLUSTER_SCORES = {
    "silhouette": C.silhouette_score,
    "silhouette_sampled": lambda x, lab: C.silhouette_score(x, lab, sample_size=10**9),
    "davies_bouldin": C.davies_bouldin_score,
    "calinski_harabasz": C.calinski_harabasz_score,
    "simplified_silhouette": C.simplified_silhouette_score,
    "inertia": C.inertia,
}
#: How a metric changes when x is multiplied by c (exponent of c).
SCALE_POWER = {"inertia": 2}

LABEL_SCORES = {
    "phone_purity": L.phone_purity,
    "cluster_purity": L.cluster_purity,
    "pnmi": L.pnmi,
    "mutual_information": L.mutual_information,
    "normalized_mutual_information": L.normalized_mutual_information,
}
SYMMETRIC_LABEL_SCORES = ("mutual_information", "normalized_mutual_information")

CCA_SCORES = {
    "cca_mean": lambda x, y: CCA.cca_similarity(x, y, method="mean"),
    "pwcca": lambda x, y: CCA.cca_similarity(x, y, method="pwcca"),
}

RANK_NAMES = ("rankme", "effective_rank", "alpha_req", "stable_rank", "nesum", "numerical_rank")


def _rank_fn(name):
    assert name in R.__all__, f"sslvitals.metrics.rank does not export {name}"
    return getattr(R, name)


@pytest.fixture(scope="module")
def clustered():
    x, y = make_blobs(n_samples=600, n_features=10, centers=5, cluster_std=2.5, random_state=2)
    rng = np.random.default_rng(9)
    lab = y.copy()
    flip = rng.random(len(lab)) < 0.15
    lab[flip] = rng.integers(0, 5, int(flip.sum()))
    return x + 4.0, lab


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(3)
    phones = rng.integers(0, 12, 3000)
    clusters = (phones * 3 + rng.integers(0, 4, 3000)) % 30
    noise = rng.random(3000) < 0.25
    clusters[noise] = rng.integers(0, 30, int(noise.sum()))
    return clusters, phones


@pytest.fixture(scope="module")
def spectrum_data():
    """Low-rank plus noise frames with a non-zero mean, so every rank measure is informative."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(800, 6)) @ rng.normal(size=(6, 24)) * 3 + 0.3 * rng.normal(size=(800, 24))
    return x + 1.0


@pytest.fixture(scope="module")
def graded_spectrum():
    """Frames whose per-direction spread falls from 1 to 1e-6.6 (rotated, with a mean): the
    tail crosses any threshold that moves with the number of frames."""
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    return (rng.normal(size=(400, 24)) * 10.0 ** (-np.arange(24) / 3.5)) @ q + 0.2 * q[0]


def _rotation(d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# --------------------------------------------------------------------------- cluster scores

@pytest.mark.parametrize("name", CLUSTER_SCORES)
def test_cluster_score_label_renaming(clustered, name):
    x, lab = clustered
    fn = CLUSTER_SCORES[name]
    rename = np.random.default_rng(1).permutation(5) * 7 + 3  # permuted, non-contiguous ids
    assert fn(x, rename[lab]) == pytest.approx(fn(x, lab), rel=1e-7)


@pytest.mark.parametrize("name", CLUSTER_SCORES)
def test_cluster_score_row_order(clustered, name):
    x, lab = clustered
    fn = CLUSTER_SCORES[name]
    order = np.random.default_rng(2).permutation(len(x))
    assert fn(x[order], lab[order]) == pytest.approx(fn(x, lab), rel=1e-6)


@pytest.mark.parametrize("name", CLUSTER_SCORES)
def test_cluster_score_rigid_motion(clustered, name):
    x, lab = clustered
    fn = CLUSTER_SCORES[name]
    moved = x @ _rotation(x.shape[1]) + 25.0
    assert fn(moved, lab) == pytest.approx(fn(x, lab), rel=1e-5)


@pytest.mark.parametrize("name", CLUSTER_SCORES)
def test_cluster_score_scale(clustered, name):
    x, lab = clustered
    fn = CLUSTER_SCORES[name]
    c = 3.5
    expect = fn(x, lab) * c ** SCALE_POWER.get(name, 0)
    assert fn(c * x, lab) == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("name", CLUSTER_SCORES)
def test_cluster_score_type_and_nan_input(clustered, name):
    x, lab = clustered
    fn = CLUSTER_SCORES[name]
    assert type(fn(x, lab)) is float
    bad = x.copy()
    bad[10, 3] = np.nan
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        fn(bad, lab)


# --------------------------------------------------------------------------- label scores

@pytest.mark.parametrize("name", LABEL_SCORES)
def test_label_score_renaming_either_side(labelled, name):
    clusters, phones = labelled
    fn = LABEL_SCORES[name]
    rng = np.random.default_rng(5)
    base = fn(clusters, phones)
    assert fn((rng.permutation(30) + 100)[clusters], phones) == pytest.approx(base, rel=1e-12)
    assert fn(clusters, (rng.permutation(12) * 5)[phones]) == pytest.approx(base, rel=1e-12)


@pytest.mark.parametrize("name", LABEL_SCORES)
def test_label_score_row_order_and_type(labelled, name):
    clusters, phones = labelled
    fn = LABEL_SCORES[name]
    order = np.random.default_rng(6).permutation(len(phones))
    value = fn(clusters, phones)
    assert type(value) is float
    assert fn(clusters[order], phones[order]) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("name", SYMMETRIC_LABEL_SCORES)
def test_symmetric_label_scores(labelled, name):
    clusters, phones = labelled
    fn = LABEL_SCORES[name]
    assert fn(clusters, phones) == pytest.approx(fn(phones, clusters), rel=1e-12)


def test_purities_swap_when_labelings_swap(labelled):
    clusters, phones = labelled
    assert L.phone_purity(clusters, phones) == pytest.approx(L.cluster_purity(phones, clusters), rel=1e-15)


# --------------------------------------------------------------------------- CCA

@pytest.mark.parametrize("name", CCA_SCORES)
def test_cca_row_order_phone_renaming_and_scale(name):
    fn = CCA_SCORES[name]
    rng = np.random.default_rng(7)
    phones = rng.integers(0, 8, 3000)
    x = rng.normal(size=(8, 12))[phones] + rng.normal(size=(3000, 12))
    base = fn(x, CCA.one_hot(phones))
    assert type(base) is float
    order = rng.permutation(3000)
    assert fn(x[order], CCA.one_hot(phones[order])) == pytest.approx(base, abs=1e-9)
    assert fn(x, CCA.one_hot(rng.permutation(8)[phones])) == pytest.approx(base, abs=1e-9)
    assert fn(4.0 * x, CCA.one_hot(phones)) == pytest.approx(base, abs=1e-5)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        fn(bad, CCA.one_hot(phones))


# --------------------------------------------------------------------------- rank measures

@pytest.mark.parametrize("name", RANK_NAMES)
def test_rank_measure_row_order_rotation_scale(spectrum_data, name):
    fn = _rank_fn(name)
    x = spectrum_data
    base = fn(x)
    assert type(base) is float
    order = np.random.default_rng(8).permutation(len(x))
    assert fn(x[order]) == pytest.approx(base, rel=1e-6)
    assert fn(x @ _rotation(x.shape[1], seed=3)) == pytest.approx(base, rel=1e-6)
    assert fn(2.5 * x) == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("name", RANK_NAMES)
def test_rank_measure_frame_repetition(spectrum_data, graded_spectrum, name):
    """Every frame three times: the same distribution of frames, so the same value (issue 11:
    the numerical rank and alpha-ReQ's fit range once depended on the number of frames; on
    ``graded_spectrum`` the old tolerance gave numerical rank 16, then 14)."""
    fn = _rank_fn(name)
    for x in (spectrum_data, graded_spectrum):
        assert fn(np.tile(x, (3, 1))) == pytest.approx(fn(x), rel=1e-6)


@pytest.mark.parametrize("name", RANK_NAMES)
def test_rank_measure_nan_input(spectrum_data, name):
    fn = _rank_fn(name)
    bad = spectrum_data.copy()
    bad[5, 5] = np.nan
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        fn(bad)


def test_rankme_t_utterance_order_and_rotation(spectrum_data):
    fn = _rank_fn("rankme_t")
    utts = np.split(spectrum_data, 40)
    base = fn(utts)
    assert type(base) is float
    assert fn(utts[::-1]) == pytest.approx(base, rel=1e-6)
    q = _rotation(spectrum_data.shape[1], seed=4)
    assert fn([u @ q for u in utts]) == pytest.approx(base, rel=1e-6)
