"""One training run's measurements: probe, monitor, schedule, records (no ESPnet import).

:class:`VitalsSession` is what :class:`~sslvitals.integrations.espnet.trainer.VitalsTrainer`
holds for the run. It can be used on its own with any ESPnet HuBERT / SSL model (the
two-process tests do), inside or outside ``torch.distributed``.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from sslvitals.config import LABEL_METRICS, VitalsConfig, parse_metrics
from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.espnet.forward import encoder_kind, espnet_forward, unwrap_model
from sslvitals.integrations.espnet.options import load_probe
from sslvitals.keys import TIME_KEY, metric_key

__all__ = ["VitalsSession"]

logger = logging.getLogger(__name__)


class VitalsSession:
    """Measure a model on a fixed probe set at chosen epochs and record the results.

    Args:
        cfg: The validated configuration (``cfg.enabled`` is not checked here).
        output_dir: The experiment folder (``--output_dir``); the JSON-lines file defaults
            to ``<output_dir>/vitals.jsonl``.
        valid_data: ESPnet's ``valid_data_path_and_name_and_type`` (for ``probe: valid``).
        probe: An already loaded :class:`~sslvitals.probe.ProbeSet` (skips reading the files).
        run_name: Name written in the records (default: the output folder's name).

    Raises:
        SSLVitalsError: if the probe cannot be read.
    """

    def __init__(self, cfg: VitalsConfig, output_dir: str | os.PathLike, *,
                 valid_data: Sequence[Any] | None = None, probe: Any = None,
                 run_name: str | None = None) -> None:
        from sslvitals.monitor import VitalsMonitor

        cfg.validate()
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.jsonl = Path(cfg.jsonl) if cfg.jsonl else self.output_dir / "vitals.jsonl"
        self.run_name = run_name or self.output_dir.name
        self.probe = probe if probe is not None else load_probe(cfg, valid_data)
        self.monitor = VitalsMonitor(cfg)
        self.metrics = parse_metrics(cfg.metrics)
        self.layers: list[int] | None = None
        self.measured_epochs: list[int] = []

    # ------------------------------------------------------------------ start-up checks
    def preflight(self, model: torch.nn.Module, world_size: int = 1) -> list[int]:
        """Check, before training, that the probe can be measured on this model.

        Resolves the layer selection against the model, and runs the shortest probe
        utterance through :func:`espnet_forward` under a :class:`~sslvitals.hooks.LayerTap`,
        so that an unknown encoder, an out-of-range layer or an unreadable probe stops the
        run at start-up rather than at the first validation.

        Args:
            model: The ESPnet model (DDP wrappers are removed).
            world_size: Number of processes that will share the probe.

        Returns:
            The layer indices that will be measured.

        Raises:
            SSLVitalsError: naming the problem and the fix.
        """
        from sslvitals.hooks import LayerTap
        from sslvitals.probe import ProbeSet

        model = unwrap_model(model)
        kind = encoder_kind(model)
        if len(self.probe) < world_size:
            raise SSLVitalsError(
                f"the probe {self.probe.source} has {len(self.probe)} utterances for "
                f"{world_size} processes; every process needs at least one: use a larger probe "
                "(vitals.probe, vitals.max_probe_seconds)")
        spec = None if self.cfg.layers == "all" else self.cfg.layers
        tap = LayerTap(model, layers=spec)
        layers = tap.layer_ids
        shortest = min(self.probe.items, key=lambda it: it.num_samples)
        one = ProbeSet([shortest], self.probe.source, self.probe.sample_rate)
        batch = next(one.batches(self.cfg.batch_seconds))
        try:
            with torch.no_grad(), tap:
                espnet_forward(model, batch)
                captured = tap.utterances()
        except SSLVitalsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the forward is a set-up error
            raise SSLVitalsError(
                f"running the probe through the {kind} encoder failed before training: "
                f"{type(exc).__name__}: {exc}") from exc
        empty = [layer for layer in layers if captured[layer][0].shape[0] == 0]
        if empty:
            raise SSLVitalsError(
                f"probe utterance {shortest.uid} ({shortest.num_samples} samples) gives no frames "
                f"at layers {empty}; remove utterances shorter than the front-end's receptive "
                "field from the probe")
        self.layers = layers
        logger.info("sslvitals: %s encoder (%s), layers %s, probe %s (%d utterances, %.1f s, "
                    "labels: %s), metrics: %s; records: %s", kind, tap.architecture, layers,
                    self.probe.source, len(self.probe), self.probe.total_seconds,
                    self.probe.has_labels, ", ".join(self.metrics), self.jsonl)
        return layers

    # ------------------------------------------------------------------ schedule
    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (1-based) is measured: epochs 1, 1 + N, 1 + 2N, ... for
        ``every_n_validations = N`` (one validation per ESPnet epoch)."""
        return (int(epoch) - 1) % self.cfg.every_n_validations == 0

    def expected_keys(self) -> list[str]:
        """Every metric key a measurement reports for this probe (without ``vitals/seconds``)."""
        layers = self.layers if self.layers is not None else []
        names = [m for m in self.metrics if self.probe.has_labels or m not in LABEL_METRICS]
        return [metric_key(m, layer) for layer in layers for m in names]

    # ------------------------------------------------------------------ measurement
    def measure(self, model: torch.nn.Module, *, epoch: int, update: int | None = None,
                loss: float | None = None) -> dict[str, float]:
        """Measure this process's share of the probe; results are synchronised across ranks.

        A failure is logged and reported as NaN for every key unless ``cfg.strict``.

        Args:
            model: The model (DDP wrappers are removed).
            epoch: The epoch just validated (the ``step`` of the record).
            update: Training iterations so far, for the record.
            loss: The validation loss of this epoch, for the record.

        Returns:
            ``{metric_key: value, "vitals/seconds": s}``, the same on every rank.

        Raises:
            SSLVitalsError: only in strict mode.
        """
        from sslvitals import distributed as dist

        rank, world = dist.rank(), dist.world_size()
        model = unwrap_model(model)
        if self.layers is None:
            self.preflight(model, world)
        shard = self.probe.shard(rank, world)
        try:
            values = self.monitor.measure(model, espnet_forward, shard.batches(self.cfg.batch_seconds),
                                          step=epoch)
        except Exception as exc:  # noqa: BLE001 - the measurement must not stop training
            if self.cfg.strict:
                if isinstance(exc, SSLVitalsError):
                    raise
                raise SSLVitalsError(f"the vitals measurement failed at epoch {epoch}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            logger.warning("sslvitals: the measurement at epoch %d failed (%s: %s); reporting "
                           "NaN and going on (set vitals.strict=true to stop instead)", epoch,
                           type(exc).__name__, exc)
            values = {key: math.nan for key in self.expected_keys()}
            values[TIME_KEY] = math.nan
        self.measured_epochs.append(int(epoch))
        if rank == 0:
            self._record(values, epoch=epoch, update=update, loss=loss)
        return values

    def _record(self, values: dict[str, float], *, epoch: int, update: int | None,
                loss: float | None) -> None:
        from sslvitals.records import append_record, make_record

        metrics = {k: v for k, v in values.items() if k != TIME_KEY}
        seconds = values.get(TIME_KEY)
        probe = dict(self.probe.describe())
        rec = make_record(toolkit="espnet", metrics=metrics, run=self.run_name, update=update,
                          epoch=epoch, seconds=seconds, probe=probe,
                          loss=None if loss is None or not math.isfinite(loss) else loss,
                          settings=self.monitor.settings(probe))
        try:
            append_record(self.jsonl, rec)
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(f"cannot write {self.jsonl}: {exc}") from exc
            logger.warning("sslvitals: cannot write %s (%s); the values are still in the "
                           "training log", self.jsonl, exc)
