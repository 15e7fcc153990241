"""k-means and label-free cluster-quality scores of frame embeddings.

All functions take frames ``x`` of shape ``(N, D)`` (numpy array or torch tensor, CPU or
CUDA) and run on the device of ``x``. Distances are computed in blocks with the identity
``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` so that a single matrix product does the heavy
work and memory stays ``O(block x N)`` (or ``O(block x k)``), never ``O(N^2)``. Those float32
products run in full float32 precision even when the training script allowed TF32 or
bfloat16 products (``torch.backends.cuda.matmul.allow_tf32``,
``torch.set_float32_matmul_precision``): the setting is switched for the computation and
restored afterwards, so a score does not depend on it.

Scores follow scikit-learn's definitions (checked against it in the tests):

* :func:`inertia` - sum over frames of the squared distance to the mean of its cluster;
* :func:`davies_bouldin_score` - mean over clusters of the worst ratio
  ``(s_i + s_j) / d(c_i, c_j)`` (``s`` = mean distance to the centroid); lower is better;
* :func:`calinski_harabasz_score` - between- over within-cluster dispersion, each divided by
  its degrees of freedom; higher is better;
* :func:`silhouette_score` - mean over frames of ``(b - a) / max(a, b)`` where ``a`` is the
  mean distance to the other members of its cluster and ``b`` the smallest mean distance to
  another cluster (frames alone in their cluster score 0); exact, or on a seeded sample;
* :func:`simplified_silhouette_score` - the same with distances to centroids instead of
  means over members, ``O(N k D)``.

Degenerate input (no frames, a single cluster, every frame its own cluster) gives NaN and
exactly one ``RuntimeWarning``; NaN/Inf in ``x`` raises :class:`SSLVitalsError`.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from sslvitals._validation import ArrayLike, as_labels, as_tensor_2d, degenerate
from sslvitals.errors import SSLVitalsError

__all__ = [
    "KMeansResult",
    "kmeans",
    "assign",
    "inertia",
    "davies_bouldin_score",
    "calinski_harabasz_score",
    "silhouette_score",
    "simplified_silhouette_score",
]

logger = logging.getLogger(__name__)

#: Elements of one distance block (rows x columns); 4M float32 = 16 MiB.
_BLOCK_ELEMENTS = 1 << 22
#: At most this many rows per block in the nearest-centroid search: the exact recomputation
#: of the squared distances makes two (rows, D) temporaries, and at 4,096 x 768 they are
#: reused by the allocator instead of being fresh pages on every call (2.3x faster at k = 100).
_ASSIGN_MAX_ROWS = 4096
#: Square tile side for the exact silhouette.
_SIL_TILE = 2048
#: Largest number of clusters in one block of label-sorted rows for which per-cluster sums
#: are taken with a one-hot product (else index_add).
_SIL_ONEHOT_MAX = 48
#: Above this many bytes the per-frame x per-cluster distance sums of the exact silhouette
#: are not kept for all frames at once (the symmetric, twice-as-fast tiling needs them).
_SIL_SYMMETRIC_BYTES = 1 << 30
#: k-means++ seeding runs on at most max(this x k, _SEED_MIN) frames drawn with the seed.
_SEED_POINTS_PER_CLUSTER = 8
_SEED_MIN = 4096
#: The seeding keeps all squared distances within its pool in one float32 matrix when the pool
#: has at most this many pairs (2^27 = 512 MiB: pools of up to 11,585 frames, k <= 1448 with
#: the default pool size) and the matrix is cheaper than the step-by-step candidate rows,
#: i.e. n_seed <= _SEED_MATRIX_MAX_RATIO x k x (2 + ln k) (from k = 137 on with the default
#: pool; measured on 2 CPU cores, the crossover lies near k = 100 on an idle machine and
#: near k = 200 on a loaded one); otherwise each step's rows are computed on the fly. The
#: route depends only on N and k, never on the device or the data.
_SEED_MATRIX_ELEMENTS = 1 << 27
_SEED_MATRIX_MAX_RATIO = 5
#: Rows per tile when that matrix is filled (only the upper triangle of tiles is multiplied).
_SEED_TILE = 1024


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    Attributes:
        centroids: ``(k, D)`` float32 tensor on the input's device.
        labels: ``(N,)`` int64 tensor, index of the nearest centroid of every frame.
        inertia: Sum over frames of the squared distance to the assigned centroid.
        backend: ``"faiss"`` or ``"torch"``, the implementation that ran.
        device: Where the computation really ran (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float
    backend: str
    device: str


# ---------------------------------------------------------------------------------------
# helpers


def _rows_per_block(n_cols: int) -> int:
    """Rows per block so that a ``(rows, n_cols)`` float32 block stays near 16 MiB."""
    return max(64, _BLOCK_ELEMENTS // max(1, n_cols))


def _float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def _matmul_precision_knobs() -> list[object]:
    """The per-backend float32 matmul precision settings this torch has (new-style API).

    ``torch.backends.cuda.matmul`` (cuBLAS: ``"tf32"`` / ``"ieee"``) and
    ``torch.backends.mkldnn.matmul`` (oneDNN on the CPU: ``"bf16"``, ``"tf32"``, ``"ieee"``);
    older torch versions have neither, and the legacy global setting is all there is.
    """
    knobs = []
    for backend in ("cuda", "mkldnn"):
        matmul = getattr(getattr(torch.backends, backend, None), "matmul", None)
        if matmul is not None and isinstance(getattr(matmul, "fp32_precision", None), str):
            knobs.append(matmul)
    return knobs


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run the block's CPU ops on one torch thread (no-op for other devices or if not enabled).

    For loops of many tiny ops (the seeding's steps: a few vectors of ``n_seed`` entries):
    splitting them over threads gains nothing, and on a machine shared with other jobs every
    parallel region waits for a descheduled thread (measured: 1,024 steps took 3 to 18 s with
    two threads under a load of 5, under 1 s with one). The caller's thread count is
    restored afterwards, also on an exception; it is process-global meanwhile.

    Args:
        device: Device of the block's tensors; only ``"cpu"`` changes anything.
        enabled: False makes the block run with the caller's thread count.
    """
    before = torch.get_num_threads()
    if not enabled or device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """Run float32 matrix products in full float32 precision inside the block.

    A training script often sets ``torch.backends.cuda.matmul.allow_tf32 = True`` or
    ``torch.set_float32_matmul_precision("high" | "medium")``: cuBLAS then multiplies float32
    in TensorFloat32 (10 mantissa bits) and oneDNN on a CPU with bfloat16 units in bfloat16
    pieces. Squared distances from ``||a||^2 + ||b||^2 - 2 a.b`` lose most of their digits
    that way, so nearest centroids and silhouettes would depend on a flag of the training
    script. This sets ``"highest"`` for the block and afterwards restores the caller's legacy
    setting and each per-backend setting (``torch.backends.{cuda,mkldnn}.matmul
    .fp32_precision``) exactly, also when the block raises. The setting is process-global:
    another thread's products in the same moment also run in full precision.
    """
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller mixed the legacy and the per-backend APIs
        legacy = None
    knobs = _matmul_precision_knobs()
    saved = [knob.fp32_precision for knob in knobs]
    try:
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for knob, value in zip(knobs, saved):
            if knob.fp32_precision != value:
                knob.fp32_precision = value


