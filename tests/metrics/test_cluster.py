"""k-means and cluster-quality scores against scikit-learn and float64 numpy references."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from sslvitals.errors import SSLVitalsError
from sslvitals.metrics import cluster as C

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device visible to torch")

try:
    import faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:  # pragma: no cover - faiss is part of the project's environment
    HAVE_FAISS = False
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed")


@pytest.fixture(scope="module")
def blobs():
    """Well separated blobs: 1,200 points, 24 dims, 6 clusters, offset from the origin."""
    x, y = make_blobs(n_samples=1200, n_features=24, centers=6, cluster_std=1.0,
                      center_box=(-30, 30), random_state=3)
    return (x + 40.0).astype(np.float32), y


@pytest.fixture(scope="module")
def noisy():
    """Overlapping clusters with 20% random labels: a partition with negative silhouettes."""
    x, y = make_blobs(n_samples=900, n_features=16, centers=7, cluster_std=4.0, random_state=1)
    rng = np.random.default_rng(5)
    lab = y.copy()
    flip = rng.random(lab.shape[0]) < 0.2
    lab[flip] = rng.integers(0, 7, int(flip.sum()))
    return x.astype(np.float32), lab


def _count_runtime_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    return value, [w for w in rec if issubclass(w.category, RuntimeWarning)]


def _numpy_simplified_silhouette(x, lab):
    """Independent float64 reference: distances to every cluster mean by broadcasting."""
    x = np.asarray(x, dtype=np.float64)
    ids = np.unique(lab)
    means = np.stack([x[lab == c].mean(axis=0) for c in ids])
    d = np.sqrt(((x[:, None, :] - means[None, :, :]) ** 2).sum(-1))
    own = np.searchsorted(ids, lab)
    a = d[np.arange(len(x)), own].copy()
    d[np.arange(len(x)), own] = np.inf
    b = d.min(axis=1)
    s = (b - a) / np.maximum(a, b)
    sizes = np.array([(lab == c).sum() for c in ids])[own]
    s[sizes == 1] = 0.0
    return float(s.mean())


# --------------------------------------------------------------------------- sklearn parity

@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silhouette_matches_sklearn(noisy, as_torch, dtype):
    x, lab = noisy
    ref = skm.silhouette_score(x.astype(np.float64), lab)
    xin = torch.from_numpy(x.astype(dtype)) if as_torch else x.astype(dtype)
    assert C.silhouette_score(xin, lab) == pytest.approx(ref, abs=1e-5)


def test_silhouette_large_offset_and_singletons(blobs):
    """Far from the origin (cancellation risk) and with singleton clusters (scored 0)."""
    x, y = blobs
    x = x + 500.0
    lab = y.copy()
    lab[:3] = [10, 11, 12]  # three clusters of one point each
    ref = skm.silhouette_score(x.astype(np.float64), lab)
    assert C.silhouette_score(x, lab) == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("onehot", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_silhouette_tiled_paths(noisy, monkeypatch, symmetric, onehot):
    """Small tiles (N not a multiple) through the symmetric and the banded sweep, with
    per-cluster sums by one-hot product and by index_add."""
    x, lab = noisy
    monkeypatch.setattr(C, "_SIL_TILE", 128)
    monkeypatch.setattr(C, "_SIL_SYMMETRIC_BYTES", (1 << 40) if symmetric else 0)
    monkeypatch.setattr(C, "_SIL_ONEHOT_MAX", 1 << 20 if onehot else 0)
    ref = skm.silhouette_score(x.astype(np.float64), lab)
    assert C.silhouette_score(x, lab) == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 7])
def test_sampled_silhouette_matches_sklearn_draw(noisy, seed):
    x, lab = noisy
    ref = skm.silhouette_score(x.astype(np.float64), lab, sample_size=300, random_state=seed)
    assert C.silhouette_score(x, lab, sample_size=300, seed=seed) == pytest.approx(ref, abs=1e-5)


def test_sampled_silhouette_larger_than_n_is_exact(noisy):
    x, lab = noisy
    assert C.silhouette_score(x, lab, sample_size=10 * len(x)) == pytest.approx(
        C.silhouette_score(x, lab), abs=1e-12)


def test_silhouette_sample_size_too_small(noisy):
    x, lab = noisy
    with pytest.raises(SSLVitalsError, match="sample_size"):
        C.silhouette_score(x, lab, sample_size=1)


@pytest.mark.parametrize("data", ["blobs", "noisy"])
def test_davies_bouldin_and_calinski_harabasz_match_sklearn(request, data):
    x, lab = request.getfixturevalue(data)
    x64 = x.astype(np.float64)
    assert C.davies_bouldin_score(x, lab) == pytest.approx(
        skm.davies_bouldin_score(x64, lab), rel=1e-9)
    assert C.calinski_harabasz_score(x, lab) == pytest.approx(
        skm.calinski_harabasz_score(x64, lab), rel=1e-9)


def test_many_clusters_match_sklearn(noisy):
    """40 clusters: enough for torch.cdist to switch to its matmul path (more than 25 rows)."""
    x, _ = noisy
    lab = KMeans(n_clusters=40, n_init=1, random_state=0).fit(x).labels_
    x64 = x.astype(np.float64)
    assert C.davies_bouldin_score(x, lab) == pytest.approx(skm.davies_bouldin_score(x64, lab), rel=1e-9)
    assert C.calinski_harabasz_score(x, lab) == pytest.approx(
        skm.calinski_harabasz_score(x64, lab), rel=1e-9)
    assert C.silhouette_score(x, lab) == pytest.approx(skm.silhouette_score(x64, lab), abs=1e-5)


def test_davies_bouldin_coincident_means_follow_sklearn():
    """Two clusters sharing their mean contribute 0 to their ratio, as in scikit-learn."""
    x = np.array([[-1.0, 0], [1, 0], [0, -1], [0, 1], [10, 10], [12, 10]])
    lab = np.array([0, 0, 1, 1, 2, 2])
    assert C.davies_bouldin_score(x, lab) == pytest.approx(skm.davies_bouldin_score(x, lab), rel=1e-12)


def test_inertia_matches_numpy_and_sklearn_kmeans(blobs):
    x, _ = blobs
    km = KMeans(n_clusters=6, n_init=3, random_state=0).fit(x.astype(np.float64))
    x64 = x.astype(np.float64)
    ref = sum(((x64[km.labels_ == c] - x64[km.labels_ == c].mean(0)) ** 2).sum() for c in range(6))
    assert C.inertia(x, km.labels_) == pytest.approx(ref, rel=1e-10)
    assert C.inertia(x, km.labels_) == pytest.approx(km.inertia_, rel=1e-6)


def test_inertia_one_cluster_is_total_sum_of_squares(blobs):
    x, _ = blobs
    x64 = x.astype(np.float64)
    expect = ((x64 - x64.mean(0)) ** 2).sum()
    assert C.inertia(x, np.zeros(len(x), dtype=int)) == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("data", ["blobs", "noisy"])
def test_simplified_silhouette_matches_numpy(request, data):
    x, lab = request.getfixturevalue(data)
    lab = lab.copy()
    lab[0] = 99  # a singleton cluster
    assert C.simplified_silhouette_score(x, lab) == pytest.approx(
        _numpy_simplified_silhouette(x, lab), abs=1e-6)


def test_assign_matches_bruteforce(noisy):
    x, _ = noisy
    rng = np.random.default_rng(2)
    cents = x[rng.choice(len(x), 13, replace=False)] + rng.normal(size=(13, x.shape[1])).astype(np.float32)
    d = ((x.astype(np.float64)[:, None] - cents.astype(np.float64)[None]) ** 2).sum(-1)
    labels, sq = C.assign(x, cents)
    np.testing.assert_array_equal(labels.numpy(), d.argmin(1))
    np.testing.assert_allclose(sq.numpy(), d.min(1), rtol=1e-5)


def test_assign_does_not_depend_on_block_rows(wide_blobs, monkeypatch):
    """The block size is a memory setting: same labels and squared distances."""
    x = wide_blobs
    cents = x[::37] + 0.25
    ref = C.assign(x, cents)
    monkeypatch.setattr(C, "_ASSIGN_MAX_ROWS", 97)  # 1,500 rows: 15 full blocks and a partial one
    got = C.assign(x, cents)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_assign_dimension_mismatch(noisy):
    x, _ = noisy
    with pytest.raises(SSLVitalsError, match="dimension"):
        C.assign(x, np.zeros((3, x.shape[1] + 1)))


# --------------------------------------------------------------------------- k-means

BACKENDS = [pytest.param("faiss", marks=needs_faiss), "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_recovers_blobs_like_sklearn(blobs, backend):
    x, y = blobs
    ref = KMeans(n_clusters=6, n_init=1, random_state=0).fit(x)
    res = C.kmeans(x, 6, niter=25, seed=0, backend=backend)
    assert res.backend == backend
    assert res.centroids.shape == (6, x.shape[1]) and res.labels.shape == (len(x),)
    assert res.labels.dtype == torch.int64
    assert skm.adjusted_rand_score(y, res.labels.numpy()) > 0.999
    assert res.inertia == pytest.approx(ref.inertia_, rel=0.02)
    # the reported inertia belongs to the returned centroids and labels
    lab2, sq2 = C.assign(x, res.centroids)
    assert torch.equal(lab2, res.labels)
    assert res.inertia == pytest.approx(float(sq2.double().sum()), rel=1e-6)
    # converged partition: inertia w.r.t. cluster means agrees
    assert C.inertia(x, res.labels) == pytest.approx(res.inertia, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_many_clusters_close_to_sklearn(noisy, backend):
    x, _ = noisy
    ref = KMeans(n_clusters=40, n_init=1, random_state=0).fit(x)
    res = C.kmeans(x, 40, niter=30, seed=1, backend=backend)
    assert res.inertia == pytest.approx(ref.inertia_, rel=0.05)
    assert int(torch.unique(res.labels).numel()) == 40


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_is_deterministic_under_seed(noisy, backend):
    x, _ = noisy
    a = C.kmeans(x, 12, seed=4, backend=backend)
    b = C.kmeans(x, 12, seed=4, backend=backend)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    c = C.kmeans(x, 12, seed=5, backend=backend)
    assert not torch.equal(a.centroids, c.centroids)


@needs_faiss
def test_kmeans_reports_the_real_device(blobs):
    import faiss

    x, _ = blobs
    res = C.kmeans(x, 6, backend="faiss")
    expect = "cuda" if faiss.get_num_gpus() > 0 else "cpu"
    assert res.device == expect
    assert C.kmeans(x, 6, backend="auto").backend == "faiss"
    assert C.kmeans(x, 6, backend="torch").device == "cpu"


def test_kmeans_fewer_frames_than_clusters_raises():
    x = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(SSLVitalsError, match="at least k=8 frames"):
        C.kmeans(x, 8)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0}, "positive"), ({"k": 2, "niter": 0}, "niter"), ({"k": 2, "backend": "sk"}, "backend")])
def test_kmeans_bad_arguments(kwargs, match):
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(SSLVitalsError, match=match):
        C.kmeans(x, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_with_duplicate_frames_does_not_fail(backend):
    """Only 3 distinct frames for k=5: some clusters stay empty or duplicated, no crash."""
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    res = C.kmeans(x, 5, backend=backend)
    assert res.inertia == pytest.approx(0.0, abs=1e-3)  # faiss splits clusters by tiny offsets
    assert len(np.unique(res.labels.numpy())) == 3


def test_torch_lloyd_reseeds_empty_clusters(blobs):
    x, _ = blobs
    xt = torch.from_numpy(x)
    start = xt[:6].clone()
    start[5] = 1e4  # a centroid that no frame is nearest to
    out = C._lloyd_torch(xt, start, niter=10)
    labels, _ = C.assign(xt, out)
    assert torch.isfinite(out).all()
    assert int(torch.unique(labels).numel()) == 6


# --------------------------------------------------------------------------- k-means++ seeding

@pytest.fixture(scope="module")
def wide_blobs():
    """1,500 points in 256 dims from 30 blobs: wide enough that oneDNN uses its bfloat16
    kernels for float32 products under ``set_float32_matmul_precision("medium")``."""
    x, _ = make_blobs(n_samples=1500, n_features=256, centers=30, cluster_std=3.0,
                      center_box=(-3, 3), random_state=4)
    return (x + 20.0).astype(np.float32)


@pytest.fixture(scope="module")
def many_blobs():
    """3,000 points in 32 dims from 80 overlapping blobs, offset far from the origin."""
    x, _ = make_blobs(n_samples=3000, n_features=32, centers=80, cluster_std=2.0,
                      center_box=(-12, 12), random_state=11)
    return (x + 60.0).astype(np.float32)


def test_pool_distance_rows_match_float64(noisy, monkeypatch):
    """Both ways of producing candidate rows (the tiled, mirrored matrix and rows on the fly)
    give the float64 squared distances, symmetric, with exact zeros on the diagonal."""
    x = torch.from_numpy(noisy[0] + 300.0)  # far from the origin: the pool is centred first
    x64 = x.double()
    ref = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    idx = torch.tensor([0, 5, 127, 128, 899, 5])
    monkeypatch.setattr(C, "_SEED_TILE", 128)  # 900 rows: 7 full tiles and a partial one
    rows_mat = C._pool_distance_rows(x, n_candidates=len(x))
    full = rows_mat(torch.arange(len(x)))
    assert torch.equal(full, full.t())
    assert torch.all(full.diagonal() == 0)
    np.testing.assert_allclose(full.double().numpy(), ref.numpy(), rtol=1e-4, atol=1e-2)
    monkeypatch.setattr(C, "_SEED_MATRIX_ELEMENTS", 0)
    rows_fly = C._pool_distance_rows(x, n_candidates=len(x))(idx)
    np.testing.assert_allclose(rows_fly.double().numpy(), ref[idx].numpy(), rtol=1e-4, atol=1e-2)
    assert torch.all(rows_fly[torch.arange(len(idx)), idx] == 0)


@pytest.mark.parametrize("k", [1, 12, 80, 300])  # 300: the pool's distance matrix route
def test_seeding_is_deterministic_under_seed(many_blobs, k):
    x = torch.from_numpy(many_blobs)
    a = C._kmeanspp(x, k, 3)
    assert a.shape == (k, x.shape[1]) and a.dtype == torch.float32
    assert torch.equal(a, C._kmeanspp(x, k, 3))
    # every centre is a frame of x, and no frame is chosen twice on distinct data
    hits = (a[:, None, :] == x[None, :, :]).all(-1)
    assert torch.all(hits.sum(1) >= 1)
    assert int(torch.unique(a, dim=0).shape[0]) == k
    if k > 1:
        assert not torch.equal(a, C._kmeanspp(x, k, 4))


@pytest.mark.parametrize("path", ["matrix", "rows"])
@pytest.mark.parametrize("tile", [1024, 97])
def test_seeding_does_not_depend_on_how_distances_are_tiled(many_blobs, monkeypatch, path, tile):
    """The pool is a subset (k=300 -> 2,400 frames of 3,000); the tile size and whether the
    matrix is kept are memory settings and must not change the chosen centres."""
    x = torch.from_numpy(many_blobs)
    ref = C._kmeanspp(x, 300, 0)
    monkeypatch.setattr(C, "_SEED_TILE", tile)
    if path == "rows":
        monkeypatch.setattr(C, "_SEED_MATRIX_ELEMENTS", 0)
    assert torch.equal(C._kmeanspp(x, 300, 0), ref)


@pytest.mark.parametrize("k", [12, 80, 300])
def test_seeding_makes_the_choices_of_the_previous_greedy_seeding(many_blobs, k):
    """Same pool, same uniforms, same greedy rule: the precomputed distances only change
    rounding, so the centres are those of the old step-by-step seeding."""
    x = torch.from_numpy(many_blobs)
    assert torch.equal(C._kmeanspp(x, k, 1), C._seed_greedy(x, k, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [20, 80, 300])
def test_seeding_inertia_not_worse_than_the_previous_seeding(many_blobs, backend, k):
    """Final inertia after Lloyd over 5 seeds: within 1% of (or better than) the old seeding,
    and better than seeding with uniformly drawn frames."""
    x = torch.from_numpy(many_blobs)

    def uniform(xx, kk, seed):
        g = torch.Generator().manual_seed(seed)
        return xx[torch.randperm(xx.shape[0], generator=g)[:kk]]

    def total(seeding):
        return sum(C._kmeans(x, k, niter=10, seed=s, backend=backend, seeding=seeding).inertia
                   for s in range(5))

    new, old, rand = total(C._kmeanspp), total(C._seed_greedy), total(uniform)
    assert new <= 1.01 * old
    assert new < rand


@pytest.mark.parametrize("k", [80, 300])  # rows computed per step; the pool's matrix
def test_seeding_ignores_and_restores_the_thread_count(many_blobs, k):
    """The caller's thread count does not change the centres and is restored afterwards (the
    matrix route's step loop runs on one CPU thread), also when the block raises."""
    x = torch.from_numpy(many_blobs)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = C._kmeanspp(x, k, 0)
        assert torch.get_num_threads() == 2
        with pytest.raises(ZeroDivisionError):
            with C._one_cpu_thread(torch.device("cpu")):
                assert torch.get_num_threads() == 1
                raise ZeroDivisionError
        assert torch.get_num_threads() == 2
        with C._one_cpu_thread(torch.device("cpu"), enabled=False):
            assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one = C._kmeanspp(x, k, 0)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_kmeans_inertia_unchanged_by_matrix_budget(many_blobs, monkeypatch):
    """End to end: the seeding's memory route does not move the k-means result."""
    ref = C.kmeans(many_blobs, 300, niter=5, seed=2, backend="torch")
    monkeypatch.setattr(C, "_SEED_MATRIX_ELEMENTS", 0)
    res = C.kmeans(many_blobs, 300, niter=5, seed=2, backend="torch")
    assert torch.equal(res.centroids, ref.centroids) and res.inertia == ref.inertia


