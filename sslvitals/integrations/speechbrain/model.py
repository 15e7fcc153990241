"""The encoder a SpeechBrain recipe trains, as one module sslvitals can measure.

A SpeechBrain recipe keeps its model as separate modules (the ``modules:`` of its
HyperPyYAML) and runs them in its own ``compute_forward``. For the measurement they are put
back together, without masking or noise, as one ``nn.Module`` whose forward takes waveforms:

* BEST-RQ (``recipes/LibriSpeech/self-supervised-learning/BEST-RQ``):
  :class:`SpeechBrainBestRQ` = filterbanks (``compute_features``) -> ``normalize`` ->
  ``CNN`` (``ConvolutionFrontEnd``) -> ``TransformerASR`` encoder (through the recipe's
  ``EncoderWrapper``). The recipe's zero-padding of the filterbanks to a multiple of 4 frames
  is a training detail and is not applied: the CNN gives ``ceil(T / 4)`` frames either way.
* wav2vec 2.0 (``recipes/LibriSpeech/self-supervised-learning/wav2vec2``):
  :class:`SpeechBrainWav2Vec2` = ``W2VLatentExtractor`` -> wav2vec ``EncoderWrapper``.

The parts are the recipe's own module objects (DDP and ``torch.compile`` wrappers removed), so
the measurement sees the weights being trained; :func:`model_from_modules` finds them by type.
:class:`~sslvitals.hooks.LayerTap` recognises both wrappers (and the recipe's own module
collections) by their module tree (:mod:`sslvitals.hooks.architectures`).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from sslvitals.batching import passes_padding
from sslvitals.errors import SSLVitalsError

__all__ = [
    "SpeechBrainBestRQ",
    "SpeechBrainWav2Vec2",
    "model_from_modules",
    "speechbrain_forward",
    "unwrap",
]

logger = logging.getLogger(__name__)


def unwrap(module: Any) -> Any:
    """Remove DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    for _ in range(8):
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(module, nn.Module) and isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod  # noqa: SLF001 - torch.compile's wrapped module
        else:
            break
    return module


