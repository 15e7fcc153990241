"""The ESPnet side of the vitals configuration: command-line options, YAML, the probe set.

Two ways to give the options, combined in this order (later wins):

1. ``--vitals_config conf/vitals.yaml``: a YAML file with the fields of
   :class:`sslvitals.config.VitalsConfig`, at top level or under a ``vitals:`` key;
2. a ``vitals:`` block in the training config given with ``--config`` (what hubert.sh passes
   from ``--train_configs``), and ``--vitals key=value`` on the command line (ESPnet's
   ``NestedDictAction`` syntax, merged over the block).

Nothing here imports ESPnet, so the ``sslvitals espnet-config`` command works without it.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError

__all__ = [
    "exit_status",
    "add_vitals_arguments",
    "read_vitals_yaml",
    "resolve_config",
    "config_from_args",
    "valid_speech_scp",
    "resolve_probe_path",
    "load_probe",
]

logger = logging.getLogger(__name__)


def add_vitals_arguments(parser: argparse.ArgumentParser, *, dict_action: Any = None) -> None:
    """Add ``--vitals_config`` and ``--vitals`` to an ESPnet task parser.

    Args:
        parser: The task's parser (``HubertTask.get_parser()`` calls this through
            ``Trainer.add_arguments``).
        dict_action: The argparse action for ``--vitals``; ESPnet's ``NestedDictAction``
            (``key=value`` pairs merged into the YAML block). Defaults to plain YAML parsing.
    """
    group = parser.add_argument_group("sslvitals", description=(
        "Label-free predictors of downstream quality measured on a probe set after every "
        "validation (sslvitals). Fields: " + ", ".join(VitalsConfig().to_dict())))
    group.add_argument(
        "--vitals_config", type=_str_or_none, default=None,
        help="YAML file with the vitals options (top level or under 'vitals:'); the 'vitals:' "
             "block of --config and --vitals key=value pairs override it")
    if dict_action is None:
        group.add_argument("--vitals", type=_yaml_mapping, default=dict(),
                           help="vitals options as a YAML mapping, e.g. '{enabled: true, k: 100}'")
    else:
        group.add_argument("--vitals", action=dict_action, default=dict(),
                           help="vitals options, e.g. --vitals enabled=true --vitals k=100 "
                                "(or a 'vitals:' block in the --config YAML)")


def _str_or_none(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none", "null") else value


def _yaml_mapping(text: str) -> dict[str, Any]:
    import yaml

    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping, got {text!r}")
    return value


def read_vitals_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a vitals YAML file into a plain dict.

    The file holds the fields at top level, or a single ``vitals:`` mapping (so the same block
    can be pasted into a training config).

    Raises:
        SSLVitalsError: if the file is missing, is not YAML, or is not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SSLVitalsError(f"--vitals_config {p} does not exist; give the path of a vitals YAML "
                             "file (see 'sslvitals espnet-config --example')")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SSLVitalsError(f"--vitals_config {p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SSLVitalsError(f"--vitals_config {p} must hold a mapping of vitals options, "
                             f"got {type(data).__name__}")
    if set(data) == {"vitals"}:
        data = data["vitals"] or {}
        if not isinstance(data, dict):
            raise SSLVitalsError(f"the 'vitals:' entry of {p} must be a mapping of options")
    return dict(data)


def resolve_config(vitals_config: str | os.PathLike | None,
                   vitals_block: Mapping[str, Any] | None) -> VitalsConfig:
    """Combine the file and the block into one validated :class:`VitalsConfig`.

    Args:
        vitals_config: Path of the ``--vitals_config`` file, or None.
        vitals_block: The ``vitals:`` block / ``--vitals`` pairs (override the file).

    Returns:
        The validated config (``enabled`` is False unless one of them sets it).

    Raises:
        SSLVitalsError: on an unknown key (listing the valid ones) or an invalid value.
    """
    values: dict[str, Any] = {}
    if vitals_config:
        values.update(read_vitals_yaml(vitals_config))
    if vitals_block:
        if not isinstance(vitals_block, Mapping):
            raise SSLVitalsError(f"the 'vitals' option must be a mapping, got {vitals_block!r}")
        values.update(dict(vitals_block))
    _check_types(values)
    try:
        cfg = VitalsConfig.from_dict(values)
    except TypeError as exc:  # a wrong type reaching the dataclass
        raise SSLVitalsError(f"invalid vitals option: {exc}") from exc
    if values and not cfg.enabled:
        logger.warning("sslvitals: vitals options were given but 'enabled' is false: nothing "
                       "will be measured (set 'enabled: true' to turn the measurements on)")
    return cfg


def _check_types(values: Mapping[str, Any]) -> None:
    """Reject values of the wrong type that YAML lets through (e.g. ``k: '100'``).

    Unknown keys are left to :meth:`VitalsConfig.from_dict`, which lists the valid ones.
    """
    import dataclasses

    for f in dataclasses.fields(VitalsConfig):
        if f.name not in values:
            continue
        value = values[f.name]
        default = f.default
        if value is None or default is dataclasses.MISSING:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str) or default is None:
            ok = isinstance(value, str)
        else:  # pragma: no cover - every field has one of the types above
            ok = True
        if not ok:
            raise SSLVitalsError(
                f"vitals.{f.name} must be a {type(default).__name__ if default is not None else 'str'}"
                f", got {value!r} ({type(value).__name__}); in YAML write e.g. "
                f"{f.name}: {default if default is not None else 'path/to/file'}")


def config_from_args(args: argparse.Namespace) -> VitalsConfig:
    """The :class:`VitalsConfig` of a parsed ESPnet namespace (``vitals_config`` + ``vitals``)."""
    return resolve_config(getattr(args, "vitals_config", None), getattr(args, "vitals", None))


def valid_speech_scp(valid_data: Sequence[Any] | None) -> tuple[str, str]:
    """Find the validation speech file among ``--valid_data_path_and_name_and_type`` entries.

    Args:
        valid_data: ESPnet's parsed list of ``(path, name, type)`` triples (or the raw
            ``"path,name,type"`` strings).

    Returns:
        ``(path, type)`` of the entry named ``speech``.

    Raises:
        SSLVitalsError: if there is no ``speech`` entry.
    """
    for entry in valid_data or []:
        parts = entry.split(",") if isinstance(entry, str) else list(entry)
        if len(parts) >= 3 and parts[1] == "speech":
            return str(parts[0]), str(parts[2])
    raise SSLVitalsError(
        "vitals.probe is 'valid' but no '--valid_data_path_and_name_and_type <wav.scp>,speech,"
        "sound' was given; pass the validation data or set vitals.probe to a Kaldi-style folder "
        "with wav.scp or a fairseq .tsv manifest")


def resolve_probe_path(cfg: VitalsConfig, valid_data: Sequence[Any] | None) -> str:
    """The file or folder to read the probe from.

    ``probe: valid`` means the folder of the validation ``wav.scp`` that the task already reads
    (raw audio only); any other value is used as given.

    Raises:
        SSLVitalsError: if ``valid`` cannot be used (no speech entry, not raw audio, or the
            list is not named ``wav.scp``).
    """
    if cfg.probe != "valid":
        return cfg.probe
    path, kind = valid_speech_scp(valid_data)
    if kind not in ("sound", "multi_columns_sound"):
        raise SSLVitalsError(
            f"vitals.probe is 'valid' but the validation speech {path} has type {kind!r}; the "
            "probe needs raw audio files ('sound'): set vitals.probe to a Kaldi-style folder with "
            "a wav.scp of .wav/.flac files")
    p = Path(path)
    if p.name != "wav.scp":
        raise SSLVitalsError(
            f"vitals.probe is 'valid' but the validation speech list {p} is not named wav.scp; "
            "set vitals.probe to a Kaldi-style folder that has a wav.scp")
    return str(p.parent)


def load_probe(cfg: VitalsConfig, valid_data: Sequence[Any] | None = None) -> Any:
    """Read the configured probe set (seeded choice of at most ``max_probe_seconds``).

    Returns:
        A :class:`sslvitals.probe.ProbeSet`.

    Raises:
        SSLVitalsError: if the probe cannot be read (missing files, wrong sample rate, ...).
    """
    from sslvitals.probe import ProbeSet

    path = resolve_probe_path(cfg, valid_data)
    return ProbeSet.from_path(path, labels=cfg.probe_labels, max_seconds=cfg.max_probe_seconds,
                              seed=cfg.seed, words=cfg.probe_words)


def exit_status(main: Callable[[], None]) -> int:
    """Run an entry point's ``main`` and map a vitals configuration error to exit status 2.

    Used by ``hubert_train`` and ``ssl_train`` when run as ``python -m``.
    """
    try:
        main()
    except SSLVitalsError as exc:
        logging.getLogger("sslvitals").error("sslvitals: %s", exc)
        return 2
    return 0
