"""Interrupted fairseq runs resume with the right records.

End-to-end (real ``fairseq-hydra-train``, the tiny corpus and model of ``tinydata``): a run
trained to N updates and started again with the same command to 2N, on the same save dir and
with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` unset, resumes from ``checkpoint_last.pt`` and its
``vitals.jsonl`` holds one record per validation, no gap, no duplicate, each record under the
update and epoch of the checkpoint saved at that validation. With ``every_n_validations=2`` the
interrupted run measures the validations an uninterrupted run measures.

Unit tests cover the pieces without training: the allow-list of torch's safe unpickler, the
record bookkeeping at a restart and the validation history.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.resume import RunRecords, ValidationHistory
from sslvitals.monitor import VitalsMonitor
from sslvitals.records import append_record, make_record, read_records

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HUBERT = "hubert_pretraining_vitals"
KEY = "vitals/rankme/L2"


# ---------------------------------------------------------------------------------- unit tests
def _record(run: str, update: int, epoch: int = 1, value: float = 1.0) -> dict:
    return make_record(toolkit="fairseq", metrics={KEY: value}, run=run, update=update,
                       epoch=epoch)


def test_restart_moves_later_records_and_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "vitals.jsonl"
    for update in (2, 4, 6, 8):
        append_record(path, _record("a", update))
    append_record(path, _record("other", 8))  # another run sharing the file: untouched
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"toolkit": "fairseq", "run": "a", "upd')  # a write cut short
    records = RunRecords(path, "a", key="update")
    assert records.restart_at(4) == 3
    kept = read_records(path)
    assert [(r["run"], r["update"]) for r in kept] == [("a", 2), ("a", 4), ("other", 8)]
    assert path.read_text().endswith("\n")
    moved = records.discarded_path.read_text().splitlines()
    assert [json.loads(line)["update"] for line in moved[:2]] == [6, 8]
    assert moved[2].startswith('{"toolkit": "fairseq", "run": "a", "upd')
    assert records.recorded(4) and not records.recorded(6)
    # the next record starts on its own line and is read back
    append_record(path, _record("a", 6, value=2.0))
    records.note(6)
    assert [r["update"] for r in read_records(path) if r["run"] == "a"] == [2, 4, 6]
    assert records.recorded(6)
    # a restart at the same place changes nothing
    before = path.read_text()
    assert RunRecords(path, "a", key="update").restart_at(6) == 0
    assert path.read_text() == before


def test_restart_from_scratch_and_by_epoch(tmp_path: Path) -> None:
    path = tmp_path / "vitals.jsonl"
    for epoch in (1, 2, 3):
        append_record(path, _record("e", 10 * epoch, epoch=epoch))
    assert RunRecords(path, "e", key="epoch").restart_at(2) == 1
    assert [r["epoch"] for r in read_records(path)] == [1, 2]
    assert RunRecords(path, "e", key="epoch").restart_at(0) == 2  # a fresh start
    assert read_records(path) == []
    assert len((tmp_path / "vitals.jsonl.discarded").read_text().splitlines()) == 3
    assert RunRecords(tmp_path / "none.jsonl", "e", key="epoch").restart_at(0) == 0


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "vitals.jsonl"
    path.write_text(json.dumps(_record("a", 2)) + "\n" + json.dumps(_record("a", 4)))
    records = RunRecords(path, "a", key="update")
    assert records.restart_at(4) == 0
    assert [r["update"] for r in read_records(path)] == [2, 4]
    assert path.read_text().endswith("\n") and records.recorded(4)


def _index_sequence(history: ValidationHistory, updates: list[int], every: int,
                    stop_at: int | None = None) -> list[int]:
    monitor = VitalsMonitor(VitalsConfig(enabled=True, every_n_validations=every))
    measured = []
    for update in updates:
        index = history.index(update)
        history.add(update, 1, stop=update == stop_at)
        if monitor.due(index):
            measured.append(update)
    return measured


@pytest.mark.parametrize("every", [1, 2, 3])
def test_history_schedule_survives_restarts(tmp_path: Path, every: int) -> None:
    """Validations every 2 updates: the measured ones are those of an uninterrupted run, whether
    the run is killed (the restart repeats validations after its checkpoint) or stopped by
    max_update off the validation grid and extended."""
    grid = list(range(2, 21, 2))
    whole = _index_sequence(ValidationHistory(tmp_path / "whole.txt"), grid, every)
    assert whole == grid[::every]
    # killed after the validation at 12, last checkpoint at 8: validations 10, 12 are repeated
    path = tmp_path / "killed.txt"
    first = _index_sequence(ValidationHistory(path), grid[:6], every)
    history = ValidationHistory(path)
    history.restart_at(8, 1)
    second = _index_sequence(history, grid[4:], every)
    assert sorted(set(u for u in first if u <= 8) | set(second)) == whole
    # stopped by max_update at 7 (validated there), then extended to 20
    path = tmp_path / "stopped.txt"
    first = _index_sequence(ValidationHistory(path), [2, 4, 6, 7], every, stop_at=7)
    history = ValidationHistory(path)
    history.restart_at(7, 1)
    second = _index_sequence(history, grid[3:], every)
    assert [u for u in first if u != 7] + second == whole
    # the monitor's own count (no index) restarts at 0 in a new process: not the same schedule
    if every == 2:
        monitor = VitalsMonitor(VitalsConfig(enabled=True, every_n_validations=every))
        assert [u for u in grid[3:] if monitor.due()] != [u for u in whole if u > 6]


def test_stop_at_the_end_of_a_validated_epoch_counts(tmp_path: Path) -> None:
    """A stop that was also an end-of-epoch validation (the run resumes in the next epoch)
    counts in the schedule, as in an uninterrupted run."""
    history = ValidationHistory(tmp_path / "h.txt")
    history.add(4, 1)
    history.add(5, 1, stop=True)
    assert ValidationHistory(tmp_path / "h.txt").index(6) == 1
    resumed = ValidationHistory(tmp_path / "h.txt")
    resumed.restart_at(5, 2, validate_interval=1)
    assert resumed.index(6) == 2
    assert ValidationHistory(tmp_path / "h.txt").index(6) == 2  # written back
    other = ValidationHistory(None)
    other.add(5, 1, stop=True)
    other.restart_at(5, 2, validate_interval=5)  # epoch 1 is not validated at its end
    assert other.index(6) == 0


def test_monitor_due_with_index() -> None:
    monitor = VitalsMonitor(VitalsConfig(enabled=True, every_n_validations=3))
    assert [monitor.due(i) for i in (4, 5, 6)] == [False, False, True]
    assert [monitor.due() for _ in range(3)] == [False, False, True]  # continues after 6


@pytest.fixture
def fairseq_state(tmp_path: Path) -> Path:
    pytest.importorskip("fairseq")
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    labels = Dictionary()
    for symbol in "abc":
        labels.add_symbol(symbol)
    state = {
        "args": argparse.Namespace(arch="hubert", lr=[5e-4]),
        "cfg": OmegaConf.create({"task": {"_name": "hubert_pretraining", "labels": ["km"]},
                                 "model": {"_name": "hubert", "x": "${task._name}"}}),
        "model": {"w": torch.ones(2, 2)},
        "task_state": {"dictionaries": [labels]},
        "extra_state": {"val_loss": np.float64(4.5), "best": np.float32(1.5),
                        "count": np.int64(3)},
        "optimizer_history": [{"num_updates": 7}],
    }
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    return path


def test_safe_load_reads_what_fairseq_checkpoints_hold(fairseq_state: Path) -> None:
    from sslvitals.integrations.fairseq.checkpoint import fairseq_step, read_fairseq_state

    # torch's default refuses the file (the Dictionary); the allow-list reads it. Another test
    # may have imported the plugin, which allow-lists the classes process-wide: ask torch with
    # its default list, then put the process's list back.
    registered = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(fairseq_state))
    finally:
        torch.serialization.add_safe_globals(registered)
    assert "fairseq.data.dictionary.Dictionary" in unsafe and "argparse.Namespace" in unsafe
    state = read_fairseq_state(str(fairseq_state))
    assert state["task_state"]["dictionaries"][0].symbols[-3:] == ["a", "b", "c"]
    assert state["args"].lr == [5e-4] and state["cfg"].model.x == "hubert_pretraining"
    assert state["extra_state"]["val_loss"] == 4.5 and fairseq_step(state) == 7


def test_safe_load_refuses_other_objects(tmp_path: Path) -> None:
    pytest.importorskip("fairseq")
    from sslvitals.integrations.fairseq.checkpoint import read_fairseq_state

    path = tmp_path / "bad.pt"
    torch.save({"model": {}, "cfg": {}, "hook": os.getcwd}, path)
    env = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with pytest.raises(SSLVitalsError, match=r"posix\.getcwd.*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
            read_fairseq_state(str(path))
    finally:
        if env is not None:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = env


def test_fairseq_tools_run_with_the_allow_list(fairseq_state: Path, tmp_path: Path) -> None:
    """A script that reads a HuBERT checkpoint with torch's default (as fairseq's tools do)
    fails on its own and works through ``python -m ...safe_load`` and after importing the
    plugin, with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD unset."""
    from sslvitals.integrations.fairseq.cli import user_dir

    script = tmp_path / "tool.py"
    script.write_text(
        "import sys, torch\n"
        "if len(sys.argv) > 2:\n"
        "    sys.path.insert(0, sys.argv[2]); import sslvitals_fairseq_plugin  # noqa\n"
        "state = torch.load(sys.argv[1])\n"
        "print('symbols', state['task_state']['dictionaries'][0].symbols[-1])\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[2]), env.get("PYTHONPATH", "")])

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                              timeout=120)

    plain = run(str(script), str(fairseq_state))
    assert plain.returncode != 0 and "Weights only load failed" in plain.stderr
    wrapped = run("-m", "sslvitals.integrations.fairseq.safe_load", str(script), str(fairseq_state))
    assert wrapped.returncode == 0, wrapped.stderr[-2000:]
    assert "symbols c" in wrapped.stdout
    plugin = run(str(script), str(fairseq_state), str(Path(user_dir()).parent))
    assert plugin.returncode == 0, plugin.stderr[-2000:]
    assert "symbols c" in plugin.stdout


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("fairseq")
    import tinydata

    return tinydata.make_corpus(tmp_path_factory.mktemp("fairseq_resume_corpus"))


def _train(corpus: Path, run: Path, max_update: int, extra: list[str]) -> str:
    """One ``fairseq-hydra-train`` invocation; returns its console output."""
    import tinydata

    cmd = tinydata.hubert_command(corpus, run, tinydata.plugin_overrides(HUBERT) + [
        "+task.vitals.enabled=true", "+task.vitals.k=8", "+task.vitals.layers=[2]",
        "+task.vitals.metrics=[rankme,pnmi]", f"optimization.max_update={max_update}",
        "checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=-1",
        "checkpoint.no_epoch_checkpoints=false", *extra,
    ])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # resuming must work with torch's default
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def _valid_lines(out: str) -> list[dict]:
    marker = "[valid][INFO] - "
    return [json.loads(line.split(marker, 1)[1]) for line in out.splitlines() if marker in line]


def _checkpoints(save_dir: Path) -> dict[int, tuple[int, float]]:
    """update -> (epoch, validation loss) of every checkpoint_E_U.pt / checkpointE.pt, the
    update and loss read from inside the file."""
    from sslvitals.integrations.fairseq.checkpoint import fairseq_step, read_fairseq_state

    found = {}
    for path in save_dir.glob("checkpoint*.pt"):
        m = re.fullmatch(r"checkpoint_(\d+)_(\d+)\.pt|checkpoint(\d+)\.pt", path.name)
        if m is None:
            continue
        state = read_fairseq_state(str(path))
        update = fairseq_step(state)
        if m.group(2) is not None:
            assert update == int(m.group(2)), path.name
        epoch = int(m.group(1) or m.group(3))
        found[update] = (epoch, float(state["extra_state"]["val_loss"]))
    return found


_WORKER = """
import json, sys, torch
rank, world, init, save, corpus, out = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
torch.distributed.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
from sslvitals.config import VitalsConfig
from sslvitals.integrations.fairseq.runner import FairseqVitals
vitals = FairseqVitals(VitalsConfig(enabled=True, every_n_validations=2), data=corpus,
                       save_dir=save, validate_interval_updates=2)
