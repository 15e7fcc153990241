"""The SpeechBrain side of the vitals options: the entry point's arguments, the probe.

The options are the fields of :class:`sslvitals.config.VitalsConfig`, with the same defaults
as in fairseq and ESPnet, given as a YAML file (``--vitals_config``, fields at top level or
under ``vitals:``) and ``--vitals key=value`` pairs (applied over the file). Unknown fields and
values of the wrong type are refused with the list of valid ones. Two options are
SpeechBrain's own: ``--vitals_keep_max KEY`` / ``--vitals_keep_min KEY`` add a vitals key to
the ``max_keys`` / ``min_keys`` of the recipe's ``checkpointer.save_and_keep_only`` calls, so
the best checkpoint by that key survives the recipe's ``num_to_keep``.

Nothing here imports SpeechBrain.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError

__all__ = ["EntryOptions", "split_argv", "resolve_config", "load_probe", "USAGE"]

logger = logging.getLogger(__name__)

USAGE = (
    "usage: python -m sslvitals.integrations.speechbrain [--vitals_config FILE] "
    "[--vitals KEY=VALUE ...] [--vitals_keep_max KEY ...] [--vitals_keep_min KEY ...] "
    "train.py hparams.yaml [the recipe's own arguments and overrides]"
)

_VALUED = ("--vitals_config", "--vitals", "--vitals_keep_max", "--vitals_keep_min")


@dataclass
class EntryOptions:
    """What the entry point takes for itself out of the command line.

    Attributes:
        vitals_config: The ``--vitals_config`` file, or None.
        pairs: The ``--vitals key=value`` pairs, in order.
        keep_max: ``--vitals_keep_max`` keys.
        keep_min: ``--vitals_keep_min`` keys.
    """

    vitals_config: str | None = None
    pairs: list[str] = field(default_factory=list)
    keep_max: list[str] = field(default_factory=list)
    keep_min: list[str] = field(default_factory=list)


def split_argv(argv: Sequence[str]) -> tuple[EntryOptions, list[str]]:
    """Take the ``--vitals*`` options out of a command line; the rest goes to the recipe.

    The options may stand anywhere (``--opt value`` or ``--opt=value``); everything else is
    kept in order: the recipe script, its hyperparameter file and its own arguments.

    Args:
        argv: The arguments after ``python -m sslvitals.integrations.speechbrain``.

    Returns:
        ``(options, recipe_argv)``; ``recipe_argv[0]`` is the recipe script.

    Raises:
        SSLVitalsError: on an option without its value, or no recipe script.
    """
    opts = EntryOptions()
    rest: list[str] = []
    i = 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(args):
                    raise SSLVitalsError(f"{name} needs a value; {USAGE}")
                value = args[i + 1]
                i += 1
            if name == "--vitals_config":
                opts.vitals_config = value
            elif name == "--vitals":
                opts.pairs.append(value)
            elif name == "--vitals_keep_max":
                opts.keep_max.append(value)
            else:
                opts.keep_min.append(value)
        else:
            rest.append(arg)
        i += 1
    if not rest or not rest[0].endswith(".py"):
        raise SSLVitalsError(f"no recipe script (train.py) was given; {USAGE}")
    return opts, rest


def _pairs_to_mapping(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip():
            raise SSLVitalsError(f"--vitals expects key=value, got {pair!r} (e.g. --vitals k=100)")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SSLVitalsError(f"--vitals {pair!r}: the value is not valid YAML: {exc}") from exc
    return out


def resolve_config(vitals_config: str | os.PathLike | None = None,
                   pairs: Sequence[str] | Mapping[str, Any] | None = None,
                   *, enabled_default: bool = False) -> VitalsConfig:
    """Combine the YAML file and the ``key=value`` pairs into one validated config.

    Args:
        vitals_config: Path of the YAML file, or None.
        pairs: ``["k=100", ...]`` strings or a mapping of options (override the file).
        enabled_default: Value of ``enabled`` when neither source sets it (the entry point
            follows fairseq and ESPnet: off unless asked; :func:`~sslvitals.integrations.
            speechbrain.attach` turns it on).

    Returns:
        The config.

    Raises:
        SSLVitalsError: on an unknown option (listing the valid ones), a value of the wrong
            type, or a file that is missing or not YAML.
    """
    from sslvitals.integrations.espnet.options import read_vitals_yaml
    from sslvitals.integrations.espnet.options import resolve_config as _resolve

    values: dict[str, Any] = dict(read_vitals_yaml(vitals_config)) if vitals_config else {}
    if isinstance(pairs, Mapping):
        values.update(dict(pairs))
    elif pairs:
        values.update(_pairs_to_mapping(pairs))
    if "enabled" not in values and enabled_default:
        values["enabled"] = True
    return _resolve(None, values)


def load_probe(cfg: VitalsConfig) -> Any:
    """Read the probe set of ``cfg`` (seeded choice of at most ``max_probe_seconds``).

    Returns:
        A :class:`sslvitals.probe.ProbeSet`.

    Raises:
        SSLVitalsError: if ``probe`` is ``'valid'`` (a SpeechBrain recipe's validation CSV is
            not a probe manifest), missing or unreadable.
    """
    from sslvitals.probe import ProbeSet

    probe = str(cfg.probe)
    if probe == "valid":
        raise SSLVitalsError(
            "vitals.probe is 'valid', which SpeechBrain recipes cannot provide (their validation "
            "set is a CSV of the recipe's own); set probe: to a fairseq .tsv manifest (root "
            "folder, then 'relative/path<TAB>num_samples' lines) or a Kaldi-style folder with "
            "wav.scp, e.g. one hour of held-out audio")
    path = os.path.expanduser(probe)
    if not os.path.exists(path):
        raise SSLVitalsError(
            f"vitals.probe {path} does not exist; give a fairseq .tsv manifest or a Kaldi-style "
            "folder with wav.scp")
    return ProbeSet.from_path(path, labels=cfg.probe_labels, max_seconds=cfg.max_probe_seconds,
                              seed=cfg.seed, words=cfg.probe_words)
