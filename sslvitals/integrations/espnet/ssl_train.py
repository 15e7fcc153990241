"""Drop-in replacement of ``python -m espnet2.bin.ssl_train`` with the vitals options.

Usage: the same arguments as ``espnet2.bin.ssl_train``, plus ``--vitals_config FILE`` and/or
a ``vitals:`` block in ``--config`` (``--vitals key=value`` to override single fields)::

    python -m sslvitals.integrations.espnet.ssl_train <ssl_train args> \
        --vitals_config conf/vitals.yaml

With the vitals disabled it trains exactly like the stock entry point (same task, same
trainer code path). A bad vitals configuration exits with status 2 before training.
"""
from __future__ import annotations

import sys
from typing import Sequence

__all__ = ["main", "get_parser"]


def get_parser():  # noqa: ANN201 - ESPnet's config_argparse.ArgumentParser
    """The parser of ``ssl_train`` with the vitals options."""
    from sslvitals.integrations.espnet.tasks import VitalsSSLTask

    return VitalsSSLTask.get_parser()


def main(cmd: Sequence[str] | None = None) -> None:
    """Run SSL pretraining (ESPnet SSL task) with the vitals trainer.

    Raises:
        SSLVitalsError: on a bad vitals configuration (before training).
    """
    from sslvitals.integrations.espnet.tasks import VitalsSSLTask, run_task

    run_task(VitalsSSLTask, cmd)


if __name__ == "__main__":
    from sslvitals.integrations.espnet.options import exit_status

    sys.exit(exit_status(main))
