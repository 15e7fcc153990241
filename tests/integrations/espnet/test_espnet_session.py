"""The measurement on real ESPnet HuBERT models (built in-process, random seeded weights).

* the unmasked forward path + layer capture equal the toolkits' own per-layer outputs;
* the session's rank measures equal a numpy reference computed on those outputs;
* start-up checks (layers, probe size, unknown model) and the schedule;
* ``VitalsTrainer.validate_one_epoch`` with ESPnet's real reporter: values registered, a
  failing metric gives NaN and a warning, strict mode raises.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("espnet2")

import espnet_tinydata as tinydata  # noqa: E402  (on sys.path via conftest)

from sslvitals.config import VitalsConfig  # noqa: E402
from sslvitals.errors import SSLVitalsError  # noqa: E402
from sslvitals.hooks import LayerTap  # noqa: E402
from sslvitals.integrations.espnet.forward import encoder_kind, espnet_forward  # noqa: E402
from sslvitals.integrations.espnet.session import VitalsSession  # noqa: E402
from sslvitals.keys import TIME_KEY, metric_key  # noqa: E402
from sslvitals.probe import ProbeSet  # noqa: E402

ENCODERS = list(tinydata.ENCODERS)


@pytest.fixture(scope="module")
def models(tiny_root):
    return {enc: tinydata.build_model(tiny_root, enc, seed=3) for enc in ENCODERS}


def _probe(root: Path) -> ProbeSet:
    return ProbeSet.from_path(root / "data" / "valid", max_seconds=None)


def _reference_layers(model, batch) -> list[torch.Tensor]:
    """Per transformer layer ``(B, T, D)`` from the toolkit's own API, same padded batch."""
    kind = encoder_kind(model)
    with torch.no_grad():
        if kind == "torchaudio":
            w2v = model.encoder.hubert_pretrain_model.wav2vec2
            outs, _ = w2v.extract_features(batch.wav, batch.lengths)
            return list(outs)
        hubert = model.encoder.encoder
        pad = torch.arange(batch.wav.shape[1])[None, :] >= batch.lengths[:, None]
        n = len(hubert.encoder.layers)
        return [hubert.extract_features(batch.wav, padding_mask=pad, mask=False,
                                        output_layer=i)[0] for i in range(1, n + 1)]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_capture_equals_toolkit_layers(models, tiny_root, encoder):
    model = models[encoder]
    probe = _probe(tiny_root)
    batch = next(probe.batches(60.0))
    assert batch.wav.shape[0] == len(probe) and len(set(batch.lengths.tolist())) > 1  # padded
    with torch.no_grad(), LayerTap(model) as tap:
        espnet_forward(model, batch)
        got = tap.utterances()
    assert tap.num_layers == 2 and sorted(got) == [0, 1, 2]
    ref = _reference_layers(model, batch)
    for layer in (1, 2):
        for b, n in enumerate(batch.lengths.tolist()):
            frames = got[layer][b]
            assert frames.shape == (tinydata.frames_of(n), 32)
            torch.testing.assert_close(frames, ref[layer - 1][b, : frames.shape[0]],
                                       rtol=1e-4, atol=1e-5)
    assert model.training is False


