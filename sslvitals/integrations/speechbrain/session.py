"""One SpeechBrain ``Brain``'s measurements: start-up checks, schedule, sinks, records.

:class:`SpeechBrainVitals` is attached to a ``speechbrain.Brain`` instance
(:func:`sslvitals.integrations.speechbrain.attach`, or every Brain a recipe creates under
``python -m sslvitals.integrations.speechbrain``). It wraps three methods of that instance
only (the class and the recipe's code are untouched):

* ``fit``: remembers the epoch counter;
* ``on_fit_start``: after SpeechBrain's own (which recovers the last checkpoint and wraps DDP),
  checks the probe, the model, the layers and the kept keys on this model, so a bad
  configuration stops the run before the first epoch; rank 0 then moves this run's records
  after the recovered epoch out of ``vitals.jsonl`` (:mod:`sslvitals.integrations.resume`);
* ``on_stage_end``: at the end of a due VALID stage (epochs 1, 1 + N, 1 + 2N, ... for
  ``every_n_validations = N``: a function of the epoch, so a resumed run keeps its schedule),
  every rank measures its shard of the probe with :class:`~sslvitals.monitor.VitalsMonitor`
  (which makes all ranks agree), rank 0 appends the record to ``vitals.jsonl`` (none twice for
  one epoch), and then the recipe's own ``on_stage_end`` runs while:

  - every train logger of the recipe's hyperparameters (``train_logger``,
    ``train_stage_logger``, TensorBoard, W&B ...) that is called with ``valid_stats`` gets the
    vitals merged into them (one line in ``train_log.txt`` with the recipe's loss and the
    vitals; the same keys in TensorBoard / W&B);
  - ``checkpointer.save_and_keep_only`` / ``save_checkpoint`` get the finite vitals merged into
    ``meta`` (so ``find_checkpoint(max_key="vitals/rankme/L12")`` and
    ``save_and_keep_only(max_keys=[...])`` can choose by them), and the keys of
    ``keep_max`` / ``keep_min`` added to ``max_keys`` / ``min_keys``.

  When the recipe logs no ``valid_stats``, the vitals are logged alone to its epoch-level
  loggers (every train logger whose name does not contain ``step``).

The record is written before the recipe saves its checkpoint: a run that dies in between
repeats the epoch when it resumes, and the repeated measurement replaces the stale record.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from sslvitals.config import LABEL_METRICS, VitalsConfig
from sslvitals.errors import SSLVitalsError
from sslvitals.keys import TIME_KEY, metric_key, parse_key

__all__ = ["SpeechBrainVitals", "PREFERRED_LOGGERS"]

logger = logging.getLogger(__name__)

#: Hyperparameter names of the loggers listed first (and so written first).
PREFERRED_LOGGERS = ("train_logger", "train_stage_logger", "epoch_logger")

_ATTRIBUTE = "_sslvitals"


def _undo_patch(obj: Any, name: str, had: bool, old: Any) -> None:
    if had:
        setattr(obj, name, old)
    else:
        obj.__dict__.pop(name, None)


def _patch(obj: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
           ) -> Callable[[], None]:
    """Replace ``obj.name`` by ``make(obj.name)`` on the instance; return the undo function."""
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    setattr(obj, name, make(getattr(obj, name)))
    return lambda: _undo_patch(obj, name, had, old)


def _bind(fn: Callable[..., Any], args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    try:
        return inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None


class SpeechBrainVitals:
    """Measure a SpeechBrain model on a fixed probe at the end of validation stages.

    Args:
        cfg: The configuration (:class:`~sslvitals.config.VitalsConfig`).
        probe: An already read :class:`~sslvitals.probe.ProbeSet` (else read from ``cfg``).
        model: ``model(brain) -> nn.Module``: the module to measure, for a recipe whose model
            sslvitals does not assemble by itself (default:
            :func:`~sslvitals.integrations.speechbrain.model.model_from_modules`).
        forward: ``forward(module, batch)`` for that module (default:
            :func:`~sslvitals.integrations.speechbrain.model.speechbrain_forward`).
        keep_max: Vitals keys added to ``max_keys`` of ``save_and_keep_only``.
        keep_min: Vitals keys added to ``min_keys`` of ``save_and_keep_only``.

    Raises:
        SSLVitalsError: if the configuration or the probe is invalid.
    """

    toolkit = "speechbrain"

    def __init__(self, cfg: VitalsConfig, *, probe: Any = None,
                 model: Callable[[Any], nn.Module] | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None,
                 keep_max: Sequence[str] = (), keep_min: Sequence[str] = ()) -> None:
        from sslvitals.integrations.speechbrain.options import load_probe
        from sslvitals.monitor import VitalsMonitor

        cfg.validate()
        self.cfg = cfg
        self.monitor = VitalsMonitor(cfg)
        self.probe = probe if probe is not None or not cfg.enabled else load_probe(cfg)
        self.model_fn = model
        self.user_forward = forward
        self.keep_max = tuple(keep_max)
        self.keep_min = tuple(keep_min)
        for key in (*self.keep_max, *self.keep_min):
            if parse_key(str(key)) is None:
                raise SSLVitalsError(
                    f"kept key {key!r} is not a vitals key; they read vitals/<metric>/L<layer>, "
                    "e.g. vitals/rankme/L12")
        self.layers: list[int] | None = None
        self.kind: str | None = None
        self.output_dir: Path | None = None
        self.jsonl: Path | None = None
        self.run_name: str | None = None
        self.records: Any = None
        self.epoch_counter: Any = None
        self.started = False
        self.last_values: dict[str, float] = {}
        self._warned: set[str] = set()

    @property
    def enabled(self) -> bool:
        """Whether anything is measured."""
        return bool(self.cfg.enabled)

    # ------------------------------------------------------------------ attaching
    def attach(self, brain: Any) -> "SpeechBrainVitals":
        """Wrap ``fit``, ``on_fit_start`` and ``on_stage_end`` of this Brain instance.

        Args:
            brain: A ``speechbrain.Brain`` (any subclass).

        Returns:
            self.

        Raises:
            SSLVitalsError: if the Brain already has a vitals session attached.
        """
        if getattr(brain, _ATTRIBUTE, None) is not None:
            raise SSLVitalsError(
                f"{type(brain).__name__} already has sslvitals attached; attach once (the "
                "python -m sslvitals.integrations.speechbrain entry point attaches to every Brain "
                "the recipe creates: do not call attach() in a recipe run through it)")
        setattr(brain, _ATTRIBUTE, self)
        _patch(brain, "fit", self._wrap_fit)
        _patch(brain, "on_fit_start", lambda original: self._wrap_fit_start(brain, original))
        _patch(brain, "on_stage_end", lambda original: self._wrap_stage_end(brain, original))
        return self

    def _wrap_fit(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def fit(epoch_counter: Any, *args: Any, **kwargs: Any) -> Any:
            self.epoch_counter = epoch_counter
            valid = args[1] if len(args) > 1 else kwargs.get("valid_set")
            if self.enabled and valid is None:
                logger.warning("sslvitals: fit() got no valid_set: there is no VALID stage, so "
                               "nothing will be measured")
            return original(epoch_counter, *args, **kwargs)

        return fit

    def _wrap_fit_start(self, brain: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def on_fit_start(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.start(brain)
            return out

        return on_fit_start

    def _wrap_stage_end(self, brain: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def on_stage_end(stage: Any, stage_loss: Any = None, epoch: Any = None, *args: Any,
                         **kwargs: Any) -> Any:
            from speechbrain import Stage

            if stage != Stage.VALID or not self.started or epoch is None or not self.due(int(epoch)):
                return original(stage, stage_loss, epoch, *args, **kwargs)
            return self.on_valid_end(brain, lambda: original(stage, stage_loss, epoch, *args, **kwargs),
                                     stage_loss=stage_loss, epoch=int(epoch))

        return on_stage_end

    # ------------------------------------------------------------------ start-up
    def model_for(self, brain: Any) -> nn.Module:
        """The module measured for ``brain`` (assembled anew: DDP may have wrapped parts)."""
        if self.model_fn is not None:
            model = self.model_fn(brain)
            if not isinstance(model, nn.Module):
                raise SSLVitalsError(f"the model option returned {type(model).__name__}, not an "
                                     "nn.Module")
            return model
        from sslvitals.integrations.speechbrain.model import model_from_modules

        hparams = vars(brain.hparams) if getattr(brain, "hparams", None) is not None else None
        model, self.kind = model_from_modules(brain.modules, hparams)
        return model

    def forward_fn(self) -> Callable[[nn.Module, Any], Any]:
        """The forward function of the measured module."""
        if self.user_forward is not None:
            return self.user_forward
        from sslvitals.integrations.speechbrain.model import speechbrain_forward

        return speechbrain_forward

    def start(self, brain: Any) -> list[int]:
        """Start-up checks and restart bookkeeping (called after ``on_fit_start``).

        Returns:
            The layers that will be measured (empty when disabled).

        Raises:
            SSLVitalsError: naming the problem and the fix (probe too small for the processes,
                model not found, layer out of range, forward failing, bad kept key).
        """
        if not self.enabled:
            return []
        from sslvitals import distributed as dist

        self.output_dir = _output_dir(brain)
        self.jsonl = Path(self.cfg.jsonl) if self.cfg.jsonl else self.output_dir / "vitals.jsonl"
        self.run_name = self.output_dir.name or None
        layers = self.check_model(brain, dist.world_size())
        self.check_keep()
        position = int(getattr(self.epoch_counter, "current", 0) or 0)
        if dist.rank() == 0:
            self.restart(position)
        self.started = True
        return layers

    def check_model(self, brain: Any, world_size: int = 1) -> list[int]:
        """Find the model, resolve the layers, and run the shortest probe utterance through it.

        Raises:
            SSLVitalsError: as :meth:`start`.
        """
        from sslvitals.hooks import LayerTap
        from sslvitals.probe import ProbeSet

        if len(self.probe) < world_size:
            raise SSLVitalsError(
                f"the probe {self.probe.source} has {len(self.probe)} utterances for {world_size} "
                "processes; every process needs at least one: use a larger probe "
                "(vitals.probe, vitals.max_probe_seconds)")
        model = self.model_for(brain)
        tap = LayerTap(model, layers=self.cfg.layers)
        shortest = min(self.probe.items, key=lambda it: it.num_samples)
        batch = next(ProbeSet([shortest], self.probe.source, self.probe.sample_rate).batches(
            self.cfg.batch_seconds))
        was_training = model.training
        try:
            with torch.no_grad(), tap:
                self.forward_fn()(model, batch)
                captured = tap.utterances()
        except SSLVitalsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is a set-up error
            raise SSLVitalsError(
                f"running probe utterance {shortest.uid} through the {tap.architecture} model "
                f"failed before training: {type(exc).__name__}: {exc}") from exc
        finally:
            model.train(was_training)
        layers = list(tap.layer_ids)
        empty = [layer for layer in layers if captured[layer][0].shape[0] == 0]
        if empty:
            raise SSLVitalsError(
                f"probe utterance {shortest.uid} ({shortest.num_samples} samples) gives no frames "
                f"at layers {empty}; remove utterances shorter than the front-end's receptive "
                "field from the probe")
        self.layers = layers
        logger.info("sslvitals: %s (%s), layers %s, %.1f frames/s; probe %s (%d utterances, "
                    "%.1f s, labels: %s); metrics %s; records %s", tap.architecture,
                    self.kind or "custom", layers, tap.frame_rates()[layers[-1]], self.probe.source,
                    len(self.probe), self.probe.total_seconds, self.probe.has_labels,
                    ",".join(self.monitor.metrics), self.jsonl)
        return layers

    def check_keep(self) -> None:
        """Check the kept keys name measured metrics and layers.

        Raises:
            SSLVitalsError: naming the key and what is measured.
        """
        for key in (*self.keep_max, *self.keep_min):
            parsed = parse_key(str(key))
            assert parsed is not None  # checked in __init__
            if parsed.metric not in self.monitor.metrics:
                raise SSLVitalsError(
                    f"kept key {key} names metric {parsed.metric!r}, which is not measured (the "
                    f"metrics option gives {', '.join(self.monitor.metrics)})")
            if parsed.metric in LABEL_METRICS and not self.probe.has_labels:
                raise SSLVitalsError(
                    f"kept key {key} needs phone labels, but the probe has none; put "
                    "<probe stem>.phn beside the probe or set probe_labels")
            if self.layers is not None and parsed.layer not in self.layers:
                raise SSLVitalsError(
                    f"kept key {key} names layer {parsed.layer}, which is not measured (the "
                    f"layers option gives {self.layers})")

    # ------------------------------------------------------------------ each validation
    def due(self, epoch: int) -> bool:
        """Whether the VALID stage of ``epoch`` (1-based) is measured: epochs 1, 1 + N, ...
        for ``every_n_validations = N`` (SpeechBrain validates once per epoch)."""
        return self.enabled and self.monitor.due(int(epoch) - 1)

    def expected_keys(self) -> list[str]:
        """Every metric key one measurement reports (without ``vitals/seconds``)."""
        labels = self.probe is not None and self.probe.has_labels
        names = [m for m in self.monitor.metrics if labels or m not in LABEL_METRICS]
        return [metric_key(m, layer) for layer in (self.layers or []) for m in names]

    def measure(self, brain: Any, epoch: int) -> dict[str, float]:
        """Measure this rank's shard of the probe; every rank returns the same dict.

        A failure of the whole measurement is logged once and reported as NaN for every key,
        unless ``strict``.

        Returns:
            ``{metric_key: value, "vitals/seconds": s}``.

        Raises:
            SSLVitalsError: only in strict mode.
        """
        from sslvitals import distributed as dist

        rank, world = dist.rank(), dist.world_size()
        try:
            model = self.model_for(brain)
            shard = self.probe.shard(rank, world)
            values = self.monitor.measure(model, self.forward_fn(),
                                          shard.batches(self.cfg.batch_seconds), step=epoch)
        except Exception as exc:  # noqa: BLE001 - the measurement must not stop training
            if self.cfg.strict:
                if isinstance(exc, SSLVitalsError):
                    raise
                raise SSLVitalsError(f"the vitals measurement at epoch {epoch} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
            tag = type(exc).__name__
            if tag not in self._warned:
                self._warned.add(tag)
                logger.warning("sslvitals: the measurement at epoch %d failed (%s: %s); reporting "
                               "NaN and going on (set strict: true to stop instead)", epoch, tag, exc)
            values = {key: math.nan for key in self.expected_keys()}
            values[TIME_KEY] = math.nan
        return values

    def on_valid_end(self, brain: Any, run_recipe: Callable[[], Any], *, stage_loss: Any,
                     epoch: int) -> Any:
        """Measure, record, then run the recipe's ``on_stage_end`` with the sinks merged.

        Args:
            brain: The Brain.
            run_recipe: Calls the recipe's own ``on_stage_end`` for this VALID stage.
            stage_loss: The validation loss SpeechBrain averaged.
            epoch: The epoch.

        Returns:
            What the recipe's ``on_stage_end`` returns.
        """
        from sslvitals import distributed as dist

        values = self.measure(brain, epoch)
        self.last_values = dict(values)
        if dist.rank() == 0:
            self.record(values, epoch=epoch, update=getattr(brain, "optimizer_step", None),
                        loss=_as_float(stage_loss))
        with self._sinks(brain, values) as seen:
            out = run_recipe()
        if not seen["logged"]:
            self._log_alone(brain, epoch, values)
        return out

    @contextlib.contextmanager
    def _sinks(self, brain: Any, values: Mapping[str, float]) -> Iterator[dict[str, bool]]:
        """Merge ``values`` into the recipe's logger and checkpointer calls inside the block."""
        seen = {"logged": False, "saved": False}
        logged = {k: float(v) for k, v in values.items()}
        meta_values = {k: float(v) for k, v in values.items()
                       if k != TIME_KEY and math.isfinite(float(v))}

        def log_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def log_stats(*args: Any, **kwargs: Any) -> Any:
                bound = _bind(original, args, kwargs)
                valid = None if bound is None else bound.arguments.get("valid_stats")
                if bound is None or not isinstance(valid, Mapping):
                    return original(*args, **kwargs)
                bound.arguments["valid_stats"] = {**dict(valid), **logged}
                seen["logged"] = True
                return original(*bound.args, **bound.kwargs)

            return log_stats

        def save_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
            def save(*args: Any, **kwargs: Any) -> Any:
                bound = _bind(original, args, kwargs)
                if bound is None:
                    return original(*args, **kwargs)
                params = inspect.signature(original).parameters
                if "meta" in params:
                    bound.arguments["meta"] = {**dict(bound.arguments.get("meta") or {}),
                                               **meta_values}
                for name, keys in (("max_keys", self.keep_max), ("min_keys", self.keep_min)):
                    if keys and name in params:
                        have = list(bound.arguments.get(name) or [])
                        bound.arguments[name] = have + [k for k in keys if k not in have]
                seen["saved"] = True
                return original(*bound.args, **bound.kwargs)

            return save

        undo: list[Callable[[], None]] = []
        try:
            for lg in _train_loggers(brain):
                undo.append(_patch(lg, "log_stats", log_wrapper))
            ckpt = getattr(brain, "checkpointer", None)
            if ckpt is not None:
                for name in ("save_and_keep_only", "save_checkpoint"):
                    if callable(getattr(ckpt, name, None)):
                        undo.append(_patch(ckpt, name, save_wrapper))
            yield seen
        finally:
            for fn in reversed(undo):
                fn()

    def _log_alone(self, brain: Any, epoch: int, values: Mapping[str, float]) -> None:
        from sslvitals import distributed as dist

        named = _named_loggers(brain)
        # every epoch-level logger (file, TensorBoard, W&B); a per-step one only when alone
        targets = [lg for name, lg in named if "step" not in name] or [lg for _, lg in named[:1]]
        for target in targets:
            target.log_stats(stats_meta={"epoch": epoch}, valid_stats=dict(values))
        if not targets and dist.rank() == 0:
            shown = ", ".join(f"{k}: {v:.4g}" for k, v in values.items())
            logger.info("sslvitals: epoch %d: %s", epoch, shown)

    # ------------------------------------------------------------------ records
    def restart(self, position: int) -> None:
        """Rank 0, at the start of ``fit``: this run's records after ``position`` (the epoch the
        checkpoint restored, 0 for a fresh start) move to ``vitals.jsonl.discarded``."""
        from sslvitals.integrations.resume import RunRecords

        self.records = RunRecords(self.jsonl, self.run_name or "", key="epoch")
        try:
            self.records.restart_at(int(position))
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(f"cannot update {self.jsonl} for the restart at epoch "
                                     f"{position}: {exc}") from exc
            logger.warning("sslvitals: cannot update %s at the restart (%s)", self.jsonl, exc)
        if position > 0:
            logger.info("sslvitals: resumed after epoch %d; records: %s", position, self.jsonl)

    def record(self, values: Mapping[str, float], *, epoch: int, update: int | None,
               loss: float | None) -> dict[str, Any] | None:
        """Append the record of one measurement (rank 0); an epoch already recorded is skipped.

        Returns:
            The record written, or None.
        """
        from sslvitals.integrations.resume import RunRecords
        from sslvitals.records import append_record, make_record

        if self.jsonl is None:
            return None
        if self.records is None:
            self.records = RunRecords(self.jsonl, self.run_name or "", key="epoch")
        if self.records.recorded(epoch):
            logger.info("sslvitals: epoch %d is already in %s; no second record", epoch, self.jsonl)
            return None
        probe = dict(self.probe.describe())
        metrics = {k: float(v) for k, v in values.items() if k != TIME_KEY}
        rec = make_record(toolkit=self.toolkit, metrics=metrics, run=self.run_name,
                          update=update, epoch=epoch, seconds=values.get(TIME_KEY), probe=probe,
                          loss=loss if loss is not None and math.isfinite(loss) else None,
                          settings=self.monitor.settings(probe))
        try:
            append_record(self.jsonl, rec)
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(f"cannot write {self.jsonl}: {exc}") from exc
            logger.warning("sslvitals: cannot write %s (%s); the values are still in the "
                           "training log", self.jsonl, exc)
            return None
        self.records.note(epoch)
        return rec


