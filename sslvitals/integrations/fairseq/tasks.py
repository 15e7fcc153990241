"""fairseq task wrappers that add the sslvitals measurements to validation.

Registered names (use with ``task._name=...`` and ``common.user_dir=$(sslvitals fairseq-user-dir)``):

======================================= ===================================
wrapper                                 stock task it extends
======================================= ===================================
``hubert_pretraining_vitals``           ``hubert_pretraining`` (HuBERT)
``audio_pretraining_vitals``            ``audio_pretraining`` (wav2vec 2.0)
``multires_hubert_pretraining_vitals``  ``multires_hubert_pretraining``
                                        (registered only if fairseq has it)
======================================= ===================================

Each wrapper's config is the stock task's config plus a ``vitals`` node; with
``vitals.enabled=false`` (the default) the wrapper behaves exactly like the stock task. The hooks
used are the ones fairseq calls on every task: ``setup_task`` / ``build_model`` (start-up checks),
``begin_epoch`` and ``train_step`` (where training starts or resumes), ``begin_valid_epoch`` (the
measurement), ``valid_step`` (logging inside the validation aggregation) and ``post_validate``
(the JSON-lines record).

The update number of a validation is the trainer's: fairseq passes it to ``post_validate`` in
the validation stats, and logs it as ``num_updates`` into the active metrics aggregators, which
is where ``begin_valid_epoch`` reads it. (``metrics.get_meter("default", "num_updates")`` is
wrong after a resume: restoring the checkpoint's meters replaces the ``default`` aggregator by
a copy frozen at the restored value, while fairseq keeps logging into the original.) The first
``train_step`` of a process receives the number of updates the checkpoint restored, which
:meth:`~sslvitals.integrations.fairseq.runner.FairseqVitals.on_train_start` uses to keep the
records consistent with the checkpoints after a restart.

When a wrapper task is rebuilt from a checkpoint (``from_checkpoint=True``, e.g. when a
fine-tuning recipe loads the pretrained model), the measurements stay off.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict

from fairseq.logging import metrics
from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY, register_task

from sslvitals.integrations.fairseq.config import vitals_config_from_node, vitals_field
from sslvitals.integrations.fairseq.runner import FairseqVitals

__all__ = [
    "VitalsTaskMixin",
    "HubertPretrainingVitalsTask",
    "AudioPretrainingVitalsTask",
    "MultiresHubertPretrainingVitalsTask",
    "STOCK_TASKS",
    "stock_task_name",
    "make_vitals_task",
]

logger = logging.getLogger(__name__)

#: wrapper task name -> stock task name (for tools that load checkpoints of wrapped runs).
STOCK_TASKS: dict[str, str] = {}


def stock_task_name(name: str) -> str:
    """The stock task a (possibly wrapped) task name stands for.

    Example:
        >>> stock_task_name("hubert_pretraining_vitals")
        'hubert_pretraining'
        >>> stock_task_name("audio_pretraining")
        'audio_pretraining'
    """
    return STOCK_TASKS.get(name, name)


class VitalsTaskMixin:
    """The sslvitals part of a wrapper task; put it before the stock task in the bases."""

    _vitals: FairseqVitals | None = None
    _vitals_update: int | None = None
    _vitals_epoch: int | None = None

    @classmethod
    def setup_task(cls, cfg: Any, **kwargs: Any) -> Any:
        """Set up the stock task, then read and check ``task.vitals`` and the probe."""
        task = super().setup_task(cfg, **kwargs)  # type: ignore[misc]
        if kwargs.get("from_checkpoint"):
            # a model loaded for fine-tuning or inference: no probe, no checks (the stored
            # options may come from another sslvitals version)
            task._vitals = None
            return task
        vitals_cfg = vitals_config_from_node(getattr(cfg, "vitals", None))
        if not vitals_cfg.enabled:
            logger.info("sslvitals: task %s without measurements (add +task.vitals.enabled=true)",
                        cfg.get("_name") if hasattr(cfg, "get") else cls.__name__)
        task._vitals = FairseqVitals.from_task_config(cfg, vitals_cfg)
        return task

    def build_model(self, cfg: Any, from_checkpoint: bool = False) -> Any:
        """Build the stock model, then check the configured layers against it."""
        model = super().build_model(cfg, from_checkpoint=from_checkpoint)  # type: ignore[misc]
        if self._vitals is not None and self._vitals.enabled and not from_checkpoint:
            self._vitals.check_model(model)
        return model

    def begin_epoch(self, epoch: int, model: Any) -> None:
        """Remember the epoch training is in (fairseq calls this when each epoch starts)."""
        self._vitals_epoch = int(epoch)
        parent = getattr(super(), "begin_epoch", None)
        if parent is not None:
            parent(epoch, model)

    def train_step(self, sample: Any, model: Any, criterion: Any, optimizer: Any,
                   update_num: int, ignore_grad: bool = False, **kwargs: Any) -> Any:
        """Remember the update number (fairseq passes the count before this update); the first
        call of a process tells the vitals where training (re)starts."""
        if self._vitals is not None and self._vitals_update is None:
            self._vitals.on_train_start(int(update_num), self._vitals_epoch)
        self._vitals_update = int(update_num) + 1
        return super().train_step(  # type: ignore[misc]
            sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad, **kwargs
        )

    def _num_updates(self) -> int | None:
        """The trainer's number of updates, as it last logged it into the active aggregators."""
        found = [getattr(agg.get("num_updates"), "val", None)
                 for agg in metrics.get_active_aggregators()]
        found = [int(v) for v in found if v is not None]
        if found:
            return max(found)
        return self._vitals_update

    def begin_valid_epoch(self, epoch: int, model: Any) -> None:
        """Measure the probe (when due) before fairseq iterates over the validation set."""
        super().begin_valid_epoch(epoch, model)  # type: ignore[misc]
        if self._vitals is not None and self._vitals.enabled:
            self._vitals.on_begin_validation(model, step=self._num_updates(), epoch=epoch)

    def valid_step(self, sample: Any, model: Any, criterion: Any, *args: Any, **kwargs: Any) -> Any:
        """Log the pending measurement inside the validation aggregation, then validate."""
        if self._vitals is not None:
            self._vitals.log_pending()
        return super().valid_step(sample, model, criterion, *args, **kwargs)  # type: ignore[misc]

    def post_validate(self, model: Any, stats: Any, agg: Any) -> None:
        """Append the JSON-lines record of this validation (rank 0)."""
        parent = getattr(super(), "post_validate", None)
        if parent is not None:
            parent(model, stats, agg)
        if self._vitals is not None:
            self._vitals.finish_validation(stats)


