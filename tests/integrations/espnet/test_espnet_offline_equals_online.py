"""Offline equals online for ESPnet: ``sslvitals score`` on an epoch checkpoint of a
``hubert_train`` run with vitals on reproduces the values that run logged for that epoch,
taking the settings and the probe from the run's ``vitals.jsonl``."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("espnet2")

import espnet_tinydata as tinydata  # noqa: E402  (on sys.path via conftest)

from sslvitals.keys import parse_key  # noqa: E402
from sslvitals.metric_table import metric_info  # noqa: E402
from sslvitals.records import read_records  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_score_reproduces_the_logged_values(tiny_root: Path, tmp_path: Path) -> None:
    from sslvitals.offline.score import score_checkpoints

    out = tmp_path / "exp"
    out.mkdir()
    conf = tmp_path / "vitals.yaml"
    conf.write_text(yaml.safe_dump({"vitals": {"enabled": True, "k": 5, "reservoir_size": 600,
                                               "silhouette_sample": 200, "seed": 4}}))
    argv = ["-m", "sslvitals.integrations.espnet.hubert_train"] + tinydata.hubert_args(
        tiny_root, out, "torchaudio_hubert", extra=["--num_att_plot", "0", "--vitals_config", str(conf)])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[3]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *argv], cwd=out, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rec = {r["epoch"]: r for r in read_records(out / "vitals.jsonl")}[2]
    assert rec["settings"]["k"] == 5 and rec["settings"]["seed"] == 4

    table, failures = score_checkpoints([str(out / "2epoch.pth")], None, str(tmp_path / "s.csv"),
                                        device="cpu", progress=False)
    assert not failures
    assert set(table["k"].astype(int)) == {5}
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
        else:
            assert offline == pytest.approx(online, rel=1e-5, abs=1e-7), key
        compared += 1
    assert compared > 30
