"""Every score row carries its settings; a re-run never mixes settings or keeps stale values;
settings not given come from the scored run's records, then from VitalsConfig."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import SCORE_KW
from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError
from sslvitals.offline.io import SETTING_COLUMNS
from sslvitals.offline.score import score_checkpoints
from sslvitals.probe import ProbeSet
from sslvitals.records import append_record, make_record

KW = dict(SCORE_KW, metrics="rankme,inertia", layers="0,2", device="cpu")


def test_rows_carry_their_settings(wav2vec2_ckpt, probe_varied, tmp_path):
    table, failures = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied),
                                        str(tmp_path / "s.csv"), seed=5, **KW)
    assert not failures and len(table) == 4
    for col in SETTING_COLUMNS:
        assert col in table.columns, col
    fp = ProbeSet.from_path(probe_varied).fingerprint()
    row = table.iloc[0]
    assert int(row["k"]) == 4 and int(row["reservoir_size"]) == 300 and int(row["seed"]) == 5
    assert int(row["kmeans_iters"]) == VitalsConfig().kmeans_iters  # not given: the default
    assert row["probe_fingerprint"] == fp and row["label_frames"] == "held-out"
    assert row["version"] and row["device"] == "cpu"


@pytest.mark.parametrize("change,named", [({"k": 5}, "k:"), ({"seed": 1}, "seed:"),
                                          ({"reservoir_size": 301}, "reservoir_size:")])
def test_other_settings_stop_before_any_work(wav2vec2_ckpt, probe_varied, tmp_path, change, named):
    out = tmp_path / "s.csv"
    score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), **KW)
    before = out.read_bytes()
    kw = dict(KW, **change)
    with pytest.raises(SSLVitalsError, match=named) as err:
        score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), **kw)
    assert "Nothing was computed" in str(err.value)
    assert out.read_bytes() == before  # the file is untouched


def test_another_probe_is_a_difference(wav2vec2_ckpt, probe_varied, probe_equal, tmp_path):
    out = tmp_path / "s.csv"
    score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), **KW)
    with pytest.raises(SSLVitalsError, match="probe_fingerprint"):
        score_checkpoints([str(wav2vec2_ckpt)], str(probe_equal), str(out), **KW)


def test_old_files_without_settings_are_not_reused(wav2vec2_ckpt, probe_varied, tmp_path):
    out = tmp_path / "s.csv"
    table, _ = score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), **KW)
    table.drop(columns=list(SETTING_COLUMNS)).to_csv(out, index=False)  # as sslvitals 0.1 wrote it
    with pytest.raises(SSLVitalsError, match="not recorded"):
        score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), **KW)


def test_same_checkpoint_by_another_path_is_not_scored_twice(wav2vec2_ckpt, probe_varied, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "s.csv"
    score_checkpoints([str(wav2vec2_ckpt)], str(probe_varied), str(out), **KW)
    monkeypatch.chdir(wav2vec2_ckpt.parent)
    table, _ = score_checkpoints([wav2vec2_ckpt.name], str(probe_varied), str(out), **KW)
    assert len(table) == 4  # resolved to the same file: nothing added


def test_settings_come_from_the_runs_records(wav2vec2_ckpt, probe_varied, tmp_path):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / wav2vec2_ckpt.name
    shutil.copy(wav2vec2_ckpt, ckpt)
    probe = ProbeSet.from_path(probe_varied)
    settings = {"k": 3, "kmeans_iters": 6, "reservoir_size": 200, "silhouette_sample": 50,
                "seed": 7, "backend": "torch", "max_probe_seconds": 100.0,
                "probe": probe.fingerprint(), "label_frames": "held-out", "version": "x",
                "device": "cpu"}
    append_record(run / "vitals.jsonl", make_record(
        toolkit="fairseq", metrics={"vitals/rankme/L0": 1.0}, update=300,
        probe=dict(probe.describe(), path=str(probe_varied)), settings=settings))
    kw = {k: v for k, v in KW.items() if k not in ("k", "reservoir_size", "silhouette_sample")}
    # no --probe and no settings: both from the run; --k on the command line wins over the run
    table, failures = score_checkpoints([str(ckpt)], None, str(tmp_path / "s.csv"), k=4, **kw)
    assert not failures
    row = table.iloc[0]
    assert int(row["k"]) == 4  # given
    assert (int(row["kmeans_iters"]), int(row["reservoir_size"]), int(row["silhouette_sample"]),
            int(row["seed"]), row["backend"]) == (6, 200, 50, 7, "torch")  # from the run
    assert float(row["max_probe_seconds"]) == 100.0


def test_no_probe_anywhere_is_a_clear_error(wav2vec2_ckpt, tmp_path):
    with pytest.raises(SSLVitalsError, match="pass --probe"):
        score_checkpoints([str(wav2vec2_ckpt)], None, str(tmp_path / "s.csv"), **KW)
