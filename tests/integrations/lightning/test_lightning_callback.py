"""The Lightning ``VitalsCallback`` in real ``Trainer.fit`` runs on CPU.

Unit tests (no training step): options and their errors, and every start-up check stopping
``fit`` before the first step (one of them through the older ``pytorch_lightning`` package).

End-to-end (``e2e``; real training of a tiny transformers ``Wav2Vec2Model`` in a
``LightningModule``, ``tinyssl``): runs of ``lightning_job.py`` in subprocesses, one process and
two DDP processes (gloo on CPU):

* the keys reach the CSV logger's ``metrics.csv`` and ``vitals.jsonl`` with the same values;
* both ranks log identical values, equal to the one-process run (1e-5 relative);
* ``ModelCheckpoint(monitor="vitals/rankme/L2", mode="max")`` keeps the checkpoint of the
  validation with the highest logged value (which is neither the first nor the last);
* a run resumed with ``fit(ckpt_path=...)`` measures the validations an uninterrupted run
  measures (``every_n_validations=3``), with the same values, and leaves one record per step;
* a failing measurement reports NaN and training goes on; in strict mode it stops.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("transformers")

from sslvitals.config import VitalsConfig  # noqa: E402
from sslvitals.errors import SSLVitalsError  # noqa: E402
from sslvitals.integrations.lightning import VitalsCallback  # noqa: E402
from sslvitals.integrations.lightning.session import OPTION_NAMES  # noqa: E402
from sslvitals.records import read_records  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tinyssl import METRICS, lightning_module, waveforms, write_probe  # noqa: E402

KEY = "vitals/rankme/L2"
EXPECTED_KEYS = sorted(f"vitals/{m}/L{layer}" for m in METRICS.split(",") for layer in (0, 1, 2))


# ------------------------------------------------------------------------------ helpers
def _small(**kw):
    base = dict(metrics=METRICS, k=4, kmeans_iters=5, reservoir_size=20000, silhouette_sample=0,
                backend="torch", batch_seconds=2.0)
    base.update(kw)
    return base


def _trainer(tmp_path: Path, callbacks: list, *, package: str = "lightning", max_steps: int = 2):
    if package == "lightning":
        from lightning.pytorch import Trainer
    else:
        from pytorch_lightning import Trainer
    checkpointing = any(type(cb).__name__ == "ModelCheckpoint" for cb in callbacks)
    return Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                   enable_checkpointing=checkpointing, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0,
                   default_root_dir=str(tmp_path), callbacks=callbacks)


def _loaders():
    from torch.utils.data import DataLoader, TensorDataset

    return (DataLoader(TensorDataset(waveforms(4, seed=1)), batch_size=2),
            DataLoader(TensorDataset(waveforms(2, seed=2)), batch_size=2))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return write_probe(tmp_path_factory.mktemp("probe"))


# ------------------------------------------------------------------------------ unit tests
def test_options_come_from_vitals_config() -> None:
    import dataclasses
    import inspect

    sig = inspect.signature(VitalsCallback.__init__)
    for f in dataclasses.fields(VitalsConfig):
        assert sig.parameters[f.name].default == (True if f.name == "enabled" else f.default)
    assert list(sig.parameters)[1:] == list(OPTION_NAMES)
    cb = VitalsCallback(probe="p.tsv", layers=[0, 2], metrics=["rankme", "pnmi"], k=8,
                        reservoir_size=400)
    assert cb.cfg.enabled and cb.cfg.layers == "0,2" and cb.cfg.metrics == "rankme,pnmi"


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(SSLVitalsError) as err:
        VitalsCallback(probe="p.tsv", n_clusters=100)
    assert "n_clusters" in str(err.value)
    for name in OPTION_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("options, words", [
    (dict(k="100"), ["k=", "int"]),
    (dict(k=1), ["k must be >= 2"]),
    (dict(metrics="rankme,purity"), ["unknown metric 'purity'"]),
    (dict(layers="0,x"), ["layers="]),
    (dict(model=3), ["model="]),
    (dict(forward="fairseq"), ["forward=", "not callable"]),
])
def test_bad_values_are_refused_at_construction(options, words) -> None:
    with pytest.raises(SSLVitalsError) as err:
        VitalsCallback(probe="p.tsv", **options)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("package", ["lightning", "pytorch_lightning"])
def test_missing_probe_stops_before_the_first_step(tmp_path: Path, package: str) -> None:
    pytest.importorskip(package)
    module = lightning_module(base=package)
    cb = VitalsCallback(probe=str(tmp_path / "nowhere.tsv"), **_small())
    trainer = _trainer(tmp_path, [cb], package=package)
    with pytest.raises(SSLVitalsError, match="nowhere.tsv.*does not exist"):
        trainer.fit(module, *_loaders())
    assert module.training_steps == 0


def test_probe_valid_is_refused_with_the_fix(tmp_path: Path) -> None:
    module = lightning_module()
    trainer = _trainer(tmp_path, [VitalsCallback(**_small())])
    with pytest.raises(SSLVitalsError, match="needs probe=<path>"):
        trainer.fit(module, *_loaders())
    assert module.training_steps == 0


def test_bad_layer_and_unknown_model_stop_before_the_first_step(tmp_path: Path, probe: Path) -> None:
    module = lightning_module()
    trainer = _trainer(tmp_path, [VitalsCallback(probe=str(probe), layers="0,7", **_small())])
    with pytest.raises(SSLVitalsError, match="layer 7 is out of range.*valid layers are 0..2"):
        trainer.fit(module, *_loaders())
    module = lightning_module()
    trainer = _trainer(tmp_path, [VitalsCallback(probe=str(probe), model="model.encodr", **_small())])
    with pytest.raises(SSLVitalsError, match="no attribute 'encodr'"):
        trainer.fit(module, *_loaders())
    module = lightning_module()
    trainer = _trainer(tmp_path, [VitalsCallback(probe=str(probe), model="head", **_small())])
    with pytest.raises(SSLVitalsError, match="cannot read the layers of Linear"):
        trainer.fit(module, *_loaders())
    assert module.training_steps == 0


@pytest.mark.parametrize("monitor, extra, words", [
    ("vitals/rankme/L9", {}, ["layer 9 is not measured"]),
    ("vitals/pnmi/L2", {}, ["needs phone labels"]),
    ("vitals/silhouette/L2", {}, ["'silhouette' is not measured"]),
    (KEY, {"every_n_validations": 2}, ["every_n_validations=2"]),
])
def test_watched_keys_are_checked_before_the_first_step(tmp_path: Path, probe: Path, monitor,
                                                        extra, words) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = lightning_module()
    options = _small(metrics=METRICS + ",pnmi", **extra)
    trainer = _trainer(tmp_path, [VitalsCallback(probe=str(probe), **options),
                                  ModelCheckpoint(monitor=monitor, mode="max")])
    with pytest.raises(SSLVitalsError) as err:
        trainer.fit(module, *_loaders())
    for word in words + ["ModelCheckpoint", monitor]:
        assert word in str(err.value)
    assert module.training_steps == 0


class _ToyConformer(torch.nn.Module):
    """Stands for an encoder sslvitals does not recognise (e.g. NeMo's ConformerEncoder): a
    strided convolution, then a ``ModuleList`` of blocks at ``layers``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.subsample = torch.nn.Conv1d(1, 16, kernel_size=400, stride=320)
        self.layers = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            for _ in range(2))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.subsample(wav[:, None]).transpose(1, 2)
        for block in self.layers:
            x = block(x)
        return x