class SpeechBrainBestRQ(nn.Module):
    """A BEST-RQ encoder assembled from a recipe's modules (no masking, no quantiser).

    Args:
        compute_features: The recipe's ``Fbank`` (``hparams.compute_features``).
        normalize: The recipe's ``InputNormalization``, or None.
        CNN: The ``ConvolutionFrontEnd`` (2-D convolutions, 4x time subsampling in the recipe).
        encoder: The ``EncoderWrapper`` around ``TransformerASR``, or the ``TransformerASR``.
    """

    def __init__(self, compute_features: nn.Module, normalize: nn.Module | None, CNN: nn.Module,  # noqa: N803
                 encoder: nn.Module) -> None:
        super().__init__()
        self.compute_features = compute_features
        self.normalize = normalize
        self.CNN = CNN
        self.encoder = encoder

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Encode waveforms.

        Args:
            wavs: ``(B, S)`` waveforms.
            wav_lens: ``(B,)`` relative lengths in ``(0, 1]`` (SpeechBrain's convention); None
                for unpadded input.

        Returns:
            ``(B, T, D)`` encoder output (after the encoder's final norm).
        """
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        feats = self.compute_features(wavs)
        if self.normalize is not None:
            feats = self.normalize(feats, wav_lens)
        src = self.CNN(feats)
        if hasattr(self.encoder, "encode") and not hasattr(self.encoder, "transformer"):
            return self.encoder.encode(src, wav_lens)
        return self.encoder(src, wav_lens)


class SpeechBrainWav2Vec2(nn.Module):
    """SpeechBrain's wav2vec 2.0 encoder assembled from a recipe's modules (no masking).

    Args:
        latent_extractor: The ``W2VLatentExtractor`` (waveform convolutions).
        latent_encoder: The wav2vec ``EncoderWrapper`` (projection, positional encoding and
            the transformer ``latent_encoder``).
    """

    def __init__(self, latent_extractor: nn.Module, latent_encoder: nn.Module) -> None:
        super().__init__()
        self.latent_extractor = latent_extractor
        self.latent_encoder = latent_encoder

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Encode waveforms.

        Args:
            wavs: ``(B, S)`` waveforms (normalised per utterance by the extractor, as in the
                recipe's ``normalize_signal=True``).
            wav_lens: ``(B,)`` relative lengths, or None for unpadded input.

        Returns:
            ``(B, T, D)`` encoder output.
        """
        latents = self.latent_extractor(wavs, normalize_signal=True)
        return self.latent_encoder(latents, wav_lens=wav_lens)["embeddings"]


@passes_padding
def speechbrain_forward(model: nn.Module, batch: Any) -> Any:
    """Run one probe batch through a :class:`SpeechBrainBestRQ` / :class:`SpeechBrainWav2Vec2`.

    The padding goes in as SpeechBrain's relative lengths (``lengths / padded length``);
    whether a model gets padded batches at all is decided by :mod:`sslvitals.batching`
    (conformer blocks and time-normalising front-ends get one utterance per call).

    Args:
        model: The assembled model.
        batch: A :class:`~sslvitals.probe.ProbeBatch` (``wav (B, S)``, ``lengths (B,)``).
    """
    device = next(model.parameters()).device
    wav = batch.wav.to(device)
    rel = batch.lengths.to(device=device, dtype=torch.float32) / float(wav.shape[1])
    return model(wav, rel)


def _classes() -> dict[str, type]:
    from speechbrain.lobes.features import Fbank
    from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
    from speechbrain.lobes.models.transformer.TransformerASR import EncoderWrapper, TransformerASR
    from speechbrain.lobes.models.wav2vec import EncoderWrapper as W2VEncoderWrapper
    from speechbrain.lobes.models.wav2vec import W2VLatentExtractor
    from speechbrain.processing.features import InputNormalization

    return {"Fbank": Fbank, "ConvolutionFrontEnd": ConvolutionFrontEnd,
            "EncoderWrapper": EncoderWrapper, "TransformerASR": TransformerASR,
            "W2VEncoderWrapper": W2VEncoderWrapper, "W2VLatentExtractor": W2VLatentExtractor,
            "InputNormalization": InputNormalization}


def _pick(found: list[tuple[str, Any]], preferred: tuple[str, ...]) -> tuple[str, Any] | None:
    """One ``(name, object)`` among ``found``: the only one, or the one with a preferred name."""
    unique: dict[int, tuple[str, Any]] = {}
    for name, obj in found:
        unique.setdefault(id(obj), (name, obj))
    items = list(unique.values())
    if len(items) == 1:
        return items[0]
    for want in preferred:
        for name, obj in items:
            if name == want:
                return name, obj
    return None


def _listing(modules: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} ({type(unwrap(m)).__name__})" for n, m in modules.items()) or "none"


def model_from_modules(modules: Mapping[str, Any], hparams: Mapping[str, Any] | None = None
                       ) -> tuple[nn.Module, str]:
    """Assemble the measured encoder from a recipe's modules and hyperparameters.

    Args:
        modules: ``brain.modules`` (or the ``modules:`` mapping of the YAML); wrappers removed.
        hparams: The recipe's hyperparameters (``vars(brain.hparams)``), searched for the
            filterbank and normalisation modules BEST-RQ keeps outside ``modules``.

    Returns:
        ``(model, kind)`` with ``kind`` ``"bestrq"`` or ``"wav2vec2"``.

    Raises:
        SSLVitalsError: when neither a BEST-RQ (``ConvolutionFrontEnd`` + ``TransformerASR``) nor
            a wav2vec 2.0 (``W2VLatentExtractor`` + wav2vec ``EncoderWrapper``) model is found,
            or when one part is ambiguous; the message lists the modules.
    """
    cls = _classes()
    mods = {str(n): unwrap(m) for n, m in modules.items()}
    extra = {str(n): v for n, v in (hparams or {}).items() if isinstance(v, nn.Module)}

    def of(kind: type, *, where: Mapping[str, Any] = mods) -> list[tuple[str, Any]]:
        return [(n, m) for n, m in where.items() if isinstance(m, kind)]

    extractors = of(cls["W2VLatentExtractor"])
    w2v = of(cls["W2VEncoderWrapper"])
    if extractors or w2v:
        ext = _pick(extractors, ("latent_extractor", "extractor"))
        enc = _pick(w2v, ("latent_encoder", "encoder_wrapper"))
        if ext is None or enc is None:
            raise SSLVitalsError(
                "sslvitals found a SpeechBrain wav2vec 2.0 model but cannot tell its "
                f"W2VLatentExtractor and wav2vec EncoderWrapper apart; modules: {_listing(modules)} "
                "(give attach(..., model=lambda brain: <nn.Module>, forward=...))")
        return SpeechBrainWav2Vec2(ext[1], enc[1]), "wav2vec2"

    cnns = [(n, m) for n, m in of(cls["ConvolutionFrontEnd"])
            if any(isinstance(x, nn.Conv2d) for x in m.modules())]
    encoders = of(cls["EncoderWrapper"]) + of(cls["TransformerASR"])
    # a TransformerASR inside the EncoderWrapper is the same model: keep the wrapper
    wrapped = {id(m.transformer) for _, m in of(cls["EncoderWrapper"])}
    encoders = [(n, m) for n, m in encoders if id(m) not in wrapped]
    cnn = _pick(cnns, ("CNN",))
    enc = _pick(encoders, ("wrapper", "Transformer", "encoder"))
    if cnn is None or enc is None:
        raise SSLVitalsError(
            "sslvitals cannot find a SpeechBrain BEST-RQ encoder (a ConvolutionFrontEnd of 2-D "
            "convolutions and a TransformerASR or its EncoderWrapper) nor a wav2vec 2.0 model "
            f"(W2VLatentExtractor + wav2vec EncoderWrapper) among the modules: {_listing(modules)}; "
            "for another model give attach(..., model=lambda brain: <nn.Module>, forward=...)")
    both = {**extra, **mods}
    feats = _pick(of(cls["Fbank"], where=both), ("compute_features", "fbank"))
    if feats is None:
        raise SSLVitalsError(
            "sslvitals found the BEST-RQ CNN and encoder but not one Fbank feature module "
            "(hparams 'compute_features'); put it in the recipe's hyperparameters")
    norms = of(cls["InputNormalization"], where=both)
    norm = _pick(norms, ("normalize",))
    if norms and norm is None:
        raise SSLVitalsError(
            "sslvitals found several InputNormalization modules "
            f"({', '.join(n for n, _ in norms)}) and none is named 'normalize'; give "
            "attach(..., model=lambda brain: <nn.Module>, forward=...)")
    logger.debug("sslvitals: BEST-RQ from %s, %s, %s, %s", feats[0], None if norm is None else norm[0],
                 cnn[0], enc[0])
    return SpeechBrainBestRQ(feats[1], None if norm is None else norm[1], cnn[1], enc[1]), "bestrq"
