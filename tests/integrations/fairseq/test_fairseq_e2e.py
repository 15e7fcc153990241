"""End-to-end: the stock fairseq recipes, run by ``fairseq-hydra-train``, with the plugin.

Every test starts the real CLI in a subprocess on a tiny generated corpus (tiny models: 2
layers, dim 64, 4 updates, validation every 2 updates) and reads what a user would read: the
JSON valid log lines, ``vitals.jsonl``, TensorBoard event files, the saved checkpoints, and the
error message of a run that must not start.

fairseq 0.12's multi-process training cannot run on CPU (``all_gather_list`` allocates a CUDA
buffer), so the sharded measurement is tested around the plugin in ``test_fairseq_plugin.py``.
"""
from __future__ import annotations

import json
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

from sslvitals.config import ALL_METRICS, LABEL_FREE_METRICS  # noqa: E402
from sslvitals.keys import TIME_KEY, metric_key  # noqa: E402
from sslvitals.records import read_records  # noqa: E402

pytestmark = pytest.mark.e2e

RECIPES = HERE.parents[2] / "recipes" / "fairseq"
HUBERT = "hubert_pretraining_vitals"
WAV2VEC2 = "audio_pretraining_vitals"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinydata.make_corpus(tmp_path_factory.mktemp("fairseq_e2e_corpus"))


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _json_lines(stdout: str, tag: str) -> list[dict]:
    out = []
    marker = f"[{tag}][INFO] - "
    for line in stdout.splitlines():
        if marker in line:
            out.append(json.loads(line.split(marker, 1)[1]))
    return out


def _check_valid_lines(valid: list[dict], keys: list[str]) -> None:
    assert [int(v["valid_num_updates"]) for v in valid] == [2, 4]
    for v in valid:
        assert "valid_loss" in v
        for key in keys + [TIME_KEY]:
            value = float(v[f"valid_{key}"])
            assert math.isfinite(value), (key, value)
        assert float(v[f"valid_{TIME_KEY}"]) > 0


def _check_records(path: Path, valid: list[dict], keys: list[str]) -> None:
    records = read_records(path)
    assert [r["update"] for r in records] == [2, 4]
    for rec, v in zip(records, valid):
        assert rec["toolkit"] == "fairseq" and rec["epoch"] == 1
        assert rec["probe"]["utterances"] == 12
        assert rec["loss"] == pytest.approx(float(v["valid_loss"]), abs=1e-3)
        assert set(keys) <= set(rec["metrics"])
        for key in keys:
            assert math.isfinite(rec["metrics"][key])
            # the log line prints 6 significant digits of the same number
            assert rec["metrics"][key] == pytest.approx(float(v[f"valid_{key}"]), rel=1e-5, abs=1e-6)


def test_hubert_base_librispeech_recipe(corpus: Path, tmp_path: Path) -> None:
    """HuBERT: every layer, every metric (the probe has phone labels), JSON log, JSON lines,
    TensorBoard and a vitals key as the best-checkpoint metric."""
    run = tmp_path / "hubert"
    cmd = tinydata.hubert_command(corpus, run, tinydata.plugin_overrides(HUBERT) + [
        "+task.vitals.enabled=true", "+task.vitals.k=8",
        "common.tensorboard_logdir=tb",
        "checkpoint.save_interval_updates=2",
        "checkpoint.best_checkpoint_metric=vitals/rankme/L2",
        "checkpoint.maximize_best_checkpoint_metric=true",
    ])
    res = _run(cmd)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    keys = [metric_key(m, layer) for layer in (0, 1, 2) for m in ALL_METRICS]  # the default set
    valid = _json_lines(res.stdout, "valid")
    _check_valid_lines(valid, keys)
    # the vitals key works as the best-checkpoint metric: fairseq tracks its best value
    best = max(float(v["valid_vitals/rankme/L2"]) for v in valid)
    assert float(valid[1]["valid_best_vitals/rankme/L2"]) == pytest.approx(best, rel=1e-5)
    assert (run / "checkpoints" / "checkpoint_best.pt").is_file()
    _check_records(run / "checkpoints" / "vitals.jsonl", valid, keys)
    # TensorBoard: the valid writer has the vitals scalars at both validations
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb" / "valid"))
    acc.Reload()
    events = acc.Scalars("vitals/pnmi/L1")
    assert [e.step for e in events] == [2, 4]
    assert events[-1].value == pytest.approx(float(valid[-1]["valid_vitals/pnmi/L1"]), rel=1e-5)
    # the checkpoint names the wrapper task; with the plugin imported fairseq loads it as usual
    # (e.g. for fine-tuning) and the measurements stay off
    from fairseq import checkpoint_utils

    import sslvitals.integrations.fairseq.tasks  # noqa: F401

    import torch
    from fairseq.data import Dictionary

    # torch >= 2.6 loads weights only by default; HuBERT checkpoints hold fairseq Dictionaries
    with torch.serialization.safe_globals([Dictionary]):
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(run / "checkpoints" / "checkpoint_best.pt")])
    assert cfg.task._name == HUBERT and task._vitals is None
    assert type(models[0]).__name__ == "HubertModel"


