"""The measurement engine on a real (tiny, random-weight) transformers HuBERT.

References are computed independently of the engine: the model's own ``hidden_states``,
numpy float64 SVD for the rank measures, scikit-learn for the cluster scores on the same
reservoir sample, and a two-process gloo run that must reproduce the one-process numbers.
"""
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from sslvitals import SSLVitalsError, metric_key
from sslvitals.config import VitalsConfig
from sslvitals.monitor import VitalsMonitor, align_labels
from sslvitals.probe import ProbeSet, frame_count

transformers = pytest.importorskip("transformers")


def tiny_hubert(seed=0):
    cfg = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32, 32, 32, 32, 32), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=False, feat_extract_norm="layer",
    )
    torch.manual_seed(seed)
    return transformers.HubertModel(cfg).eval()


def forward(model, batch):
    mask = (~batch.padding_mask).long()
    model(batch.wav, attention_mask=mask)


def write_probe(tmp_path, n_utts=12, seed=0):
    rng = np.random.default_rng(seed)
    (tmp_path / "wav").mkdir(exist_ok=True)
    lines, phn = [str(tmp_path / "wav")], []
    for i in range(n_utts):
        n = int(rng.integers(8000, 24000))
        t = np.arange(n) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(tmp_path / "wav" / f"u{i}.wav", x.astype(np.float32), 16000)
        lines.append(f"u{i}.wav\t{n}")
        nf = frame_count(n)
        phn.append(" ".join(str((j // 7 + i) % 6) for j in range(nf)))
    (tmp_path / "probe.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "probe.phn").write_text("\n".join(phn) + "\n")
    return tmp_path / "probe.tsv"


def small_cfg(**kw):
    base = dict(enabled=True, k=4, reservoir_size=100000, silhouette_sample=0, kmeans_iters=10,
                metrics="default", layers="all", backend="faiss")
    base.update(kw)
    return VitalsConfig(**base)


def test_monitor_matches_independent_references(tmp_path):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    probe = ProbeSet.from_path(write_probe(tmp_path))
    model = tiny_hubert()
    mon = VitalsMonitor(small_cfg())
    out = mon.measure(model, forward, probe.batches(batch_seconds=3.0))
    assert out["vitals/seconds"] > 0
    # independent reference: run each utterance alone through the model, read hidden_states
    per_layer = {0: [], 1: [], 2: []}
    for item in probe.items:
        wav, _ = sf.read(item.path, dtype="float32")
        with torch.no_grad():
            hs = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states
        for layer in per_layer:
            per_layer[layer].append(hs[layer][0].double().numpy())
    for layer, utts in per_layer.items():
        x = np.concatenate(utts)
        s = np.linalg.svd(x, compute_uv=False)
        p = s / s.sum() + 1e-7
        assert out[metric_key("rankme", layer)] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
        u = np.stack([a.sum(0) for a in utts])
        su = np.linalg.svd(u, compute_uv=False)
        pu = su / su.sum() + 1e-7
        assert out[metric_key("rankme_t", layer)] == pytest.approx(math.exp(-(pu * np.log(pu)).sum()), rel=1e-4)
        for m in ("inertia", "davies_bouldin", "calinski_harabasz", "silhouette", "phone_purity", "pnmi",
                  "cca_phone", "effective_rank", "alpha_req", "nesum", "stable_rank", "numerical_rank"):
            assert math.isfinite(out[metric_key(m, layer)]), m
        assert 0 < out[metric_key("pnmi", layer)] <= 1
    # cluster scores agree with scikit-learn on the engine's own sample and assignment
    from sslvitals.metrics import assign, kmeans
    from sslvitals.streaming import frame_keys

    # the reservoir holds every frame of the even-indexed utterances, in the order of their keys
    fit = [(it, u) for it, u in zip(probe.items, per_layer[2]) if it.index % 2 == 0]
    keys = np.concatenate([np.asarray(frame_keys(it.index, len(u), 0)) for it, u in fit])
    x = np.concatenate([u for _, u in fit]).astype(np.float32)[np.argsort(keys, kind="stable")]
    km = kmeans(x, 4, niter=10, seed=0, backend="faiss")
    lab, sq = assign(x, km.centroids)
    assert out[metric_key("davies_bouldin", 2)] == pytest.approx(
        sklearn_metrics.davies_bouldin_score(x, lab.numpy()), rel=1e-3)
    assert out[metric_key("inertia", 2)] == pytest.approx(float(sq.double().mean()), rel=1e-3)
    # label metrics: every frame of the odd-indexed (held-out) utterances, assigned to those
    # centroids; purities and PNMI with the HuBERT teacher-quality formulas on sklearn's counts
    held = [(it, u) for it, u in zip(probe.items, per_layer[2]) if it.index % 2 == 1]
    xh = np.concatenate([u for _, u in held]).astype(np.float32)
    yh = np.concatenate([align_labels(it.labels, len(u), 50.0) for it, u in held])
    d = ((xh[:, None, :].astype(np.float64) - km.centroids.double().numpy()[None]) ** 2).sum(-1)
    ch = d.argmin(1)
    from sklearn.metrics.cluster import contingency_matrix

    c = contingency_matrix(yh, ch).astype(np.float64)  # phones x clusters
    p = c / c.sum()
    px, py = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(px, py)[nz])).sum()
    assert out[metric_key("pnmi", 2)] == pytest.approx(mi / -(px * np.log(px)).sum(), rel=1e-6)
    assert out[metric_key("phone_purity", 2)] == pytest.approx(c.max(0).sum() / c.sum(), rel=1e-9)
    assert out[metric_key("cluster_purity", 2)] == pytest.approx(c.max(1).sum() / c.sum(), rel=1e-9)


def test_label_metrics_are_held_out_and_need_no_rereadable_batches(tmp_path):
    """A one-shot iterator (kept for the second pass) and a callable that re-reads the probe
    give the same values."""
    probe = ProbeSet.from_path(write_probe(tmp_path, n_utts=10))
    model = tiny_hubert()
    cfg = small_cfg(metrics="pnmi,phone_purity,cluster_purity,inertia", layers="1,2")
    once = VitalsMonitor(cfg).measure(model, forward, probe.batches(batch_seconds=3.0))
    again = VitalsMonitor(cfg).measure(model, forward, lambda: probe.batches(batch_seconds=3.0))
    assert {k: v for k, v in once.items() if k != "vitals/seconds"} == \
        {k: v for k, v in again.items() if k != "vitals/seconds"}
    for layer in (1, 2):
        assert 0 < once[metric_key("pnmi", layer)] <= 1


def test_batches_without_utterance_index_raise(tmp_path):
    probe = ProbeSet.from_path(write_probe(tmp_path, n_utts=4))
    model = tiny_hubert()

    def no_index():
        for b in probe.batches(batch_seconds=3.0):
            b.index = None
            yield b

    with pytest.raises(SSLVitalsError, match="no utterance indices"):
        VitalsMonitor(small_cfg(metrics="rankme,inertia")).measure(model, forward, no_index())


def test_monitor_layer_selection_and_errors(tmp_path):
    probe = ProbeSet.from_path(write_probe(tmp_path, n_utts=4))
    model = tiny_hubert()
    out = VitalsMonitor(small_cfg(layers="-1", metrics="rankme,inertia")).measure(
        model, forward, probe.batches())
    assert set(out) == {"vitals/rankme/L2", "vitals/inertia/L2", "vitals/seconds"}
    with pytest.raises(SSLVitalsError, match="range"):
        VitalsMonitor(small_cfg(layers="7")).measure(model, forward, probe.batches())


def test_monitor_failure_is_nan_unless_strict(tmp_path, caplog):
    probe = ProbeSet.from_path(write_probe(tmp_path, n_utts=2))
    model = tiny_hubert()
    # more clusters than frames: k-means cannot run -> NaN with one warning, the rest still computed
    cfg = small_cfg(k=5000, reservoir_size=5000, metrics="inertia,rankme", layers="1")
    out = VitalsMonitor(cfg).measure(model, forward, probe.batches())
    assert math.isnan(out["vitals/inertia/L1"]) and math.isfinite(out["vitals/rankme/L1"])
    assert sum("inertia on layer 1 failed" in r.message for r in caplog.records) == 1
    with pytest.raises(SSLVitalsError, match="inertia failed on layer 1"):
        VitalsMonitor(small_cfg(k=5000, reservoir_size=5000, metrics="inertia", layers="1", strict=True)).measure(
            model, forward, probe.batches())


def test_monitor_every_n_validations():
    mon = VitalsMonitor(small_cfg(every_n_validations=3))
    assert [mon.due() for _ in range(7)] == [True, False, False, True, False, False, True]


def test_align_labels():
    lab = np.array([1, 2, 3])
    np.testing.assert_array_equal(align_labels(lab, 5, 50.0), [1, 2, 3, 3, 3])
    np.testing.assert_array_equal(align_labels(lab, 2, 50.0), [1, 2])
    assert align_labels(np.arange(10), 5, 25.0).shape == (5,)


def _worker(rank, world, init, probe_path, out_path):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    probe = ProbeSet.from_path(probe_path).shard(rank, world)
    out = VitalsMonitor(small_cfg(reservoir_size=300, silhouette_sample=0)).measure(
        tiny_hubert(), forward, probe.batches(batch_seconds=2.0))
    torch.save(out, f"{out_path}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    probe_path = write_probe(tmp_path)
    one = VitalsMonitor(small_cfg(reservoir_size=300, silhouette_sample=0)).measure(
        tiny_hubert(), forward, ProbeSet.from_path(probe_path).batches(batch_seconds=2.0))
    torch.multiprocessing.spawn(_worker, args=(2, f"file://{tmp_path}/init", str(probe_path),
                                               str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = torch.load(f"{tmp_path}/out.0"), torch.load(f"{tmp_path}/out.1")
    keys = [k for k in one if k != "vitals/seconds"]
    assert keys and set(keys) <= set(r0)
    for k in keys:
        assert r0[k] == r1[k], k  # every rank logs the same numbers
        assert r0[k] == pytest.approx(one[k], rel=1e-5, abs=1e-9), k


def _worker_uneven(rank, world, init, probe_path, out_path, mode):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    probe = ProbeSet.from_path(probe_path)
    batches = probe.batches(batch_seconds=2.0)
    fwd = forward
    if rank == 1 and mode == "empty":
        batches = iter(())  # this rank's shard is empty

    if rank == 1 and mode == "fail":
        def fwd(model, batch):
            raise RuntimeError("simulated out-of-memory")
    out = VitalsMonitor(small_cfg(reservoir_size=300, silhouette_sample=0, metrics="rankme,inertia")).measure(
        tiny_hubert(), fwd, batches)
    torch.save(out, f"{out_path}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("mode", ["empty", "fail"])
def test_two_process_uneven_ranks_do_not_hang(tmp_path, mode):
    probe_path = write_probe(tmp_path, n_utts=4)
    one = VitalsMonitor(small_cfg(reservoir_size=300, silhouette_sample=0, metrics="rankme,inertia")).measure(
        tiny_hubert(), forward, ProbeSet.from_path(probe_path).batches(batch_seconds=2.0))
    torch.multiprocessing.spawn(_worker_uneven, args=(2, f"file://{tmp_path}/init", str(probe_path),
                                                      str(tmp_path / "out"), mode), nprocs=2, join=True)
    r0, r1 = torch.load(f"{tmp_path}/out.0"), torch.load(f"{tmp_path}/out.1")
    for k in one:
        if k == "vitals/seconds":
            continue
        assert (math.isnan(r0[k]) and math.isnan(r1[k])) or r0[k] == r1[k], k
        if mode == "empty":  # rank 0 saw everything: same numbers as one process
            assert r0[k] == pytest.approx(one[k], rel=1e-5), k
        else:  # one rank failed: every rank reports NaN, nobody hangs
            assert math.isnan(r0[k]), k


def _worker_spread(rank, world, init, probe_path, out_path):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    probe = ProbeSet.from_path(probe_path).shard(rank, world)
    res = {}
    for spread in (True, False):
        mon = VitalsMonitor(small_cfg(reservoir_size=300, silhouette_sample=0))
        mon.spread_layers = spread
        res[spread] = mon.measure(tiny_hubert(), forward, lambda: probe.batches(batch_seconds=2.0))
        res[f"owners{spread}"] = mon.layer_owners([0, 1, 2], world)
    torch.save(res, f"{out_path}.{rank}")
    torch.distributed.destroy_process_group()


def test_layers_spread_over_ranks_give_the_same_numbers(tmp_path):
    """Each layer's owner alone gathers its reservoir and computes it; every rank ends with the
    same dict as when rank 0 computed everything."""
    probe_path = write_probe(tmp_path)
    torch.multiprocessing.spawn(_worker_spread, args=(2, f"file://{tmp_path}/init", str(probe_path),
                                                      str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = torch.load(f"{tmp_path}/out.0"), torch.load(f"{tmp_path}/out.1")
    assert r0["ownersTrue"] == {0: 0, 1: 1, 2: 0} and r0["ownersFalse"] == {0: 0, 1: 0, 2: 0}
    keys = [k for k in r0[True] if k != "vitals/seconds"]
    assert len(keys) == 3 * 16
    for k in keys:
        assert r0[True][k] == r1[True][k] == r0[False][k] == r1[False][k], k
