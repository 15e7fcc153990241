"""The contract between a checkpoint loader and the measurement: :class:`LoadedModel`.

Every toolkit's loader (``sslvitals.integrations.<toolkit>.checkpoint``) returns a
:class:`LoadedModel`; :mod:`sslvitals.offline.loaders` finds checkpoints and calls the right
loader; :mod:`sslvitals.offline.score` measures what comes back. This module sits below all of
them and imports none, so a new toolkit adds one loader file and nothing imports upward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["LoadedModel", "ForwardFn", "normalise_waveforms"]

#: ``forward_fn(model, batch)``: one forward pass on a :class:`~sslvitals.probe.ProbeBatch`.
ForwardFn = Callable[[torch.nn.Module, Any], Any]


@dataclass
class LoadedModel:
    """A model ready to be measured.

    Attributes:
        model: The module (eval mode, on the requested device).
        forward_fn: ``forward_fn(model, batch)`` runs one forward pass on a
            :class:`~sslvitals.probe.ProbeBatch` (no masking, no dropout).
        toolkit: ``"fairseq"``, ``"espnet"``, ``"transformers"``, ``"s3prl"`` or
            ``"speechbrain"``.
        kind: Model family, e.g. ``"hubert"``, ``"wav2vec2"``, ``"multires_hubert"``,
            ``"bestrq"``.
        step: Number of updates (fairseq, transformers) or epoch (ESPnet, SpeechBrain), or None.
        loss: Validation loss stored in the checkpoint, or None.
        tap_layers: Optional ``LayerTap`` layers override (None: LayerTap finds them).
        info: Free-form details for logs.

    How the probe is cut into forward passes is not the loader's business: the monitor
    applies :mod:`sslvitals.batching` to every model.
    """

    model: torch.nn.Module
    forward_fn: ForwardFn
    toolkit: str
    kind: str
    step: int | None = None
    loss: float | None = None
    tap_layers: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def normalise_waveforms(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per utterance over its valid samples (padding stays 0).

    This is what fairseq's ``task.normalize=true`` (wav2vec 2.0 / HuBERT Large) expects.

    Args:
        wav: ``(B, T)`` waveforms.
        lengths: ``(B,)`` valid samples.

    Returns:
        ``(B, T)`` normalised waveforms.
    """
    out = torch.zeros_like(wav)
    for i, n in enumerate(lengths.tolist()):
        seg = wav[i, :n]
        out[i, :n] = (seg - seg.mean()) / torch.sqrt(seg.var(unbiased=False) + 1e-5)
    return out
