"""``VitalsTrainer``: ESPnet's ``Trainer`` plus a probe measurement after every validation.

ESPnet's :class:`espnet2.train.trainer.Trainer` is a class of class methods; a task picks it
through its ``trainer`` attribute, and the task's parser gets the trainer's options through
``Trainer.add_arguments``. :class:`VitalsTrainer` uses exactly these two hooks:

* ``add_arguments`` adds ``--vitals_config`` and ``--vitals`` (so ``vitals:`` is a valid key
  of the training YAML and shows in ``--print_config`` and ``config.yaml``);
* ``run`` reads the configuration and the probe and checks them on the model before the first
  epoch (a bad configuration stops the run before any training);
* ``validate_one_epoch`` runs ESPnet's own validation unchanged, then, at the scheduled
  epochs, measures the probe and registers ``{"vitals/<metric>/L<layer>": value}`` with the
  validation reporter. The values therefore appear in ``train.log``'s ``[valid]`` results,
  in TensorBoard (``tensorboard/valid``), in ``images/vitals/<metric>/L<layer>.png``, and can
  drive ``--early_stopping_criterion`` / ``--val_scheduler_criterion``. Rank 0 also appends
  a JSON-lines record to ``<output_dir>/vitals.jsonl``.

The measurement adds one step to the validation reporter (its ``total_count`` grows by one
per measured epoch).

Restarts (``--resume true``): ESPnet restores the reporter, so epochs and iteration counts
continue where ``checkpoint.pth`` left them, and the schedule (``every_n_validations``) is a
function of the epoch. The first training epoch of a process tells the trainer where training
(re)starts (the epoch before it); records of this run after that epoch describe training the
run repeats (the process died between the measurement and ``checkpoint.pth``, or the run started
again from scratch) and are moved to ``vitals.jsonl.discarded``, so the file holds one record per
measured epoch, without duplicates or gaps (:mod:`sslvitals.integrations.resume`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from typing import Any, ClassVar, Optional

import torch
from espnet2.train.reporter import SubReporter, aggregate
from espnet2.train.trainer import Trainer, TrainerOptions
from espnet2.utils.build_dataclass import build_dataclass
from espnet2.utils.nested_dict_action import NestedDictAction

from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.espnet.options import add_vitals_arguments, resolve_config
from sslvitals.integrations.espnet.session import VitalsSession

__all__ = ["VitalsTrainer", "VitalsTrainerOptions", "check_criteria"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class VitalsTrainerOptions(TrainerOptions):
    """ESPnet's trainer options plus the vitals options and the validation data list."""

    vitals_config: Optional[str] = None
    vitals: Optional[dict] = None
    vitals_aliases: Optional[dict] = None
    valid_data_path_and_name_and_type: Optional[list] = None


def check_criteria(best_model_criterion: Any, *, early_stopping_criterion: Any = None,
                   val_scheduler_criterion: Any = None, every_n_validations: int = 1) -> None:
    """Refuse ESPnet criteria that would fail on vitals keys, before training starts.

    * ``--best_model_criterion``: ESPnet names the link of the best model
      ``<phase>.<key>.best.pth`` inside the experiment folder (``Trainer.run``; and
      ``average_nbest_models`` for ``.ave_<n>best.pth``). A key with '/' turns that name into a
      path under folders that do not exist, and the link cannot be created after the first
      epoch.
    * ``--early_stopping_criterion`` / ``--val_scheduler_criterion`` only read the reporter and
      accept vitals keys, but the reporter raises KeyError for an epoch without a value, so they
      need a measurement at every epoch (``every_n_validations: 1``).

    Raises:
        SSLVitalsError: naming the criterion and what to do instead.
    """
    for entry in best_model_criterion or []:
        if len(entry) >= 2 and "/" in str(entry[1]):
            raise SSLVitalsError(
                f"--best_model_criterion {','.join(map(str, entry))}: ESPnet writes the link "
                f"'{entry[0]}.{entry[1]}.best.pth', and the '/' in the key makes that a path into "
                "folders that do not exist; start training through sslvitals' entry point "
                "(python -m sslvitals.integrations.espnet.hubert_train, or the recipe's --python "
                "stand-in), which gives vitals keys a '/'-free alias for this option")
    if every_n_validations > 1:
        entries = [("--best_model_criterion", e) for e in (best_model_criterion or [])]
        entries += [("--early_stopping_criterion", early_stopping_criterion),
                    ("--val_scheduler_criterion", val_scheduler_criterion)]
        for name, entry in entries:
            if entry and len(entry) >= 2 and str(entry[1]).startswith(("vitals/", "vitals.")):
                raise SSLVitalsError(
                    f"{name} {','.join(map(str, entry))} needs a value at every epoch, but "
                    f"vitals.every_n_validations is {every_n_validations}; set it to 1 or use "
                    "another criterion")


def alias_best_model_criteria(args: argparse.Namespace) -> dict[str, str]:
    """Rewrite vitals keys in ``--best_model_criterion`` to '/'-free aliases.

    ESPnet names the best-model link ``<phase>.<key>.best.pth``; ``vitals/rankme/L12`` would make
    that a path into missing folders. The criterion is rewritten to ``vitals.rankme.L12`` and the
    trainer registers that alias next to the canonical key, so the link is
    ``valid.vitals.rankme.L12.best.pth``. Only keys named in ``--best_model_criterion`` get one.

    Args:
        args: Parsed ESPnet arguments; ``args.best_model_criterion`` is rewritten in place and
            ``args.vitals_aliases`` set.

    Returns:
        ``{alias: canonical key}``.
    """
    aliases: dict[str, str] = {}
    rewritten = []
    for entry in getattr(args, "best_model_criterion", None) or []:
        entry = list(entry)
        if len(entry) >= 2 and str(entry[1]).startswith("vitals/"):
            alias = str(entry[1]).replace("/", ".")
            aliases[alias] = str(entry[1])
            entry[1] = alias
        rewritten.append(entry)
    if aliases:
        args.best_model_criterion = rewritten
        logger.info("sslvitals: --best_model_criterion uses the '/'-free aliases %s",
                    ", ".join(sorted(aliases)))
    args.vitals_aliases = aliases or None
    return aliases


