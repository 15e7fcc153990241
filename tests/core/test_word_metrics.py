"""Word-level measures (MI-word, NMI-word, CCA-word) on a real tiny transformers HuBERT.

References are independent of the engine: the model's own ``hidden_states`` per utterance,
word frames from the alignment file by the frame-centre rule, the vocabulary counted with
``collections.Counter``, scikit-learn's contingency matrix, and a numpy float64 PWCCA from
data matrices (QR-orthonormalised canonical variates). The same numbers must come out for
any batching and in two gloo processes.
"""
import math
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from sslvitals import SSLVitalsError, metric_key
from sslvitals.monitor import VitalsMonitor
from sslvitals.probe import ProbeSet, frame_count
from sslvitals.words import read_word_alignments
from test_monitor import forward, small_cfg, tiny_hubert, write_probe

pytest.importorskip("transformers")

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far"]
WORD_METRICS = "mi_word,nmi_word,cca_word,mi_phone"


def write_words(tmp_path, probe_path, seed=0, fmt="tsv"):
    """Word alignments for every probe utterance: words of 60-160 ms, some gaps, Zipf-like
    word frequencies; written as TSV, CTM or TextGrids."""
    rng = np.random.default_rng(seed)
    lines = probe_path.read_text().splitlines()[1:]
    p = np.array([1.0 / (i + 1) for i in range(len(WORDS))])
    p /= p.sum()
    rows = []
    for line in lines:
        rel, n = line.split("\t")
        uid, dur = rel[:-4], int(n) / 16000
        t = float(rng.uniform(0.0, 0.05))
        while t < dur - 0.05:
            t = round(t, 4)
            end = round(min(dur, t + float(rng.uniform(0.06, 0.16))), 4)
            rows.append((uid, t, end, str(rng.choice(WORDS, p=p))))
            t = end + (float(rng.uniform(0.02, 0.08)) if rng.random() < 0.3 else 0.0)
    stem = str(probe_path)[:-4]
    if fmt == "tsv":
        path = tmp_path / f"{stem}.words.tsv"
        path.write_text("".join(f"{u}\t{s:.4f}\t{e:.4f}\t{w}\n" for u, s, e, w in rows))
    elif fmt == "ctm":
        path = tmp_path / f"{stem}.ctm"
        path.write_text("".join(f"{u} 1 {s:.4f} {e - s:.4f} {w} 1.0\n" for u, s, e, w in rows))
    else:
        path = tmp_path / f"{stem}.textgrid"
        path.mkdir()
        by_utt = {}
        for u, s, e, w in rows:
            by_utt.setdefault(u, []).append((s, e, w))
        for u, segs in by_utt.items():
            items = []
            prev = 0.0
            for s, e, w in segs:  # TextGrids fill gaps with empty intervals
                if s > prev:
                    items.append((prev, s, ""))
                items.append((s, e, w))
                prev = e
            body = "".join(
                f'        intervals [{i + 1}]:\n            xmin = {s:.4f}\n'
                f'            xmax = {e:.4f}\n            text = "{w}"\n'
                for i, (s, e, w) in enumerate(items))
            (path / f"{u}.TextGrid").write_text(
                'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\n'
                f'xmax = {prev}\ntiers? <exists>\nsize = 2\nitem []:\n'
                '    item [1]:\n        class = "IntervalTier"\n        name = "phones"\n'
                '        xmin = 0\n        xmax = 1\n        intervals: size = 1\n'
                '        intervals [1]:\n            xmin = 0\n            xmax = 1\n'
                '            text = "x"\n'
                f'    item [2]:\n        class = "IntervalTier"\n        name = "words"\n'
                f'        xmin = 0\n        xmax = {prev}\n        intervals: size = {len(items)}\n'
                + body)
    return rows


def _word_probe(tmp_path, n_utts=24, seed=0):
    probe_path = write_probe(tmp_path, n_utts=n_utts, seed=seed)
    rows = write_words(tmp_path, probe_path, seed=seed)
    return probe_path, rows