def _as_float(value: Any) -> float | None:
    try:
        return float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, AttributeError):
        return None


def _named_loggers(brain: Any) -> list[tuple[str, Any]]:
    """``(name, logger)`` of every SpeechBrain train logger in the Brain's hyperparameters,
    :data:`PREFERRED_LOGGERS` first."""
    from speechbrain.utils.train_logger import TrainLogger

    hparams = getattr(brain, "hparams", None)
    items = list(vars(hparams).items()) if hparams is not None else []
    found: dict[int, tuple[str, Any]] = {}
    for name, value in items:
        if isinstance(value, TrainLogger):
            found.setdefault(id(value), (str(name), value))
    order = {name: i for i, name in enumerate(PREFERRED_LOGGERS)}
    return sorted(found.values(), key=lambda nl: order.get(nl[0], len(order)))


def _train_loggers(brain: Any) -> list[Any]:
    return [lg for _, lg in _named_loggers(brain)]


def _output_dir(brain: Any) -> Path:
    """The recipe's output folder: ``hparams.output_folder``, else the checkpoint folder's
    parent, else the working directory."""
    hparams = getattr(brain, "hparams", None)
    out = getattr(hparams, "output_folder", None) if hparams is not None else None
    if out:
        return Path(out)
    ckpt = getattr(brain, "checkpointer", None)
    folder = getattr(ckpt, "checkpoints_dir", None)
    if folder is not None:
        return Path(folder).parent
    return Path(os.getcwd())
