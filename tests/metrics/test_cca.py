"""CCA similarity against a generalized-eigenproblem reference, scikit-learn's CCA and sanity laws."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.cross_decomposition import CCA

from sslvitals.errors import SSLVitalsError
from sslvitals.metrics.cca import canonical_correlations, cca_similarity, one_hot


def _views(n=3000, d1=12, d2=8, latent=3, noise=1.0, seed=0):
    """Two views sharing a 3-d latent signal, each with its own noise and offsets."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    x = z @ rng.normal(size=(latent, d1)) + noise * rng.normal(size=(n, d1)) + 3.0
    y = z @ rng.normal(size=(latent, d2)) + noise * rng.normal(size=(n, d2)) - 1.0
    return x, y


def _reference(x, y, eps):
    """Canonical correlations and PWCCA from the generalized symmetric eigenproblem.

    Solves Cxy (Cyy + eps I)^-1 Cyx a = rho^2 (Cxx + eps I) a with scipy, then weights the
    canonical variates of x (orthonormalised by QR) by the summed absolute projections of the
    centred neurons of x.
    """
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    n = len(x)
    cxx = xc.T @ xc / (n - 1)
    cyy = yc.T @ yc / (n - 1)
    cxy = xc.T @ yc / (n - 1)
    m = min(x.shape[1], y.shape[1])
    lhs = cxy @ np.linalg.solve(cyy + eps * np.eye(len(cyy)), cxy.T)
    vals, vecs = scipy.linalg.eigh(lhs, cxx + eps * np.eye(len(cxx)))
    order = np.argsort(vals)[::-1][:m]
    rho = np.sqrt(np.clip(vals[order], 0, 1))
    h = xc @ vecs[:, order]
    q, _ = np.linalg.qr(h)
    w = np.abs(q.T @ xc).sum(axis=1)
    return rho, float((w / w.sum()) @ rho)


@pytest.mark.parametrize("eps", [0.0, 1e-6, 1e-2])
def test_correlations_and_pwcca_match_eigenproblem(eps):
    x, y = _views()
    rho_ref, pw_ref = _reference(x, y, eps)
    rho = canonical_correlations(x, y, epsilon=eps)
    np.testing.assert_allclose(rho, rho_ref, atol=1e-9)
    assert cca_similarity(x, y, method="mean", epsilon=eps) == pytest.approx(rho_ref.mean(), abs=1e-9)
    assert cca_similarity(x, y, method="pwcca", epsilon=eps) == pytest.approx(pw_ref, abs=1e-7)


def test_top_correlations_match_sklearn_cca():
    x, y = _views(n=2000, d1=6, d2=5, latent=2, noise=0.7, seed=3)
    model = CCA(n_components=2, scale=False, max_iter=5000, tol=1e-12).fit(x, y)
    xs, ys = model.transform(x, y)
    sk = [abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(2)]
    np.testing.assert_allclose(canonical_correlations(x, y, epsilon=0.0)[:2], sk, atol=1e-4)


@pytest.mark.parametrize("method", ["mean", "pwcca"])
def test_identical_views_give_one(method):
    x, _ = _views()
    assert cca_similarity(x, x, method=method) == pytest.approx(1.0, abs=1e-5)
    assert cca_similarity(x, torch.from_numpy(x).float(), method=method) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method", ["mean", "pwcca"])
def test_independent_noise_gives_near_zero(method):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8000, 6))
    y = rng.normal(size=(8000, 5))
    assert cca_similarity(x, y, method=method) < 0.05


@pytest.mark.parametrize("method", ["mean", "pwcca"])
def test_invariant_to_invertible_linear_maps_of_y(method):
    x, y = _views()
    rng = np.random.default_rng(4)
    a = rng.normal(size=(y.shape[1], y.shape[1])) + 3 * np.eye(y.shape[1])
    assert np.linalg.cond(a) < 100
    base = cca_similarity(x, y, method=method)
    assert cca_similarity(x, y @ a + 5.0, method=method) == pytest.approx(base, abs=1e-6)


def test_mean_cca_is_symmetric_pwcca_is_not():
    x, y = _views()
    assert cca_similarity(x, y, method="mean") == pytest.approx(cca_similarity(y, x, method="mean"), abs=1e-10)
    assert cca_similarity(x, y, method="pwcca") != pytest.approx(cca_similarity(y, x, method="pwcca"), abs=1e-4)


def test_phone_one_hot_view_and_label_permutation():
    rng = np.random.default_rng(2)
    phones = rng.integers(0, 10, 6000)
    x = rng.normal(size=(10, 16))[phones] + 0.8 * rng.normal(size=(6000, 16))
    y = one_hot(phones)
    assert y.shape == (6000, 10) and y.dtype == torch.float64
    # the centred one-hot view has rank 9: one correlation per free direction
    assert canonical_correlations(x, y).shape == (9,)
    strong = cca_similarity(x, y)
    weak = cca_similarity(rng.normal(size=(6000, 16)), y)
    assert strong > 0.8 and weak < 0.1
    perm = rng.permutation(10)
    assert cca_similarity(x, one_hot(perm[phones])) == pytest.approx(strong, abs=1e-9)


def test_one_hot_values_and_errors():
    np.testing.assert_array_equal(one_hot([0, 2, 1]).numpy(), np.eye(3)[[0, 2, 1]])
    assert one_hot([1, 1], num_classes=4).shape == (2, 4)
    with pytest.raises(SSLVitalsError, match="num_classes"):
        one_hot([0, 5], num_classes=3)


def _warned(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    return value, [w for w in rec if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("method", ["mean", "pwcca"])
def test_degenerate_views_give_nan_and_one_warning(method):
    x, _ = _views(n=50)
    value, warns = _warned(cca_similarity, x, np.ones((50, 3)), method=method)
    assert np.isnan(value) and len(warns) == 1
    value, warns = _warned(cca_similarity, x[:1], x[:1, :2], method=method)
    assert np.isnan(value) and len(warns) == 1


def test_errors_name_the_problem():
    x, y = _views(n=100)
    with pytest.raises(SSLVitalsError, match="aligned"):
        cca_similarity(x, y[:99])
    bad = x.copy()
    bad[4, 2] = np.inf
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        cca_similarity(bad, y)
    with pytest.raises(SSLVitalsError, match="method"):
        cca_similarity(x, y, method="svcca")
    with pytest.raises(SSLVitalsError, match="epsilon"):
        cca_similarity(x, y, epsilon=-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_cuda_input_matches_cpu():
    x, y = _views()
    xc = torch.from_numpy(x).cuda()
    yc = torch.from_numpy(y).cuda()
    for method in ("mean", "pwcca"):
        assert cca_similarity(xc, yc, method=method) == pytest.approx(cca_similarity(x, y, method=method), abs=1e-9)