def _mean_loss(reporter: SubReporter) -> float | None:
    values = reporter.stats.get("loss") if hasattr(reporter, "stats") else None
    if not values:
        return None
    try:
        value = float(aggregate(values))
    except Exception:  # noqa: BLE001 - the loss is only informative in the record
        return None
    return value if math.isfinite(value) else None


class VitalsTrainer(Trainer):
    """ESPnet ``Trainer`` that measures the vitals on a probe set after each validation."""

    #: The current run's session (None when vitals are disabled).
    session: ClassVar[Optional[VitalsSession]] = None
    #: Training iterations so far (the ``update`` of the records).
    iterations: ClassVar[int] = 0
    #: The epoch the checkpoint restored (0 for a fresh start); None before the first epoch.
    restarted_at: ClassVar[Optional[int]] = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add ESPnet's trainer options (none today) and ``--vitals_config`` / ``--vitals``."""
        super().add_arguments(parser)
        add_vitals_arguments(parser, dict_action=NestedDictAction)

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> VitalsTrainerOptions:
        """Build the options dataclass, vitals fields included."""
        if not hasattr(args, "vitals_aliases"):
            args.vitals_aliases = None
        return build_dataclass(VitalsTrainerOptions, args)

    @classmethod
    def run(cls, model: torch.nn.Module, optimizers: Any, schedulers: Any,
            train_iter_factory: Any, valid_iter_factory: Any,
            plot_attention_iter_factory: Any, trainer_options: Any,
            distributed_option: Any) -> None:
        """Set up the measurements (and check them on the model), then train as ESPnet does."""
        cls.session = None
        cls.iterations = 0
        cls.restarted_at = None
        cfg = resolve_config(getattr(trainer_options, "vitals_config", None),
                             getattr(trainer_options, "vitals", None))
        if cfg.enabled:
            check_criteria(trainer_options.best_model_criterion,
                           early_stopping_criterion=trainer_options.early_stopping_criterion,
                           val_scheduler_criterion=trainer_options.val_scheduler_criterion,
                           every_n_validations=cfg.every_n_validations)
            world = (int(distributed_option.dist_world_size or 1)
                     if distributed_option.distributed else 1)
            session = VitalsSession(
                cfg, trainer_options.output_dir,
                valid_data=getattr(trainer_options, "valid_data_path_and_name_and_type", None))
            session.preflight(model, world)
            cls.session = session
        super().run(
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            train_iter_factory=train_iter_factory,
            valid_iter_factory=valid_iter_factory,
            plot_attention_iter_factory=plot_attention_iter_factory,
            trainer_options=trainer_options,
            distributed_option=distributed_option,
        )

    @classmethod
    def on_train_start(cls, epoch: int) -> None:
        """Called before the first training epoch of the process, ``epoch`` being that epoch.

        Rank 0 moves this run's records after ``epoch - 1`` (the epoch ``checkpoint.pth``
        restored; 0 for a fresh start) out of the JSON-lines file.
        """
        cls.restarted_at = int(epoch) - 1
        session = cls.session
        if session is None:
            return
        from sslvitals import distributed as dist
        from sslvitals.integrations.resume import RunRecords

        if dist.rank() != 0:
            return
        try:
            RunRecords(session.jsonl, session.run_name, key="epoch").restart_at(cls.restarted_at)
        except OSError as exc:
            if session.cfg.strict:
                raise SSLVitalsError(f"cannot update {session.jsonl} for the restart at epoch "
                                     f"{cls.restarted_at}: {exc}") from exc
            logger.warning("sslvitals: cannot update %s at the restart (%s)", session.jsonl, exc)
        if cls.restarted_at > 0:
            logger.info("sslvitals: resumed after epoch %d", cls.restarted_at)

    @classmethod
    def train_one_epoch(cls, **kwargs: Any) -> bool:
        """ESPnet's training epoch; remembers the iteration count for the records."""
        reporter = kwargs.get("reporter")
        if cls.restarted_at is None and reporter is not None:
            cls.on_train_start(int(reporter.get_epoch()))
        result = super().train_one_epoch(**kwargs)
        if reporter is not None:
            cls.iterations = int(reporter.get_total_count())
        return result

    @classmethod
    def validate_one_epoch(cls, model: torch.nn.Module, iterator: Any, reporter: SubReporter,
                           options: Any, distributed_option: Any) -> None:
        """ESPnet's validation, then the probe measurement registered as one more step."""
        super().validate_one_epoch(model=model, iterator=iterator, reporter=reporter,
                                   options=options, distributed_option=distributed_option)
        session = cls.session
        if session is None or getattr(options, "no_forward_run", False):
            return
        epoch = int(reporter.get_epoch())
        if not session.due(epoch):
            return
        values = session.measure(model, epoch=epoch, update=cls.iterations,
                                 loss=_mean_loss(reporter))
        registered = {k: float(v) for k, v in values.items()}
        # '/'-free aliases of the keys used as --best_model_criterion (see alias_best_model_criteria)
        for alias, key in (getattr(options, "vitals_aliases", None) or {}).items():
            if key in registered:
                registered[alias] = registered[key]
        reporter.register(registered)
        reporter.next()
