"""Attach the vitals to SpeechBrain ``Brain`` objects: one Brain (:func:`attach`) or every Brain
a recipe creates (:func:`install`, what ``python -m sslvitals.integrations.speechbrain`` does).

SpeechBrain has no plugin mechanism. :func:`install` wraps ``speechbrain.core.Brain.__init__``
so that each new Brain, whatever its subclass, gets a
:class:`~sslvitals.integrations.speechbrain.session.SpeechBrainVitals` attached to the instance;
the recipe's ``train.py`` and YAML are not changed. :func:`uninstall` restores the original.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError

__all__ = ["attach", "install", "uninstall", "installed"]

logger = logging.getLogger(__name__)

_MARK = "_sslvitals_original_init"


def attach(brain: Any, config: VitalsConfig | str | os.PathLike | Mapping[str, Any] | None = None,
           *, probe: Any = None, model: Callable[[Any], nn.Module] | None = None,
           forward: Callable[[nn.Module, Any], Any] | None = None,
           keep_max: Sequence[str] = (), keep_min: Sequence[str] = (),
           **options: Any) -> Any:
    """Measure the vitals of ``brain`` at the end of its VALID stages (call before ``fit``).

    One line in your own script::

        sslvitals.integrations.speechbrain.attach(brain, "vitals.yaml")

    Args:
        brain: A ``speechbrain.Brain`` (any subclass).
        config: The path of a vitals YAML file or a mapping of options (``enabled`` defaults
            to True here: you asked for it), or a :class:`~sslvitals.config.VitalsConfig`,
            used as given.
        probe: An already read :class:`~sslvitals.probe.ProbeSet` (else read from the config).
        model: ``model(brain) -> nn.Module`` for a model sslvitals does not assemble itself.
        forward: ``forward(module, batch)`` for that module.
        keep_max: Vitals keys to add to ``max_keys`` of ``checkpointer.save_and_keep_only``.
        keep_min: Vitals keys to add to ``min_keys``.
        **options: Further :class:`~sslvitals.config.VitalsConfig` fields (override ``config``).

    Returns:
        The :class:`~sslvitals.integrations.speechbrain.session.SpeechBrainVitals` session.

    Raises:
        SSLVitalsError: on an unknown option, a bad value or an unreadable probe.
    """
    from sslvitals.integrations.speechbrain.options import resolve_config
    from sslvitals.integrations.speechbrain.session import SpeechBrainVitals

    if isinstance(config, VitalsConfig):
        cfg = VitalsConfig.from_dict({**config.to_dict(), **options}) if options else config
    elif isinstance(config, Mapping):
        cfg = resolve_config(None, {**dict(config), **options}, enabled_default=True)
    else:
        cfg = resolve_config(config, options, enabled_default=True)
    session = SpeechBrainVitals(cfg, probe=probe, model=model, forward=forward,
                                keep_max=keep_max, keep_min=keep_min)
    return session.attach(brain)


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    from speechbrain.core import Brain

    return hasattr(Brain.__init__, _MARK)


def install(cfg: VitalsConfig, *, probe: Any = None, keep_max: Sequence[str] = (),
            keep_min: Sequence[str] = ()) -> None:
    """Attach a vitals session to every ``speechbrain.Brain`` created from now on.

    Args:
        cfg: The validated configuration (nothing is attached when ``enabled`` is false).
        probe: The probe, read once for every Brain (else read here).
        keep_max: See :func:`attach`.
        keep_min: See :func:`attach`.

    Raises:
        SSLVitalsError: if already installed, or the probe cannot be read.
    """
    from speechbrain.core import Brain

    from sslvitals.integrations.speechbrain.options import load_probe
    from sslvitals.integrations.speechbrain.session import SpeechBrainVitals

    if installed():
        raise SSLVitalsError("sslvitals is already installed on speechbrain.Brain")
    if not cfg.enabled:
        return
    shared_probe = probe if probe is not None else load_probe(cfg)
    original = Brain.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        original(self, *args, **kwargs)
        if getattr(self, "_sslvitals", None) is None:
            SpeechBrainVitals(cfg, probe=shared_probe, keep_max=keep_max,
                              keep_min=keep_min).attach(self)

    setattr(__init__, _MARK, original)
    Brain.__init__ = __init__  # type: ignore[method-assign]
    logger.debug("sslvitals: installed on speechbrain.core.Brain")


def uninstall() -> None:
    """Undo :func:`install` (Brains created before keep their session)."""
    from speechbrain.core import Brain

    original = getattr(Brain.__init__, _MARK, None)
    if original is not None:
        Brain.__init__ = original  # type: ignore[method-assign]
