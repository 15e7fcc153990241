"""The probe forward pass for fairseq's HuBERT, wav2vec 2.0 and MR-HuBERT models.

Validation's own forward masks the input (that is what the loss needs), so the metrics come from
a separate pass over the probe: no masking, eval mode, no gradients. The layer outputs are
captured by :class:`sslvitals.hooks.LayerTap`; this pass only has to feed the model the way its
data loader would.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from sslvitals.batching import passes_padding

__all__ = [
    "normalize_waveforms",
    "padding_mask",
    "make_forward_fn",
]


def padding_mask(lengths: torch.Tensor, num_samples: int) -> torch.Tensor:
    """fairseq's padding mask: True at padded samples.

    Args:
        lengths: ``(B,)`` valid samples per row.
        num_samples: Padded length ``T``.

    Returns:
        ``(B, T)`` bool tensor on the device of ``lengths``.
    """
    return torch.arange(num_samples, device=lengths.device)[None, :] >= lengths[:, None]


def normalize_waveforms(wav: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding stays zero.

    This is the input normalisation fairseq's audio datasets apply when ``task.normalize`` is
    true (a layer norm over the whole utterance, biased variance, ``eps = 1e-5``).

    Args:
        wav: ``(B, T)`` float waveforms, zero-padded.
        lengths: ``(B,)`` valid samples per row.
        eps: Added to the variance.

    Returns:
        ``(B, T)`` normalised waveforms (float32 or the input's floating dtype).
    """
    valid = (~padding_mask(lengths, wav.shape[1])).to(wav.dtype)
    count = lengths.to(wav.dtype).clamp_min(1)[:, None]
    mean = (wav * valid).sum(dim=1, keepdim=True) / count
    centred = (wav - mean) * valid
    var = (centred * centred).sum(dim=1, keepdim=True) / count
    return centred / torch.sqrt(var + eps)


def make_forward_fn(normalize: bool) -> Callable[[torch.nn.Module, Any], Any]:
    """Build ``forward_fn(model, batch)`` for :meth:`sslvitals.monitor.VitalsMonitor.measure`.

    The function moves the batch to the model's device and dtype (so fp16/bf16 models work),
    normalises it when the task does, and calls the model once through ``__call__`` (so that
    :class:`~sslvitals.hooks.LayerTap` sees the padding mask and the input lengths) with
    ``source=wav, padding_mask=mask, mask=False, features_only=True``: the unmasked feature
    pass shared by fairseq's ``HubertModel``, ``Wav2Vec2Model`` and ``MultiresHubertModel``
    (what their ``extract_features`` runs). The padding mask is always a tensor, all False
    for an unpadded batch: MR-HuBERT cannot run with ``padding_mask=None`` (its U-Net slices
    the mask when it adds a skip connection), and for the other models an all-False mask means
    the same as None. (A user's own call with ``padding_mask=None`` inside a
    :class:`~sslvitals.hooks.LayerTap` gets the same all-False mask from the tap.) It is
    marked with
    :func:`sslvitals.batching.passes_padding`; which models get padded batches and which one
    utterance per call is decided by :mod:`sslvitals.batching` inside the monitor.

    Args:
        normalize: The task's ``normalize`` option.

    Returns:
        The forward function; it returns None (the layers are read by hooks).
    """

    @passes_padding
    def forward_fn(model: torch.nn.Module, batch: Any) -> None:
        param = next(model.parameters())
        wav = batch.wav.to(device=param.device, dtype=torch.float32)
        lengths = batch.lengths.to(param.device)
        if normalize:
            wav = normalize_waveforms(wav, lengths)
        model(source=wav.to(param.dtype), padding_mask=padding_mask(lengths, wav.shape[1]),
              mask=False, features_only=True)
        return None

    return forward_fn
