"""Fixtures of the offline tests: a tiny probe and tiny checkpoints of every toolkit.

Everything is built by the tests themselves (seeded); the toolkits build the models from
their own configs and the files are written in each toolkit's on-disk layout.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import artifacts  # noqa: E402


@pytest.fixture(scope="session")
def probe_equal(tmp_path_factory) -> Path:
    """Six 1-second utterances (no padding in a batch) with frame labels."""
    return artifacts.make_probe(tmp_path_factory.mktemp("probe_eq"), n_utts=6, seconds=(1.0, 1.0))


@pytest.fixture(scope="session")
def probe_varied(tmp_path_factory) -> Path:
    """Six utterances of 0.6-1.2 s with frame labels."""
    return artifacts.make_probe(tmp_path_factory.mktemp("probe_var"), n_utts=6)


@pytest.fixture(scope="session")
def probe_unlabelled(tmp_path_factory) -> Path:
    """Four utterances without labels."""
    return artifacts.make_probe(tmp_path_factory.mktemp("probe_nolab"), n_utts=4, labels=False)


@pytest.fixture(scope="session")
def fairseq_dir(tmp_path_factory) -> Path:
    """A folder with two HuBERT checkpoints (one without, one with task_state) + last copy."""
    pytest.importorskip("fairseq")
    d = tmp_path_factory.mktemp("fairseq") / "hubert_run"
    a = artifacts.make_fairseq_hubert(d / "checkpoint_1_100.pt", num_updates=100, val_loss=6.0)
    artifacts.perturb_checkpoint(a, d / "checkpoint_2_250.pt", scale=0.3, num_updates=250,
                                 seed=1, val_loss=5.5)
    import shutil

    shutil.copy(d / "checkpoint_2_250.pt", d / "checkpoint_last.pt")
    return d


@pytest.fixture(scope="session")
def wav2vec2_ckpt(tmp_path_factory) -> Path:
    pytest.importorskip("fairseq")
    return artifacts.make_fairseq_wav2vec2(
        tmp_path_factory.mktemp("w2v") / "w2v_run" / "checkpoint_3_300.pt", num_updates=300, val_loss=2.5)


SCORE_KW = dict(k=4, reservoir_size=300, silhouette_sample=0, cca_frames=2000, progress=False)
