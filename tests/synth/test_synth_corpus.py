"""The corpus on disk: layout, formats, framing, speakers, determinism and label realism."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sslvitals.errors import SSLVitalsError
from sslvitals.synth import SPLITS, frame_labels, load_corpus, num_frames, synthesize_corpus
from sslvitals.synth.corpus import read_phones
from sslvitals.synth.espeak import espeak_available

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="eSpeak NG library is not installed")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_num_frames_matches_the_conv_stack():
    # the HuBERT / wav2vec 2.0 extractor: kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2)
    def stack(n: int) -> int:
        for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    for n in list(range(380, 1400)) + [16000, 48123, 160000]:
        assert num_frames(n) == stack(n), n


def test_frame_labels_take_the_segment_at_the_frame_centre():
    # segments [0,300) a=1, [300, 530) b=2, [530, end) c=3; centres 200, 520, 840
    lab = frame_labels(np.array([0, 300, 530]), np.array([1, 2, 3]), 1200)
    assert lab.tolist() == [1, 2, 3]
    lab = frame_labels(np.array([0, 520]), np.array([5, 6]), 720)  # boundary on a centre
    assert lab.tolist() == [5, 6]


@needs_espeak
def test_layout_and_line_counts(tiny_corpus):
    corpus, _ = tiny_corpus
    root = corpus.root
    for name in ["corpus.json", "speakers.tsv", "phones.txt", "dict.km.txt", "targets.json"]:
        assert (root / name).is_file(), name
    for split in SPLITS:
        sp = corpus.split(split)
        n = len(sp)
        assert n > 0
        manifest = _lines(root / f"{split}.tsv")
        assert Path(manifest[0]) == root / "wav" and len(manifest) == n + 1
        for ext in ("phn", "wrd", "ltr", "km"):
            assert len(_lines(root / f"{split}.{ext}")) == n, ext
        kdir = root / "data" / split
        for f in ("wav.scp", "text", "utt2spk", "utt2num_samples"):
            rows = _lines(kdir / f)
            ids = [r.split()[0] for r in rows]
            assert ids == sorted(ids) == sp.utt_ids, f  # Kaldi: sorted, same order as manifest
        utt2spk = dict(r.split() for r in _lines(kdir / "utt2spk"))
        assert all(u.startswith(s + "-") for u, s in utt2spk.items())  # speaker-prefixed ids
        spk2utt = {r.split()[0]: r.split()[1:] for r in _lines(kdir / "spk2utt")}
        assert sorted(u for us in spk2utt.values() for u in us) == sorted(utt2spk)
        assert all(utt2spk[u] == s for s, us in spk2utt.items() for u in us)
        for row in _lines(kdir / "wav.scp"):
            assert Path(row.split(maxsplit=1)[1]).is_file()
        texts = [r.split(maxsplit=1)[1].split() for r in _lines(kdir / "text")]
        assert texts == sp.words()
        letters = _lines(root / f"{split}.ltr")
        assert [ltr.replace(" ", "").rstrip("|").split("|") for ltr in letters] == sp.words()


@needs_espeak
def test_manifest_lengths_frames_and_alignments_agree(tiny_corpus):
    corpus, _ = tiny_corpus
    phones = corpus.phones
    assert phones[0] == "sil" and len(set(phones)) == len(phones) > 20
    assert read_phones(corpus.root / "phones.txt") == phones
    for split in SPLITS:
        sp = corpus.split(split)
        phn = sp.frame_phones()
        align: dict[str, list] = {}
        for u, s, e, p in sp.alignments():
            align.setdefault(u, []).append((s, e, p))
        for i, (rel, n) in enumerate(sp.entries):
            wav = sp.audio(i)
            assert wav.shape == (n,)
            assert phn[i].shape == (num_frames(n),)
            segs = align[sp.utt_ids[i]]
            # contiguous, from 0 to the end of the audio
            assert segs[0][0] == 0.0 and abs(segs[-1][1] - n / 16000) < 1e-6
            assert all(abs(a[1] - b[0]) < 1e-9 for a, b in zip(segs, segs[1:]))
            assert all(p in phones for _, _, p in segs)


@needs_espeak
def test_frame_labels_agree_with_an_independent_framing(tiny_corpus):
    framing = pytest.importorskip("sslvitals.hooks.framing")
    corpus, _ = tiny_corpus
    pid = {p: i for i, p in enumerate(corpus.phones)}
    sp = corpus.split("train")
    phn = sp.frame_phones()
    align: dict[str, list] = {}
    for u, s, e, p in sp.alignments():
        align.setdefault(u, []).append((s, e, pid[p]))
    for i, u in enumerate(sp.utt_ids):
        ref = framing.alignments_to_frame_labels(align[u], num_frames(sp.entries[i][1]))
        np.testing.assert_array_equal(phn[i], ref)


@needs_espeak
def test_heldout_speakers_are_absent_from_train(tiny_corpus):
    corpus, _ = tiny_corpus
    train = set(corpus.split("train").speaker_ids)
    valid = set(corpus.split("valid").speaker_ids)
    probe = set(corpus.split("probe").speaker_ids)
    assert len(train) == 2 and valid == probe and len(probe) == 1
    assert not train & probe
    meta = corpus.meta
    assert [s["role"] for s in meta["speakers"]] == ["train", "train", "heldout"]
    assert {s["gender"] for s in meta["speakers"][:2]} == {"m", "f"}
    assert meta["splits"]["train"]["seconds"] >= 0.012 * 3600


@needs_espeak
def test_labels_are_real_timings(tiny_corpus):
    """Silence frames are quiet and /s/ frames cross zero far more often than vowel frames."""
    corpus, _ = tiny_corpus
    sp = corpus.split("train")
    phones = corpus.phones
    energy: dict[str, list[float]] = {}
    zcr: dict[str, list[float]] = {}
    for i, lab in enumerate(sp.frame_phones()):
        x = sp.audio(i)
        frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::320][: len(lab)]
        e = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
        z = (np.diff(np.signbit(frames), axis=1)).mean(axis=1)
        for p, ee, zz in zip(lab, e, z):
            energy.setdefault(phones[p], []).append(ee)
            zcr.setdefault(phones[p], []).append(zz)
    vowels = [p for p in ("a", "aI", "eI", "i:", "@", "E", "I", "V", "oU", "u:") if p in energy]
    vowel_energy = np.mean([v for p in vowels for v in energy[p]])
    vowel_zcr = np.mean([v for p in vowels for v in zcr[p]])
    assert np.mean(energy["sil"]) < vowel_energy - 25  # dB
    assert np.mean(zcr["s"]) > 2.5 * vowel_zcr
    # and a shifted labelling is visibly worse: realignment by 3 frames mixes the classes
    shifted_sil = []
    for i, lab in enumerate(sp.frame_phones()):
        x = sp.audio(i)
        frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::320][: len(lab)]
        e = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
        shifted = np.roll(lab, 3)
        shifted_sil += e[shifted == 0].tolist()
    assert np.mean(energy["sil"]) < np.mean(shifted_sil) - 5


def _digest(root: Path) -> dict[str, str]:
    """Hashes of every file that holds no absolute path (manifests and wav.scp do)."""
    files = list((root / "wav").rglob("*.wav")) + [root / "phones.txt", root / "speakers.tsv",
                                                   root / "corpus.json"]
    for split in SPLITS:
        files += [root / f"{split}.{ext}" for ext in ("phn", "wrd", "ltr", "align.tsv")]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@needs_espeak
def test_same_corpus_for_any_number_of_jobs(tmp_path):
    kw = dict(hours=0.004, speakers=2, heldout_speakers=0, valid_minutes=0.1, probe_minutes=0.1,
              seed=11, progress=False)
    a = synthesize_corpus(tmp_path / "a", jobs=1, **kw)
    b = synthesize_corpus(tmp_path / "b", jobs=2, **kw)
    da, db = _digest(a.root), _digest(b.root)
    assert len(da) > 10 and da == db
    # with heldout_speakers=0 valid/probe are spoken by the training speakers
    assert set(a.split("probe").speaker_ids) <= set(a.split("train").speaker_ids)
    # another seed: other sentences
    c = synthesize_corpus(tmp_path / "c", jobs=2, **{**kw, "seed": 12})
    assert c.split("train").words() != a.split("train").words()


@needs_espeak
def test_refuses_foreign_and_existing_directories(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SSLVitalsError, match="not an sslvitals corpus"):
        synthesize_corpus(foreign, hours=0.002, speakers=1, heldout_speakers=0, valid_minutes=0.05,
                          probe_minutes=0.05, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    kw = dict(hours=0.002, speakers=1, heldout_speakers=0, valid_minutes=0.05, probe_minutes=0.05,
              progress=False, jobs=1)
    synthesize_corpus(tmp_path / "c", **kw)
    with pytest.raises(SSLVitalsError, match="--force"):
        synthesize_corpus(tmp_path / "c", **kw)
    again = synthesize_corpus(tmp_path / "c", force=True, **kw)
    assert len(again.split("train")) > 0
    with pytest.raises(SSLVitalsError, match="not an sslvitals corpus"):
        load_corpus(foreign)
