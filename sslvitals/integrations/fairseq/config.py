"""The ``task.vitals`` node of the fairseq task wrappers, generated from :class:`VitalsConfig`.

:data:`FairseqVitalsConfig` is a :class:`fairseq.dataclass.FairseqDataclass` built at import time
from the fields of :class:`sslvitals.config.VitalsConfig` (names, types, defaults and help text),
so the fairseq options can never drift from the toolkit-independent ones.

The task dataclasses declare ``vitals`` as a free mapping whose default holds every field's
default; :func:`vitals_config_from_node` then checks the user's keys itself. That is what lets an
unknown key fail with a message listing the valid ones (an OmegaConf structured node would only
say that the key is not in the schema) while values are still type-checked against
:data:`FairseqVitalsConfig`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, Optional

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError

__all__ = [
    "FairseqVitalsConfig",
    "VITALS_FIELDS",
    "default_vitals_node",
    "vitals_field",
    "vitals_config_from_node",
    "config_table",
]

#: Option names of ``task.vitals`` in declaration order.
VITALS_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(VitalsConfig))

#: Options that also accept a list on the command line (``+task.vitals.layers=[0,6,12]``),
#: since Hydra reads an unquoted ``0,6,12`` as a sweep.
_LIST_OPTIONS = ("layers", "metrics")


def _omegaconf_type(tp: Any) -> Any:
    """Turn ``X | None`` (PEP 604) into ``Optional[X]``, which OmegaConf 2.3 understands."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return Optional[args[0]]
        raise TypeError(f"unsupported union type {tp} in VitalsConfig")
    return tp


def _make_mirror() -> type:
    from fairseq.dataclass import FairseqDataclass

    hints = typing.get_type_hints(VitalsConfig)
    specs = []
    for f in dataclasses.fields(VitalsConfig):
        if f.default is dataclasses.MISSING:
            raise TypeError(f"VitalsConfig.{f.name} needs a scalar default for the fairseq mirror")
        specs.append(
            (f.name, _omegaconf_type(hints[f.name]),
             dataclasses.field(default=f.default, metadata=dict(f.metadata)))
        )
    cls = dataclasses.make_dataclass(
        "FairseqVitalsConfig", specs, bases=(FairseqDataclass,), namespace={"__module__": __name__}
    )
    cls.__doc__ = (
        "fairseq dataclass mirror of sslvitals.config.VitalsConfig (generated from its fields): "
        "the options under task.vitals."
    )
    return cls


#: The fairseq dataclass with one field per :class:`VitalsConfig` field.
FairseqVitalsConfig: type = _make_mirror()


def default_vitals_node() -> dict[str, Any]:
    """Every ``task.vitals`` option with its default, as a plain dict."""
    return {f.name: f.default for f in dataclasses.fields(VitalsConfig)}


def vitals_field() -> Any:
    """The ``vitals`` field for a task dataclass (a mapping pre-filled with the defaults)."""
    return dataclasses.field(
        default_factory=default_vitals_node,
        metadata={
            "help": "sslvitals measurements at validation time; options: "
            + ", ".join(VITALS_FIELDS)
            + " (set them with +task.vitals.<option>=<value>)"
        },
    )


def vitals_config_from_node(node: Mapping[str, Any] | None) -> VitalsConfig:
    """Check and convert a ``task.vitals`` node into a validated :class:`VitalsConfig`.

    Args:
        node: The node (an OmegaConf ``DictConfig`` or a plain mapping); None means defaults.

    Returns:
        The configuration.

    Raises:
        SSLVitalsError: on an unknown option (the message lists the valid ones), a value of the
            wrong type, or a value :meth:`VitalsConfig.validate` rejects.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if node is None:
        values: dict[str, Any] = {}
    elif OmegaConf.is_config(node):
        values = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
    else:
        values = dict(node)
    if not isinstance(values, dict):
        raise SSLVitalsError(
            f"task.vitals must be a mapping of options, got {type(values).__name__}; "
            "set options one by one, e.g. +task.vitals.enabled=true"
        )
    values.pop("_name", None)
    unknown = sorted(set(values) - set(VITALS_FIELDS))
    if unknown:
        shown = ", ".join(f"task.vitals.{k}" for k in unknown)
        raise SSLVitalsError(
            f"unknown sslvitals option(s) {shown}; valid options under task.vitals are: "
            f"{', '.join(VITALS_FIELDS)}"
        )
    for key in _LIST_OPTIONS:
        if isinstance(values.get(key), (list, tuple)):
            values[key] = ",".join(str(v) for v in values[key])
    try:
        typed = OmegaConf.merge(OmegaConf.structured(FairseqVitalsConfig), values)
    except OmegaConfBaseException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        key = getattr(exc, "key", None)
        where = f"task.vitals.{key}" if key else "task.vitals"
        raise SSLVitalsError(f"bad value for {where}: {first}") from exc
    plain = OmegaConf.to_container(typed)
    assert isinstance(plain, dict)
    plain.pop("_name", None)
    return VitalsConfig.from_dict(plain)


def config_table() -> str:
    """A markdown table of the ``task.vitals`` options: field, default, help.

    Generated from :data:`FairseqVitalsConfig`, for the README.
    """
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in dataclasses.fields(FairseqVitalsConfig):
        if f.name == "_name":
            continue
        if f.default is None:
            default = "null"
        elif isinstance(f.default, bool):
            default = "true" if f.default else "false"
        else:
            default = str(f.default)
        helptext = str(f.metadata.get("help", "")).replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default}` | {helptext} |")
    return "\n".join(rows)