def make_vitals_task(stock_name: str, name: str | None = None) -> type | None:
    """Register ``<stock_name>_vitals`` wrapping the registered fairseq task ``stock_name``.

    Args:
        stock_name: A task registered in fairseq with a dataclass config.
        name: Name of the wrapper (default ``<stock_name>_vitals``).

    Returns:
        The wrapper task class, or None when fairseq has no task ``stock_name``.
    """
    name = name or f"{stock_name}_vitals"
    if name in TASK_REGISTRY:
        return TASK_REGISTRY[name]
    task_cls = TASK_REGISTRY.get(stock_name)
    cfg_cls = TASK_DATACLASS_REGISTRY.get(stock_name)
    if task_cls is None or cfg_cls is None:
        return None
    camel = "".join(part.capitalize() for part in stock_name.split("_"))
    vitals_cfg_cls = dataclasses.make_dataclass(
        f"{camel}VitalsConfig",
        [("vitals", Dict[str, Any], vitals_field())],
        bases=(cfg_cls,),
        namespace={"__module__": __name__,
                   "__doc__": f"Config of {name}: {stock_name}'s options plus task.vitals."},
    )
    wrapper = type(
        f"{camel}VitalsTask",
        (VitalsTaskMixin, task_cls),
        {"__module__": __name__,
         "__doc__": f"fairseq's {stock_name} task with sslvitals measurements at validation."},
    )
    register_task(name, dataclass=vitals_cfg_cls)(wrapper)
    STOCK_TASKS[name] = stock_name
    return wrapper


HubertPretrainingVitalsTask = make_vitals_task("hubert_pretraining")
AudioPretrainingVitalsTask = make_vitals_task("audio_pretraining")
#: None when the installed fairseq has no MR-HuBERT (fairseq-fixed 0.12.3.1 has none).
MultiresHubertPretrainingVitalsTask = make_vitals_task("multires_hubert_pretraining")
