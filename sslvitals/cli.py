"""The ``sslvitals`` command line: one sub-command per module, imported only when used.

Exit status: 0 success; 1 the command ran but part of it failed (``score``: a checkpoint;
``correlate``: no correlation defined), each failure named in the log; 2 a user error (a bad
option, input or output file), one message naming the problem and the fix, no traceback;
3 an internal error of sslvitals, one line saying how to report it (the traceback is shown
with ``--debug`` or ``SSLVITALS_DEBUG=1``); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from sslvitals.errors import SSLVitalsError

__all__ = ["main", "COMMANDS", "build_parser", "DEBUG_ENV"]

#: Environment variable that, set to a non-empty value other than 0, shows tracebacks.
DEBUG_ENV = "SSLVITALS_DEBUG"

_DEBUG_HELP = f"show the traceback of an internal error (or set {DEBUG_ENV}=1)"

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
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # accepted after the sub-command too; SUPPRESS keeps a top-level --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        p.set_defaults(_module=module_name)
        p.set_defaults(_needs_args=True)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # optional dependency or not built yet
            p.set_defaults(_import_error=f"{exc}")
            continue
        module.add_arguments(p)
    return parser


def _debug_wanted(args: argparse.Namespace | None) -> bool:
    env = os.environ.get(DEBUG_ENV, "").strip()
    return bool(getattr(args, "debug", False)) or (env not in ("", "0"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sslvitals`` console script.

    Returns:
        The exit status (see the module docstring). User errors never show a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
    )
    log = logging.getLogger("sslvitals")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        log.error(
            "sslvitals %s is unavailable: %s (install the matching extra, e.g. "
            "pip install 'sslvitals[fairseq]', or run 'make install')",
            args.command,
            args._import_error,
        )
        return 2
    try:
        module = importlib.import_module(args._module)
        return int(module.run(args) or 0)
    except SSLVitalsError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("sslvitals %s: interrupted; files it writes are replaced whole or not at all "
                  "(sslvitals score keeps every finished checkpoint: run the same command again "
                  "to go on)", args.command)
        return 130
    except OSError as exc:  # a file or folder the user named: missing, unreadable, disk full
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        log.error("sslvitals %s: %s%s; check the path, its permissions and the free space",
                  args.command, exc.strerror or exc, where)
        if _debug_wanted(args):
            log.exception("traceback (--debug)")
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else is a bug of sslvitals
        from sslvitals import __version__

        if _debug_wanted(args):
            log.exception("internal error in sslvitals %s %s", args.command, __version__)
        else:
            log.error(
                "internal error in sslvitals %s (%s: %s). This is a bug: please report it to the "
                "sslvitals maintainers with the command line, sslvitals %s, and the traceback that "
                "the same command prints with --debug (or %s=1)",
                args.command, type(exc).__name__, exc, __version__, DEBUG_ENV,
            )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
