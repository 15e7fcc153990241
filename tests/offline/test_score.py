"""``sslvitals score`` on tiny checkpoints of every toolkit, checked against independent captures."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

import artifacts
from conftest import SCORE_KW
from sslvitals.errors import SSLVitalsError
from sslvitals.offline.io import read_score_file, write_results
from sslvitals.offline.score import score_checkpoints


def _rankme_ref(x: np.ndarray) -> float:
    """RankMe from numpy's SVD in float64 (Garrido et al.: p = s / sum(s) + 1e-7)."""
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def _probe_wavs(manifest: Path) -> list[np.ndarray]:
    lines = manifest.read_text().splitlines()
    root = Path(lines[0])
    return [sf.read(root / ln.split("\t")[0], dtype="float32")[0] for ln in lines[1:]]


def _value(frame, ckpt_suffix, layer, metric):
    sel = frame[frame["checkpoint"].str.endswith(ckpt_suffix) & (frame["layer"] == layer)
                & (frame["metric"] == metric)]
    assert len(sel) == 1, (ckpt_suffix, layer, metric, len(sel))
    return float(sel["value"].iloc[0])


def test_fairseq_files_load_with_fairseq_itself(fairseq_dir, wav2vec2_ckpt, tmp_path):
    from fairseq import checkpoint_utils

    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(wav2vec2_ckpt)])
    assert type(models[0]).__name__ == "Wav2Vec2Model"
    (tmp_path / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(12)))
    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
        [str(fairseq_dir / "checkpoint_1_100.pt")],
        arg_overrides={"label_dir": str(tmp_path), "data": str(tmp_path)})
    assert type(models[0]).__name__ == "HubertModel"


def test_score_fairseq_hubert_against_independent_capture(fairseq_dir, probe_equal, tmp_path):
    from fairseq import checkpoint_utils

    out = tmp_path / "scores.csv"
    table, failures = score_checkpoints([str(fairseq_dir)], str(probe_equal), str(out),
                                        metrics="rankme,pnmi,cca_phone,cca_mel", **SCORE_KW)
    assert failures == []
    # checkpoint_last.pt is a copy of a numbered one: skipped when a folder is expanded
    assert sorted(Path(c).name for c in table["checkpoint"].unique()) == [
        "checkpoint_1_100.pt", "checkpoint_2_250.pt"]
    assert len(table) == 2 * 3 * 4  # checkpoints x layers (0..2) x metrics
    assert table.groupby("checkpoint")["step"].first().sort_values().tolist() == [100, 250]
    assert sorted(table["loss"].unique().tolist()) == [5.5, 6.0]
    assert set(table["run"]) == {"hubert_run"} and set(table["toolkit"]) == {"fairseq"}
    assert table["value"].notna().all()
    for m in ("pnmi", "cca_phone", "cca_mel"):
        vals = table[table["metric"] == m]["value"]
        assert ((vals > 0) & (vals <= 1)).all(), m
    assert read_score_file(out).equals(table)
    # independent reference: fairseq's own extract_features(output_layer=i), one utterance at a time
    lab = tmp_path / "labels"
    lab.mkdir()
    (lab / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(12)))
    for name in ("checkpoint_1_100.pt", "checkpoint_2_250.pt"):
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
            [str(fairseq_dir / name)], arg_overrides={"label_dir": str(lab), "data": str(lab)})
        model = models[0].eval()
        for layer in (1, 2):
            with torch.no_grad():
                frames = [model.extract_features(torch.from_numpy(w)[None], padding_mask=None, mask=False,
                                                 output_layer=layer)[0][0].numpy()
                          for w in _probe_wavs(probe_equal)]
            ref = _rankme_ref(np.concatenate(frames))
            assert _value(table, name, layer, "rankme") == pytest.approx(ref, rel=1e-4)