def test_unrecognised_encoder_with_a_block_path_and_a_forward(tmp_path: Path, probe: Path) -> None:
    """The documented fallback (NeMo): model=<attribute>, layers=<ModuleList path>, forward=fn."""
    import numpy as np
    import soundfile as sf

    from sslvitals import metrics as M
    from sslvitals.probe import ProbeSet

    root = torch.nn.Module()
    root.encoder = _ToyConformer()

    def forward(model, batch):
        return model(batch.wav)

    cb = VitalsCallback(probe=str(probe), model="encoder", layers="layers", forward=forward,
                        **_small(metrics="rankme,effective_rank"))
    cb.session.load_probe(default_dir=tmp_path)
    assert cb.session.check_model(root) == [0, 1, 2]
    values = cb.session.measure(root, step=0)
    # reference: each utterance alone through the blocks by hand
    frames: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    with torch.no_grad():
        for item in ProbeSet.from_path(probe).items:
            wav, _ = sf.read(item.path, dtype="float32")
            x = root.encoder.subsample(torch.from_numpy(wav)[None, None]).transpose(1, 2)
            frames[0].append(x[0].numpy())
            for i, block in enumerate(root.encoder.layers, 1):
                x = block(x)
                frames[i].append(x[0].numpy())
    for layer, parts in frames.items():
        x = np.concatenate(parts).astype(np.float64)
        assert values[f"vitals/rankme/L{layer}"] == pytest.approx(M.rankme(x), rel=1e-5)
        assert values[f"vitals/effective_rank/L{layer}"] == pytest.approx(M.effective_rank(x), rel=1e-5)
    # without a forward, sslvitals says what to pass
    cb = VitalsCallback(probe=str(probe), model="encoder", layers="layers", **_small())
    cb.session.load_probe(default_dir=tmp_path)
    with pytest.raises(SSLVitalsError, match="no default forward pass.*pass forward=fn"):
        cb.session.check_model(root)


