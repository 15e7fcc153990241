"""MR-HuBERT checkpoints in both on-disk formats: fairseq's (``cfg`` + ``model``) and s3prl's
converted one (``task_cfg``, ``model_cfg``, ``model_weight``, ``dictionaries_symbols``).

The converted file is written from the fairseq-layout one the way s3prl's converter lays it
out; both must load into the same weights and score the same numbers.
"""
from __future__ import annotations

import pytest
import torch

import artifacts
from conftest import SCORE_KW
from sslvitals.errors import SSLVitalsError
from sslvitals.offline.loaders import detect_kind, load_checkpoint
from sslvitals.offline.score import score_checkpoints

pytest.importorskip("s3prl")


def _converted(src, dst, *, drop=None):
    state = torch.load(src, weights_only=False)
    out = {
        "task_cfg": state["cfg"]["task"],
        "model_cfg": state["cfg"]["model"],
        "model_weight": state["model"],
        "dictionaries_symbols": [[str(i) for i in range(10)]] * 2,
    }
    if drop:
        del out[drop]
    torch.save(out, dst)
    return dst


def test_s3prl_converted_checkpoint_loads_and_scores_like_the_fairseq_file(probe_varied, tmp_path):
    fs = artifacts.make_fairseq_multires_hubert(tmp_path / "fs" / "checkpoint_1_70.pt",
                                                num_updates=70)
    conv = _converted(fs, tmp_path / "mr_hubert_converted.pt")
    loaded = load_checkpoint(detect_kind(conv), torch.device("cpu"))
    ref = load_checkpoint(detect_kind(fs), torch.device("cpu"))
    assert loaded.toolkit == "s3prl" and loaded.step is None
    a, b = loaded.model.state_dict(), ref.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    kw = dict(metrics="rankme,pnmi,cca_mel", **SCORE_KW)
    t_conv, f1 = score_checkpoints([str(conv)], str(probe_varied), str(tmp_path / "c.csv"), **kw)
    t_fs, f2 = score_checkpoints([str(fs)], str(probe_varied), str(tmp_path / "f.csv"), **kw)
    assert f1 == [] and f2 == []
    key = ["metric", "layer"]
    va = t_conv.sort_values(key)["value"].to_numpy()
    vb = t_fs.sort_values(key)["value"].to_numpy()
    assert len(va) == len(vb) > 0
    assert (va == vb).all()


def test_incomplete_converted_checkpoint_is_named(tmp_path):
    fs = artifacts.make_fairseq_multires_hubert(tmp_path / "checkpoint_1_70.pt")
    bad = _converted(fs, tmp_path / "broken.pt", drop="model_weight")
    with pytest.raises(SSLVitalsError, match="s3prl-converted MR-HuBERT"):
        load_checkpoint(detect_kind(bad), torch.device("cpu"))
