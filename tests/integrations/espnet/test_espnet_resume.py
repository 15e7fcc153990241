"""Interrupted ESPnet runs resume with the right records.

End-to-end: ESPnet's real ``hubert_train`` through the sslvitals entry point trains the tiny
HuBERT of :mod:`espnet_tinydata` for one epoch, then the same command with ``--resume true
--max_epoch 2`` continues from ``checkpoint.pth``. ``vitals.jsonl`` must hold one record per
epoch, no gap, no duplicate, each under the epoch of the ``<N>epoch.pth`` saved after it and
the iteration count ESPnet's reporter stored for that epoch; a record the first run left after
its checkpoint (a process killed between measuring and saving) and a cut line are moved out.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("espnet2")

import espnet_tinydata as tinydata  # noqa: E402  (on sys.path via conftest)

from sslvitals.records import append_record, read_records  # noqa: E402

pytestmark = pytest.mark.e2e

ENTRY = ["-m", "sslvitals.integrations.espnet.hubert_train"]
VITALS = ["--vitals", "enabled=true", "--vitals", "k=8", "--vitals", "reservoir_size=1024",
          "--vitals", "metrics=rankme,pnmi", "--vitals", "seed=2"]
QUICK = ["--num_att_plot", "0", "--use_matplotlib", "false"]
KEY = "vitals/rankme/L2"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[3]),
                                         env.get("PYTHONPATH", "")])
    return env


def _train(root: Path, out: Path, epochs: int, resume: bool) -> str:
    argv = ENTRY + tinydata.hubert_args(root, out, "hubert_pretrain", epochs=epochs,
                                        extra=QUICK + VITALS + ["--resume", str(resume).lower()])
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, *argv], cwd=out, env=_env(), capture_output=True,
                          text=True, timeout=420)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def _valid_epochs(log: str) -> list[int]:
    """Epochs whose ``[valid]`` results carry the vitals key."""
    return [int(m.group(1)) for m in re.finditer(r"(\d+)epoch results: .*\[valid\] .*" + KEY, log)]


@pytest.mark.timeout(900)
def test_resume_to_twice_the_epochs(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    jsonl = out / "vitals.jsonl"
    first = _train(tiny_root, out, 1, resume=False)
    assert [r["epoch"] for r in read_records(jsonl)] == [1]
    # what a run killed after measuring epoch 2, before writing checkpoint.pth, leaves behind
    stale = dict(read_records(jsonl)[0], epoch=2, update=999)
    stale.pop("source")
    append_record(jsonl, stale)
    with open(jsonl, "a", encoding="utf-8") as fh:
        fh.write('{"toolkit": "espnet", "run": "exp", "epo')
    second = _train(tiny_root, out, 2, resume=True)
    assert "The training was resumed using" in second
    assert "The training was finished at 2 epochs" in second

    validated = _valid_epochs(first) + _valid_epochs(second)
    assert validated == [1, 2]
    records = read_records(jsonl)
    # one record per validation: no gap, no duplicate; epochs of the saved <N>epoch.pth
    assert [r["epoch"] for r in records] == validated
    saved = sorted(int(p.name[:-len("epoch.pth")]) for p in out.glob("*epoch.pth"))
    assert saved == validated
    # the update of each record is the iteration count ESPnet's reporter saved for its epoch
    import torch

    reporter = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["reporter"]
    totals = {int(e): int(s["train"]["total_count"]) for e, s in reporter["stats"].items()}
    assert [r["update"] for r in records] == [totals[r["epoch"]] for r in records]
    assert records[0]["update"] < records[1]["update"]
    for rec in records:
        assert rec["run"] == "exp" and math.isfinite(rec["metrics"][KEY])
    moved = (out / "vitals.jsonl.discarded").read_text().splitlines()
    assert len(moved) == 2 and json.loads(moved[0])["update"] == 999