# ------------------------------------------------------------------------------ in-process e2e
class _FailAfterCheck:
    """A forward that works for the start-up check and fails at every measurement."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, batch):
        from sslvitals.integrations.transformers.checkpoint import transformers_forward

        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("probe forward broke")
        return transformers_forward(model, batch)


@pytest.mark.e2e
def test_a_failing_measurement_reports_nan_and_training_goes_on(tmp_path: Path, probe: Path,
                                                                 caplog) -> None:
    module = lightning_module()
    cb = VitalsCallback(probe=str(probe), forward=_FailAfterCheck(), **_small(metrics="rankme"))
    trainer = _trainer(tmp_path, [cb], max_steps=4)
    with caplog.at_level("WARNING"):
        trainer.fit(module, *_loaders())
    assert module.training_steps == 4 and trainer.global_step == 4
    assert all(math.isnan(float(trainer.callback_metrics[f"vitals/rankme/L{i}"])) for i in range(3))
    warnings = [r for r in caplog.records if "probe forward broke" in r.getMessage()]
    assert len(warnings) == 1  # once, not at every validation
    assert [r["update"] for r in read_records(tmp_path / "vitals.jsonl")] == [2, 4]

    module = lightning_module()
    cb = VitalsCallback(probe=str(probe), forward=_FailAfterCheck(), strict=True,
                        **_small(metrics="rankme"))
    trainer = _trainer(tmp_path / "strict", [cb], max_steps=4)
    with pytest.raises(SSLVitalsError, match="probe forward broke"):
        trainer.fit(module, *_loaders())
    assert module.training_steps == 2


@pytest.mark.e2e
def test_validate_after_fit_measures_again_without_a_second_record(tmp_path: Path,
                                                                   probe: Path) -> None:
    module = lightning_module()
    cb = VitalsCallback(probe=str(probe), **_small(metrics="rankme"))
    trainer = _trainer(tmp_path, [cb], max_steps=2)
    train, valid = _loaders()
    trainer.fit(module, train, valid)
    after_fit = float(trainer.callback_metrics[KEY])
    out = trainer.validate(module, valid, verbose=False)
    assert out[0][KEY] == pytest.approx(after_fit, rel=1e-6)  # same weights, same number
    assert [r["update"] for r in read_records(tmp_path / "vitals.jsonl")] == [2]


# ------------------------------------------------------------------------------ subprocess e2e
def _run_job(out: Path, probe: Path, *extra: str, timeout: int = 420) -> dict:
    """Run ``lightning_job.py``; kill its whole process group (DDP ranks too) on timeout."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(HERE / "lightning_job.py"), "--out", str(out), "--probe", str(probe),
           *extra]
    log = out / "job.log"
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"lightning_job.py {' '.join(extra)} timed out; log:\n{log.read_text()[-4000:]}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # any DDP rank left behind
            except ProcessLookupError:
                pass
    assert rc == 0, f"lightning_job.py failed ({rc}):\n{log.read_text()[-6000:]}"
    return json.loads((out / "result.json").read_text())


def _dumps(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"rank{rank}.jsonl").read_text().splitlines()]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


@pytest.fixture(scope="module")
def fits(tmp_path_factory, probe: Path) -> dict:
    """One-process and two-process runs watched by ModelCheckpoint(monitor=vitals/rankme/L2)."""
    root = tmp_path_factory.mktemp("fits")
    return {n: (root / f"p{n}", _run_job(root / f"p{n}", probe, "--devices", str(n),
                                         "--monitor", KEY))
            for n in (1, 2)}