# --------------------------------------------------------------------------- TF32 guard

def _precision_state():
    """Everything a user can set about float32 matmul precision, as comparable values."""
    out = []
    for read in (torch.get_float32_matmul_precision,
                 lambda: torch.backends.cuda.matmul.allow_tf32):
        try:
            out.append(read())
        except RuntimeError:  # a mixed legacy / new-API state cannot be read the legacy way
            out.append("mixed")
    out += [knob.fp32_precision for knob in C._matmul_precision_knobs()]
    return tuple(out)


def _user_setting(name):
    """Apply one of the settings a training script uses."""
    if name == "high":
        torch.set_float32_matmul_precision("high")
    elif name == "medium":
        torch.set_float32_matmul_precision("medium")
    elif name == "allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif name == "new_api_cuda_tf32":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    elif name == "new_api_mixed":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    else:
        assert name == "default"


@pytest.fixture
def restore_precision():
    """Put the process-wide precision back to the defaults after a test that changes it."""
    yield
    for knob in C._matmul_precision_knobs():
        knob.fp32_precision = "none"
    torch.set_float32_matmul_precision("highest")
    for knob in C._matmul_precision_knobs():
        knob.fp32_precision = "none"


SETTINGS = ["default", "high", "medium", "allow_tf32", "new_api_cuda_tf32", "new_api_mixed"]


