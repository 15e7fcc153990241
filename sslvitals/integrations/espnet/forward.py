"""The forward pass the probe uses on ESPnet HuBERT / SSL models: features only, no masking.

ESPnet's training forward masks the input, computes the pretraining loss and needs target
labels. The probe must see the representation of the clean audio, so :func:`espnet_forward`
runs the model's own front-end steps (``frontend``, ``normalize``, ``preencoder``) and then
the encoder's unmasked feature path:

* ``TorchAudioHuBERTPretrainEncoder`` (``--encoder torchaudio_hubert``): the wrapped
  ``torchaudio`` ``Wav2Vec2Model`` (``hubert_pretrain_model.wav2vec2``) on the waveform and
  its lengths, i.e. the feature extractor and the transformer, without the mask generator;
* ``FairseqHubertPretrainEncoder`` (``--encoder hubert_pretrain``): the wrapped fairseq
  ``HubertModel`` called with ``mask=False, features_only=True`` and its padding mask;
* ESPnet's SSL task model (``ESPnetSSLModel``): its ``inference_encode(use_mask=False)``.

:class:`sslvitals.hooks.LayerTap` captures the transformer layers during this call.
"""
from __future__ import annotations

from typing import Any

import torch

from sslvitals.batching import passes_padding
from sslvitals.errors import SSLVitalsError

__all__ = ["unwrap_model", "espnet_forward", "encoder_kind"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the ESPnet model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                             torch.nn.DataParallel)):
        model = model.module
    return model


def encoder_kind(model: torch.nn.Module) -> str:
    """Name the feature path :func:`espnet_forward` takes for ``model``.

    Returns:
        ``"torchaudio"``, ``"fairseq"`` or ``"ssl"``.

    Raises:
        SSLVitalsError: for a model that is none of ESPnet's HuBERT / SSL pretraining models.
    """
    model = unwrap_model(model)
    if callable(getattr(model, "inference_encode", None)):
        return "ssl"
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(getattr(encoder, "hubert_pretrain_model", None),
                                       "wav2vec2"):
        return "torchaudio"
    inner = getattr(encoder, "encoder", None)
    if inner is not None and hasattr(inner, "mask_emb") and hasattr(inner, "feature_extractor"):
        return "fairseq"
    raise SSLVitalsError(
        f"sslvitals does not know how to run the probe through {type(model).__name__} with "
        f"encoder {type(encoder).__name__}; supported: ESPnet's HuBERT pretraining models "
        "(--encoder torchaudio_hubert or hubert_pretrain) and the SSL task model")


@passes_padding
def espnet_forward(model: torch.nn.Module, batch: Any) -> Any:
    """Run one probe batch through the model's front-end and encoder, without masking.

    Every path hands the model the batch's lengths (or fairseq's padding mask), so it is
    marked with :func:`sslvitals.batching.passes_padding`; whether a model may get padded
    batches at all is decided by :mod:`sslvitals.batching` (ESPnet's default
    ``torchaudio_hubert`` front-end, ``group_norm``, gets one utterance per call).

    Args:
        model: ``TorchAudioHubertPretrainModel``, ``HubertPretrainModel`` or
            ``ESPnetSSLModel`` (possibly wrapped in DDP).
        batch: A :class:`sslvitals.probe.ProbeBatch`: ``wav (B, S)`` float32 and
            ``lengths (B,)`` int64 samples.

    Returns:
        The encoder's output (ignored by the monitor; the layers are captured by hooks).
    """
    model = unwrap_model(model)
    kind = encoder_kind(model)
    device = next(model.parameters()).device
    speech = batch.wav.to(device)
    lengths = batch.lengths.to(device)
    if kind == "ssl":
        return model.inference_encode(speech, lengths, use_mask=False)
    speech = speech[:, : int(lengths.max())]
    if getattr(model, "frontend", None) is not None:
        feats, feat_lengths = model.frontend(speech, lengths)
    else:
        feats, feat_lengths = speech, lengths
    if getattr(model, "normalize", None) is not None:
        feats, feat_lengths = model.normalize(feats, feat_lengths)
    if getattr(model, "preencoder", None) is not None:
        feats, feat_lengths = model.preencoder(feats, feat_lengths)
    if kind == "torchaudio":
        wav2vec2 = model.encoder.hubert_pretrain_model.wav2vec2
        return wav2vec2(feats, feat_lengths)
    hubert = model.encoder.encoder
    padding_mask = (torch.arange(feats.shape[1], device=device)[None, :]
                    >= feat_lengths[:, None])
    return hubert(feats, padding_mask=padding_mask, mask=False, features_only=True)
