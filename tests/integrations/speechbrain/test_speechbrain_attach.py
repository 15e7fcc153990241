"""The one-line Python use: ``attach(brain, config)`` on a user's own ``Brain``.

A tiny wav2vec 2.0-style Brain (SpeechBrain's ``W2VLatentExtractor`` and wav2vec
``EncoderWrapper``) trains two epochs in this process through the real ``Brain.fit``. Its
``on_stage_end`` logs nothing and saves with ``save_checkpoint``: the vitals are then logged on
their own to its epoch-level loggers (file and TensorBoard, not the per-step one), merged into
the checkpoint meta and recorded in ``vitals.jsonl``; the numbers equal a measurement of the
saved weights.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("speechbrain")

import speechbrain as sb  # noqa: E402
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoder  # noqa: E402
from speechbrain.lobes.models.wav2vec import EncoderWrapper, W2VLatentExtractor  # noqa: E402
from speechbrain.utils.checkpoints import Checkpointer  # noqa: E402
from speechbrain.utils.epoch_loop import EpochCounter  # noqa: E402
from speechbrain.utils.train_logger import FileTrainLogger, TensorboardLogger  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import sbdata  # noqa: E402

from sslvitals.config import VitalsConfig  # noqa: E402
from sslvitals.errors import SSLVitalsError  # noqa: E402
from sslvitals.integrations.speechbrain import attach  # noqa: E402
from sslvitals.keys import TIME_KEY  # noqa: E402

pytestmark = pytest.mark.e2e


class TinyW2VBrain(sb.Brain):
    """Predict the next latent frame (a stand-in objective); no logging of its own."""

    def compute_forward(self, batch, stage):
        wavs = batch.to(self.device)
        latents = self.modules.latent_extractor(wavs)
        out = self.modules.latent_encoder(latents)["embeddings"]
        return self.modules.proj(out[:, :-1]), latents[:, 1:].detach()

    def compute_objectives(self, predictions, batch, stage):
        pred, target = predictions
        return torch.nn.functional.mse_loss(pred, target)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.VALID:
            self.checkpointer.save_checkpoint(meta={"loss": stage_loss})


def _wavs(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(8000, generator=g) for _ in range(n)]


@pytest.mark.timeout(300)
def test_attach_on_own_brain(tmp_path):
    torch.manual_seed(0)
    extractor = W2VLatentExtractor(out_channels=[16] * 7)
    encoder = EncoderWrapper(16, 32, TransformerEncoder(num_layers=2, nhead=2, d_ffn=64,
                                                        d_model=32, normalize_before=True))
    modules = {"latent_extractor": extractor, "latent_encoder": encoder, "proj": nn.Linear(32, 16)}
    counter = EpochCounter(limit=2)
    out = tmp_path / "run"
    checkpointer = Checkpointer(out / "save", recoverables={
        "extractor": extractor, "encoder": encoder, "counter": counter})
    hparams = {"output_folder": str(out), "epoch_counter": counter,
               "train_logger": FileTrainLogger(str(tmp_path / "train_log.txt")),
               "tensorboard_train_logger": TensorboardLogger(str(tmp_path / "tb")),
               "train_steps_logger": FileTrainLogger(str(tmp_path / "steps.txt"))}
    brain = TinyW2VBrain(modules=modules, opt_class=lambda p: torch.optim.Adam(p, 1e-3),
                         hparams=hparams, run_opts={"device": "cpu"}, checkpointer=checkpointer)

    probe = sbdata.write_corpus(tmp_path / "data", n_train=0, n_valid=0, n_probe=6)["probe"]
    options = {"probe": str(probe), "k": 4, "reservoir_size": 512, "silhouette_sample": 0,
               "metrics": "rankme,davies_bouldin,pnmi"}
    session = attach(brain, options)  # the one line
    assert session.cfg.enabled is True  # attach turns the measurements on
    with pytest.raises(SSLVitalsError, match="already has sslvitals attached"):
        attach(brain, VitalsConfig(enabled=True, **options))

    train = torch.utils.data.DataLoader(_wavs(8, 1), batch_size=4)
    valid = torch.utils.data.DataLoader(_wavs(4, 2), batch_size=4)
    brain.fit(counter, train, valid)

    assert session.kind == "wav2vec2" and session.layers == [0, 1, 2]
    records = [json.loads(x) for x in (out / "vitals.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    keys = {f"vitals/{m}/L{layer}" for m in ("rankme", "davies_bouldin", "pnmi")
            for layer in (0, 1, 2)}
    assert all(set(r["metrics"]) == keys for r in records)
    assert all(math.isfinite(v) for r in records for v in r["metrics"].values())

    # the recipe logged no valid stats: the vitals were logged alone, one line per epoch
    lines = (tmp_path / "train_log.txt").read_text().splitlines()
    assert [re.match(r"epoch: (\d+) - ", x).group(1) for x in lines] == ["1", "2"]
    assert all("valid vitals/rankme/L2: " in x and f"valid {TIME_KEY}: " in x for x in lines)

    assert not (tmp_path / "steps.txt").exists()  # not the per-step logger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hparams["tensorboard_train_logger"].writer.flush()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    board = [e.value for e in events.Scalars("vitals/rankme/L2/valid")]
    assert board == pytest.approx([r["metrics"]["vitals/rankme/L2"] for r in records], rel=1e-6)

    # the checkpoint of epoch 2 holds the vitals and the weights they were measured on
    ckpt = checkpointer.find_checkpoint(max_key="vitals/rankme/L2")
    assert ckpt is not None and ckpt.meta["vitals/rankme/L2"] == max(
        r["metrics"]["vitals/rankme/L2"] for r in records)
    last = checkpointer.find_checkpoint()
    assert {k: v for k, v in last.meta.items() if k.startswith("vitals/")} == records[-1]["metrics"]

    from sslvitals.integrations.speechbrain.model import SpeechBrainWav2Vec2, speechbrain_forward
    from sslvitals.monitor import VitalsMonitor
    from sslvitals.probe import ProbeSet

    again = VitalsMonitor(session.cfg).measure(SpeechBrainWav2Vec2(extractor, encoder),
                                               speechbrain_forward,
                                               ProbeSet.from_path(probe).batches(60.0))
    for key, value in records[-1]["metrics"].items():
        assert again[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
