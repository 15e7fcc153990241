"""The Hugging Face ``VitalsTrainerCallback`` in real ``transformers.Trainer`` runs on CPU.

A tiny ``Wav2Vec2ForPreTraining`` (``hfjob``) pretrains with the contrastive loss; the probe is
seeded synthetic 16 kHz audio with a fairseq manifest.

* unit: unknown options and bad values are refused at construction; a missing probe, a bad layer
  or a ``metric_for_best_model`` that is not measured stop at ``Trainer(...)`` or ``train()``,
  before the first step;
* e2e: ``eval_vitals/...`` in every evaluation of ``state.log_history`` and ``vitals.jsonl``;
  ``metric_for_best_model="vitals/rankme/L2"`` makes ``best_metric`` the highest logged value
  and ``best_model_checkpoint`` its checkpoint; the best model reloaded at the end, and its
  checkpoint scored offline, give the logged value again (online = offline); the inner
  ``wav2vec2`` is what is tapped; a reporting callback placed before it sees the values once
  ``attach`` puts it first; a resumed run keeps the ``every_n_validations`` schedule and the
  values, with one record per step.
"""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from sslvitals.config import VitalsConfig  # noqa: E402
from sslvitals.errors import SSLVitalsError  # noqa: E402
from sslvitals.integrations.hf import VitalsTrainerCallback  # noqa: E402
from sslvitals.integrations.lightning.session import OPTION_NAMES  # noqa: E402
from sslvitals.monitor import VitalsMonitor  # noqa: E402
from sslvitals.probe import ProbeSet  # noqa: E402
from sslvitals.records import read_records  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "lightning"))

from hfjob import make_trainer  # noqa: E402
from tinyssl import write_probe  # noqa: E402

KEY = "vitals/rankme/L2"
METRICS = "rankme,effective_rank,rankme_t,inertia,davies_bouldin"
OPTIONS = dict(metrics=METRICS, k=4, kmeans_iters=5, reservoir_size=20000, silhouette_sample=0,
               backend="torch", batch_seconds=2.0)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return write_probe(tmp_path_factory.mktemp("probe"))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _evals(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "eval_runtime" in e]


# ------------------------------------------------------------------------------ unit tests
def test_options_come_from_vitals_config() -> None:
    import dataclasses
    import inspect

    sig = inspect.signature(VitalsTrainerCallback.__init__)
    for f in dataclasses.fields(VitalsConfig):
        assert sig.parameters[f.name].default == (True if f.name == "enabled" else f.default)
    with pytest.raises(SSLVitalsError) as err:
        VitalsTrainerCallback(probe="p.tsv", clusters=64)
    assert "clusters" in str(err.value)
    for name in OPTION_NAMES:
        assert name in str(err.value)
    with pytest.raises(SSLVitalsError, match="every_n_validations must be >= 1"):
        VitalsTrainerCallback(probe="p.tsv", every_n_validations=0)


