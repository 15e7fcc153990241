"""ESPnet tasks whose trainer is :class:`~sslvitals.integrations.espnet.trainer.VitalsTrainer`.

They are subclasses, not patches: ``espnet2.tasks.hubert.HubertTask`` and
``espnet2.tasks.ssl.SSLTask`` stay untouched, and the processes that ESPnet spawns for
multi-GPU training (``--ngpu N --multiprocessing_distributed true``) unpickle these classes by
their module name, so every worker uses the vitals trainer too.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Sequence

from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.espnet.options import config_from_args, load_probe
from sslvitals.integrations.espnet.trainer import VitalsTrainer, alias_best_model_criteria, check_criteria

__all__ = ["VitalsHubertTask", "VitalsSSLTask", "run_task"]

logger = logging.getLogger(__name__)


def _hubert_task() -> Any:
    from espnet2.tasks.hubert import HubertTask

    return HubertTask


def _ssl_task() -> Any:
    from espnet2.tasks.ssl import SSLTask

    return SSLTask


class VitalsHubertTask(_hubert_task()):  # type: ignore[misc]
    """``HubertTask`` with the vitals trainer (``espnet2.bin.hubert_train``'s task)."""

    trainer = VitalsTrainer


class VitalsSSLTask(_ssl_task()):  # type: ignore[misc]
    """``SSLTask`` with the vitals trainer (``espnet2.bin.ssl_train``'s task)."""

    trainer = VitalsTrainer


def check_start_up(args: argparse.Namespace) -> bool:
    """Validate the vitals options of a parsed command line before anything is built.

    Reads the configuration, and when it is enabled for a training run (not
    ``--collect_stats``, not ``--print_config``), reads the probe and checks the options
    that ESPnet would only trip over later.

    Returns:
        True when the measurements are enabled for this run.

    Raises:
        SSLVitalsError: naming the bad option and the fix.
    """
    args.vitals_aliases = None
    cfg = config_from_args(args)
    if not cfg.enabled or getattr(args, "collect_stats", False) or getattr(args, "print_config",
                                                                          False):
        return False
    if getattr(args, "use_deepspeed", False):
        raise SSLVitalsError(
            "vitals cannot run with --use_deepspeed true: ESPnet accepts only its default "
            "Trainer with DeepSpeed; turn DeepSpeed off or set vitals.enabled false")
    alias_best_model_criteria(args)
    check_criteria(getattr(args, "best_model_criterion", None),
                   early_stopping_criterion=getattr(args, "early_stopping_criterion", None),
                   val_scheduler_criterion=getattr(args, "val_scheduler_criterion", None),
                   every_n_validations=cfg.every_n_validations)
    probe = load_probe(cfg, getattr(args, "valid_data_path_and_name_and_type", None))
    logger.info("sslvitals: probe %s: %d utterances, %.1f s, labels: %s", probe.source,
                len(probe), probe.total_seconds, probe.has_labels)
    return True


def run_task(task: Any, cmd: Sequence[str] | None = None) -> None:
    """Parse ``cmd`` with ``task``'s parser, check the vitals options, and run the task.

    Args:
        task: :class:`VitalsHubertTask` or :class:`VitalsSSLTask`. When the vitals are
            disabled, the stock task it derives from runs instead (e.g. with DeepSpeed).
        cmd: Command-line arguments (default ``sys.argv[1:]``).

    Raises:
        SSLVitalsError: on a bad vitals configuration, before ESPnet builds anything.
    """
    parser = task.get_parser()
    args = parser.parse_args(cmd)
    if check_start_up(args) or getattr(args, "print_config", False):
        task.main(args=args)
    else:
        # Disabled (or --collect_stats): ESPnet's own task and trainer, untouched.
        task.__mro__[1].main(args=args)
