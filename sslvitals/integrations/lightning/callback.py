"""``VitalsCallback``: sslvitals in any PyTorch Lightning training (and so in NeMo).

Add it to the trainer's callbacks::

    from sslvitals.integrations.lightning import VitalsCallback

    trainer = Trainer(callbacks=[
        VitalsCallback(probe="probe.tsv", layers="0,6,12", k=100, model="model.wav2vec2"),
        ModelCheckpoint(monitor="vitals/rankme/L12", mode="max"),
    ])

What it does, hook by hook:

* ``setup`` (fit or validate): reads the options and the probe, fixes the records file
  (``<trainer.log_dir>/vitals.jsonl`` unless ``jsonl=`` is given) and checks every vitals key a
  ``ModelCheckpoint`` / ``EarlyStopping`` (any callback with a ``monitor``) watches;
* ``on_fit_start`` / ``on_validation_start`` of ``trainer.validate``: finds the encoder, resolves
  the layers and runs the shortest probe utterance through it, so a bad option, a missing probe or
  a bad layer stops the run before its first step with an :class:`~sslvitals.errors.SSLVitalsError`;
* ``on_train_start``: rank 0 moves this run's records after the restored step out of the
  records file (they describe training the resumed run repeats; see
  :mod:`sslvitals.integrations.resume`);
* ``on_validation_epoch_end`` (not during the sanity check): at every ``every_n_validations``-th
  validation of the run it measures the probe (each rank its shard; the monitor makes every rank
  agree) and logs every value with ``pl_module.log(key, value, sync_dist=False)``: the same value
  on every rank, so ``ModelCheckpoint``, ``EarlyStopping`` and every configured logger see it
  (Lightning files epoch-end values under its own logger step, ``global_step - 1``);
* ``on_validation_end``: rank 0 appends the record (``update`` = ``trainer.global_step``,
  ``epoch`` = ``trainer.current_epoch + 1``, counted from 1 as fairseq and ESPnet do) with the
  validation loss when the module logs one as ``val_loss`` (or ``val/loss``, ``valid_loss``).

The count of validations that drives the schedule is part of the callback's state in Lightning
checkpoints (``state_dict``), so a run resumed with ``Trainer.fit(ckpt_path=...)`` keeps its
schedule, and the records file holds one record per measured step of the training the
checkpoints describe (none twice).

Works with ``lightning`` 2.x and with the older ``pytorch_lightning`` package (the class derives
from whichever is installed, ``lightning`` when both are; either package's ``Trainer`` calls its
hooks).

NeMo: its SSL models are ``LightningModule``s whose Conformer encoder sslvitals does not
recognise by itself; give ``model="encoder"``, ``layers="layers"`` (the encoder's
``nn.ModuleList`` of ``ConformerLayer`` blocks; all of them are measured) and a ``forward`` that
runs ``model.preprocessor`` and the encoder on ``batch.wav`` / ``batch.lengths``. Such a model is
measured one utterance per forward pass (:mod:`sslvitals.batching`).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.lightning.session import (
    CallbackSession,
    find_loss,
    options_signature,
)
from sslvitals.keys import PREFIX

try:  # lightning >= 2.0 ships the trainer as lightning.pytorch
    from lightning.pytorch import Callback as _Callback

    LIGHTNING_PACKAGE = "lightning.pytorch"
except ImportError:  # pragma: no cover - exercised where only pytorch_lightning is installed
    try:
        from pytorch_lightning import Callback as _Callback

        LIGHTNING_PACKAGE = "pytorch_lightning"
    except ImportError as _exc:  # pragma: no cover - neither package
        raise ImportError(
            "sslvitals.integrations.lightning needs PyTorch Lightning: pip install lightning"
        ) from _exc

__all__ = ["VitalsCallback", "LIGHTNING_PACKAGE"]

logger = logging.getLogger(__name__)


def _monitored(trainer: Any) -> list[tuple[str, str]]:
    """``(callback class, key)`` for every callback of ``trainer`` that watches a metric."""
    out = []
    for cb in getattr(trainer, "callbacks", []) or []:
        key = getattr(cb, "monitor", None)
        if isinstance(key, str):
            out.append((f"{type(cb).__name__}(monitor={key!r})", key))
    return out


class VitalsCallback(_Callback):
    """Measure sslvitals' label-free metrics on a probe set at validation time.

    Keyword options: every field of :class:`sslvitals.config.VitalsConfig` with its name and
    default (``probe``, ``probe_labels``, ``max_probe_seconds``, ``layers``, ``metrics``, ``k``,
    ``kmeans_iters``, ``reservoir_size``, ``silhouette_sample``, ``every_n_validations``,
    ``seed``, ``strict``, ``backend``, ``device``, ``jsonl``, ``batch_seconds``), except that
    ``enabled`` defaults to True, plus:

    Args:
        model: Where the encoder is: None (the first module sslvitals recognises inside the
            ``LightningModule``, e.g. a transformers ``Wav2Vec2Model``), a dotted attribute path
            on the ``LightningModule`` (``"model.encoder"``), or a callable
            ``pl_module -> nn.Module``.
        forward: ``fn(encoder, batch)`` running the encoder on a
            :class:`~sslvitals.probe.ProbeBatch` (``wav (B, T)``, ``lengths (B,)``); default: the
            transformers or fairseq forward, chosen from the model. Required for other models
            (NeMo: run the preprocessor, then the encoder).
        layers: As in :class:`VitalsConfig` (``"all"``, ``"0,6,12"`` or a list of ints), or the
            dotted path, relative to the encoder, of the ``nn.ModuleList`` holding the blocks of
            a model sslvitals does not recognise (e.g. ``"layers"`` for a NeMo
            ``ConformerEncoder`` given as ``model="encoder"``): all its layers are measured.

    Raises:
        SSLVitalsError: at construction for an unknown option (the message lists the valid
            ones) or an invalid value; at ``setup`` / ``on_fit_start`` for a missing probe, a bad
            layer, a model it cannot read or a watched key it will not log.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.session = CallbackSession("lightning", options)
        self.cfg = self.session.cfg
        self._validations = 0
        self._last_step: int | None = None
        self._last_index: int | None = None
        self._ready = False
        self._checked_model = False
        self._pending: tuple[dict[str, float], int, int] | None = None

    # ------------------------------------------------------------------ checkpoint state
    @property
    def state_key(self) -> str:
        """Distinguishes several vitals callbacks in one trainer (e.g. two probes)."""
        return self._generate_state_key(probe=str(self.cfg.probe), jsonl=str(self.cfg.jsonl))

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position, saved in Lightning checkpoints."""
        return {"validations": self._validations, "last_step": self._last_step,
                "last_index": self._last_index}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule's position from a checkpoint (``Trainer.fit(ckpt_path=...)``)."""
        self._validations = int(state_dict.get("validations", 0))
        self._last_step = state_dict.get("last_step")
        self._last_index = state_dict.get("last_index")

    # ------------------------------------------------------------------ start-up
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Read the probe, fix the records file, check the watched keys (every rank)."""
        if not self.session.enabled or stage not in ("fit", "validate"):
            return
        # trainer.log_dir is a collective under DDP: every rank asks, before anything can fail
        log_dir = trainer.log_dir if self.cfg.jsonl is None else None
        self.session.load_probe(default_dir=log_dir or trainer.default_root_dir)
        self.session.check_monitored(_monitored(trainer))
        if trainer.world_size > 1:
            # the values are already equal on every rank: Lightning's advice to reduce them
            # across devices does not apply to these keys
            warnings.filterwarnings("ignore", message=rf".*self\.log\('{PREFIX}/")
        self._ready = True

    def _check_model(self, trainer: Any, pl_module: Any) -> None:
        if self._checked_model or not self._ready:
            return
        self.session.check_model(pl_module, trainer.world_size)
        self.session.check_monitored(_monitored(trainer))  # now with the layers known
        self._checked_model = True

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Check the encoder, the layers and the forward pass before the first step."""
        if not self.session.enabled:
            return
        self._check_model(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Rank 0 makes the records consistent with the step training (re)starts at.

        Runs after Lightning restored the checkpoint of ``fit(ckpt_path=...)``, so
        ``trainer.global_step`` is the restored step (0 for a fresh start).
        """
        if self.session.enabled and self._ready and trainer.global_rank == 0:
            self.session.restart(int(trainer.global_step))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """For ``trainer.validate()``: the same checks as at the start of a fit."""
        if self.session.enabled and not trainer.sanity_checking:
            self._check_model(trainer, pl_module)

    # ------------------------------------------------------------------ each validation
    def _index(self, trainer: Any) -> int | None:
        """0-based index of this validation in the whole run (None outside ``fit``)."""
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        if str(getattr(fn, "value", fn)) != "fit":
            return None
        step = int(trainer.global_step)
        if self._last_step is not None and step == self._last_step and self._last_index is not None:
            return self._last_index  # the same validation again (e.g. repeated after a resume)
        index = self._validations
        self._validations += 1
        self._last_step, self._last_index = step, index
        return index

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Measure the probe when this validation is due and log the values on every rank."""
        if not self.session.enabled or trainer.sanity_checking:
            return
        if not self._ready:
            raise SSLVitalsError("VitalsCallback.setup did not run: add the callback to the "
                                 "Trainer's callbacks=[...] before fit/validate")
        self._check_model(trainer, pl_module)
        if not self.session.due(self._index(trainer)):
            return
        step = int(trainer.global_step)
        values = self.session.measure(pl_module, step=step)
        for key, value in values.items():
            pl_module.log(key, float(value), sync_dist=False, on_step=False, on_epoch=True,
                          batch_size=1)
        # 1-based, as fairseq and ESPnet count: the epoch this validation belongs to
        self._pending = (values, step, int(trainer.current_epoch) + 1)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Rank 0 appends the record of the measurement made in this validation."""
        if self._pending is None:
            return
        values, step, epoch = self._pending
        self._pending = None
        if trainer.global_rank != 0:
            return
        self.session.record(values, update=step, epoch=epoch,
                            loss=find_loss(getattr(trainer, "callback_metrics", {}) or {}))


VitalsCallback.__init__.__signature__ = options_signature()  # type: ignore[attr-defined]