def _numpy_rankme(x: np.ndarray) -> float:
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_session_values_match_numpy_reference(models, tiny_root, tmp_path, encoder):
    model = models[encoder]
    cfg = VitalsConfig(enabled=True, k=8, reservoir_size=4096, silhouette_sample=0,
                       metrics="rankme,rankme_t,numerical_rank,inertia,pnmi", seed=5)
    session = VitalsSession(cfg, tmp_path, probe=_probe(tiny_root))
    assert session.preflight(model) == [0, 1, 2]
    values = session.measure(model, epoch=1, update=10, loss=3.5)
    assert set(values) == set(session.expected_keys()) | {TIME_KEY}
    assert all(math.isfinite(v) for v in values.values())
    batch = next(_probe(tiny_root).batches(cfg.batch_seconds))
    # the reference runs every utterance by itself (the group-norm front-ends see no padding)
    alone = [_reference_layers(model, one) for one in batch.split()]
    for layer in (1, 2):
        utts = [ref[layer - 1][0, : tinydata.frames_of(n)].numpy()
                for ref, n in zip(alone, batch.lengths.tolist())]
        frames = np.concatenate(utts)
        sums = np.stack([u.astype(np.float64).sum(0) for u in utts])
        assert values[metric_key("rankme", layer)] == pytest.approx(_numpy_rankme(frames), rel=1e-5)
        assert values[metric_key("rankme_t", layer)] == pytest.approx(_numpy_rankme(sums), rel=1e-5)
        # float32 activations: singular values below s_max * D * eps32 are rounding (the
        # per-frame rule of sslvitals.metrics.rank; the post-norm layers' rows sum to ~0, so one
        # direction is exactly that small)
        eps32 = float(np.finfo(np.float32).eps)
        tol = np.linalg.svd(frames.astype(np.float64), compute_uv=False)[0] * frames.shape[1] * eps32
        assert values[metric_key("numerical_rank", layer)] == np.linalg.matrix_rank(
            frames.astype(np.float64), tol=tol)
        assert 0.0 < values[metric_key("pnmi", layer)] < 1.0
    records = (tmp_path / "vitals.jsonl").read_text().splitlines()
    assert len(records) == 1 and '"toolkit": "espnet"' in records[0] and '"update": 10' in records[0]


def test_preflight_rejects_bad_setups(models, tiny_root, tmp_path):
    model = models["torchaudio_hubert"]
    with pytest.raises(SSLVitalsError, match=r"valid layers are 0\.\.2"):
        VitalsSession(VitalsConfig(enabled=True, layers="0,5"), tmp_path,
                      probe=_probe(tiny_root)).preflight(model)
    small = ProbeSet(_probe(tiny_root).items[:1], "one")
    with pytest.raises(SSLVitalsError, match="every process needs at least one"):
        VitalsSession(VitalsConfig(enabled=True), tmp_path, probe=small).preflight(model, 2)
    with pytest.raises(SSLVitalsError, match="does not know how to run the probe"):
        VitalsSession(VitalsConfig(enabled=True), tmp_path,
                      probe=_probe(tiny_root)).preflight(torch.nn.Linear(2, 2))


def test_schedule_every_n_epochs(tiny_root, tmp_path):
    session = VitalsSession(VitalsConfig(enabled=True, every_n_validations=3), tmp_path,
                            probe=_probe(tiny_root))
    assert [e for e in range(1, 9) if session.due(e)] == [1, 4, 7]


def _trainer_options(tiny_root: Path, out: Path):
    from sslvitals.integrations.espnet.tasks import VitalsHubertTask

    args = VitalsHubertTask.get_parser().parse_args(
        tinydata.hubert_args(tiny_root, out, "torchaudio_hubert"))
    return VitalsHubertTask.trainer.build_options(args)


def _validate(model, options, session) -> object:
    from espnet2.train.distributed_utils import DistributedOption
    from espnet2.train.reporter import Reporter

    from sslvitals.integrations.espnet.trainer import VitalsTrainer

    reporter = Reporter()
    reporter.set_epoch(1)
    VitalsTrainer.session = session
    try:
        with reporter.observe("valid") as sub:
            VitalsTrainer.validate_one_epoch(model=model, iterator=[], reporter=sub,
                                             options=options,
                                             distributed_option=DistributedOption())
    finally:
        VitalsTrainer.session = None
    return reporter


