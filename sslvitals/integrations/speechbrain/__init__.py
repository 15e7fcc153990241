"""SpeechBrain integration: the vitals measured after every validation of SpeechBrain
self-supervised pretraining (BEST-RQ, wav2vec 2.0), without editing recipes or SpeechBrain.

* A stock recipe, unchanged::

      python -m sslvitals.integrations.speechbrain train.py hparams/BEST-RQ.yaml \\
          --vitals_config vitals.yaml [the recipe's own overrides]

* Your own ``Brain``, one line before ``fit``::

      sslvitals.integrations.speechbrain.attach(brain, "vitals.yaml")

The values (keys ``vitals/<metric>/L<layer>``) go into the recipe's train logger
(``train_log.txt``, TensorBoard, W&B: merged with its valid stats), the checkpoint's meta
(``find_checkpoint(max_key=...)``, ``save_and_keep_only(max_keys=[...])``) and
``<output_folder>/vitals.jsonl``. ``sslvitals score`` reads the recipe's ``save/CKPT+*`` folders.

Modules: :mod:`.options` (options, probe; no SpeechBrain import), :mod:`.model` (the encoder
assembled from the recipe's modules, and its forward), :mod:`.session` (checks, schedule,
sinks, records), :mod:`.brain` (``attach``, ``install``), :mod:`.checkpoint` (offline loader),
``__main__`` (the entry point). Importing this package does not import SpeechBrain.
"""
from __future__ import annotations

from typing import Any

__all__ = ["attach", "install", "uninstall"]


def attach(brain: Any, config: Any = None, **kwargs: Any) -> Any:
    """See :func:`sslvitals.integrations.speechbrain.brain.attach`."""
    from sslvitals.integrations.speechbrain.brain import attach as _attach

    return _attach(brain, config, **kwargs)


def install(cfg: Any, **kwargs: Any) -> None:
    """See :func:`sslvitals.integrations.speechbrain.brain.install`."""
    from sslvitals.integrations.speechbrain.brain import install as _install

    _install(cfg, **kwargs)


def uninstall() -> None:
    """See :func:`sslvitals.integrations.speechbrain.brain.uninstall`."""
    from sslvitals.integrations.speechbrain.brain import uninstall as _uninstall

    _uninstall()