def test_wav2vec2_base_librispeech_recipe(corpus: Path, tmp_path: Path) -> None:
    """wav2vec 2.0 through the override YAML shipped in recipes/fairseq (options then change
    without '+'): chosen layers, label-free metrics, records to a chosen file."""
    from sslvitals.integrations.fairseq.cli import user_dir

    run = tmp_path / "w2v"
    jsonl = tmp_path / "elsewhere" / "w2v_vitals.jsonl"
    cmd = tinydata.wav2vec2_command(corpus, run, [
        f"common.user_dir={user_dir()}", f"hydra.searchpath=[file://{RECIPES}]", "+sslvitals=wav2vec2",
        "task.vitals.k=8", "task.vitals.layers=[0,-1]", "task.vitals.metrics=label_free",
        f"task.vitals.jsonl={jsonl}",
    ])
    res = _run(cmd)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    keys = [metric_key(m, layer) for layer in (0, 2) for m in LABEL_FREE_METRICS]
    valid = _json_lines(res.stdout, "valid")
    _check_valid_lines(valid, keys)
    assert not any("/L1" in k or "pnmi" in k for k in valid[0])
    assert "valid_accuracy" in valid[0]  # fairseq's own validation stats are still there
    _check_records(jsonl, valid, keys)
    assert not (run / "checkpoints" / "vitals.jsonl").exists()


def _startup_failure(corpus: Path, run: Path, overrides: list[str]) -> str:
    cmd = tinydata.hubert_command(corpus, run, tinydata.plugin_overrides(HUBERT) + [
        "+task.vitals.enabled=true", "+task.vitals.k=8", *overrides,
    ])
    res = _run(cmd, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "[train_inner]" not in out and "begin training epoch" not in out, "failed too late"
    assert "SSLVitalsError" in out
    return out


@pytest.mark.parametrize("case", ["missing_probe", "malformed_probe", "bad_layer",
                                  "bad_metric", "unknown_key"])
def test_bad_configuration_stops_before_training(corpus: Path, tmp_path: Path, case: str) -> None:
    if case == "missing_probe":
        out = _startup_failure(corpus, tmp_path / case, [f"+task.vitals.probe={tmp_path}/nope.tsv"])
        assert f"probe manifest {tmp_path}/nope.tsv (task.vitals.probe) does not exist" in out
    elif case == "malformed_probe":
        bad = tmp_path / "bad.tsv"
        bad.write_text(f"{corpus / 'wav'}\nvalid_000.wav 12345\n")  # space instead of a tab
        out = _startup_failure(corpus, tmp_path / case, [f"+task.vitals.probe={bad}"])
        assert "expected 'relative/path<TAB>num_samples'" in out
    elif case == "bad_layer":
        out = _startup_failure(corpus, tmp_path / case, ["+task.vitals.layers=[0,7]"])
        assert "layer 7 is out of range" in out and "valid layers are 0..2" in out
        assert "task.vitals.layers" in out
    elif case == "bad_metric":
        out = _startup_failure(corpus, tmp_path / case, ["+task.vitals.metrics=[rankme,rank_me]"])
        assert "unknown metric 'rank_me'" in out and "effective_rank" in out
    else:
        out = _startup_failure(corpus, tmp_path / case, ["+task.vitals.layer=3"])
        assert "unknown sslvitals option(s) task.vitals.layer" in out
        assert "valid options under task.vitals are: enabled, probe" in out


def test_failing_metric_reports_nan_and_training_goes_on(corpus: Path, tmp_path: Path) -> None:
    """k = 1024 clusters cannot be fit on the ~850 probe frames: the cluster metrics are NaN
    (one warning each, not repeated at the second validation), the rank metrics are measured,
    and training finishes; with strict=true the same run stops at its first validation."""
    run = tmp_path / "nan"
    cmd = tinydata.hubert_command(corpus, run, tinydata.plugin_overrides(HUBERT) + [
        "+task.vitals.enabled=true", "+task.vitals.k=1024", "+task.vitals.layers=[2]",
        "+task.vitals.metrics=[rankme,inertia,pnmi]",
    ])
    res = _run(cmd)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    valid = _json_lines(res.stdout, "valid")
    assert [int(v["valid_num_updates"]) for v in valid] == [2, 4]
    for v in valid:
        assert math.isfinite(float(v["valid_vitals/rankme/L2"]))
        assert v["valid_vitals/inertia/L2"] == "nan" and v["valid_vitals/pnmi/L2"] == "nan"
    warnings = [ln.split(" - ", 1)[1] for ln in res.stdout.splitlines()
                if "[WARNING]" in ln and "sslvitals" in ln and "failed" in ln]
    assert warnings and len(warnings) == len(set(warnings)) <= 2, warnings
    assert any("vitals.k" in w for w in warnings)
    records = read_records(run / "checkpoints" / "vitals.jsonl")
    assert len(records) == 2 and math.isnan(records[0]["metrics"]["vitals/inertia/L2"])

    strict = _run(tinydata.hubert_command(corpus, tmp_path / "strict", tinydata.plugin_overrides(HUBERT) + [
        "+task.vitals.enabled=true", "+task.vitals.k=1024", "+task.vitals.layers=[2]",
        "+task.vitals.metrics=[rankme,inertia]", "+task.vitals.strict=true",
        "optimization.max_update=2",
    ]))
    out = strict.stdout + strict.stderr
    assert strict.returncode != 0
    assert "SSLVitalsError" in out and "metric inertia failed on layer 2" in out
    assert '"valid_loss"' not in out