def test_missing_probe_stops_before_the_first_step(tmp_path: Path) -> None:
    cb = VitalsTrainerCallback(probe=str(tmp_path / "none.tsv"), **OPTIONS)
    with pytest.raises(SSLVitalsError, match="none.tsv.*does not exist"):
        make_trainer(tmp_path / "out", [cb])  # at Trainer(...): on_init_end
    # a callback added after construction is checked when train() starts, before any step
    trainer = make_trainer(tmp_path / "out", [])
    trainer.add_callback(VitalsTrainerCallback(probe=str(tmp_path / "none.tsv"), **OPTIONS))
    with pytest.raises(SSLVitalsError, match="does not exist"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("options, args, words", [
    (dict(layers="0,5"), {}, ["layer 5 is out of range"]),
    (dict(model="wav2vec2.nothing"), {}, ["no attribute 'nothing'"]),
    ({}, dict(metric_for_best_model="vitals/rankme/L7"), ["layer 7 is not measured"]),
    ({}, dict(metric_for_best_model="eval_vitals/silhouette/L2"), ["'silhouette' is not measured"]),
    (dict(every_n_validations=2), dict(metric_for_best_model=KEY), ["every_n_validations=2"]),
])
def test_start_up_checks(tmp_path: Path, probe: Path, options, args, words) -> None:
    cb = VitalsTrainerCallback(probe=str(probe), **{**OPTIONS, **options})
    with pytest.raises(SSLVitalsError) as err:
        make_trainer(tmp_path / "out", [cb], **args)
    for word in words:
        assert word in str(err.value)


# ------------------------------------------------------------------------------ e2e
class Spy(transformers.TrainerCallback):
    """Stands for a reporting integration: keeps every ``logs`` dict ``on_log`` receives."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, probe: Path):
    out = tmp_path_factory.mktemp("best")
    spy = Spy()
    vitals = VitalsTrainerCallback(probe=str(probe), **OPTIONS)
    trainer = make_trainer(out, [spy, vitals], metric_for_best_model=KEY, greater_is_better=True,
                           load_best_model_at_end=True)
    vitals.attach(trainer)
    trainer.train()
    return out, trainer, spy


@pytest.mark.e2e
def test_eval_vitals_keys_reach_log_history_and_records(best_run) -> None:
    out, trainer, spy = best_run
    evals = _evals(trainer)
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    expected = {f"eval_vitals/{m}/L{layer}" for m in METRICS.split(",") for layer in (0, 1, 2)}
    for e in evals:
        assert expected | {"eval_vitals/seconds"} <= set(e)
    records = read_records(out / "vitals.jsonl")
    assert [r["update"] for r in records] == [2, 4, 6, 8]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(r["toolkit"] == "hf" for r in records)
    for e, rec in zip(evals, records):
        for key, value in rec["metrics"].items():
            assert e["eval_" + key] == value
    # the reporting callback listed before it saw the values, since attach() put it first
    seen = [log for log in spy.logs if "eval_runtime" in log]
    assert len(seen) == 4 and all(expected <= set(log) for log in seen)


@pytest.mark.e2e
def test_metric_for_best_model_picks_the_best_vitals_checkpoint(best_run, probe: Path) -> None:
    out, trainer, _ = best_run
    values = [(e["eval_" + KEY], e["step"]) for e in _evals(trainer)]
    best_value, best_step = max(values)
    assert best_step not in (values[0][1], values[-1][1]), "the scenario needs a peak inside"
    assert trainer.state.best_metric == best_value
    assert Path(trainer.state.best_model_checkpoint) == out / f"checkpoint-{best_step}"
    # online = offline: the best model (reloaded at the end) and its checkpoint, scored again
    cfg = VitalsConfig(enabled=True, **OPTIONS)
    batches = ProbeSet.from_path(probe).batches(3.0)
    from sslvitals.integrations.transformers.checkpoint import (
        load_transformers_model,
        transformers_forward,
    )

    again = VitalsMonitor(cfg).measure(trainer.model.wav2vec2, transformers_forward, batches)
    assert _rel(again[KEY], best_value) < 1e-5
    loaded = load_transformers_model(str(out / f"checkpoint-{best_step}"))
    assert type(loaded.model).__name__ == "Wav2Vec2Model"  # the inner model the callback tapped
    offline = VitalsMonitor(cfg).measure(loaded.model, loaded.forward_fn,
                                         ProbeSet.from_path(probe).batches(60.0))
    logged = next(e for e in _evals(trainer) if e["step"] == best_step)
    for key, value in offline.items():
        if key != "vitals/seconds":
            assert _rel(value, logged["eval_" + key]) < 1e-5, key


@pytest.mark.e2e
def test_resume_keeps_the_schedule_and_one_record_per_step(tmp_path: Path, probe: Path) -> None:
    out = tmp_path / "run"
    trainer = make_trainer(out, [VitalsTrainerCallback(probe=str(probe), every_n_validations=3,
                                                       **OPTIONS)])
    trainer.train()
    first = read_records(out / "vitals.jsonl")
    # evaluations at 2, 4, 6, 8: every third of the run is measured
    assert [r["update"] for r in first] == [2, 8]
    for step in (6, 8):
        shutil.rmtree(out / f"checkpoint-{step}")
    trainer = make_trainer(out, [VitalsTrainerCallback(probe=str(probe), every_n_validations=3,
                                                       **OPTIONS)])
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    again = read_records(out / "vitals.jsonl")
    assert [r["update"] for r in again] == [2, 8]  # a per-process count would measure step 6
    assert [r["update"] for r in read_records(str(out / "vitals.jsonl") + ".discarded")] == [8]
    measured = [e["step"] for e in _evals(trainer) if "eval_" + KEY in e]
    assert measured == [2, 8]
    for key, value in first[1]["metrics"].items():
        assert math.isfinite(value)
        assert _rel(value, again[1]["metrics"][key]) < 1e-5, key
