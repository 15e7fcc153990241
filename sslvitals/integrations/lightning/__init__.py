"""PyTorch Lightning (and NeMo) integration: :class:`VitalsCallback`.

``from sslvitals.integrations.lightning import VitalsCallback`` imports Lightning (``lightning``
2.x, or the older ``pytorch_lightning``); :mod:`sslvitals.integrations.lightning.session`, which
the Hugging Face callback shares, imports neither.
"""
from __future__ import annotations

from typing import Any

__all__ = ["VitalsCallback"]


def __getattr__(name: str) -> Any:
    if name == "VitalsCallback":
        from sslvitals.integrations.lightning.callback import VitalsCallback

        return VitalsCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