@pytest.mark.usefixtures("restore_precision")
@pytest.mark.parametrize("setting", SETTINGS)
def test_precision_guard_forces_full_float32_and_restores(setting):
    _user_setting(setting)
    before = _precision_state()
    with C._full_float32_matmul():
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert all(k.fp32_precision == "ieee" for k in C._matmul_precision_knobs())
    assert _precision_state() == before
    with pytest.raises(ZeroDivisionError):
        with C._full_float32_matmul():
            raise ZeroDivisionError  # the setting comes back on an exception too
    assert _precision_state() == before


@pytest.mark.usefixtures("restore_precision")
def test_precision_restored_when_a_metric_fails_inside_the_guard(noisy, monkeypatch):
    x, _ = noisy
    torch.set_float32_matmul_precision("medium")
    before = _precision_state()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure inside the guarded computation")

    monkeypatch.setattr(C, "_lloyd_torch", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        C.kmeans(x, 5, backend="torch")
    assert _precision_state() == before


def _guarded_results(x, lab, cents):
    """Every guarded computation, as exact values."""
    out = {}
    for backend in [b.values[0] if hasattr(b, "values") else b for b in BACKENDS]:
        if backend == "faiss" and not HAVE_FAISS:
            continue
        res = C.kmeans(x, 40, niter=5, seed=0, backend=backend)
        out[f"kmeans_{backend}"] = (res.centroids.numpy().tobytes(), res.labels.numpy().tobytes(),
                                    res.inertia)
    labels, sq = C.assign(x, cents)
    out["assign"] = (labels.numpy().tobytes(), sq.numpy().tobytes())
    out["seeding"] = C._kmeanspp(torch.from_numpy(x), 300, 0).numpy().tobytes()
    out["silhouette"] = C.silhouette_score(x, lab)
    out["simplified_silhouette"] = C.simplified_silhouette_score(x, lab)
    return out


@pytest.mark.usefixtures("restore_precision")
@pytest.mark.parametrize("setting", ["high", "medium", "allow_tf32", "new_api_mixed"])
def test_results_do_not_depend_on_the_users_matmul_precision(wide_blobs, setting):
    """Bit-identical k-means, assignment, seeding and silhouettes under a reduced-precision
    setting; on a CPU with bfloat16 units ("medium") such products really do change."""
    x = wide_blobs
    lab = C.kmeans(x, 40, niter=3, seed=5, backend="torch").labels.numpy()
    cents = x[::50] + 0.5
    ref = _guarded_results(x, lab, cents)
    _user_setting(setting)
    state = _precision_state()
    assert _guarded_results(x, lab, cents) == ref
    assert _precision_state() == state


@pytest.mark.usefixtures("restore_precision")
def test_medium_precision_changes_raw_products_on_this_cpu(wide_blobs):
    """Shows the guard is exercised: where oneDNN has bfloat16 kernels, "medium" changes a raw
    float32 product of these frames (skipped, with the reason, on a CPU without them)."""
    a = torch.from_numpy(wide_blobs)
    full = a @ a.t()
    torch.set_float32_matmul_precision("medium")
    reduced = a @ a.t()
    if torch.equal(full, reduced):
        pytest.skip("this CPU has no reduced-precision float32 products: the guard is a no-op here")
    with C._full_float32_matmul():
        assert torch.equal(a @ a.t(), full)


# --------------------------------------------------------------------------- degenerate & errors

SCORES = [C.silhouette_score, C.davies_bouldin_score, C.calinski_harabasz_score,
          C.simplified_silhouette_score]


def _case(name):
    rng = np.random.default_rng(0)
    if name == "one_cluster":
        return rng.normal(size=(10, 4)), np.zeros(10, dtype=int)
    if name == "single_frame":
        return rng.normal(size=(1, 4)), np.array([0])
    if name == "empty":
        return np.zeros((0, 4)), np.zeros(0, dtype=int)
    if name == "own_cluster":
        return rng.normal(size=(6, 4)), np.arange(6)
    raise AssertionError(name)


@pytest.mark.parametrize("fn", SCORES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", ["one_cluster", "single_frame", "empty", "own_cluster"])
def test_degenerate_partitions_give_nan_and_one_warning(fn, case):
    x, lab = _case(case)
    value, warns = _count_runtime_warnings(fn, x, lab)
    assert np.isnan(value)
    assert len(warns) == 1
    assert "undefined" in str(warns[0].message)


def test_inertia_empty_is_nan_with_one_warning():
    value, warns = _count_runtime_warnings(C.inertia, np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert np.isnan(value) and len(warns) == 1


def test_calinski_harabasz_zero_spread_is_nan():
    x = np.array([[0.0, 0], [0, 0], [1, 1], [1, 1]])
    value, warns = _count_runtime_warnings(C.calinski_harabasz_score, x, [0, 0, 1, 1])
    assert np.isnan(value) and len(warns) == 1


def test_davies_bouldin_zero_spread_is_zero():
    x = np.array([[0.0, 0], [0, 0], [1, 1], [1, 1]])
    assert C.davies_bouldin_score(x, [0, 0, 1, 1]) == 0.0


@pytest.mark.parametrize("fn", SCORES + [C.inertia], ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_frames_raise(fn, bad):
    x, lab = _case("own_cluster")
    x = np.concatenate([x, x])
    x[3, 1] = bad
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        fn(x, np.concatenate([lab, lab]) % 3)


@pytest.mark.parametrize("fn", SCORES + [C.inertia], ids=lambda f: f.__name__)
def test_label_length_mismatch_raises(fn):
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(SSLVitalsError, match="must match"):
        fn(x, np.zeros(9, dtype=int))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_non_finite_raises(backend):
    x = np.random.default_rng(0).normal(size=(50, 3))
    x[7, 0] = np.nan
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        C.kmeans(x, 3, backend=backend)


# --------------------------------------------------------------------------- CUDA

@pytest.mark.gpu
@needs_cuda
def test_scores_on_cuda_match_cpu(noisy):
    x, lab = noisy
    xc, lc = torch.from_numpy(x).cuda(), torch.from_numpy(lab).cuda()
    for fn in SCORES + [C.inertia]:
        assert fn(xc, lc) == pytest.approx(fn(x, lab), rel=1e-5, abs=1e-6), fn.__name__
    assert C.silhouette_score(xc, lc, sample_size=300, seed=1) == pytest.approx(
        C.silhouette_score(x, lab, sample_size=300, seed=1), abs=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_torch_kmeans_on_cuda(blobs):
    x, y = blobs
    res = C.kmeans(torch.from_numpy(x).cuda(), 6, seed=0)
    assert res.backend == "torch" and res.device.startswith("cuda")
    assert res.labels.is_cuda and res.centroids.is_cuda
    assert skm.adjusted_rand_score(y, res.labels.cpu().numpy()) > 0.999
    cpu = C.kmeans(x, 6, seed=0, backend="torch")
    assert res.inertia == pytest.approx(cpu.inertia, rel=1e-4)
    labels, sq = C.assign(torch.from_numpy(x).cuda(), res.centroids)
    assert torch.equal(labels, res.labels)


@pytest.mark.gpu
@needs_faiss
def test_faiss_gpu_when_faiss_sees_one(blobs):
    import faiss

    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss sees no GPU (CPU build, or no device): FAISS GPU path not exercised")
    x, y = blobs
    res = C.kmeans(x, 6, backend="faiss")
    assert res.device == "cuda"
    assert skm.adjusted_rand_score(y, res.labels.numpy()) > 0.999


@pytest.mark.gpu
@needs_cuda
def test_seeding_on_cuda_matches_cpu(many_blobs):
    """The same uniforms drive the draws on both devices; the rounding of the distances
    differs, and on this separated data that moves no choice."""
    x = torch.from_numpy(many_blobs)
    for k in (80, 300):  # rows computed step by step, and the pool's distance matrix
        assert torch.equal(C._kmeanspp(x.cuda(), k, 0).cpu(), C._kmeanspp(x, k, 0))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("restore_precision")
def test_cuda_results_do_not_depend_on_tf32(many_blobs, noisy):
    x = torch.from_numpy(many_blobs).cuda()
    xn, ln = (torch.from_numpy(a).cuda() for a in noisy)

    def run():
        res = C.kmeans(x, 80, niter=5, seed=0, backend="torch")
        return (res.centroids.cpu(), res.labels.cpu(), res.inertia,
                C.silhouette_score(xn, ln), C.simplified_silhouette_score(xn, ln))

    ref = run()
    raw = x @ x.t()
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32_changes_products = not torch.equal(x @ x.t(), raw)
    got = run()
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert got[2:] == ref[2:]
    if not tf32_changes_products:
        pytest.skip("this GPU has no TF32 units: the comparison above did not exercise the guard")
