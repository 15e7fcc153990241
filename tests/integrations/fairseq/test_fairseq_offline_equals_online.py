"""Offline equals online: ``sslvitals score`` on a checkpoint of a run trained with vitals on
takes that run's settings and probe from its ``vitals.jsonl`` and reproduces the logged values.

The run is the real ``fairseq-hydra-train`` on the tiny corpus; the score is the real
``score_checkpoints`` with no setting given on the command line.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tinydata  # noqa: E402

from sslvitals.keys import parse_key  # noqa: E402
from sslvitals.metric_table import metric_info  # noqa: E402
from sslvitals.records import read_records  # noqa: E402

pytestmark = pytest.mark.e2e


def test_score_reproduces_the_logged_values(tmp_path: Path) -> None:
    from sslvitals.offline.score import score_checkpoints

    corpus = tinydata.make_corpus(tmp_path / "corpus")
    run = tmp_path / "hubert"
    cmd = tinydata.hubert_command(corpus, run, tinydata.plugin_overrides("hubert_pretraining_vitals") + [
        "+task.vitals.enabled=true", "+task.vitals.k=6", "+task.vitals.reservoir_size=700",
        "+task.vitals.silhouette_sample=300", "+task.vitals.seed=3", "+task.vitals.kmeans_iters=7",
        "checkpoint.save_interval_updates=2",
    ])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    records = {r["update"]: r for r in read_records(run / "checkpoints" / "vitals.jsonl")}
    rec = records[4]
    assert rec["settings"]["k"] == 6 and rec["settings"]["seed"] == 3
    assert rec["settings"]["probe"] and rec["settings"]["label_frames"] == "held-out"

    ckpt = run / "checkpoints" / "checkpoint_1_4.pt"
    assert ckpt.is_file()
    table, failures = score_checkpoints([str(ckpt)], None, str(tmp_path / "scores.csv"),
                                        metrics="default", device="cpu", progress=False)
    assert not failures
    # the run's settings were used, and every row says so
    assert set(table["k"].astype(int)) == {6} and set(table["seed"].astype(int)) == {3}
    assert set(table["probe_fingerprint"]) == {rec["settings"]["probe"]}
    compared = 0
    for key, online in rec["metrics"].items():
        parsed = parse_key(key)
        if parsed is None:
            continue
        row = table[(table["layer"] == parsed.layer) & (table["metric"] == parsed.metric)]
        assert len(row) == 1, key
        offline = float(row["value"].iloc[0])
        assert math.isfinite(online) and math.isfinite(offline), key
        if metric_info(parsed.metric).family == "rank":
            assert offline == pytest.approx(online, rel=1e-4), key
        else:  # the same frames, seed and device: the same clusters
            assert offline == pytest.approx(online, rel=1e-5, abs=1e-7), key
        compared += 1
    assert compared == len([k for k in rec["metrics"] if parse_key(k)]) > 30