def _hidden(model, probe):
    per_layer = {0: [], 1: [], 2: []}
    for item in probe.items:
        wav, _ = sf.read(item.path, dtype="float32")
        with torch.no_grad():
            hs = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states
        for layer in per_layer:
            per_layer[layer].append(hs[layer][0].double().numpy())
    return per_layer


def _frames_of(rows, uid, n_frames):
    """Per-frame word (string or None) and token index, by the frame-centre rule."""
    centres = (np.arange(n_frames) * 320 + 200) / 16000
    words = [None] * n_frames
    tokens = np.full(n_frames, -1)
    segs = [r for r in rows if r[0] == uid]
    for j, (_, s, e, w) in enumerate(segs):
        for i in np.nonzero((centres >= s) & (centres < e))[0]:
            words[i], tokens[i] = w, j
    return words, tokens, segs


def _pwcca_numpy(x, y, eps=1e-6):
    """PWCCA from data matrices: x (N, D1) layer means, y (N, D2) full-rank representation."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    n = x.shape[0]
    cxx, cyy, cxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        keep = w > 1e-10 * w[-1]
        return v[:, keep] / np.sqrt(w[keep] + eps)

    wx, wy = inv_sqrt(cxx), inv_sqrt(cyy)
    u, rho, _ = np.linalg.svd(wx.T @ cxy @ wy, full_matrices=False)
    rho = np.clip(rho, 0, 1)
    h = xc @ (wx @ u)  # canonical variates of x, (N, m)
    q, _ = np.linalg.qr(h)  # orthonormalised in order
    alpha = np.abs(q.T @ xc).sum(1)
    return float((alpha / alpha.sum()) @ rho)


def _mi(c):
    p = c / c.sum()
    px, py = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(px, py)[nz])).sum())
    return mi, mi / float(-(px[px > 0] * np.log(px[px > 0])).sum())


def test_word_measures_match_independent_references(tmp_path):
    from sklearn.metrics.cluster import contingency_matrix

    from sslvitals.metrics import kmeans
    from sslvitals.streaming import frame_keys

    probe_path, rows = _word_probe(tmp_path)
    probe = ProbeSet.from_path(probe_path)
    assert probe.has_words and probe.has_labels
    vocab_size = 6
    model = tiny_hubert()
    cfg = small_cfg(metrics=WORD_METRICS, word_vocab_size=vocab_size)
    out = VitalsMonitor(cfg).measure(model, forward, probe.batches(batch_seconds=3.0))
    counts = Counter(w for _, _, _, w in rows)
    top = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size]
    per_layer = _hidden(model, probe)
    for layer, utts in per_layer.items():
        # CCA-word: one mean vector per word token of a top word, one-hot of its identity
        xs, ys = [], []
        for item, u in zip(probe.items, utts):
            words, tokens, segs = _frames_of(rows, item.uid, len(u))
            for j, seg in enumerate(segs):
                sel = tokens == j
                if sel.any() and seg[3] in top:
                    xs.append(u[sel].mean(0))
                    ys.append(np.eye(vocab_size)[top.index(seg[3])])
        x, y = np.stack(xs), np.stack(ys)
        present = sorted(set(np.argmax(y, 1)))
        y = y[:, present[:-1]]  # one present class dropped: a full-rank one-hot view
        assert out[metric_key("cca_word", layer)] == pytest.approx(_pwcca_numpy(x, y), rel=1e-5)
        # MI-word: held-out (odd-indexed) frames inside the top words, clusters of the
        # k-means fitted on the even-indexed utterances' frames (the reservoir holds them all)
        fit = [(it, a) for it, a in zip(probe.items, utts) if it.index % 2 == 0]
        keys = np.concatenate([np.asarray(frame_keys(it.index, len(a), 0)) for it, a in fit])
        xf = np.concatenate([a for _, a in fit]).astype(np.float32)[np.argsort(keys, kind="stable")]
        km = kmeans(xf, 4, niter=10, seed=0, backend="faiss")
        cent = km.centroids.double().numpy()
        wl, cl = [], []
        for it, a in zip(probe.items, utts):
            if it.index % 2 == 0:
                continue
            words, _, _ = _frames_of(rows, it.uid, len(a))
            assigned = ((a.astype(np.float32).astype(np.float64)[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
            for w, c in zip(words, assigned):
                if w in top:
                    wl.append(top.index(w))
                    cl.append(c)
        mi, nmi = _mi(contingency_matrix(wl, cl).astype(np.float64))
        assert out[metric_key("mi_word", layer)] == pytest.approx(mi, rel=1e-6)
        assert out[metric_key("nmi_word", layer)] == pytest.approx(nmi, rel=1e-6)
        assert 0 < out[metric_key("nmi_word", layer)] < 1
        assert math.isfinite(out[metric_key("mi_phone", layer)])


def test_word_vectors_file_replaces_one_hot(tmp_path):
    probe_path, rows = _word_probe(tmp_path, n_utts=16, seed=1)
    rng = np.random.default_rng(5)
    vecs = {w: rng.standard_normal(3) for w in WORDS}
    vec_file = tmp_path / "vectors.txt"
    # a word2vec header, upper-case entries found by lower-casing, one word missing
    lines = [f"{len(WORDS) - 1} 3"] + [f"{w.upper()} " + " ".join(f"{v:.6f}" for v in vecs[w])
                                       for w in WORDS if w != "mat"]
    vec_file.write_text("\n".join(lines) + "\n")
    probe = ProbeSet.from_path(probe_path)
    model = tiny_hubert()
    out = VitalsMonitor(small_cfg(metrics="cca_word", word_vocab_size=9,
                                  word_vectors=str(vec_file))).measure(
        model, forward, probe.batches(batch_seconds=3.0))
    per_layer = _hidden(model, probe)
    for layer, utts in per_layer.items():
        xs, ys = [], []
        for item, u in zip(probe.items, utts):
            _, tokens, segs = _frames_of(rows, item.uid, len(u))
            for j, seg in enumerate(segs):
                sel = tokens == j
                if sel.any() and seg[3] != "mat":
                    xs.append(u[sel].mean(0))
                    ys.append(np.round(vecs[seg[3]], 6))
        ref = _pwcca_numpy(np.stack(xs), np.stack(ys))
        assert out[metric_key("cca_word", layer)] == pytest.approx(ref, rel=1e-5)


def test_word_measures_do_not_depend_on_batching(tmp_path):
    probe = ProbeSet.from_path(_word_probe(tmp_path, n_utts=14, seed=2)[0])
    model = tiny_hubert()
    cfg = small_cfg(metrics=WORD_METRICS, word_vocab_size=5)
    runs = [VitalsMonitor(cfg).measure(model, forward, probe.batches(batch_seconds=b))
            for b in (0.5, 3.0, 60.0)]
    runs.append(VitalsMonitor(cfg).measure(model, forward, lambda: probe.batches(batch_seconds=2.0)))
    keys = [k for k in runs[0] if k != "vitals/seconds"]
    assert len(keys) == 12
    for other in runs[1:]:
        for k in keys:
            assert other[k] == pytest.approx(runs[0][k], rel=1e-6, abs=1e-12), k


def test_alignment_formats_give_the_same_words(tmp_path):
    got = []
    for fmt in ("tsv", "ctm", "textgrid"):
        d = tmp_path / fmt
        d.mkdir()
        probe_path = write_probe(d, n_utts=5, seed=3)
        write_words(d, probe_path, seed=3, fmt=fmt)
        probe = ProbeSet.from_path(probe_path)
        assert probe.has_words, fmt
        got.append((probe.word_vocab, [it.words.tolist() for it in probe.items],
                    [it.word_tokens.tolist() for it in probe.items], probe.fingerprint()))
    assert got[0] == got[1] == got[2]
    # every probe utterance needs an entry
    probe_path = tmp_path / "tsv" / "probe.tsv"
    (tmp_path / "partial.tsv").write_text("u0\t0.0\t0.2\tthe\n")
    with pytest.raises(SSLVitalsError, match="no entry for 4 probe utterance"):
        ProbeSet.from_path(probe_path, words=tmp_path / "partial.tsv")
    with pytest.raises(SSLVitalsError, match="overlap"):
        (tmp_path / "bad.tsv").write_text("u0\t0.0\t0.2\tthe\nu0\t0.1\t0.3\tcat\n")
        read_word_alignments(tmp_path / "bad.tsv")


def test_probe_without_words_gives_nan_or_raises_in_strict(tmp_path, caplog):
    probe = ProbeSet.from_path(write_probe(tmp_path, n_utts=6))
    assert not probe.has_words
    model = tiny_hubert()
    out = VitalsMonitor(small_cfg(metrics="cca_word,mi_word,pnmi", layers="1")).measure(
        model, forward, probe.batches(batch_seconds=3.0))
    assert math.isnan(out["vitals/cca_word/L1"]) and math.isnan(out["vitals/mi_word/L1"])
    assert math.isfinite(out["vitals/pnmi/L1"])
    assert "no word alignments" in caplog.text
    with pytest.raises(SSLVitalsError, match="no word alignments"):
        VitalsMonitor(small_cfg(metrics="cca_word", layers="1", strict=True)).measure(
            model, forward, probe.batches(batch_seconds=3.0))


def _worker(rank, world, init, probe_path, out_path):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    probe = ProbeSet.from_path(probe_path).shard(rank, world)
    out = VitalsMonitor(small_cfg(metrics=WORD_METRICS, word_vocab_size=5, reservoir_size=300)).measure(
        tiny_hubert(), forward, probe.batches(batch_seconds=2.0))
    torch.save(out, f"{out_path}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    probe_path, _ = _word_probe(tmp_path, n_utts=12, seed=4)
    one = VitalsMonitor(small_cfg(metrics=WORD_METRICS, word_vocab_size=5, reservoir_size=300)).measure(
        tiny_hubert(), forward, ProbeSet.from_path(probe_path).batches(batch_seconds=2.0))
    torch.multiprocessing.spawn(_worker, args=(2, f"file://{tmp_path}/init", str(probe_path),
                                               str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = torch.load(f"{tmp_path}/out.0"), torch.load(f"{tmp_path}/out.1")
    keys = [k for k in one if k != "vitals/seconds"]
    assert len(keys) == 12 and set(keys) <= set(r0)
    for k in keys:
        assert r0[k] == r1[k], k
        assert math.isfinite(one[k]), k
        assert r0[k] == pytest.approx(one[k], rel=1e-6, abs=1e-12), k


def test_word_table_one_hot_and_vector_file(tmp_path):
    from sslvitals.words import word_table

    vocab = ("the", "Cat", "sat", "zebra")
    assert np.array_equal(word_table(vocab, 3), np.eye(3))
    f = tmp_path / "v.txt"
    f.write_text("2 2\nthe 1 2\ncat 3 4\nCat 5 6\nother 7 8\n")
    t = word_table(vocab, 4, f)
    assert t[0].tolist() == [1, 2] and t[1].tolist() == [5, 6]  # exact match wins over lower-case
    assert np.isnan(t[2]).all() and np.isnan(t[3]).all()
    f.write_text("dog 1 2\n")
    with pytest.raises(SSLVitalsError, match="hold none of the probe"):
        word_table(vocab, 4, f)
    f.write_text("the 1 2\nCat 1 2 3\n")
    with pytest.raises(SSLVitalsError, match="earlier rows have 2"):
        word_table(vocab, 4, f)
