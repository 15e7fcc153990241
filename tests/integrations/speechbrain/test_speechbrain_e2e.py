"""End-to-end: a BEST-RQ recipe trained by SpeechBrain's real ``Brain.fit`` through
``python -m sslvitals.integrations.speechbrain``, the recipe's files untouched.

The miniature recipe (``recipe/``: a ``train.py`` with the stock BEST-RQ recipe's structure and
its HyperPyYAML, a 2-block conformer of width 32) trains for three epochs on the seeded corpus
of :mod:`sbdata`. The metrics must appear, finite, in the recipe's ``train_log.txt`` (on the
line of its own valid loss), in every checkpoint's meta, and in ``vitals.jsonl``; the
checkpoint kept by ``max_keys=["vitals/rankme/L2"]`` must be the epoch with the highest value.
Invariances: ``sslvitals score`` of the saved checkpoints gives the numbers measured during
training; two processes (``torchrun``, gloo on CPU) give the numbers one process measures on
the same weights; a resumed run keeps its schedule and writes no second record for an epoch.
Bad configurations stop before the first epoch; a failing metric gives NaN unless strict.
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

pytest.importorskip("speechbrain")

sys.path.insert(0, str(Path(__file__).parent))
import sbdata  # noqa: E402

from sslvitals.config import ALL_METRICS  # noqa: E402
from sslvitals.keys import TIME_KEY, metric_key  # noqa: E402

pytestmark = pytest.mark.e2e

ENTRY = ["-m", "sslvitals.integrations.speechbrain"]
VITALS = {"enabled": True, "k": 8, "reservoir_size": 1024, "silhouette_sample": 0, "seed": 3}
KEY = "vitals/rankme/L2"
LAYERS = (0, 1, 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sbcorpus")
    paths = sbdata.write_corpus(root / "data")
    paths["recipe"] = sbdata.copy_recipe(root / "recipe")
    return paths


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[3]),
                                         env.get("PYTHONPATH", "")])
    return env


def _vitals_file(tmp_path: Path, name: str = "vitals.yaml", **over) -> Path:
    conf = tmp_path / name
    conf.write_text(yaml.safe_dump({"vitals": {**VITALS, "probe": str(over.pop("probe")), **over}}))
    return conf


def _recipe_args(corpus: dict[str, Path], out: Path, *extra: str) -> list[str]:
    recipe = corpus["recipe"]
    return [str(recipe / "train.py"), str(recipe / "hparams" / "BEST-RQ.yaml"),
            "--data_folder", str(corpus["data"]), "--output_folder", str(out), "--device", "cpu",
            *extra]


def _run(argv: list[str], cwd: Path, timeout: int = 400) -> tuple[int, str]:
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _expected_keys() -> set[str]:
    return {metric_key(m, layer) for m in ALL_METRICS for layer in LAYERS}


def _log_lines(path: Path) -> list[dict[str, float]]:
    """The ``valid ...`` values of every line of the recipe's ``train_log.txt``."""
    out = []
    for line in path.read_text().splitlines():
        values: dict[str, float] = {}
        for item in line.split(" - ")[-1].split(", "):
            m = re.match(r"valid (\S+): (\S+)$", item)
            if m:
                values[m.group(1)] = float(m.group(2))
        out.append(values)
    return out


def _checkpoints(out: Path) -> dict[int, tuple[Path, dict]]:
    """Epoch -> (CKPT folder, meta), the epoch read from the recipe's epoch counter file."""
    found = {}
    for ckpt in sorted((out / "save").glob("CKPT+*")):
        epoch = int((ckpt / "counter.ckpt").read_text().strip())
        found[epoch] = (ckpt, yaml.safe_load((ckpt / "CKPT.yaml").read_text()))
    return found


