"""Probe manifests, labels and batching."""
import numpy as np
import pytest
import soundfile as sf
import torch

from sslvitals import SSLVitalsError
from sslvitals.probe import ProbeSet, frame_count


def _write_probe(tmp_path, lengths, sr=16000, labels=True):
    rng = np.random.default_rng(0)
    (tmp_path / "wav").mkdir()
    lines = [str(tmp_path / "wav")]
    phn = []
    for i, n in enumerate(lengths):
        sf.write(tmp_path / "wav" / f"u{i}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), sr)
        lines.append(f"u{i}.wav\t{n}")
        phn.append(" ".join(str(v % 5) for v in range(frame_count(n))))
    (tmp_path / "probe.tsv").write_text("\n".join(lines) + "\n")
    if labels:
        (tmp_path / "probe.phn").write_text("\n".join(phn) + "\n")
    return tmp_path / "probe.tsv"


def test_manifest_labels_and_batches(tmp_path):
    lengths = [8000, 16000, 12000, 4000]
    probe = ProbeSet.from_path(_write_probe(tmp_path, lengths))
    assert len(probe) == 4 and probe.has_labels
    assert probe.total_seconds == pytest.approx(sum(lengths) / 16000)
    seen = []
    for batch in probe.batches(batch_seconds=2.0):
        assert batch.wav.dtype == torch.float32
        assert batch.wav.shape[0] * batch.wav.shape[1] <= 2.0 * 16000 or batch.wav.shape[0] == 1
        for row, (n, idx) in enumerate(zip(batch.lengths.tolist(), batch.index)):
            assert n == lengths[idx]
            assert batch.labels[row].shape == (frame_count(n),)
            assert not batch.padding_mask[row, :n].any() and batch.padding_mask[row, n:].all()
        seen += batch.index
    assert sorted(seen) == [0, 1, 2, 3]


def test_select_is_seeded_and_bounded(tmp_path):
    probe = ProbeSet.from_path(_write_probe(tmp_path, [16000] * 10), max_seconds=None)
    a = probe.select(3.5, seed=1)
    b = probe.select(3.5, seed=1)
    assert [i.index for i in a.items] == [i.index for i in b.items]
    assert a.total_seconds <= 3.5 and len(a) == 3


def test_shards_partition(tmp_path):
    probe = ProbeSet.from_path(_write_probe(tmp_path, [4000 + 800 * i for i in range(7)]))
    shards = [probe.shard(r, 2) for r in range(2)]
    idx = sorted(i.index for s in shards for i in s.items)
    assert idx == list(range(7))


def test_bad_inputs(tmp_path):
    with pytest.raises(SSLVitalsError, match="does not exist"):
        ProbeSet.from_path(tmp_path / "missing.tsv")
    path = _write_probe(tmp_path, [16000, 16000])
    (tmp_path / "wav" / "u1.wav").unlink()
    with pytest.raises(SSLVitalsError, match="missing"):
        ProbeSet.from_path(path)


def test_wrong_sample_rate(tmp_path):
    path = _write_probe(tmp_path, [8000], sr=8000, labels=False)
    with pytest.raises(SSLVitalsError, match="8000 Hz.*resample"):
        ProbeSet.from_path(path)


def test_label_length_mismatch(tmp_path):
    path = _write_probe(tmp_path, [16000])
    (tmp_path / "probe.phn").write_text("1 2 3\n")
    with pytest.raises(SSLVitalsError, match="frames"):
        ProbeSet.from_path(path)


def test_alignments(tmp_path):
    path = _write_probe(tmp_path, [16000], labels=False)
    (tmp_path / "probe.align.tsv").write_text("u0\t0.0\t0.5\tsil\nu0\t0.5\t1.0\taa\n")
    probe = ProbeSet.from_path(path)
    lab = probe.items[0].labels
    ids = {"aa": 0, "sil": 1}
    centres = (np.arange(frame_count(16000)) * 320 + 200) / 16000
    np.testing.assert_array_equal(lab, np.where(centres < 0.5, ids["sil"], ids["aa"]))


def test_kaldi_dir(tmp_path):
    _write_probe(tmp_path, [16000, 8000], labels=False)
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(f"a {tmp_path / 'wav' / 'u0.wav'}\nb {tmp_path / 'wav' / 'u1.wav'}\n")
    probe = ProbeSet.from_path(d)
    assert [i.uid for i in probe.items] == ["a", "b"]
    assert [i.num_samples for i in probe.items] == [16000, 8000]
    (d / "wav.scp").write_text("a sox x.wav -t wav - |\n")
    with pytest.raises(SSLVitalsError, match="piped"):
        ProbeSet.from_path(d)