def _compact_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map arbitrary non-negative ids to ``0..K-1`` (sorted order); return (ids, counts)."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return inverse.to(torch.int64), counts


def _inputs(x: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate frames and labels; labels end up on the frames' device."""
    xt = as_tensor_2d(x, "x")
    lt = as_labels(labels, "labels", n=int(xt.shape[0]))
    return xt, lt.to(xt.device)


def _cluster_count_problem(n: int, n_clusters: int) -> str | None:
    """Why a partition of ``n`` frames into ``n_clusters`` cannot be scored, or None."""
    if n == 0:
        return "no frames"
    if n_clusters < 2:
        return "only one cluster; at least 2 are needed"
    if n_clusters >= n:
        return f"{n_clusters} clusters for {n} frames; every frame is its own cluster"
    return None


def _cluster_means(x: torch.Tensor, lab: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster means in float64, blocked; returns ``(means (k, D), counts (k,))``."""
    n, d = x.shape
    sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
    step = _rows_per_block(d)
    for s in range(0, n, step):
        sums.index_add_(0, lab[s : s + step], x[s : s + step].to(torch.float64))
    counts = torch.bincount(lab, minlength=k).to(torch.float64)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return means, counts


def _dist_to_own_mean(x: torch.Tensor, lab: torch.Tensor, means: torch.Tensor, squared: bool) -> torch.Tensor:
    """Float64 distance (or squared distance) of every frame to its cluster mean, ``(N,)``."""
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    step = _rows_per_block(x.shape[1])
    for s in range(0, n, step):
        diff = x[s : s + step].to(torch.float64) - means[lab[s : s + step]]
        sq = diff.pow_(2).sum(dim=1)
        out[s : s + step] = sq if squared else sq.sqrt()
    return out


# ---------------------------------------------------------------------------------------
# k-means


def assign(x: ArrayLike, centroids: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every frame, computed in blocks.

    The nearest centroid is found with float32 matrix products; the returned squared
    distance is then recomputed directly as ``||x_i - c_{label_i}||^2`` so it carries no
    cancellation error.

    Args:
        x: Frames ``(N, D)``.
        centroids: ``(k, D)``; moved to the device of ``x``.

    Returns:
        ``(labels, sq_dist)``: int64 ``(N,)`` and float32 ``(N,)`` tensors on ``x``'s device.

    Raises:
        SSLVitalsError: on NaN/Inf, wrong shapes, or an empty centroid set.
    """
    xt = as_tensor_2d(x, "x")
    ct = as_tensor_2d(centroids, "centroids", allow_empty=False).to(xt.device)
    if ct.shape[1] != xt.shape[1]:
        raise SSLVitalsError(
            f"centroids have dimension {ct.shape[1]} but x has {xt.shape[1]}; "
            "use the centroids fitted on the same layer"
        )
    with _full_float32_matmul():
        return _assign(_float32(xt), _float32(ct))


def _assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked nearest-centroid search on float32 tensors of the same device."""
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    sq = torch.empty(n, dtype=torch.float32, device=x.device)
    c_sq = c.pow(2).sum(dim=1)
    ct = c.t()
    step = min(_rows_per_block(c.shape[0]), _ASSIGN_MAX_ROWS)
    for s in range(0, n, step):
        xb = x[s : s + step]
        # ||c||^2 - 2 x.c ; the ||x||^2 term does not change the argmin.
        scores = torch.addmm(c_sq.unsqueeze(0), xb, ct, beta=1.0, alpha=-2.0)
        lb = scores.argmin(dim=1)
        labels[s : s + step] = lb
        sq[s : s + step] = (xb - c[lb]).pow_(2).sum(dim=1)
    return labels, sq


def _seed_pool(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """The frames the seeding runs on: at most ``max(8 k, 4096)`` rows of ``x`` drawn with ``gen``.

    Returns ``(n_seed, D)`` (``x`` itself when it is no larger).
    """
    n = x.shape[0]
    n_seed = min(n, max(_SEED_POINTS_PER_CLUSTER * k, _SEED_MIN))
    if n_seed < n:
        idx = torch.randperm(n, generator=gen)[:n_seed].to(x.device)
        return x[idx]
    return x


def _seed_uses_matrix(n: int, n_candidates: int) -> bool:
    """Whether a pool of ``n`` frames asked for ``n_candidates`` rows keeps the full matrix."""
    return n * n <= _SEED_MATRIX_ELEMENTS and n <= _SEED_MATRIX_MAX_RATIO * n_candidates


def _pool_distance_rows(
    pool: torch.Tensor, n_candidates: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Squared distances from chosen pool frames to every pool frame.

    The pool ``(n, D)`` is centred (in float64, then float32) so the product expansion keeps
    its digits. When ``n^2 <= _SEED_MATRIX_ELEMENTS`` and
    ``n <= _SEED_MATRIX_MAX_RATIO * n_candidates`` every pairwise squared distance is
    computed once, in large tiles that cover only the upper triangle and are mirrored (the
    matrix is exactly symmetric), and a step's candidates are then rows gathered from that
    ``(n, n)`` float32 matrix; otherwise each call multiplies the candidates by the pool.
    Each squared distance is one product of augmented rows ``[p, ||p||^2, 1]`` and
    ``[-2 p, 1, ||p||^2]`` (no separate passes to add the norms).

    Args:
        pool: ``(n, D)`` float32 frames.
        n_candidates: Rows the seeding will ask for in all (``k (2 + ln k)``).

    Returns:
        A function mapping int64 indices ``(c,)`` to float32 squared distances ``(c, n)``,
        clamped at 0, with exactly 0 at each index's own column.
    """
    n = pool.shape[0]
    centre = pool.sum(dim=0, dtype=torch.float64) / n
    p = (pool.to(torch.float64) - centre).to(torch.float32)
    sq = p.pow(2).sum(dim=1, keepdim=True)
    ones = torch.ones_like(sq)
    # lhs_i . rhs_j = ||p_i||^2 + ||p_j||^2 - 2 p_i.p_j: one product gives the squared distance
    lhs = torch.cat([p, sq, ones], dim=1)
    rhs = torch.cat([p * -2.0, ones, sq], dim=1)
    if _seed_uses_matrix(n, n_candidates):
        mat = torch.empty(n, n, dtype=torch.float32, device=pool.device)
        for a in range(0, n, _SEED_TILE):
            b = min(n, a + _SEED_TILE)
            torch.mm(lhs[a:b], rhs[a:].t(), out=mat[a:b, a:])  # this band, right of the diagonal
            tile = mat[a:b, a:b]  # a product is not exactly symmetric: keep the smaller of a pair
            tile.copy_(torch.minimum(tile, tile.t()))
            mat[b:, a:b].copy_(mat[a:b, b:].t())  # mirror the band below the diagonal
        mat.fill_diagonal_(0.0)
        return lambda idx: mat.index_select(0, idx).clamp_(min=0.0)

    def rows(idx: torch.Tensor) -> torch.Tensor:
        out = torch.mm(lhs.index_select(0, idx), rhs.t()).clamp_(min=0.0)
        return out.scatter_(1, idx.unsqueeze(1), 0.0)

    return rows


def _kmeanspp(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Greedy k-means++ seeding (D^2 sampling) on a seeded subset of ``x``; returns ``(k, D)``.

    At every step ``2 + ln(k)`` candidates are drawn with probability proportional to the
    squared distance to the nearest chosen centre, and the one that lowers the total most is
    kept (the greedy variant of Arthur and Vassilvitskii's k-means++). For large k the pool's
    pairwise squared distances are computed up front by :func:`_pool_distance_rows` in large
    matrix products (about ``n_seed^2 D / 2`` multiply-adds, less than one Lloyd iteration's
    ``N k D`` at N = 40,000, k = 1024), so a step only gathers its candidates' rows,
    ``O(n_seed)`` work, instead of a thin ``(n_seed, D) x (D, trials)`` product that streams
    the whole pool from memory; for small k that product is the cheaper route and stays. With
    the matrix the step loop runs on one CPU thread (:func:`_one_cpu_thread`). The draws are
    those of :func:`_seed_greedy` (same pool, same uniforms). Random numbers come from a CPU
    generator, and draws are made with a cumulative sum and a search on the device, so CPU
    and CUDA use the same uniforms and no step waits for the host.

    Args:
        x: ``(N, D)`` float32 frames, ``N >= k``.
        k: Number of centres.
        seed: Seed of the pool draw and of the D^2 sampling.

    Returns:
        ``(k, D)`` centres, rows of ``x``, on ``x``'s device.
    """
    gen = torch.Generator().manual_seed(int(seed))
    pool = _seed_pool(x, k, gen)
    n = pool.shape[0]
    n_trials = 2 + int(math.log(k))
    uniforms = torch.rand(k, n_trials, generator=gen, dtype=torch.float64).to(x.device)
    rows_of = _pool_distance_rows(pool, k * n_trials)
    first = (uniforms[0, :1] * n).long().clamp_(max=n - 1)
    chosen = [first]
    # matrix route: every op of a step is small, one thread; rows route: the step's product
    # is the work, and its ops on (trials, n_seed) stay below torch's parallel grain anyway
    with _one_cpu_thread(pool.device, enabled=_seed_uses_matrix(n, k * n_trials)):
        min_d2 = rows_of(first)[0]  # (n,) float32; sums and the cumulative sum are in float64
        for j in range(1, k):
            cum = torch.cumsum(min_d2, dim=0, dtype=torch.float64)
            picks = torch.searchsorted(cum, uniforms[j] * cum[-1], right=True).clamp_(max=n - 1)
            d2 = torch.minimum(rows_of(picks), min_d2.unsqueeze(0))  # (trials, n)
            best = d2.sum(dim=1, dtype=torch.float64).argmin().view(1)
            chosen.append(picks.index_select(0, best))
            min_d2 = d2.index_select(0, best).squeeze(0)
    return pool.index_select(0, torch.cat(chosen))


def _seed_greedy(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The seeding sslvitals used before :func:`_kmeanspp`; kept for the benchmark.

    Same algorithm, pool and draws, but every step multiplies the uncentred pool by its
    candidates, ``(n_seed, D) x (D, 2 + ln k)``: about as much time as 20 Lloyd iterations at
    k = 1024 on 40,000 frames, since each thin product streams the pool from memory.
    """
    n = x.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    n_seed = min(n, max(_SEED_POINTS_PER_CLUSTER * k, _SEED_MIN))
    if n_seed < n:
        idx = torch.randperm(n, generator=gen)[:n_seed].to(x.device)
        pool = x[idx]
    else:
        pool = x
    n_trials = 2 + int(math.log(k))
    uniforms = torch.rand(k, n_trials, generator=gen, dtype=torch.float64).to(x.device)
    pool_sq = pool.pow(2).sum(dim=1)
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    first = (uniforms[0, :1] * n_seed).long().clamp_(max=n_seed - 1)
    centers[0] = pool[first[0]]
    min_d2 = (pool_sq - 2.0 * (pool @ centers[0]) + pool_sq[first]).clamp_(min=0).to(torch.float64)
    for j in range(1, k):
        cum = torch.cumsum(min_d2, dim=0)
        picks = torch.searchsorted(cum, uniforms[j] * cum[-1], right=True).clamp_(max=n_seed - 1)
        cand = pool[picks]
        d2 = torch.addmm(pool_sq.unsqueeze(1), pool, cand.t(), beta=1.0, alpha=-2.0)
        d2 = d2.add_(pool_sq[picks].unsqueeze(0)).clamp_(min=0).to(torch.float64)
        d2 = torch.minimum(d2, min_d2.unsqueeze(1))
        best = d2.sum(dim=0).argmin()
        centers[j] = cand[best]
        min_d2 = d2[:, best]
    return centers


def _lloyd_torch(x: torch.Tensor, centers: torch.Tensor, niter: int) -> torch.Tensor:
    """Lloyd iterations; empty clusters move to the frames farthest from their centroid."""
    n, d = x.shape
    k = centers.shape[0]
    prev = None
    step = _rows_per_block(d)
    for it in range(niter):
        labels, sq = _assign(x, centers)
        if prev is not None and torch.equal(labels, prev):
            logger.debug("torch k-means converged after %d iterations", it)
            break
        prev = labels
        sums = torch.zeros(k, d, dtype=torch.float64, device=x.device)
        for s in range(0, n, step):
            sums.index_add_(0, labels[s : s + step], x[s : s + step].to(torch.float64))
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        new = (sums / counts.clamp(min=1).unsqueeze(1).to(torch.float64)).to(x.dtype)
        if empty.numel():
            far = torch.topk(sq, k=min(int(empty.numel()), n)).indices
            new[empty[: far.numel()]] = x[far]
            logger.debug("k-means iteration %d: %d empty clusters re-seeded", it, empty.numel())
        centers = new
    return centers


def _faiss_module():
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported only when used
    except ImportError:
        return None
    return faiss


def _faiss_gpus(faiss) -> int:
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # noqa: BLE001 - a faiss build without GPU support may raise here
        return 0


def kmeans(x: ArrayLike, k: int, *, niter: int = 20, seed: int = 0, backend: str = "auto") -> KMeansResult:
    """k-means with k-means++ seeding and Lloyd iterations, on FAISS or torch.

    Both backends start from the same greedy k-means++ seeds (D^2 sampling with
    ``2 + ln(k)`` candidates per step, on a seeded subset of at most ``max(8 k, 4096)``
    frames; for large k the subset's pairwise distances are computed up front in large
    matrix products, so seeding costs less than one Lloyd iteration) and then run
    ``niter`` Lloyd iterations on all frames in float32. The final labels and inertia are
    computed against the returned centroids. The torch products run in full float32
    precision whatever the caller's TF32 / ``torch.set_float32_matmul_precision`` setting,
    which is restored afterwards.

    Backends:
        * ``"faiss"``: ``faiss.Kmeans``; on the GPU when FAISS sees one
          (``faiss.get_num_gpus() > 0``), else on the CPU. A CUDA tensor is copied to the host
          for FAISS.
        * ``"torch"``: blocked Lloyd iterations with matrix products on the device of ``x``
          (CPU or CUDA); empty clusters are re-seeded with the frames farthest from their
          centroid; stops early when no label changes.
        * ``"auto"``: FAISS for CPU input when it is importable, torch for CUDA input or when
          FAISS is missing.

    Args:
        x: Frames ``(N, D)``; needs ``N >= k``.
        k: Number of clusters (>= 1).
        niter: Lloyd iterations (>= 1).
        seed: Seed of the k-means++ draws; the same seed on the same data and backend gives
            the same result.
        backend: ``"auto"``, ``"faiss"`` or ``"torch"``.

    Returns:
        :class:`KMeansResult` whose ``backend`` and ``device`` say what really ran.

    Example:
        >>> res = kmeans([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]], 2, backend="torch")
        >>> res.inertia, res.labels[0] == res.labels[1], res.labels[1] != res.labels[2]
        (1.0, tensor(True), tensor(True))

    Raises:
        SSLVitalsError: on fewer frames than clusters, bad arguments, NaN/Inf in ``x``, or
            ``backend="faiss"`` without FAISS installed.
    """
    return _kmeans(x, k, niter=niter, seed=seed, backend=backend, seeding=_kmeanspp)


def _kmeans(
    x: ArrayLike,
    k: int,
    *,
    niter: int,
    seed: int,
    backend: str,
    seeding: Callable[[torch.Tensor, int, int], torch.Tensor],
) -> KMeansResult:
    """:func:`kmeans` with the seeding function as an argument (the benchmark passes
    :func:`_seed_greedy` to measure the previous seeding in the same run)."""
    xt = as_tensor_2d(x, "x")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SSLVitalsError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if niter < 1:
        raise SSLVitalsError(f"niter must be >= 1, got {niter}")
    n = int(xt.shape[0])
    if n < k:
        raise SSLVitalsError(
            f"k-means needs at least k={k} frames but got {n}; measure more audio "
            f"(a larger probe or reservoir) or lower k"
        )
    if backend not in ("auto", "faiss", "torch"):
        raise SSLVitalsError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    faiss = _faiss_module() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise SSLVitalsError(
            "backend='faiss' but faiss is not installed; pip install faiss-cpu (or faiss-gpu), "
            "or use backend='torch'"
        )
    use_faiss = backend == "faiss" or (backend == "auto" and faiss is not None and xt.device.type == "cpu")
    out_device = xt.device
    x32 = _float32(xt).contiguous()
    with _full_float32_matmul():  # a TF32 setting of the caller must not move the labels
        if use_faiss:
            x_cpu = x32.cpu()
            init = seeding(x_cpu, k, seed)
            gpu = _faiss_gpus(faiss) > 0
            x_np = x_cpu.numpy()
            km = faiss.Kmeans(
                x_np.shape[1],
                k,
                niter=int(niter),
                seed=int(seed),
                gpu=gpu,
                verbose=False,
                max_points_per_centroid=max(1, math.ceil(n / k)) + 1,
                min_points_per_centroid=1,
            )
            km.train(x_np, init_centroids=init.numpy())
            centroids = torch.from_numpy(np.ascontiguousarray(km.centroids, dtype=np.float32))
            labels, sq = _assign(x_cpu, centroids)
            device = "cuda" if gpu else "cpu"
            result_backend = "faiss"
        else:
            centers = seeding(x32, k, seed)
            centroids = _lloyd_torch(x32, centers, int(niter))
            labels, sq = _assign(x32, centroids)
            device = str(x32.device)
            result_backend = "torch"
    n_used = int(torch.unique(labels).numel())
    if n_used < k:
        logger.warning(
            "k-means found only %d non-empty clusters of k=%d (duplicate frames?)", n_used, k
        )
    return KMeansResult(
        centroids=centroids.to(out_device),
        labels=labels.to(out_device),
        inertia=float(sq.to(torch.float64).sum()),
        backend=result_backend,
        device=device,
    )


# ---------------------------------------------------------------------------------------
# scores


def inertia(x: ArrayLike, labels: ArrayLike) -> float:
    """Within-cluster sum of squares: ``sum_i ||x_i - mean(cluster(i))||^2``.

    This is scikit-learn's ``KMeans.inertia_`` when ``labels`` are a converged k-means
    partition. Computed in float64.

    Args:
        x: Frames ``(N, D)``.
        labels: Cluster id per frame ``(N,)``.

    Returns:
        The inertia (>= 0); NaN with one warning for empty input.

    Example:
        >>> inertia([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]], [0, 0, 1, 1])
        1.0
    """
    xt, lt = _inputs(x, labels)
    if xt.shape[0] == 0:
        return degenerate("inertia", "no frames")
    lab, _ = _compact_labels(lt)
    k = int(lab.max()) + 1
    means, _ = _cluster_means(xt, lab, k)
    return float(_dist_to_own_mean(xt, lab, means, squared=True).sum())


def _pairwise_mean_distances(means: torch.Tensor) -> torch.Tensor:
    """Float64 Euclidean distances between cluster means ``(K, K)``, zero diagonal.

    Uses the product expansion on centred means; pairs closer than ``1e-7`` times the
    larger norm (round-off of the expansion) are set to exactly 0.
    """
    c = means - means.mean(dim=0)
    sq = c.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0)) - 2.0 * (c @ c.t())
    scale = torch.maximum(sq.unsqueeze(1), sq.unsqueeze(0))
    d2[d2 <= 1e-14 * scale] = 0.0
    d2.fill_diagonal_(0.0)
    return d2.sqrt_()


def davies_bouldin_score(x: ArrayLike, labels: ArrayLike) -> float:
    """Davies-Bouldin index (lower is better).

    ``DB = mean_i max_{j != i} (s_i + s_j) / ||c_i - c_j||`` with ``c`` the cluster means and
    ``s`` the mean distance of a cluster's members to its mean. As in scikit-learn, a pair
    of clusters with coincident means contributes 0, and a partition whose clusters all
    have zero spread scores 0.

    Args:
        x: Frames ``(N, D)``.
        labels: Cluster id per frame ``(N,)``.

    Returns:
        The index (>= 0); NaN with one warning when the partition is degenerate.
    """
    xt, lt = _inputs(x, labels)
    lab, _ = _compact_labels(lt)
    k = int(lab.max()) + 1 if lab.numel() else 0
    problem = _cluster_count_problem(int(xt.shape[0]), k)
    if problem:
        return degenerate("davies_bouldin", problem)
    means, counts = _cluster_means(xt, lab, k)
    dist = _dist_to_own_mean(xt, lab, means, squared=False)
    spread = torch.zeros(k, dtype=torch.float64, device=xt.device).index_add_(0, lab, dist) / counts
    centre_dist = _pairwise_mean_distances(means)
    if bool(torch.all(centre_dist <= 0)):
        return degenerate("davies_bouldin", "all cluster means coincide")
    if bool(torch.all(spread <= 0)):
        return 0.0
    ratio = (spread.unsqueeze(0) + spread.unsqueeze(1)) / centre_dist
    ratio[centre_dist <= 0] = 0.0  # the diagonal, and pairs of coincident means
    return float(ratio.max(dim=1).values.mean())


def calinski_harabasz_score(x: ArrayLike, labels: ArrayLike) -> float:
    """Calinski-Harabasz index (variance ratio criterion, higher is better).

    ``CH = [sum_c n_c ||c_c - m||^2 / (K - 1)] / [sum_i ||x_i - c_{l_i}||^2 / (N - K)]``
    with ``m`` the global mean and ``K`` the number of clusters.

    Args:
        x: Frames ``(N, D)``.
        labels: Cluster id per frame ``(N,)``.

    Returns:
        The index (>= 0); NaN with one warning when the partition is degenerate or every
        cluster has zero spread (scikit-learn returns 1.0 there).
    """
    xt, lt = _inputs(x, labels)
    lab, _ = _compact_labels(lt)
    n = int(xt.shape[0])
    k = int(lab.max()) + 1 if lab.numel() else 0
    problem = _cluster_count_problem(n, k)
    if problem:
        return degenerate("calinski_harabasz", problem)
    means, counts = _cluster_means(xt, lab, k)
    grand = (means * counts.unsqueeze(1)).sum(dim=0) / n
    between = float((counts * (means - grand).pow(2).sum(dim=1)).sum())
    within = float(_dist_to_own_mean(xt, lab, means, squared=True).sum())
    if within <= 0:
        return degenerate("calinski_harabasz", "every cluster has zero spread")
    return between * (n - k) / (within * (k - 1))


class _SilBlock:
    """One block of label-sorted rows for the exact silhouette.

    Attributes:
        start, stop: Row range in the sorted order.
        lhs: ``[x, ||x||^2, 1]`` rows, ``(b, D + 2)`` float32.
        rhs: ``[-2 x, 1, ||x||^2]`` rows, so that ``lhs_i . rhs_j = ||x_i - x_j||^2``.
        first: Smallest cluster id in the block; the block holds ids ``first..first+width-1``
            (labels are sorted and compact, so every id in that range occurs).
        members: ``(b, width)`` float32 one-hot of the block's labels relative to ``first``,
            or None when ``width`` is large and index_add is cheaper than a product.
        local: ``(b,)`` int64 labels relative to ``first``.
    """

    def __init__(self, x: torch.Tensor, sq: torch.Tensor, lab: torch.Tensor, start: int, stop: int):
        self.start, self.stop = start, stop
        xb = x[start:stop]
        ones = torch.ones(stop - start, 1, dtype=x.dtype, device=x.device)
        sqb = sq[start:stop].unsqueeze(1)
        self.lhs = torch.cat([xb, sqb, ones], dim=1)
        self.rhs = torch.cat([xb * -2.0, ones, sqb], dim=1)
        self.first = int(lab[start])
        self.width = int(lab[stop - 1]) - self.first + 1
        self.local = lab[start:stop] - self.first
        if self.width <= _SIL_ONEHOT_MAX:
            self.members = torch.zeros(stop - start, self.width, dtype=x.dtype, device=x.device)
            self.members[torch.arange(stop - start, device=x.device), self.local] = 1.0
        else:
            self.members = None

    def group_sums(self, d: torch.Tensor, transpose: bool) -> torch.Tensor:
        """Sum distances over this block's frames, per cluster.

        Args:
            d: ``(other, b)`` distances whose columns are this block's frames, or ``(b, other)``
                with ``transpose=True``.

        Returns:
            ``(other, width)`` float32 sums.
        """
        src = d.t() if transpose else d
        if self.members is not None:
            return src @ self.members
        src = src.contiguous() if transpose else src
        out = torch.zeros(src.shape[0], self.width, dtype=src.dtype, device=src.device)
        return out.index_add_(1, self.local, src)


def _sil_dist(a: _SilBlock, b: _SilBlock) -> torch.Tensor:
    """Euclidean distances ``(rows of a, rows of b)`` float32 (diagonal zeroed when a is b)."""
    d = a.lhs @ b.rhs.t()
    d.clamp_(min=0.0).sqrt_()
    if a is b:
        d.fill_diagonal_(0.0)
    return d


def _silhouette_samples(x: torch.Tensor, lab: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Exact per-frame silhouette ``(N,)`` float64 for label-sorted compact labels ``0..K-1``.

    ``x`` must be centred float32 with rows sorted by ``lab``. Distances come in square tiles
    from one product of augmented rows; per-cluster sums of a tile are small products with
    the one-hot of the (few) clusters present in a block of sorted rows, added into float64.
    When the ``(N, K)`` float64 table of sums fits in memory, each off-diagonal tile serves
    both of its row blocks (half the flops); otherwise each band of rows sweeps all columns.
    """
    n = x.shape[0]
    k = counts.shape[0]
    dev = x.device
    sq = x.pow(2).sum(dim=1)
    blocks = [_SilBlock(x, sq, lab, s, min(n, s + _SIL_TILE)) for s in range(0, n, _SIL_TILE)]
    own_sum = torch.empty(n, dtype=torch.float64, device=dev)
    other_best = torch.empty(n, dtype=torch.float64, device=dev)
    counts64 = counts.to(torch.float64)

    def finish(blk: _SilBlock, sums: torch.Tensor) -> None:
        lb = lab[blk.start : blk.stop].unsqueeze(1)
        own_sum[blk.start : blk.stop] = sums.gather(1, lb).squeeze(1)
        mean_other = sums / counts64.unsqueeze(0)
        mean_other.scatter_(1, lb, float("inf"))
        other_best[blk.start : blk.stop] = mean_other.min(dim=1).values

    if n * k * 8 <= _SIL_SYMMETRIC_BYTES:
        table = torch.zeros(n, k, dtype=torch.float64, device=dev)
        for a, bi in enumerate(blocks):
            rows_i = table[bi.start : bi.stop]
            for bj in blocks[a:]:
                d = _sil_dist(bi, bj)
                rows_i[:, bj.first : bj.first + bj.width] += bj.group_sums(d, transpose=False)
                if bj is not bi:
                    table[bj.start : bj.stop, bi.first : bi.first + bi.width] += bi.group_sums(
                        d, transpose=True)
            finish(bi, rows_i)
    else:
        for bi in blocks:
            sums = torch.zeros(bi.stop - bi.start, k, dtype=torch.float64, device=dev)
            for bj in blocks:
                d = _sil_dist(bi, bj)
                sums[:, bj.first : bj.first + bj.width] += bj.group_sums(d, transpose=False)
            finish(bi, sums)

    own_n = counts64[lab]
    a = own_sum / (own_n - 1.0).clamp(min=1.0)
    b = other_best
    top = torch.maximum(a, b)
    s_val = (b - a) / top
    valid = (own_n > 1) & (top > 0)
    return torch.where(valid, s_val, torch.zeros_like(s_val))


def silhouette_score(
    x: ArrayLike, labels: ArrayLike, *, sample_size: int | None = None, seed: int = 0
) -> float:
    """Mean silhouette coefficient, exact, computed block by block.

    For frame ``i`` in cluster ``A``: ``a_i`` = mean distance to the other members of ``A``,
    ``b_i`` = smallest mean distance to the members of another cluster,
    ``s_i = (b_i - a_i) / max(a_i, b_i)`` (0 for a frame alone in its cluster). Distances
    come from float32 matrix products on centred data (square root of the clamped squared
    distance) and are summed per cluster in float64; memory is ``O(tile x N)`` plus an
    ``(N, K)`` float64 table when that fits in 1 GiB. Cost is about ``N^2 D`` multiply-adds.

    Args:
        x: Frames ``(N, D)``.
        labels: Cluster id per frame ``(N,)``.
        sample_size: If given, score only this many frames drawn without replacement
            (the first ``sample_size`` entries of ``numpy.random.RandomState(seed)
            .permutation(N)``, the same draw as scikit-learn's ``random_state=seed``),
            with distances among the sampled frames only.
        seed: Seed of the sample.

    Returns:
        Mean silhouette in ``[-1, 1]`` (higher is better); NaN with one warning when the
        (sampled) partition is degenerate.

    Example:
        >>> x = [[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]]
        >>> round(silhouette_score(x, [0, 0, 1, 1]), 6)
        0.801961

    Raises:
        SSLVitalsError: on NaN/Inf in ``x``, mismatched labels, or ``sample_size < 2``.
    """
    xt, lt = _inputs(x, labels)
    n = int(xt.shape[0])
    if sample_size is not None:
        if int(sample_size) < 2:
            raise SSLVitalsError(
                f"sample_size must be >= 2 (or None for the exact score), got {sample_size}"
            )
        if int(sample_size) < n:
            pick = np.random.RandomState(seed).permutation(n)[: int(sample_size)]
            idx = torch.from_numpy(pick).to(xt.device)
            xt, lt = xt[idx], lt[idx]
            n = int(sample_size)
    lab, counts = _compact_labels(lt)
    problem = _cluster_count_problem(n, int(counts.numel()))
    if problem:
        return degenerate("silhouette", problem)
    order = torch.argsort(lab, stable=True)
    centre = torch.sum(xt, dim=0, dtype=torch.float64) / n
    xs = xt[order]  # a copy, sorted by cluster, then centred in place
    if xs.dtype == torch.float32:
        xs.sub_(centre.to(torch.float32))
    else:
        xs = (xs.to(torch.float64) - centre).to(torch.float32)
    with _full_float32_matmul():
        return float(_silhouette_samples(xs, lab[order], counts).mean())


def simplified_silhouette_score(x: ArrayLike, labels: ArrayLike) -> float:
    """Simplified (centroid) silhouette: the silhouette with centroids in place of members.

    ``a_i = ||x_i - c_{l_i}||``, ``b_i = min_{j != l_i} ||x_i - c_j||``,
    ``s_i = (b_i - a_i) / max(a_i, b_i)``, averaged over frames; frames alone in their
    cluster score 0, as in :func:`silhouette_score`. Cost ``O(N K D)``.

    Args:
        x: Frames ``(N, D)``.
        labels: Cluster id per frame ``(N,)``.

    Returns:
        Mean simplified silhouette in ``[-1, 1]``; NaN with one warning when degenerate.
    """
    xt, lt = _inputs(x, labels)
    n = int(xt.shape[0])
    lab, counts = _compact_labels(lt)
    k = int(counts.numel())
    problem = _cluster_count_problem(n, k)
    if problem:
        return degenerate("simplified_silhouette", problem)
    means, _ = _cluster_means(xt, lab, k)
    centre = means.mean(dim=0)
    a = _dist_to_own_mean(xt, lab, means, squared=False)
    c32 = (means - centre).to(torch.float32)
    c_sq = c32.pow(2).sum(dim=1)
    b = torch.empty(n, dtype=torch.float64, device=xt.device)
    step = _rows_per_block(k)
    with _full_float32_matmul():
        for s in range(0, n, step):
            xb = (xt[s : s + step].to(torch.float64) - centre).to(torch.float32)
            d2 = torch.addmm(c_sq.unsqueeze(0), xb, c32.t(), beta=1.0, alpha=-2.0)
            d2.add_(xb.pow(2).sum(dim=1, keepdim=True))
            d2.scatter_(1, lab[s : s + step].unsqueeze(1), float("inf"))
            b[s : s + step] = d2.min(dim=1).values.clamp(min=0).to(torch.float64).sqrt()
    top = torch.maximum(a, b)
    s_val = (b - a) / top
    valid = (counts[lab] > 1) & (top > 0)
    return float(torch.where(valid, s_val, torch.zeros_like(s_val)).mean())
