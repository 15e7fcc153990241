"""End-to-end: ESPnet's real ``hubert_train`` through the sslvitals entry points.

A tiny HuBERT (2 blocks, width 32) trains for two epochs on the seeded corpus of
:mod:`espnet_tinydata`, with both ESPnet encoders; the metrics must appear in ``train.log``'s
``[valid]`` results, in ``vitals.jsonl``, in ``images/`` and TensorBoard, with finite values.
A two-process CPU (gloo) run must report the numbers a one-process measurement of the saved
model gives. Bad configurations stop before training; failing metrics give NaN and training
goes on unless strict.
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
import yaml

pytest.importorskip("espnet2")

import espnet_tinydata as tinydata  # noqa: E402  (on sys.path via conftest)

from sslvitals.config import ALL_METRICS, VitalsConfig  # noqa: E402
from sslvitals.keys import TIME_KEY, metric_key  # noqa: E402

pytestmark = pytest.mark.e2e

SHIM = ["-m", "sslvitals.integrations.espnet.python", "-m", "espnet2.bin.hubert_train"]
ENTRY = ["-m", "sslvitals.integrations.espnet.hubert_train"]
VITALS = {"enabled": True, "k": 8, "reservoir_size": 1024, "silhouette_sample": 0, "seed": 2}
QUICK = ["--num_att_plot", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[3]),
                                         env.get("PYTHONPATH", "")])
    return env


def _run(argv: list[str], out: Path, timeout: int = 420) -> tuple[int, str]:
    """Run a training command; returns its exit status and its console output (what the
    recipe's launcher writes to ``train.log``)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, *argv], cwd=out, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (out.parent / "train.log").write_text(log)
    return proc.returncode, log


def _valid_parts(log: str) -> list[dict[str, float]]:
    """The ``[valid]`` key=value pairs of every ``<N>epoch results`` line, in epoch order."""
    parts = []
    for line in log.splitlines():
        m = re.search(r"\d+epoch results: .*?\[valid\] (.*?)(?:, \[\w+\]|$)", line)
        if m is None:
            continue
        values = {}
        for item in m.group(1).split(", "):
            key, _, value = item.partition("=")
            try:
                values[key] = float(value)
            except ValueError:
                pass
        parts.append(values)
    return parts


def _expected_keys(layers=(0, 1, 2)) -> set[str]:
    return {metric_key(m, layer) for m in ALL_METRICS for layer in layers}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("encoder", list(tinydata.ENCODERS))
def test_hubert_train_two_epochs(tiny_root, tmp_path, encoder):
    out = tmp_path / "exp"
    if encoder == "torchaudio_hubert":
        # the recipe route: the --python stand-in and a separate --vitals_config file
        conf = tmp_path / "vitals.yaml"
        conf.write_text(yaml.safe_dump({"vitals": VITALS}))
        argv = SHIM + tinydata.hubert_args(tiny_root, out, encoder,
                                           extra=QUICK + ["--vitals_config", str(conf)])
    else:
        # the direct entry point with a 'vitals:' block in the training config
        train = tmp_path / "train.yaml"
        train.write_text(yaml.safe_dump({"vitals": dict(VITALS, k=16)}))
        argv = ENTRY + tinydata.hubert_args(tiny_root, out, encoder,
                                            extra=QUICK + ["--config", str(train),
                                                           "--vitals", "k=8",
                                                           "--best_model_criterion",
                                                           "valid,vitals/rankme/L2,max"])
    code, log = _run(argv, out)
    assert code == 0, log[-3000:]
    assert "The training was finished at 2 epochs" in log
    valid = _valid_parts(log)
    assert len(valid) == 2
    keys = _expected_keys()
    for part in valid:
        assert "loss" in part and keys <= set(part) and TIME_KEY in part
        assert all(math.isfinite(part[k]) for k in keys), part
    records = _records(out / "vitals.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for rec, part in zip(records, valid):
        assert rec["toolkit"] == "espnet" and set(rec["metrics"]) == keys
        assert rec["probe"]["utterances"] == 6 and rec["probe"]["labels"] is True
        assert rec["update"] > 0 and rec["loss"] == pytest.approx(part["loss"], rel=1e-3)
        for key in keys:
            value = rec["metrics"][key]
            assert math.isfinite(value)
            # the log prints 3 decimals (or 3 significant digits in e-notation)
            assert value == pytest.approx(part[key], rel=2e-3, abs=2e-3), key
    assert records[0]["metrics"] != records[1]["metrics"]  # the model changed in between
    assert (out / "images" / "vitals" / "rankme" / "L2.png").is_file()
    assert list((out / "tensorboard" / "valid").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    if encoder == "torchaudio_hubert":
        assert saved["vitals_config"].endswith("vitals.yaml") and saved["vitals"] == {}
    else:
        assert saved["vitals"]["k"] == 8 and saved["vitals"]["enabled"] is True
        # a vitals key as --best_model_criterion: ESPnet links the best epoch under the
        # '/'-free alias, and that epoch is the one with the highest rankme on layer 2
        link = out / "valid.vitals.rankme.L2.best.pth"
        assert link.is_symlink() or link.is_file()
        best = max(records, key=lambda r: r["metrics"]["vitals/rankme/L2"])["epoch"]
        assert os.readlink(link) == f"{best}epoch.pth" if link.is_symlink() else True
        assert all("vitals.rankme.L2" in part for part in valid)
    assert (out / "2epoch.pth").is_file()


@pytest.mark.timeout(900)
def test_two_processes_equal_one_process(tiny_root, tmp_path):
    """ESPnet's CPU DDP (gloo, one process per rank): the sharded measurement of the trained
    model equals a one-process measurement of the saved weights.

    One utterance per probe batch (``batch_seconds: 1``): the group-norm front-end of HuBERT
    normalises over the padded length, so with padding an utterance's features depend on the
    batch it lands in, and batches differ between one and two processes.
    """
    out = tmp_path / "exp"
    out.mkdir()
    vitals = dict(VITALS, batch_seconds=1.0)
    conf = tmp_path / "vitals.yaml"
    conf.write_text(yaml.safe_dump({"vitals": vitals}))
    base = ENTRY + tinydata.hubert_args(
        tiny_root, out, "hubert_pretrain",
        extra=QUICK + ["--use_matplotlib", "false", "--vitals_config", str(conf),
                       "--multiprocessing_distributed", "false", "--dist_backend", "gloo",
                       "--dist_world_size", "2",
                       "--dist_init_method", f"file://{tmp_path / 'dist_init'}"])
    procs = []
    for rank in range(2):
        fh = open(tmp_path / f"rank{rank}.txt", "w")
        procs.append((subprocess.Popen([sys.executable, *base, "--dist_rank", str(rank)],
                                       cwd=out, env=_env(), stdout=fh,
                                       stderr=subprocess.STDOUT), fh))
    codes = []
    for proc, fh in procs:
        try:
            codes.append(proc.wait(timeout=600))
        finally:
            fh.close()
    assert codes == [0, 0], (tmp_path / "rank0.txt").read_text()[-3000:]
    log = (tmp_path / "rank0.txt").read_text()
    assert re.search(r":0/2\] .*1epoch results", log)  # ESPnet's distributed log prefix
    records = _records(out / "vitals.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 only
    assert all(math.isfinite(v) for r in records for v in r["metrics"].values())

    import torch
    from espnet2.tasks.hubert import HubertTask

    from sslvitals.integrations.espnet.session import VitalsSession

    model, _ = HubertTask.build_model_from_file(out / "config.yaml", out / "2epoch.pth", "cpu")
    torch.manual_seed(0)
    session = VitalsSession(VitalsConfig(**vitals), tmp_path / "one",
                            valid_data=[(str(tiny_root / "data/valid/wav.scp"), "speech",
                                         "sound")])
    session.preflight(model)
    one = session.measure(model, epoch=2)
    sharded = records[1]["metrics"]
    assert set(sharded) == set(one) - {TIME_KEY}
    # measured: largest relative difference 1.4e-7 (float32 forward, float64 sums)
    for key, value in sharded.items():
        assert value == pytest.approx(one[key], rel=1e-5, abs=1e-7), key


@pytest.mark.timeout(600)
@pytest.mark.parametrize("strict", [False, True])
def test_metric_failure_mid_training(tiny_root, tmp_path, strict):
    """k above the probe's frame count: k-means fails at the first validation."""
    out = tmp_path / "exp"
    vitals = dict(VITALS, k=4096, reservoir_size=4096, metrics="rankme,inertia", strict=strict)
    conf = tmp_path / "vitals.yaml"
    conf.write_text(yaml.safe_dump(vitals))
    argv = ENTRY + tinydata.hubert_args(tiny_root, out, "hubert_pretrain", epochs=1,
                                        extra=QUICK + ["--use_matplotlib", "false",
                                                       "--vitals_config", str(conf)])
    code, log = _run(argv, out)
    if strict:
        assert code == 2  # the entry point's status for an sslvitals error
        assert "metric inertia failed on layer 0" in log and "frames for k=4096" in log
        assert not (out / "1epoch.pth").exists()
    else:
        assert code == 0, log[-3000:]
        assert "reporting NaN and going on" in log
        part = _valid_parts(log)[0]
        assert math.isnan(part["vitals/inertia/L2"]) and math.isfinite(part["vitals/rankme/L2"])
        assert "The training was finished at 1 epochs" in log


@pytest.mark.timeout(300)
def test_bad_configuration_stops_before_training(tiny_root, tmp_path):
    out = tmp_path / "exp"
    argv = ENTRY + tinydata.hubert_args(tiny_root, out, "hubert_pretrain", epochs=1,
                                        extra=["--vitals", "enabled=true", "--vitals",
                                               "kmeans_k=100"])
    code, log = _run(argv, out)
    assert code == 2
    assert "kmeans_k" in log and "reservoir_size" in log
    assert "epoch results" not in log and not list(out.glob("*.pth"))