@pytest.mark.timeout(600)
def test_bestrq_three_epochs_logs_meta_records_and_best_checkpoint(corpus, tmp_path):
    out = tmp_path / "exp"
    conf = _vitals_file(tmp_path, probe=corpus["probe"])
    code, log = _run(ENTRY + _recipe_args(corpus, out, "--num_to_keep", "1") + [
        "--vitals_config", str(conf), "--vitals_keep_max", KEY], tmp_path)
    assert code == 0, log[-4000:]
    assert "speechbrain.BEST-RQ[ConformerEncoder]" in log and "25.0 frames/s" in log

    records = _records(out / "vitals.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for rec in records:
        assert rec["toolkit"] == "speechbrain" and rec["run"] == "exp"
        assert set(rec["metrics"]) == _expected_keys()
        assert all(math.isfinite(v) for v in rec["metrics"].values())
        assert rec["settings"]["k"] == 8 and rec["probe"]["labels"] is True
        assert math.isfinite(rec["loss"]) and rec["update"] > 0

    # the recipe's own log line carries its valid loss and the vitals, and the same numbers
    lines = _log_lines(out / "train_log.txt")
    assert len(lines) == 3
    for line, rec in zip(lines, records):
        assert "loss" in line and "accuracy" in line
        assert set(rec["metrics"]) | {TIME_KEY} <= set(line)
        for key, value in rec["metrics"].items():  # FileTrainLogger prints 3 significant digits
            assert line[key] == pytest.approx(value, rel=6e-3, abs=1e-12), key
        assert line["loss"] == pytest.approx(rec["loss"], rel=6e-3)

    # checkpoints: the vitals in their meta; num_to_keep=1 plus the best by KEY survive
    by_epoch = {r["epoch"]: r["metrics"] for r in records}
    best = max(by_epoch, key=lambda e: by_epoch[e][KEY])
    kept = _checkpoints(out)
    assert set(kept) == {3, best}
    for epoch, (_, meta) in kept.items():
        assert meta["valid_loss"] == pytest.approx(records[epoch - 1]["loss"])
        assert {k: v for k, v in meta.items() if k.startswith("vitals/")} == by_epoch[epoch]

    from speechbrain.utils.checkpoints import Checkpointer

    chosen = Checkpointer(out / "save").find_checkpoint(max_key=KEY)
    assert Path(chosen.path) == kept[best][0]

    # offline == online: sslvitals score on the saved checkpoints gives the recorded numbers
    table = tmp_path / "scores.csv"
    code, log = _run(["-m", "sslvitals.cli", "score", str(out), "--probe", str(corpus["probe"]),
                      "--k", "8", "--reservoir-size", "1024", "--silhouette-sample", "0",
                      "--seed", "3", "--out", str(table), "--no-progress"], tmp_path)
    assert code == 0, log[-3000:]
    import pandas as pd

    df = pd.read_csv(table)
    assert set(df["toolkit"]) == {"speechbrain"} and set(df["step"]) == set(kept)
    for row in df.itertuples():
        key = metric_key(row.metric, row.layer)
        if key in by_epoch[row.step]:
            assert row.value == pytest.approx(by_epoch[row.step][key], rel=1e-9, abs=1e-12), key


@pytest.mark.timeout(900)
def test_two_processes_equal_one_process(corpus, tmp_path):
    """torchrun, 2 processes, gloo on CPU: each rank measures half the probe; the numbers equal
    a one-process measurement of the saved weights (and the checkpoint's meta)."""
    out = tmp_path / "exp"
    conf = _vitals_file(tmp_path, probe=corpus["probe"])
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29500 + os.getpid() % 1000), *ENTRY,
            *_recipe_args(corpus, out, "--distributed_backend", "gloo", "--number_of_epochs", "2"),
            "--vitals_config", str(conf)]
    code, log = _run(argv, tmp_path, timeout=600)
    assert code == 0, log[-4000:]
    # 8 probe utterances, 4 per rank (rank 0 logs)
    assert "measured 3 layers on 4 batches" in log and "on 8 batches" not in log
    records = _records(out / "vitals.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 only

    from sslvitals.config import VitalsConfig
    from sslvitals.integrations.speechbrain.checkpoint import load_speechbrain_checkpoint
    from sslvitals.monitor import VitalsMonitor
    from sslvitals.probe import ProbeSet

    ckpt, meta = _checkpoints(out)[2]
    loaded = load_speechbrain_checkpoint(str(ckpt))
    assert (loaded.toolkit, loaded.kind, loaded.step) == ("speechbrain", "bestrq", 2)
    probe = ProbeSet.from_path(corpus["probe"])
    one = VitalsMonitor(VitalsConfig(**VITALS)).measure(loaded.model, loaded.forward_fn,
                                                        probe.batches(60.0))
    sharded = records[1]["metrics"]
    assert set(sharded) == set(one) - {TIME_KEY} == _expected_keys()
    for key, value in sharded.items():
        assert value == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
        assert meta[key] == value


@pytest.mark.timeout(900)
def test_resume_keeps_schedule_and_writes_no_duplicate(corpus, tmp_path):
    """every_n_validations=2 measures epochs 1, 3, 5; the schedule is a function of the epoch,
    so a run stopped after epoch 3 and resumed to 5 measures what one run would. A record of
    epoch 5 written by a process that died before its checkpoint is moved out."""
    out = tmp_path / "exp"
    conf = _vitals_file(tmp_path, probe=corpus["probe"], every_n_validations=2,
                        metrics="rankme,inertia")
    first = ENTRY + _recipe_args(corpus, out, "--number_of_epochs", "3") + [
        "--vitals_config", str(conf)]
    code, log = _run(first, tmp_path)
    assert code == 0, log[-4000:]
    assert [r["epoch"] for r in _records(out / "vitals.jsonl")] == [1, 3]
    lines = _log_lines(out / "train_log.txt")
    assert [KEY in line for line in lines] == [True, False, True]
    # a stale record: epoch 5 measured by a run that died before saving its checkpoint
    stale = dict(_records(out / "vitals.jsonl")[-1], epoch=5)
    with open(out / "vitals.jsonl", "a") as fh:
        fh.write(json.dumps(stale) + "\n")

    second = ENTRY + _recipe_args(corpus, out, "--number_of_epochs", "5") + [
        "--vitals_config", str(conf)]
    code, log = _run(second, tmp_path)
    assert code == 0, log[-4000:]
    assert "Loading a checkpoint" in log and "Going into epoch 4" in log
    records = _records(out / "vitals.jsonl")
    assert [r["epoch"] for r in records] == [1, 3, 5]
    assert records[2]["wall_time"] != stale["wall_time"] or records[2]["metrics"] != stale["metrics"]
    assert [r["epoch"] for r in _records(out / "vitals.jsonl.discarded")] == [5]
    assert [KEY in line for line in _log_lines(out / "train_log.txt")] == [True, False, True,
                                                                          False, True]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("strict", [False, True])
def test_metric_failure_mid_training(corpus, tmp_path, strict):
    """k above the probe's frame count: k-means fails at every validation."""
    out = tmp_path / "exp"
    conf = _vitals_file(tmp_path, probe=corpus["probe"], k=4096, reservoir_size=4096,
                        metrics="rankme,inertia", strict=strict)
    code, log = _run(ENTRY + _recipe_args(corpus, out, "--number_of_epochs", "1") + [
        "--vitals_config", str(conf)], tmp_path)
    if strict:
        assert code == 2
        assert "metric inertia failed on layer 0" in log and "frames for k=4096" in log
        assert not list((out / "save").glob("CKPT+*"))
    else:
        assert code == 0, log[-4000:]
        (line,) = _log_lines(out / "train_log.txt")
        assert math.isnan(line["vitals/inertia/L2"]) and math.isfinite(line[KEY])
        (ckpt, meta), = _checkpoints(out).values()
        assert KEY in meta and "vitals/inertia/L2" not in meta  # NaN is left out of the meta


@pytest.mark.timeout(600)
def test_bad_configuration_stops_before_the_first_epoch(corpus, tmp_path):
    cases = {
        "unknown": (["--vitals", "enabled=true", "--vitals", "kmeans_k=100", "--vitals",
                     f"probe={corpus['probe']}"], ["kmeans_k", "reservoir_size"]),
        "probe": (["--vitals", "enabled=true", "--vitals", f"probe={tmp_path / 'nope.tsv'}"],
                  ["nope.tsv does not exist"]),
        "layer": (["--vitals_config", str(_vitals_file(tmp_path, "layer.yaml",
                                                       probe=corpus["probe"], layers="0,7"))],
                  ["layer 7 is out of range", "valid layers are 0..2"]),
        "keep": (["--vitals_config", str(_vitals_file(tmp_path, probe=corpus["probe"])),
                  "--vitals_keep_max", "vitals/rankme/L9"], ["vitals/rankme/L9", "layer 9"]),
    }
    for name, (extra, expected) in cases.items():
        out = tmp_path / name
        code, log = _run(ENTRY + _recipe_args(corpus, out) + extra, tmp_path)
        assert code == 2, (name, log[-3000:])
        for text in expected:
            assert text in log, (name, text, log[-3000:])
        assert "Going into epoch" not in log, name
        assert not list(out.glob("save/CKPT+*")) and not (out / "vitals.jsonl").exists(), name
