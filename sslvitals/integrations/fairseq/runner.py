"""What the fairseq task wrappers do at start-up and at each validation, free of any task class.

:class:`FairseqVitals` owns the probe set and a :class:`~sslvitals.monitor.VitalsMonitor`:

* at start-up it reads and checks the probe (``from_task_config``) and checks the configured
  layers against the model (``check_model``), so configuration mistakes stop the run before the
  first update;
* at ``begin_valid_epoch`` it measures this rank's shard of the probe (``on_begin_validation``);
  the monitor synchronises the accumulators, so every rank gets the same numbers;
* at the first ``valid_step`` of that validation it logs them with ``metrics.log_scalar``
  (``log_pending``), inside the aggregation context fairseq opened for the validation subset, so
  they appear in the valid log line, the JSON log, TensorBoard and can be used as
  ``checkpoint.best_checkpoint_metric``;
* at ``post_validate`` rank 0 appends a JSON-lines record with the validation loss
  (``finish_validation``), under the number of updates fairseq's trainer reports for that
  validation.

Restarts (``checkpoint_last.pt``): the first training step of a process tells
:meth:`FairseqVitals.on_train_start` the number of updates the checkpoint restored. Records of
this run after it are moved out of the JSON-lines file (the run repeats that training), a
validation of an update already recorded writes no second record, and the validation history
kept in ``<save_dir>/vitals_validations.txt`` gives each validation its index in the whole run,
so ``every_n_validations`` measures the validations an uninterrupted run would
(:mod:`sslvitals.integrations.resume`).

Nothing here imports fairseq at module level; ``log_pending`` imports ``fairseq.logging.metrics``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch

from sslvitals.config import LABEL_METRICS, WORD_METRICS, VitalsConfig, parse_layers
from sslvitals.errors import SSLVitalsError
from sslvitals.keys import PREFIX, TIME_KEY, metric_key, parse_key

__all__ = ["FairseqVitals", "root_config", "LOG_PRIORITY", "run_name", "HISTORY_FILE"]

logger = logging.getLogger(__name__)

#: Priority of the vitals keys in fairseq's log lines (after loss, accuracy and throughput).
LOG_PRIORITY = 600

#: File in ``checkpoint.save_dir`` listing every validation of the run (read on resume).
HISTORY_FILE = "vitals_validations.txt"


def root_config(task_cfg: Any) -> Any:
    """The whole training config a fairseq task config hangs from, or None.

    fairseq keeps the task config attached to the root config (``merge_with_parent`` preserves
    the parent), which is how ``${checkpoint.save_dir}``-style interpolations resolve.
    """
    try:
        from omegaconf import OmegaConf

        if not OmegaConf.is_config(task_cfg):
            return None
        parent = task_cfg._get_parent()
        return parent if parent is not None and OmegaConf.is_config(parent) else None
    except ImportError:  # pragma: no cover - fairseq always brings omegaconf
        return None


def _select(root: Any, key: str, default: Any) -> Any:
    if root is None:
        return default
    from omegaconf import OmegaConf

    value = OmegaConf.select(root, key, default=default)
    return default if value is None else value


def run_name(save_dir: str) -> str:
    """A run name for records: the checkpoint folder's name, or its parent's for ``checkpoints``."""
    path = os.path.abspath(save_dir)
    base = os.path.basename(path.rstrip(os.sep))
    if base in ("checkpoints", "checkpoint", "ckpt", "ckpts"):
        base = os.path.basename(os.path.dirname(path)) or base
    return base


class FairseqVitals:
    """Measurements of one fairseq training run.

    Args:
        cfg: The validated configuration.
        data: The task's ``data`` folder (where ``<valid_subset>.tsv`` lives).
        valid_subset: fairseq's first validation subset (``dataset.valid_subset``).
        save_dir: ``checkpoint.save_dir`` (the default JSON-lines file goes there).
        normalize: The task's ``normalize`` option (the probe is normalised the same way).
        sample_rate: The task's sample rate; the probe must have it.
        best_checkpoint_metric: ``checkpoint.best_checkpoint_metric``; checked at start-up when it
            is a vitals key.
        keep_best_checkpoints: ``checkpoint.keep_best_checkpoints`` (fairseq puts the metric
            name in those file names, which a vitals key, with its '/', cannot be part of).
        max_update: ``optimization.max_update`` (0: none); a validation there that is off the
            validation grid only happens because the run stops, and is not counted in the
            ``every_n_validations`` schedule.
        validate_interval_updates: ``dataset.validate_interval_updates`` (0: none).
        save_interval_updates: ``checkpoint.save_interval_updates`` (0: none; fairseq validates
            at every mid-epoch save).
        validate_interval: ``dataset.validate_interval`` (epochs).

    Raises:
        SSLVitalsError: if the probe cannot be read or the configuration cannot work.
    """

    def __init__(self, cfg: VitalsConfig, *, data: str | None = None, valid_subset: str = "valid",
                 save_dir: str = "checkpoints", normalize: bool = False, sample_rate: int = 16000,
                 best_checkpoint_metric: str | None = None, keep_best_checkpoints: int = -1,
                 max_update: int = 0, validate_interval_updates: int = 0,
                 save_interval_updates: int = 0, validate_interval: int = 1) -> None:
        from sslvitals.integrations.fairseq.forward import make_forward_fn

        self.cfg = cfg
        self.data = data
        self.valid_subset = valid_subset
        self.save_dir = save_dir
        self.sample_rate = int(sample_rate)
        self.best_checkpoint_metric = best_checkpoint_metric
        self.keep_best_checkpoints = int(keep_best_checkpoints)
        self.forward_fn = make_forward_fn(bool(normalize))
        self.layers: list[int] | None = None
        self.pending: dict[str, float] | None = None
        self._to_record: tuple[dict[str, float], int | None, int | None] | None = None
        self._warned: set[str] = set()
        self.monitor: Any = None
        self.probe: Any = None
        self.max_update = int(max_update or 0)
        self.validate_interval_updates = int(validate_interval_updates or 0)
        self.save_interval_updates = int(save_interval_updates or 0)
        self.validate_interval = int(validate_interval or 1)
        self.records: Any = None
        self.history: Any = None
        self.started_at: int | None = None
        self._started = False
        if not cfg.enabled:
            return
        from sslvitals.monitor import VitalsMonitor
        from sslvitals.probe import ProbeSet

        self.monitor = VitalsMonitor(cfg)
        path = self.probe_path()
        self.probe = ProbeSet.from_path(
            path, labels=cfg.probe_labels, max_seconds=cfg.max_probe_seconds, seed=cfg.seed,
            sample_rate=self.sample_rate, words=cfg.probe_words,
        )
        self._check_best_metric_static()
        logger.info(
            "sslvitals: probe %s: %d utterances, %.1f s, labels: %s; metrics %s; JSON lines -> %s",
            path, len(self.probe), self.probe.total_seconds, self.probe.has_labels,
            ",".join(self.monitor.metrics), os.path.abspath(self.jsonl_path),
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_task_config(cls, task_cfg: Any, vitals: VitalsConfig) -> "FairseqVitals":
        """Build from a fairseq task config (and the root config it hangs from).

        Args:
            task_cfg: The task's config (``HubertPretrainingConfig``-like, DictConfig or dataclass).
            vitals: The checked ``task.vitals`` options.
        """
        root = root_config(task_cfg)
        subsets = str(_select(root, "dataset.valid_subset", "valid"))
        return cls(
            vitals,
            data=getattr(task_cfg, "data", None),
            valid_subset=subsets.split(",")[0].strip() or "valid",
            save_dir=str(_select(root, "checkpoint.save_dir", "checkpoints")),
            normalize=bool(getattr(task_cfg, "normalize", False)),
            sample_rate=int(getattr(task_cfg, "sample_rate", 16000) or 16000),
            best_checkpoint_metric=_select(root, "checkpoint.best_checkpoint_metric", None),
            keep_best_checkpoints=int(_select(root, "checkpoint.keep_best_checkpoints", -1)),
            max_update=int(_select(root, "optimization.max_update", 0)),
            validate_interval_updates=int(_select(root, "dataset.validate_interval_updates", 0)),
            save_interval_updates=int(_select(root, "checkpoint.save_interval_updates", 0)),
            validate_interval=int(_select(root, "dataset.validate_interval", 1)),
        )

    @property
    def enabled(self) -> bool:
        """True when measurements are configured on."""
        return bool(self.cfg.enabled)

    @property
    def jsonl_path(self) -> str:
        """Where the JSON-lines records go."""
        return self.cfg.jsonl or os.path.join(self.save_dir, "vitals.jsonl")

    @property
    def history_path(self) -> str:
        """The run's validation history (beside the checkpoints it describes)."""
        return os.path.join(self.save_dir, HISTORY_FILE)

    def probe_path(self) -> str:
        """The probe manifest: the validation manifest for ``probe=valid``, else the given path."""
        if self.cfg.probe == "valid":
            if not self.data:
                raise SSLVitalsError(
                    "vitals.probe=valid needs task.data (the folder with the validation manifest); "
                    "set task.data or give a probe manifest with +task.vitals.probe=/path/probe.tsv"
                )
            path = os.path.join(str(self.data), f"{self.valid_subset}.tsv")
            if not os.path.isfile(path):
                raise SSLVitalsError(
                    f"vitals.probe=valid uses the validation manifest {path}, which does not exist; "
                    "give a probe manifest with +task.vitals.probe=/path/probe.tsv"
                )
            return path
        path = os.path.expanduser(str(self.cfg.probe))
        if not os.path.exists(path):
            raise SSLVitalsError(
                f"probe manifest {path} (task.vitals.probe) does not exist; give a fairseq .tsv "
                "manifest, a Kaldi-style folder with wav.scp, or 'valid' for the validation set"
            )
        return path

    # ------------------------------------------------------------------ start-up checks
    def _check_best_metric_static(self) -> None:
        key = self.best_checkpoint_metric
        if not key or not str(key).startswith(PREFIX + "/"):
            return
        if self.keep_best_checkpoints > 0:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key} cannot be combined with "
                f"checkpoint.keep_best_checkpoints={self.keep_best_checkpoints}: fairseq writes the "
                "metric name into those file names and a vitals key contains '/'; set "
                "checkpoint.keep_best_checkpoints=-1 (checkpoint_best.pt is still kept)"
            )
        if self.cfg.every_n_validations != 1:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key} needs a value at every validation, but "
                f"task.vitals.every_n_validations={self.cfg.every_n_validations}; set "
                "+task.vitals.every_n_validations=1 or pick another best_checkpoint_metric"
            )
        if key == TIME_KEY:
            return
        parsed = parse_key(str(key))
        if parsed is None:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key} is not a vitals key; they read "
                "vitals/<metric>/L<layer>, e.g. vitals/rankme/L12"
            )
        if parsed.metric not in self.monitor.metrics:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key}: metric {parsed.metric!r} is not measured "
                f"(task.vitals.metrics gives {', '.join(self.monitor.metrics)})"
            )
        if parsed.metric in LABEL_METRICS and not self.probe.has_labels:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key} needs phone labels, but the probe has none; "
                "put <probe stem>.phn beside the probe or set +task.vitals.probe_labels=..."
            )
        if parsed.metric in WORD_METRICS and not self.probe.has_words:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key} needs word alignments, but the probe has "
                "none; put <probe stem>.words.tsv beside the probe or set "
                "+task.vitals.probe_words=..."
            )

    def check_model(self, model: torch.nn.Module) -> list[int]:
        """Resolve the configured layers against the model (start-up check).

        Args:
            model: The freshly built model.

        Returns:
            The layer indices that will be measured.

        Raises:
            SSLVitalsError: for an out-of-range layer, a model sslvitals cannot read, a best
                checkpoint metric on a layer that is not measured, or more ranks than probe
                utterances.
        """
        if not self.enabled:
            return []
        from sslvitals.hooks import LayerTap

        try:
            num_layers = LayerTap(model).num_layers
        except SSLVitalsError as exc:
            raise SSLVitalsError(
                f"sslvitals cannot read the layers of {type(model).__name__}: {exc}"
            ) from exc
        try:
            self.layers = parse_layers(self.cfg.layers, num_layers) or []
        except SSLVitalsError as exc:
            raise SSLVitalsError(f"task.vitals.layers={self.cfg.layers!r}: {exc}") from exc
        key = self.best_checkpoint_metric
        parsed = parse_key(str(key)) if key else None
        if parsed is not None and str(key).startswith(PREFIX + "/") and parsed.layer not in self.layers:
            raise SSLVitalsError(
                f"checkpoint.best_checkpoint_metric={key}: layer {parsed.layer} is not measured "
                f"(task.vitals.layers gives {self.layers})"
            )
        world = self._world()[1]
        if world > len(self.probe):
            raise SSLVitalsError(
                f"the probe has {len(self.probe)} utterances but the job has {world} processes; each "
                "process needs at least one: use a larger probe (task.vitals.probe / max_probe_seconds)"
            )
        logger.info("sslvitals: measuring layers %s of %s (%d blocks)", self.layers,
                    type(model).__name__, num_layers)
        return self.layers

    # ------------------------------------------------------------------ each validation
    @staticmethod
    def _world() -> tuple[int, int]:
        from sslvitals.distributed import rank, world_size

        return rank(), world_size()

    def expected_keys(self) -> list[str]:
        """Keys one measurement reports (metric x layer), without ``vitals/seconds``."""
        if not self.enabled:
            return []
        metrics = [m for m in self.monitor.metrics
                   if self.probe.has_labels or m not in LABEL_METRICS]
        return [metric_key(m, layer) for layer in (self.layers or []) for m in metrics]

    def measure(self, model: torch.nn.Module, *, step: int | None = None) -> dict[str, float]:
        """Measure this rank's shard of the probe; every rank returns the same numbers.

        A failure of the whole measurement (e.g. the forward pass) is logged once and reported
        as NaN for every key, unless ``strict``; single metrics fail the same way inside the
        monitor.

        Args:
            model: The model (unwrapped; it is put in eval mode and restored).
            step: Number of updates, for logs.

        Returns:
            ``{metric_key: value}`` plus ``vitals/seconds``.
        """
        import time

        rank, world = self._world()
        shard = self.probe.shard(rank, world)
        t0 = time.perf_counter()
        try:
            batches = shard.batches(self.cfg.batch_seconds)  # re-cut per model by the monitor
            return self.monitor.measure(model, self.forward_fn, batches, step=step)
        except Exception as exc:  # noqa: BLE001 - never stop the training unless strict
            if self.cfg.strict:
                raise
            tag = type(exc).__name__
            if tag not in self._warned:
                self._warned.add(tag)
                logger.warning(
                    "sslvitals: the measurement at update %s failed (%s: %s); reporting NaN and "
                    "going on (set +task.vitals.strict=true to stop instead)", step, tag, exc,
                )
            out = {k: float("nan") for k in self.expected_keys()}
            out[TIME_KEY] = time.perf_counter() - t0
            return out

    # ------------------------------------------------------------------ restarts
    def on_train_start(self, update: int | None, epoch: int | None) -> None:
        """Called once per process when training starts or resumes (first training step).

        Rank 0 moves this run's records after ``update`` out of the JSON-lines file and forgets
        the validations after it (the run repeats that training; see
        :mod:`sslvitals.integrations.resume`).

        Args:
            update: The number of updates the checkpoint restored (0 for a fresh start).
            epoch: The epoch training (re)starts in.
        """
        if self._started or not self.enabled:
            return
        self._started = True
        if update is None:
            logger.warning("sslvitals: the number of updates at the start is unknown; records are "
                           "not checked against the checkpoint and every_n_validations counts "
                           "this process's validations")
            return
        from sslvitals.integrations.resume import RunRecords, ValidationHistory

        self.started_at = int(update)
        self.records = RunRecords(self.jsonl_path, run_name(self.save_dir), key="update")
        if self._world()[0] != 0:
            self.history = ValidationHistory(None)
            return
        try:
            self.records.restart_at(self.started_at)
            self.history = ValidationHistory(self.history_path)
            self.history.restart_at(self.started_at, epoch, self.validate_interval)
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(
                    f"cannot update {self.jsonl_path} / {self.history_path} for the restart at "
                    f"update {self.started_at}: {exc}") from exc
            logger.warning("sslvitals: cannot update %s / %s at the restart (%s); the schedule "
                           "counts this process's validations only", self.jsonl_path,
                           self.history_path, exc)
            self.history = ValidationHistory(None)
        if self.started_at > 0:
            logger.info("sslvitals: resumed at update %d (epoch %s); %d earlier validation(s) "
                        "of the run known", self.started_at, epoch, len(self.history.entries))

    def _forced_stop(self, update: int) -> bool:
        """True for a validation fairseq makes only because the run stops at ``max_update``."""
        if self.max_update <= 0 or update < self.max_update:
            return False
        on_grid = ((self.validate_interval_updates > 0 and update % self.validate_interval_updates == 0)
                   or (self.save_interval_updates > 0 and update % self.save_interval_updates == 0))
        return not on_grid

    def is_due(self, step: int | None, epoch: int | None) -> bool:
        """Whether the validation at ``step`` is measured (the same answer on every rank).

        Its index in the run comes from the validation history (rank 0), so a resumed run
        measures the validations an uninterrupted run would.
        """
        if step is None or self.history is None:
            return bool(self.monitor.due())
        due: bool | None = None
        if self._world()[0] == 0:
            index = self.history.index(int(step))
            try:
                self.history.add(int(step), epoch, stop=self._forced_stop(int(step)))
            except OSError as exc:
                if "history" not in self._warned:
                    self._warned.add("history")
                    logger.warning("sslvitals: cannot write %s (%s)", self.history_path, exc)
            due = bool(self.monitor.due(index))
        from sslvitals import distributed as dist

        if dist.is_distributed():
            due = bool(dist.broadcast_object(due, src=0))
        return bool(due)

    def on_begin_validation(self, model: torch.nn.Module, *, step: int | None,
                            epoch: int | None) -> dict[str, float] | None:
        """Called from ``begin_valid_epoch``: measure when this validation is due.

        Args:
            model: The model.
            step: The number of updates at this validation.
            epoch: The epoch.

        Returns:
            The results when measured (also kept for :meth:`log_pending` and the record).
        """
        self.pending = None
        if not self.enabled:
            return None
        if not self._started:
            self.on_train_start(step, epoch)
        if not self.is_due(step, epoch):
            return None
        results = self.measure(model, step=step)
        self.pending = results
        self._to_record = (results, step, epoch)
        return results

    def log_pending(self) -> None:
        """Log the last results with ``metrics.log_scalar`` (once per validation).

        Must run inside fairseq's validation aggregation context (i.e. from ``valid_step``).
        """
        if not self.pending:
            return
        from fairseq.logging import metrics

        for key, value in self.pending.items():
            metrics.log_scalar(key, float(value), weight=0, priority=LOG_PRIORITY)
        self.pending = None

    def finish_validation(self, stats: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Called from ``post_validate``: rank 0 appends the record of this validation.

        Args:
            stats: fairseq's validation stats of the subset (for the loss, and ``num_updates``,
                the trainer's own count, which the record takes as its update).

        Returns:
            The record written (rank 0), or None (also when this run already has a record at
            this update: a resumed run validating its checkpoint again).
        """
        if self._to_record is None:
            return None
        results, step, epoch = self._to_record
        self._to_record = None
        if self._world()[0] != 0:
            return None
        if stats is not None and stats.get("num_updates") is not None:
            try:
                step = int(stats["num_updates"])
            except (TypeError, ValueError):
                pass
        if self.records is not None and self.records.recorded(step):
            logger.info("sslvitals: update %s is already in %s; no second record", step,
                        self.jsonl_path)
            return None
        from sslvitals.records import append_record, make_record

        loss = None
        if stats is not None and stats.get("loss") is not None:
            try:
                loss = float(stats["loss"])
            except (TypeError, ValueError):
                loss = None
        metrics = {k: v for k, v in results.items() if k != TIME_KEY}
        record = make_record(
            toolkit="fairseq", metrics=metrics, run=run_name(self.save_dir), update=step,
            epoch=epoch, seconds=results.get(TIME_KEY), probe=self.probe.describe(), loss=loss,
            settings=self.monitor.settings(self.probe.describe()),
        )
        try:
            append_record(self.jsonl_path, record)
            if self.records is not None:
                self.records.note(step)
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(f"cannot write {self.jsonl_path}: {exc}") from exc
            if "jsonl" not in self._warned:
                self._warned.add("jsonl")
                logger.warning("sslvitals: cannot write %s (%s); the values are still in the log",
                               self.jsonl_path, exc)
        return record
