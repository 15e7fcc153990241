"""An interpreter stand-in for ESPnet recipes' ``--python`` option.

ESPnet's recipe scripts run every tool as ``${python} -m espnet2.bin.<tool> ...`` (hubert.sh
and ssl.sh accept ``--python``). Passing
``--python "python3 -m sslvitals.integrations.espnet.python"`` makes

* ``-m espnet2.bin.hubert_train ARGS`` run ``sslvitals.integrations.espnet.hubert_train ARGS``;
* ``-m espnet2.bin.ssl_train ARGS`` run ``sslvitals.integrations.espnet.ssl_train ARGS``;
* anything else (``-m espnet2.bin.launch``, ``aggregate_stats_dirs``, ``pack``, ``-c``,
  scripts) run unchanged by the same interpreter (``os.execv``).

Nothing is edited: not the recipe, not ESPnet.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Sequence

from sslvitals.integrations.espnet import ENTRY_MODULES

__all__ = ["main", "target_of"]


def target_of(argv: Sequence[str]) -> str | None:
    """The sslvitals module that replaces ``argv``'s ``-m`` module, or None to pass through."""
    if len(argv) >= 2 and argv[0] == "-m":
        return ENTRY_MODULES.get(argv[1])
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``argv`` (the arguments after the interpreter) with the replacement, or exec it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    target = target_of(argv)
    if target is None:
        os.execv(sys.executable, [sys.executable, *argv])
    sys.argv = [target.rsplit(".", 1)[-1], *argv[2:]]
    runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
