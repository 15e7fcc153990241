"""Streaming accumulators: equal to the direct functions on all rows, mergeable, bounded."""
from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
import torch

import sslvitals.streaming as S
from sslvitals.errors import SSLVitalsError
from sslvitals.metrics import labels as L
from sslvitals.metrics import rank as R
from sslvitals.streaming import (
    ContingencyAccumulator,
    GramAccumulator,
    ReservoirSampler,
    batch_frame_keys,
    frame_keys,
)


def random_batches(rng: np.random.Generator, n: int, max_batch: int) -> list[slice]:
    """Cut range(n) into consecutive slices of random sizes (zero-size ones included)."""
    out, start = [], 0
    while start < n:
        size = int(rng.integers(0, max_batch + 1))
        out.append(slice(start, min(n, start + size)))
        start += size
    return out


def embeddings(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    z = rng.standard_normal((n, 10)) / np.arange(1, 11)
    return (z @ rng.standard_normal((10, d)) + 0.05 * rng.standard_normal((n, d))
            + rng.standard_normal(d)).astype(np.float32)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def one_warning(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    return value


pytestmark = pytest.mark.usefixtures("one_thread_blas")


# ---------------------------------------------------------------------------- Gram
def test_gram_stream_equals_direct_functions():
    rng = np.random.default_rng(0)
    n, d = 2500, 96
    x = embeddings(rng, n, d)
    acc2 = GramAccumulator(d)
    for i, sl in enumerate(random_batches(rng, n, 300)):
        part = x[sl]  # alternate numpy float32, torch float32 and numpy float64 batches
        acc2.update((part, torch.from_numpy(part), part.astype(np.float64))[i % 3])
    assert acc2.count == n
    out = acc2.compute()
    direct = {"rankme": R.rankme(x), "effective_rank": R.effective_rank(x),
              "alpha_req": R.alpha_req(x), "stable_rank": R.stable_rank(x), "nesum": R.nesum(x),
              "numerical_rank": R.numerical_rank(x)}
    for name, value in direct.items():
        assert rel(out[name], value) < 1e-6, name
    np.testing.assert_allclose(acc2.gram.numpy(), x.astype(np.float64).T @ x.astype(np.float64),
                               rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(acc2.spectrum(center=False).numpy()[:20],
                               np.linalg.svd(x.astype(np.float64), compute_uv=False)[:20],
                               rtol=1e-9)


def test_gram_accepts_dtypes_and_rankme_t_via_utterance_sums():
    rng = np.random.default_rng(2)
    d = 40
    utts = [embeddings(rng, int(t), d) for t in rng.integers(3, 40, size=120)]
    acc = GramAccumulator(d)
    for i in range(0, len(utts), 7):
        chunk = utts[i:i + 7]
        low = [torch.from_numpy(u).to(torch.bfloat16).float() for u in chunk]
        acc.update(R.utterance_sums(low))
    exact = GramAccumulator(d)
    for i in range(0, len(utts), 11):
        exact.update(R.utterance_sums(utts[i:i + 11]))
    assert rel(exact.compute(["rankme"])["rankme"], R.rankme_t(utts)) < 1e-6
    # bfloat16 rounding changes the numbers a little, but they stay close
    assert rel(acc.compute(["rankme"])["rankme"], R.rankme_t(utts)) < 5e-2


def test_gram_merge_of_halves_equals_one_accumulator():
    rng = np.random.default_rng(3)
    x = embeddings(rng, 900, 32)
    whole, a, b = GramAccumulator(32), GramAccumulator(32), GramAccumulator(32)
    whole.update(x)
    a.update(x[:400])
    b.update(x[400:])
    a.merge(b)
    assert a.count == 900
    np.testing.assert_allclose(a.gram.numpy(), whole.gram.numpy(), rtol=1e-12)
    ca, cw = a.compute(), whole.compute()
    for k in cw:
        assert rel(ca[k], cw[k]) < 1e-9


def test_gram_guards_state_and_memory():
    acc = GramAccumulator(8)
    with pytest.raises(SSLVitalsError, match="dim=8"):
        acc.update(np.ones((3, 9)))
    with pytest.raises(SSLVitalsError, match="NaN or Inf"):
        acc.update(np.full((3, 8), np.inf))
    for _ in range(5):
        acc.update(np.random.default_rng(0).standard_normal((1000, 8)))
    assert acc.gram.shape == (8, 8) and acc.col_sum.shape == (8,) and acc.count == 5000
    state = acc.state_dict()
    clone = GramAccumulator(8)
    clone.load_state_dict(state)
    assert clone.compute() == acc.compute()
    acc.sync()  # not distributed: no-op on the numbers
    assert acc.synced and acc.compute() == clone.compute()
    acc.sync()
    with pytest.raises(SSLVitalsError, match="reset"):
        acc.update(np.ones((2, 8)))
    with pytest.raises(SSLVitalsError, match="reset"):
        acc.merge(clone)
    acc.reset()
    assert acc.count == 0 and not acc.synced
    assert all(np.isnan(v) for v in one_warning(acc.compute).values())


# ---------------------------------------------------------------------------- keys
def _splitmix_reference(z: int) -> int:
    m = (1 << 64) - 1
    z = (z + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_frame_keys_match_pure_python_splitmix64():
    for seed, utt in [(0, 0), (7, 123456), (-3, 2**40 + 5)]:
        keys = frame_keys(utt, 6, seed=seed)
        m = (1 << 64) - 1
        head = _splitmix_reference(_splitmix_reference(seed & m) ^ (utt & m))
        expect = [_splitmix_reference(head ^ f) for f in range(6)]
        expect = [e - (1 << 64) if e >= 1 << 63 else e for e in expect]
        assert keys.dtype == torch.int64 and keys.tolist() == expect
    assert not torch.equal(frame_keys(1, 5, 0), frame_keys(1, 5, 1))
    assert not torch.equal(frame_keys(1, 5, 0), frame_keys(2, 5, 0))
    both = batch_frame_keys([4, 9], torch.tensor([3, 2]), seed=5)
    assert torch.equal(both, torch.cat([frame_keys(4, 3, 5), frame_keys(9, 2, 5)]))
    with pytest.raises(SSLVitalsError, match="lengths"):
        batch_frame_keys([1, 2], [3])


# ---------------------------------------------------------------------------- reservoir
def test_reservoir_keeps_rows_with_smallest_keys_whatever_the_batching():
    rng = np.random.default_rng(4)
    n, d, cap = 3000, 5, 128
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, 0] = np.arange(n)  # row identity travels with the row
    lab = (np.arange(n) * 7) % 13
    keys = batch_frame_keys(list(range(30)), [100] * 30, seed=9)
    expect_rows = np.argsort(keys.numpy(), kind="stable")[:cap]
    results = []
    for trial in range(3):
        perm = np.random.default_rng(trial).permutation(n) if trial else np.arange(n)
        r = ReservoirSampler(cap, d, seed=123)
        for sl in random_batches(np.random.default_rng(50 + trial), n, 400):
            idx = perm[sl]
            r.update(torch.from_numpy(x[idx]), keys=keys[idx], labels=lab[idx])
        xs, ls = r.sample()
        assert xs.shape == (cap, d) and xs.dtype == torch.float32 and len(r) == cap
        assert r.n_seen == n
        np.testing.assert_array_equal(xs[:, 0].numpy().astype(int), expect_rows)
        np.testing.assert_array_equal(ls.numpy(), lab[expect_rows])  # labels stay attached
        assert torch.equal(r.keys, torch.sort(keys).values[:cap])
        results.append((xs, ls))
    for xs, ls in results[1:]:
        assert torch.equal(xs, results[0][0]) and torch.equal(ls, results[0][1])


def test_reservoir_merge_equals_single_stream_and_deduplicates():
    rng = np.random.default_rng(5)
    n, d, cap = 1000, 4, 50
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    keys = batch_frame_keys(list(range(10)), [100] * 10, seed=1)
    single = ReservoirSampler(cap, d)
    single.update(x, keys=keys)
    shards = [ReservoirSampler(cap, d) for _ in range(3)]
    for i in range(n):
        shards[(i * 31) % 3].update(x[i:i + 1], keys=keys[i:i + 1])
    shards[2].update(x[:300], keys=keys[:300])  # duplicated frames (e.g. padded shards)
    shards[0].merge(shards[1])
    shards[0].merge(shards[2])
    assert torch.equal(shards[0].sample()[0], single.sample()[0])
    assert torch.equal(shards[0].keys, single.keys)
    again = ReservoirSampler(cap, d)
    again.update(x, keys=keys)
    again.update(x, keys=keys)
    assert torch.equal(again.sample()[0], single.sample()[0])


def _keep_counts(n: int, cap: int, seeds: range, biased: bool = False) -> np.ndarray:
    counts = np.zeros(n)
    ident = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    for seed in seeds:
        r = ReservoirSampler(cap, 1, seed=seed)
        batch_rng = np.random.default_rng(seed)
        for sl in random_batches(batch_rng, n, 25):
            r.update(ident[sl])
        kept = r.sample()[0][:, 0].long().numpy()
        if biased:
            kept = np.arange(cap)
        assert len(set(kept.tolist())) == cap
        counts[kept] += 1
    return counts


def test_reservoir_is_uniform():
    n, cap, trials = 40, 8, 1000
    counts = _keep_counts(n, cap, range(trials))
    expected = trials * cap / n
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    # Under uniform sampling chi2 ~ (1 - cap/n) * chi2(n - 1): mean 31, sd about 7; 90 is
    # 8 sd away. Everything is seeded, so the check is deterministic.
    assert chi2 < 90.0, chi2
    biased = _keep_counts(n, cap, range(50), biased=True)
    exp_b = 50 * cap / n
    assert float(np.sum((biased - exp_b) ** 2 / exp_b)) > 90.0  # the check has power


def test_reservoir_with_frame_keys_is_uniform_over_seeds():
    n_utt, t, cap, trials = 8, 5, 10, 1200
    counts = np.zeros(n_utt * t)
    for seed in range(trials):
        keys = batch_frame_keys(list(range(n_utt)), [t] * n_utt, seed=seed)
        counts[torch.argsort(keys)[:cap].numpy()] += 1
    expected = trials * cap / (n_utt * t)
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 90.0, chi2  # (1 - 10/40) * chi2(39): mean 29


def test_reservoir_generated_keys_and_guards():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    a, b, c = ReservoirSampler(20, 3, seed=1), ReservoirSampler(20, 3, seed=1), \
        ReservoirSampler(20, 3, seed=2)
    for sampler in (a, b, c):
        sampler.update(x[:200])
        sampler.update(x[200:])
    assert torch.equal(a.sample()[0], b.sample()[0])  # same seed, same stream: reproducible
    assert not torch.equal(a.sample()[0], c.sample()[0])
    assert a.sample()[1] is None and not a.has_labels
    with pytest.raises(SSLVitalsError, match="different seeds"):
        a.merge(b)
    a.merge(c)
    assert len(a) == 20 and a.n_seen == 1000
    with pytest.raises(SSLVitalsError, match="labels"):
        c.update(x[:5], labels=[0, 1, 2, 3, 4])
    with pytest.raises(SSLVitalsError, match="integer"):
        c.update(x[:2], keys=np.array([0.5, 1.5]))
    with pytest.raises(SSLVitalsError, match="rows"):
        c.update(x[:2], keys=np.array([1, 2, 3]))
    with pytest.raises(SSLVitalsError, match="dim=3"):
        c.update(torch.ones(2, 4))
    small = ReservoirSampler(100, 3)
    small.update(x[:7])
    assert small.sample()[0].shape == (7, 3)
    state = a.state_dict()
    restored = ReservoirSampler(20, 3)
    restored.load_state_dict(state)
    assert torch.equal(restored.sample()[0], a.sample()[0]) and restored.n_seen == 1000
    a.sync()
    with pytest.raises(SSLVitalsError, match="reset"):
        a.update(x[:1])
    a.reset()
    assert len(a) == 0 and a.n_seen == 0


# ---------------------------------------------------------------------------- contingency
def test_contingency_matches_functional_metrics():
    rng = np.random.default_rng(6)
    n = 5000
    phones = rng.integers(0, 39, size=n)
    clusters = (phones * 3 + rng.integers(0, 5, size=n)) % 100  # informative, noisy
    acc = ContingencyAccumulator()
    for sl in random_batches(rng, n, 700):
        acc.update(torch.from_numpy(phones[sl]), clusters[sl])
    ref = np.zeros((phones.max() + 1, clusters.max() + 1), dtype=np.int64)
    np.add.at(ref, (phones, clusters), 1)
    np.testing.assert_array_equal(acc.counts(), ref)
    assert acc.total == n
    out = acc.compute()
    assert set(out) == {"phone_purity", "cluster_purity", "pnmi"}
    assert out["phone_purity"] == pytest.approx(L.phone_purity(clusters, phones), rel=1e-12)
    assert out["cluster_purity"] == pytest.approx(L.cluster_purity(clusters, phones), rel=1e-12)
    assert out["pnmi"] == pytest.approx(L.pnmi(clusters, phones), rel=1e-12)
    # hand check of purities on the counts themselves
    assert out["phone_purity"] == pytest.approx(ref.max(axis=0).sum() / n, rel=1e-12)
    assert out["cluster_purity"] == pytest.approx(ref.max(axis=1).sum() / n, rel=1e-12)


def test_contingency_label_permutation_invariance_and_merge():
    rng = np.random.default_rng(7)
    n = 3000
    phones = rng.integers(0, 20, size=n)
    clusters = (phones + rng.integers(0, 4, size=n)) % 30
    base = ContingencyAccumulator()
    base.update(phones, clusters)
    perm_p = rng.permutation(60)[:20] + 5  # injective relabelling into larger ids
    perm_c = rng.permutation(30)
    other = ContingencyAccumulator()
    other.update(perm_p[phones], perm_c[clusters])
    a, b = base.compute(), other.compute()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-12)
    first, second = ContingencyAccumulator(), ContingencyAccumulator()
    first.update(phones[:1000], clusters[:1000])
    second.update(phones[1000:] + 3, clusters[1000:])  # second has ids the first never saw
    second.merge(first)
    whole = ContingencyAccumulator()
    whole.update(np.concatenate([phones[:1000], phones[1000:] + 3]), clusters)
    np.testing.assert_array_equal(second.counts(), whole.counts())


def test_contingency_degenerate_and_guards():
    acc = ContingencyAccumulator()
    out = one_warning(acc.compute)
    assert all(np.isnan(v) for v in out.values())
    acc.update([], [])
    assert acc.total == 0
    with pytest.raises(SSLVitalsError, match="entries"):
        acc.update([0, 1], [0])
    with pytest.raises(SSLVitalsError, match="non-negative"):
        acc.update([0, -1], [0, 1])
    with pytest.raises(SSLVitalsError, match="max_cells"):
        ContingencyAccumulator(max_cells=100).update([50], [50])
    acc.update([0, 0, 1], [0, 0, 1])
    state = acc.state_dict()
    acc.sync()
    with pytest.raises(SSLVitalsError, match="reset"):
        acc.update([0], [0])
    restored = ContingencyAccumulator()
    restored.load_state_dict(state)
    assert restored.compute() == acc.compute() == {"phone_purity": 1.0, "cluster_purity": 1.0,
                                                   "pnmi": 1.0}


def test_docstring_examples():
    result = doctest.testmod(S)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_accumulators_on_cuda_match_cpu():
    rng = np.random.default_rng(8)
    x = embeddings(rng, 2000, 64)
    keys = batch_frame_keys(list(range(20)), [100] * 20, seed=3)
    lab = np.arange(2000) % 17
    cpu_g, gpu_g = GramAccumulator(64), GramAccumulator(64, device="cuda")
    cpu_r, gpu_r = ReservoirSampler(300, 64), ReservoirSampler(300, 64, device="cuda")
    for sl in random_batches(rng, 2000, 250):
        cpu_g.update(x[sl])
        gpu_g.update(torch.from_numpy(x[sl]).cuda())
        cpu_r.update(x[sl], keys=keys[sl], labels=lab[sl])
        gpu_r.update(torch.from_numpy(x[sl]).cuda(), keys=keys[sl].cuda(), labels=lab[sl])
    a, b = cpu_g.compute(), gpu_g.compute()
    for k in a:
        assert rel(b[k], a[k]) < 1e-9, k
    (xc, lc), (xg, lg) = cpu_r.sample(), gpu_r.sample()
    assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(lg.cpu(), lc)