def test_trainer_registers_values_and_survives_failures(models, tiny_root, tmp_path, caplog):
    model = models["torchaudio_hubert"]
    options = _trainer_options(tiny_root, tmp_path)
    assert options.vitals == {} and options.vitals_config is None
    # k larger than the probe's frames: the cluster metrics fail, the rank ones do not
    cfg = VitalsConfig(enabled=True, k=4096, reservoir_size=4096, metrics="rankme,inertia")
    session = VitalsSession(cfg, tmp_path, probe=_probe(tiny_root))
    session.preflight(model)
    with caplog.at_level(logging.WARNING):
        reporter = _validate(model, options, session)
    assert math.isfinite(reporter.get_value("valid", "vitals/rankme/L2"))
    assert math.isnan(reporter.get_value("valid", "vitals/inertia/L2"))
    assert "reporting NaN" in caplog.text
    # a probe file that disappears after start-up: every value NaN, training goes on
    copy = tmp_path / "probe"
    shutil.copytree(tiny_root / "data" / "valid", copy)
    lines = [ln.split() for ln in (copy / "wav.scp").read_text().splitlines()]
    for uid, wav in lines:
        shutil.copy(wav, copy / f"{uid}.wav")
    (copy / "wav.scp").write_text("".join(f"{uid} {copy / (uid + '.wav')}\n" for uid, _ in lines))
    session = VitalsSession(VitalsConfig(enabled=True, k=8, reservoir_size=512,
                                         metrics="rankme"), tmp_path,
                            probe=ProbeSet.from_path(copy, max_seconds=None))
    session.preflight(model)
    (copy / f"{lines[0][0]}.wav").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        reporter = _validate(model, options, session)
    assert all(math.isnan(reporter.get_value("valid", metric_key("rankme", i))) for i in (0, 1, 2))
    assert "reporting NaN" in caplog.text and "valid000.wav" in caplog.text
    # strict: the same failure stops the run
    session.cfg.strict = True
    with pytest.raises(SSLVitalsError, match="valid000.wav"):
        _validate(model, options, session)


def test_ssl_task_model(tiny_root, tmp_path):
    """ESPnet's SSL task (``ssl_train``): capture equals the encoder's own hidden states."""
    model = tinydata.build_ssl_model(tiny_root, seed=1)
    assert encoder_kind(model) == "ssl"
    probe = _probe(tiny_root)
    batch = next(probe.batches(60.0))
    with torch.no_grad(), LayerTap(model) as tap:
        espnet_forward(model, batch)
        got = tap.utterances()
        tap.clear()
    with torch.no_grad():
        _, hidden, lengths = model.inference_encode(batch.wav, batch.lengths, use_mask=False)
    assert tap.num_layers == 2 and len(hidden) == 2
    for layer in (1, 2):
        for b, n in enumerate(lengths.tolist()):
            assert got[layer][b].shape[0] == n == tinydata.frames_of(int(batch.lengths[b]))
            torch.testing.assert_close(got[layer][b], hidden[layer - 1][b, :n])
    session = VitalsSession(VitalsConfig(enabled=True, k=8, reservoir_size=1024,
                                         metrics="label_free,pnmi"), tmp_path, probe=probe)
    session.preflight(model)
    values = session.measure(model, epoch=1)
    assert set(values) == set(session.expected_keys()) | {TIME_KEY}
    assert all(math.isfinite(v) for v in values.values())


def test_criteria_checks():
    """'/' keys break ESPnet's best-model links (trainer.py: p.symlink_to under a missing
    folder); early stopping / LR scheduling need a value at every epoch."""
    from sslvitals.integrations.espnet.trainer import check_criteria

    check_criteria([("valid", "loss", "min")])
    check_criteria([("valid", "loss", "min")],
                   early_stopping_criterion=("valid", "vitals/rankme/L2", "max"))
    with pytest.raises(SSLVitalsError, match=r"valid\.vitals/rankme/L2\.best\.pth"):
        check_criteria([("valid", "loss", "min"), ("valid", "vitals/rankme/L2", "max")])
    with pytest.raises(SSLVitalsError, match="every_n_validations is 2"):
        check_criteria([], early_stopping_criterion=("valid", "vitals/rankme/L2", "max"),
                       every_n_validations=2)
    with pytest.raises(SSLVitalsError, match="--val_scheduler_criterion"):
        check_criteria([], val_scheduler_criterion=("valid", "vitals/pnmi/L6"),
                       every_n_validations=3)
