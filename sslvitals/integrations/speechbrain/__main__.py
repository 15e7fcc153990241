"""Run a stock SpeechBrain recipe with the vitals on, without editing it.

::

    python -m sslvitals.integrations.speechbrain train.py hparams/BEST-RQ.yaml \\
        --vitals_config vitals.yaml [--vitals k=100] [--vitals_keep_max vitals/rankme/L12] \\
        [the recipe's own arguments and overrides]

    torchrun --nproc_per_node 2 -m sslvitals.integrations.speechbrain train.py ...  # DDP

The ``--vitals*`` options are taken out of the command line; the recipe then runs as
``python train.py ...`` would (``sys.argv``, ``sys.path[0]`` and ``__main__`` as Python sets them
for a script), with every ``speechbrain.Brain`` it creates measured at the end of its VALID
stages (:mod:`sslvitals.integrations.speechbrain.session`). A configuration error (unknown
option, missing probe, bad layer, ...) stops the run before the first epoch with exit status 2.
"""
from __future__ import annotations

import logging
import os
import runpy
import sys
from typing import Sequence

from sslvitals.errors import SSLVitalsError

__all__ = ["main"]

logger = logging.getLogger("sslvitals")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a vitals configuration error).

    Args:
        argv: The arguments (default ``sys.argv[1:]``).
    """
    from sslvitals.integrations.speechbrain.brain import install, uninstall
    from sslvitals.integrations.speechbrain.options import USAGE, load_probe, resolve_config, split_argv

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n")
        return 0 if args else 2
    try:
        opts, recipe = split_argv(args)
        cfg = resolve_config(opts.vitals_config, opts.pairs)
        if (opts.keep_max or opts.keep_min) and not cfg.enabled:
            raise SSLVitalsError("--vitals_keep_max / --vitals_keep_min need the vitals on "
                                 "(enabled: true in --vitals_config, or --vitals enabled=true)")
        probe = load_probe(cfg) if cfg.enabled else None
        script = recipe[0]
        if not os.path.isfile(script):
            raise SSLVitalsError(f"recipe script {script} does not exist")
        install(cfg, probe=probe, keep_max=opts.keep_max, keep_min=opts.keep_min)
    except SSLVitalsError as exc:
        _report(exc)
        return 2
    sys.argv = list(recipe)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SSLVitalsError as exc:
        _report(exc)
        return 2
    finally:
        uninstall()
    return 0


def _report(exc: SSLVitalsError) -> None:
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger.error("sslvitals: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
