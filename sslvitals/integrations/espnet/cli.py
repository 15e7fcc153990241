"""``sslvitals espnet-config``: check a vitals configuration for ESPnet and print it.

Examples::

    sslvitals espnet-config --example > conf/vitals.yaml      # a commented template
    sslvitals espnet-config --vitals_config conf/vitals.yaml   # validate, print the effective config
    sslvitals espnet-config --config conf/train.yaml --vitals k=500 \
        --valid_dir dump/raw/dev                               # + the probe that 'valid' means

The effective configuration is printed as a ``vitals:`` YAML block (the form a training config
accepts). Exit status 0 when valid, 2 with a message naming the problem otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

from sslvitals.config import VitalsConfig
from sslvitals.errors import SSLVitalsError
from sslvitals.integrations.espnet.options import load_probe, resolve_config

__all__ = ["add_arguments", "run", "example_yaml", "effective_yaml"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``sslvitals espnet-config``."""
    parser.add_argument("--vitals_config", metavar="FILE",
                        help="vitals YAML (top-level fields or a 'vitals:' block)")
    parser.add_argument("--config", metavar="TRAIN_YAML",
                        help="an ESPnet training config; its 'vitals:' block overrides --vitals_config")
    parser.add_argument("--vitals", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field (YAML value), e.g. --vitals k=500; repeatable")
    parser.add_argument("--valid_dir", metavar="DIR",
                        help="the validation data folder (with wav.scp) that 'probe: valid' "
                             "stands for; with it, or with a probe path, the probe is read and "
                             "described")
    parser.add_argument("--example", action="store_true",
                        help="print a commented template of every field and exit")


def example_yaml() -> str:
    """A ``vitals:`` block with every field, its default and its help, turned on."""
    lines = ["# sslvitals options for ESPnet (--vitals_config FILE, or paste into the training",
             "# config). Every field is optional; the values shown are the defaults.",
             "vitals:"]
    for f in dataclasses.fields(VitalsConfig):
        value: Any = True if f.name == "enabled" else f.default
        help_text = f.metadata.get("help", "")
        lines.extend(textwrap.wrap(help_text, width=92, initial_indent="  # ",
                                   subsequent_indent="  # "))
        lines.append(f"  {f.name}: {_yaml_scalar(value)}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def effective_yaml(cfg: VitalsConfig) -> str:
    """The configuration as a ``vitals:`` YAML block."""
    import yaml

    return yaml.safe_dump({"vitals": cfg.to_dict()}, sort_keys=False)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SSLVitalsError(f"--vitals {pair!r}: expected KEY=VALUE, e.g. --vitals k=500")
        key, text = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(text) if text.strip() else None
    return out


def run(args: argparse.Namespace) -> int:
    """Validate and print; see the module docstring.

    Raises:
        SSLVitalsError: on any invalid option (the dispatcher prints it and exits with 2).
    """
    if args.example:
        sys.stdout.write(example_yaml())
        return 0
    block: dict[str, Any] = {}
    if args.config:
        block.update(_training_block(Path(args.config)))
    block.update(_overrides(args.vitals))
    cfg = resolve_config(args.vitals_config, block)
    sys.stdout.write(effective_yaml(cfg))
    if args.valid_dir or cfg.probe != "valid":
        valid = [(str(Path(args.valid_dir) / "wav.scp"), "speech", "sound")] if args.valid_dir else None
        probe = load_probe(cfg, valid)
        sys.stdout.write(
            f"# probe: {probe.source}: {len(probe)} utterances, {probe.total_seconds:.1f} s, "
            f"frame labels: {'yes' if probe.has_labels else 'no'}\n")
    if not cfg.enabled:
        sys.stdout.write("# note: enabled is false, nothing will be measured\n")
    return 0


def _training_block(path: Path) -> dict[str, Any]:
    """The ``vitals:`` block of an ESPnet training config (empty if it has none)."""
    import yaml

    if not path.is_file():
        raise SSLVitalsError(f"--config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SSLVitalsError(f"--config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SSLVitalsError(f"--config {path} must be a mapping (an ESPnet training config)")
    block = data.get("vitals") or {}
    if not isinstance(block, dict):
        raise SSLVitalsError(f"the 'vitals:' entry of {path} must be a mapping of options")
    return dict(block)
