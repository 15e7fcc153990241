"""The ``sslvitals`` command line: one sub-command per module, imported only when used."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from sslvitals.errors import SSLVitalsError

__all__ = ["main", "COMMANDS"]

#: sub-command -> (module, one-line help). Each module defines
#: ``add_arguments(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sslvitals.synth.cli", "synthesise a labelled multi-speaker speech corpus"),
    "fairseq-user-dir": (
        "sslvitals.integrations.fairseq.cli",
        "print the fairseq common.user_dir of the sslvitals plugin",
    ),
    "espnet-config": (
        "sslvitals.integrations.espnet.cli",
        "check or print an ESPnet vitals configuration",
    ),
    "demo": ("sslvitals.demo", "the main job: synthesise, pretrain a tiny HuBERT, measure, plot"),
    "score": ("sslvitals.offline.score", "score saved checkpoints on a probe set"),
    "correlate": ("sslvitals.offline.correlate", "correlate metrics with downstream results"),
    "plot": ("sslvitals.offline.plot", "plot metrics over updates, layers and downstream scores"),
    "table": ("sslvitals.offline.table", "print a metrics table from results or JSON-lines files"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered."""
    from sslvitals import __version__

    parser = argparse.ArgumentParser(
        prog="sslvitals",
        description="Predict downstream quality of self-supervised speech models from their layers.",
    )
    parser.add_argument("--version", action="version", version=f"sslvitals {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        p.set_defaults(_needs_args=True)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # optional dependency or not built yet
            p.set_defaults(_import_error=f"{exc}")
            continue
        module.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sslvitals`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        logging.getLogger("sslvitals").error(
            "sslvitals %s is unavailable: %s (install the matching extra, e.g. "
            "pip install 'sslvitals[fairseq]', or run 'make install')",
            args.command,
            args._import_error,
        )
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except SSLVitalsError as exc:
        logging.getLogger("sslvitals").error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