def test_score_transformers_against_hidden_states(probe_equal, tmp_path):
    pytest.importorskip("transformers")
    d = artifacts.make_transformers_hubert(tmp_path / "hf_run" / "checkpoint-40", seed=3)
    table, failures = score_checkpoints([str(d)], str(probe_equal), str(tmp_path / "s.json"),
                                        metrics="rankme,effective_rank", **SCORE_KW)
    assert failures == [] and set(table["step"]) == {40} and set(table["run"]) == {"hf_run"}
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(d), local_files_only=True).eval()
    with torch.no_grad():
        hs = [model(torch.from_numpy(w)[None], output_hidden_states=True).hidden_states
              for w in _probe_wavs(probe_equal)]
    for layer in (0, 1, 2):
        ref = _rankme_ref(np.concatenate([h[layer][0].numpy() for h in hs]))
        assert _value(table, "checkpoint-40", layer, "rankme") == pytest.approx(ref, rel=1e-4)


def test_score_espnet_experiment_directory(probe_equal, tmp_path):
    pytest.importorskip("espnet2")
    exp = artifacts.make_espnet_hubert(tmp_path / "exp" / "hubert_tiny", epochs=(1, 3))
    table, failures = score_checkpoints([str(exp)], str(probe_equal), str(tmp_path / "s.csv"),
                                        metrics="rankme,pnmi", **SCORE_KW)
    assert failures == []
    assert sorted(table.groupby("checkpoint")["step"].first().tolist()) == [1, 3]
    assert set(table["toolkit"]) == {"espnet"} and set(table["run"]) == {"hubert_tiny"}
    from espnet2.tasks.hubert import HubertTask

    model, _ = HubertTask.build_model_from_file(str(exp / "config.yaml"), str(exp / "3epoch.pth"), "cpu")
    w2v = model.encoder.hubert_pretrain_model.wav2vec2.eval()
    with torch.no_grad():
        outs = [w2v.extract_features(torch.from_numpy(w)[None])[0] for w in _probe_wavs(probe_equal)]
    for layer in (1, 2):
        ref = _rankme_ref(np.concatenate([o[layer - 1][0].numpy() for o in outs]))
        assert _value(table, "3epoch.pth", layer, "rankme") == pytest.approx(ref, rel=1e-4)
    # a directory with only the resumable checkpoint.pth: weights under 'model', epoch in 'reporter'
    exp2 = tmp_path / "exp" / "resumed"
    exp2.mkdir()
    (exp2 / "config.yaml").write_text((exp / "config.yaml").read_text())
    torch.save({"model": torch.load(exp / "3epoch.pth"), "reporter": {"epoch": 3, "stats": {}}},
               exp2 / "checkpoint.pth")
    t2, failures = score_checkpoints([str(exp2)], str(probe_equal), str(tmp_path / "s2.csv"),
                                     metrics="rankme", **SCORE_KW)
    assert failures == [] and set(t2["step"]) == {3}
    assert _value(t2, "checkpoint.pth", 2, "rankme") == pytest.approx(_value(table, "3epoch.pth", 2, "rankme"))


def test_score_mr_hubert_through_s3prl(probe_varied, tmp_path):
    pytest.importorskip("s3prl")
    ck = artifacts.make_fairseq_multires_hubert(tmp_path / "mr" / "checkpoint_1_70.pt", num_updates=70)
    table, failures = score_checkpoints([str(ck)], str(probe_varied), str(tmp_path / "s.csv"),
                                        metrics="rankme,pnmi,cca_mel", **SCORE_KW)
    assert failures == [] and set(table["toolkit"]) == {"s3prl"} and set(table["step"]) == {70}
    # U-Net numbering: encoder block, middle block (25 Hz), decoder block -> layers 0..3
    assert sorted(table["layer"].unique().tolist()) == [0, 1, 2, 3]
    assert table["value"].notna().all()


