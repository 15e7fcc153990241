"""Hugging Face ``transformers.Trainer`` integration: :class:`VitalsTrainerCallback`.

``from sslvitals.integrations.hf import VitalsTrainerCallback`` imports ``transformers`` (its
``Trainer`` also needs ``accelerate``).
"""
from __future__ import annotations

from typing import Any

__all__ = ["VitalsTrainerCallback", "normalized_transformers_forward"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sslvitals.integrations.hf import callback

        return getattr(callback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