@pytest.mark.e2e
def test_keys_reach_the_csv_logger_and_the_records(fits) -> None:
    out, result = fits[1]
    log_dir = Path(result["log_dir"])
    assert log_dir == out / "csv" / "version_0"
    with open(log_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    for key in EXPECTED_KEYS + ["vitals/seconds"]:
        assert key in rows[0], key
    # Lightning writes epoch-end values under its own logger step (the last batch's index)
    logged = [r for r in rows if r.get(KEY)]
    records = read_records(log_dir / "vitals.jsonl")
    assert [r["update"] for r in records] == [2, 4, 6, 8]
    assert [int(r["epoch"]) + 1 for r in logged] == [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(r["toolkit"] == "lightning" and r["loss"] is not None for r in records)
    for row, rec in zip(logged, records):
        assert sorted(rec["metrics"]) == EXPECTED_KEYS
        for key, value in rec["metrics"].items():
            assert _rel(float(row[key]), value) < 1e-6, key
        assert rec["settings"]["k"] == 4


@pytest.mark.e2e
def test_two_processes_log_the_one_process_values(fits) -> None:
    one = _dumps(fits[1][0], 0)
    rank0, rank1 = _dumps(fits[2][0], 0), _dumps(fits[2][0], 1)
    assert fits[2][1]["world_size"] == 2
    assert [d["step"] for d in one] == [d["step"] for d in rank0] == [d["step"] for d in rank1] \
        == [2, 4, 6, 8]
    for a, b, c in zip(one, rank0, rank1):
        assert b["values"] == c["values"]  # every rank logs the very same numbers
        assert sorted(k for k in b["values"] if k != "vitals/seconds") == EXPECTED_KEYS
        for key in EXPECTED_KEYS:
            assert _rel(a["values"][key], b["values"][key]) < 1e-5, (key, a["step"])
    records = read_records(Path(fits[2][1]["log_dir"]) / "vitals.jsonl")
    assert [r["update"] for r in records] == [2, 4, 6, 8]  # rank 0 alone writes


@pytest.mark.e2e
@pytest.mark.parametrize("n", [1, 2])
def test_model_checkpoint_keeps_the_best_vitals_value(fits, n: int) -> None:
    out, result = fits[n]
    values = [(d["values"][KEY], d["step"]) for d in _dumps(out, 0)]
    best_value, best_step = max(values)
    assert best_step not in (values[0][1], values[-1][1]), "the scenario needs a peak inside"
    assert Path(result["best_model_path"]).name == f"step={best_step}.ckpt"
    assert _rel(result["best_model_score"], best_value) < 1e-6
    assert sorted(p.name for p in (out / "best").iterdir()) == [f"step={best_step}.ckpt"]
    state = torch.load(result["best_model_path"], map_location="cpu", weights_only=False)
    saved = [v for k, v in state["callbacks"].items() if k.startswith("VitalsCallback")]
    assert saved and saved[0]["validations"] == [s for _, s in values].index(best_step) + 1


@pytest.mark.e2e
def test_resume_keeps_the_schedule_values_and_one_record_per_step(tmp_path: Path, probe: Path) -> None:
    out = tmp_path / "run"
    _run_job(out, probe, "--every-n", "3", "--max-steps", "10")
    jsonl = out / "csv" / "version_0" / "vitals.jsonl"
    first = read_records(jsonl)
    # validations at steps 2, 4, 6, 8, 10: every third of the run is measured
    assert [r["update"] for r in first] == [2, 8]
    _run_job(out, probe, "--every-n", "3", "--max-steps", "10", "--ckpt-path",
             str(out / "ckpt" / "step=4.ckpt"))
    again = read_records(jsonl)
    # a counter restarted with the process would have measured step 6
    assert [r["update"] for r in again] == [2, 8]
    for a, b in zip(first, again):
        for key, value in a["metrics"].items():
            assert _rel(value, b["metrics"][key]) < 1e-5, (key, a["update"])
    moved = read_records(Path(str(jsonl) + ".discarded"))
    assert [r["update"] for r in moved] == [8]
    resumed = [d for d in _dumps(out, 0)][5:]  # the dumps of the resumed process
    assert [d["step"] for d in resumed] == [6, 8, 10]
    assert resumed[1]["values"][KEY] == pytest.approx(first[1]["metrics"][KEY], rel=1e-5)