def test_resumable_never_overwrites_existing_rows(wav2vec2_ckpt, probe_varied, tmp_path, caplog):
    out = tmp_path / "scores.csv"
    t1, _ = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), metrics="rankme",
                              **SCORE_KW)
    assert len(t1) == 3
    tampered = t1.copy()
    tampered.loc[tampered["layer"] == 1, "value"] = 123.0
    write_results(tampered, out)
    t2, _ = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out),
                              metrics="rankme,stable_rank", **SCORE_KW)
    assert len(t2) == 6
    assert _value(t2, "checkpoint_3_300.pt", 1, "rankme") == 123.0  # kept, not recomputed
    assert _value(t2, "checkpoint_3_300.pt", 0, "rankme") == _value(t1, "checkpoint_3_300.pt", 0, "rankme")
    caplog.set_level(logging.INFO, logger="sslvitals.offline.score")
    t3, _ = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out),
                              metrics="rankme,stable_rank", **SCORE_KW)
    assert "already in" in caplog.text
    assert t3.equals(t2) and read_score_file(out).equals(t2)


def test_bad_checkpoints_are_named_and_the_rest_goes_on(wav2vec2_ckpt, probe_varied, tmp_path, caplog):
    from sslvitals.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, bad / "other.pt")
    out = tmp_path / "s.csv"
    caplog.set_level(logging.ERROR)
    rc = main(["score", str(bad / "garbage.pt"), str(wav2vec2_ckpt), str(bad / "other.pt"),
               "--probe", str(probe_varied), "--out", str(out), "--metrics", "rankme", "--k", "4",
               "--reservoir-size", "300", "--no-progress"])
    assert rc == 1
    assert "garbage.pt" in caplog.text and "not a readable torch file" in caplog.text
    assert "other.pt" in caplog.text and "no 'model' entry" in caplog.text
    frame = pd.read_csv(out)
    assert frame["checkpoint"].str.endswith("checkpoint_3_300.pt").all() and len(frame) == 3


def test_probe_with_wrong_sample_rate(tmp_path, wav2vec2_ckpt):
    (tmp_path / "a.wav").parent.mkdir(exist_ok=True)
    sf.write(tmp_path / "a.wav", np.zeros(8000, dtype=np.float32), 8000)
    (tmp_path / "p.tsv").write_text(f"{tmp_path}\na.wav\t8000\n")
    with pytest.raises(SSLVitalsError, match=r"16000 Hz.*resample"):
        score_checkpoints([str(wav2vec2_ckpt)], str(tmp_path / "p.tsv"), str(tmp_path / "s.csv"),
                          metrics="rankme", **SCORE_KW)


def test_label_metrics_need_labels(wav2vec2_ckpt, probe_unlabelled, tmp_path):
    with pytest.raises(SSLVitalsError, match="need frame-level phone labels"):
        score_checkpoints([str(wav2vec2_ckpt)], str(probe_unlabelled), str(tmp_path / "s.csv"),
                          metrics="rankme,pnmi", **SCORE_KW)
    table, failures = score_checkpoints([str(wav2vec2_ckpt)], str(probe_unlabelled),
                                        str(tmp_path / "s.csv"), metrics="default", **SCORE_KW)
    assert not failures
    present = set(table["metric"])
    assert {"rankme", "inertia", "cca_mel"} <= present
    assert not present & {"pnmi", "phone_purity", "cluster_purity", "cca_phone"}


def test_unknown_metric_and_missing_checkpoint(wav2vec2_ckpt, probe_varied, tmp_path):
    with pytest.raises(SSLVitalsError, match="cca_mel"):
        score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(tmp_path / "s.csv"),
                          metrics="rankme,bogus", **SCORE_KW)
    with pytest.raises(SSLVitalsError, match="does not exist"):
        score_checkpoints([str(tmp_path / "nope.pt")], str(probe_varied), str(tmp_path / "s.csv"),
                          metrics="rankme", **SCORE_KW)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: the GPU path "
                    "(--device auto / cuda) is exercised only on a machine with one")
def test_cuda_scores_match_cpu(wav2vec2_ckpt, probe_varied, tmp_path):
    kw = dict(SCORE_KW, backend="torch")
    cpu, _ = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(tmp_path / "cpu.csv"),
                               metrics="rankme,effective_rank,cca_mel", device="cpu", **kw)
    gpu, _ = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(tmp_path / "gpu.csv"),
                               metrics="rankme,effective_rank,cca_mel", device="auto", **kw)
    np.testing.assert_allclose(gpu["value"].to_numpy(), cpu["value"].to_numpy(), rtol=2e-3)