vitals.on_train_start(6, 1)
due = [vitals.is_due(update, 1) for update in (8, 10, 12)]
open(out, "w").write(json.dumps(due))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_schedule_is_rank_zeros_in_two_processes(corpus: Path, tmp_path: Path) -> None:
    """Only rank 0 holds the run's validation history (here each rank has its own save dir, as
    on nodes without a shared file system); both processes take its decision."""
    saves = [tmp_path / "rank0", tmp_path / "rank1"]
    saves[0].mkdir()
    history = ValidationHistory(saves[0] / "vitals_validations.txt")
    for update in (2, 4, 6):
        history.add(update, 1)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[2]), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path / "init"),
                               str(saves[rank]), str(corpus), str(tmp_path / f"due{rank}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    dues = [json.loads((tmp_path / f"due{rank}.json").read_text()) for rank in range(2)]
    # validations 2, 4, 6 were indices 0-2: 8 is the 4th (not measured), 10 the 5th
    assert dues == [[False, True, False]] * 2
    assert not (saves[1] / "vitals_validations.txt").exists()
    assert [e.update for e in ValidationHistory(saves[0] / "vitals_validations.txt").entries] == \
        [2, 4, 6, 8, 10, 12]


@pytest.mark.e2e
def test_resume_to_twice_the_updates(corpus: Path, tmp_path: Path) -> None:
    """6 updates, then the same command to 12: the second run resumes mid-epoch (epoch 1 has
    10 updates), crosses into epoch 2, and a record the first run left after its last
    checkpoint (a process killed between measuring and saving) plus a cut line are moved out."""
    run = tmp_path / "hubert"
    save_dir = run / "checkpoints"
    jsonl = save_dir / "vitals.jsonl"
    first = _train(corpus, run, 6, [])
    assert [r["update"] for r in read_records(jsonl)] == [2, 4, 6]
    # what a run killed after measuring update 8, before saving it, leaves behind
    stale = dict(read_records(jsonl)[-1], update=8, loss=123.0)
    stale.pop("source")
    append_record(jsonl, stale)
    with open(jsonl, "a", encoding="utf-8") as fh:
        fh.write('{"toolkit": "fairseq", "run": "hubert", "update": 1')
    second = _train(corpus, run, 12, [])
    assert "Loaded checkpoint" in second and "(epoch 1 @ 6 updates)" in second

    valid = _valid_lines(first) + _valid_lines(second)
    updates = [int(v["valid_num_updates"]) for v in valid]
    assert updates == [2, 4, 6, 8, 10, 12]  # fairseq validated every 2 updates
    records = read_records(jsonl)
    assert [r["update"] for r in records] == updates  # one per validation: no gap, no duplicate
    saved = _checkpoints(save_dir)
    assert sorted(saved) == updates
    for rec, v in zip(records, valid):
        epoch, val_loss = saved[rec["update"]]
        assert rec["epoch"] == epoch == int(v["epoch"])
        # the record is that checkpoint's validation: same loss as the checkpoint stores
        assert rec["loss"] == pytest.approx(val_loss, abs=1e-3)
        assert rec["metrics"][KEY] == pytest.approx(float(v[f"valid_{KEY}"]), rel=1e-5)
        assert all(math.isfinite(x) for x in rec["metrics"].values())
    assert [r["epoch"] for r in records] == [1, 1, 1, 1, 1, 2]
    moved = (save_dir / "vitals.jsonl.discarded").read_text().splitlines()
    assert json.loads(moved[0])["loss"] == 123.0 and len(moved) == 2
    history = (save_dir / "vitals_validations.txt").read_text().split("\n", 1)[1]
    assert [int(line.split()[0]) for line in history.splitlines()] == updates


@pytest.mark.e2e
def test_every_n_validations_after_resume(corpus: Path, tmp_path: Path) -> None:
    """every_n_validations=2 with validations every 2 updates: a run stopped at update 3 (off
    the grid: fairseq validates there only because it stops) and resumed to 6 measures the
    validations an uninterrupted run to 6 measures."""
    extra = ["+task.vitals.every_n_validations=2"]
    whole = _train(corpus, tmp_path / "whole", 6, extra)
    measured = [int(v["valid_num_updates"]) for v in _valid_lines(whole) if f"valid_{KEY}" in v]
    whole_records = read_records(tmp_path / "whole" / "checkpoints" / "vitals.jsonl")
    assert [r["update"] for r in whole_records] == measured and len(measured) >= 2

    run = tmp_path / "interrupted"
    first = _train(corpus, run, 3, extra)
    second = _train(corpus, run, 6, extra)
    assert "(epoch 1 @ 3 updates)" in second
    valid = _valid_lines(first) + _valid_lines(second)
    assert [int(v["valid_num_updates"]) for v in valid] == [2, 3, 4, 6]
    after = [int(v["valid_num_updates"]) for v in _valid_lines(second) if f"valid_{KEY}" in v]
    assert after == [u for u in measured if u > 3]
    records = read_records(run / "checkpoints" / "vitals.jsonl")
    assert [r["update"] for r in records if r["update"] > 3] == after
    assert len({r["update"] for r in records}) == len(records)
