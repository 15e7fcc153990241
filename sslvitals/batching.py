"""How the probe is cut into forward passes: one rule for every architecture.

A metric value must not depend on how the probe was batched. Zero padding leaves the frames
of an utterance exactly as they are when it runs alone only if both of these hold:

1. **the front-end is padding-independent**: nothing normalises over the time axis. The
   HuBERT / wav2vec 2.0 Base front-ends (fairseq ``extractor_mode=default``, torchaudio and
   ESPnet ``extractor_mode=group_norm``, transformers ``feat_extract_norm="group"``, ESPnet's
   ``CNNFrontend`` with ``norm_mode=group_norm``) normalise the first convolution's output
   with a ``GroupNorm`` over the whole padded length, so padding moves every frame;
2. **the encoder honours the padding exactly**: it is given the padding, removes the padded
   frames from attention and from the positional convolution, and treats as valid exactly the
   frames the convolutions compute from real samples. fairseq's ``HubertModel`` (and
   MR-HuBERT) derive the frame mask by cutting the sample mask into equal chunks, which keeps
   up to one frame that overlaps the padding; the valid frames attend to it.

:func:`choose_policy` grants padded batches only to the architectures below that meet both,
and only when the forward function declares, through :func:`passes_padding`, that it hands
the model its padding (sslvitals' own forward functions do). Everything else runs one
utterance per forward pass, cut to its own length, which is what the model computes for that
utterance alone; when unsure, it splits.

Padded batches (exact):

* fairseq ``Wav2Vec2Model`` with ``extractor_mode=layer_norm`` and transformer blocks;
* torchaudio wav2vec 2.0 / HuBERT with ``extractor_mode=layer_norm`` (ESPnet
  ``torchaudio_hubert``), with no ESPnet front-end, normalisation or pre-encoder before it;
* transformers HuBERT / Wav2Vec2 / WavLM with ``feat_extract_norm="layer"``.

One utterance per forward pass:

* every model with a ``GroupNorm`` or ``InstanceNorm`` (the Base front-ends of all toolkits);
* models whose blocks hold a convolution (conformer blocks: ``layer_type=conformer``);
* fairseq ``HubertModel`` in either extractor mode, and ESPnet's fairseq-based
  ``hubert_pretrain`` encoder, which wraps one (HuBERT's frame mask);
* MR-HuBERT (HuBERT's frame mask, and resampling across padded frames);
* ESPnet SSL-task models (not proven exact), unknown models, and forward functions that do
  not declare :func:`passes_padding`.

:meth:`sslvitals.monitor.VitalsMonitor.measure` applies the rule to the batches it is given,
so the fairseq and ESPnet integrations, ``sslvitals score`` and any other caller get it
without doing anything. ``tests/core/test_batching_policy.py`` checks, for every architecture,
that the measurement with large padded batches equals the one-utterance-at-a-time measurement.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from torch import nn

from sslvitals.errors import SSLVitalsError

__all__ = [
    "BatchingPolicy",
    "PADDING_ATTRIBUTE",
    "passes_padding",
    "time_normalisers",
    "choose_policy",
    "apply_policy",
]

logger = logging.getLogger(__name__)

#: Attribute a forward function carries (True) when it gives the model the batch's padding.
PADDING_ATTRIBUTE = "sslvitals_passes_padding"

F = TypeVar("F", bound=Callable[..., Any])

#: Modules that normalise over the time axis (statistics of all frames, padding included).
_TIME_NORMS: tuple[type[nn.Module], ...] = (
    nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
)
_BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Convolutions; inside a transformer block they mix neighbouring frames, padded ones included.
_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)
#: ESPnet-style stages that run before the encoder (``espnet_forward`` runs them).
_PRE_ENCODER_STAGES = ("frontend", "normalize", "preencoder")

_logged: set[tuple[str, bool, str]] = set()


@dataclass(frozen=True)
class BatchingPolicy:
    """How the probe batches of one model are fed to its forward function.

    Attributes:
        padded: True: batches are used as given (several zero-padded utterances per forward);
            False: every utterance runs alone, cut to its own length.
        architecture: The model as recognised (e.g. ``"fairseq.HubertModel"``).
        reason: Why, in a few words (logged once).
    """

    padded: bool
    architecture: str
    reason: str

    def describe(self) -> str:
        """One line for the log."""
        how = "padded batches" if self.padded else "one utterance per forward pass"
        return f"{self.architecture}: {how} ({self.reason})"

    def apply(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield the batches as the model must see them.

        Args:
            batches: :class:`~sslvitals.probe.ProbeBatch` objects ``wav (B, T)``,
                ``lengths (B,)``.

        Yields:
            The same batches (padded policy) or one-utterance batches ``wav (1, T_i)`` in the
            same order.

        Raises:
            SSLVitalsError: when a batch of several utterances must be split but has no
                ``split()`` method (give :class:`~sslvitals.probe.ProbeBatch` objects).
        """
        for batch in batches:
            if self.padded or getattr(batch, "lengths", None) is None:
                yield batch
                continue
            split = getattr(batch, "split", None)
            if callable(split):
                yield from split()
            elif len(batch.lengths) == 1 and int(batch.lengths[0]) == batch.wav.shape[-1]:
                yield batch
            else:
                raise SSLVitalsError(
                    f"{self.architecture} must see one utterance per forward pass, but the probe "
                    f"batch {type(batch).__name__} cannot be split; give sslvitals.probe."
                    "ProbeBatch objects (they split themselves) or one unpadded utterance per batch")


def passes_padding(forward_fn: F) -> F:
    """Declare that ``forward_fn(model, batch)`` gives the model the padding of the batch.

    A forward function so marked passes the model its padding mask, its input lengths or its
    attention mask, whichever the model takes. Only then may an architecture that honours
    padding exactly get padded batches; an unmarked forward function always runs one
    utterance at a time.

    Args:
        forward_fn: The function (it gets the attribute :data:`PADDING_ATTRIBUTE`).

    Returns:
        ``forward_fn`` itself.
    """
    setattr(forward_fn, PADDING_ATTRIBUTE, True)
    return forward_fn


def time_normalisers(model: nn.Module) -> list[str]:
    """Paths of the modules of ``model`` whose output depends on the padding of the time axis.

    These are the normalisations that pool statistics over time (``GroupNorm``,
    ``InstanceNorm``, ``LocalResponseNorm``) and batch normalisation in training mode.

    Args:
        model: Any module.

    Returns:
        Dotted module paths (``"<root>"`` for the model itself), in registration order.
    """
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, _TIME_NORMS) or (isinstance(mod, _BATCH_NORMS) and mod.training):
            found.append(name or "<root>")
    return found


def _ancestors(model: nn.Module, path: str) -> list[nn.Module]:
    """The model and every module on the way to ``path`` (the recognised root excluded)."""
    out = [model]
    cur = model
    parts = path.split(".") if path else []
    for part in parts[:-1]:
        cur = cur._modules.get(part)  # noqa: SLF001 - registered children
        if cur is None:
            break
        out.append(cur)
    return out if parts else []


def _encoder_rule(plan: Any) -> tuple[bool, str]:
    """Whether the recognised encoder honours a padding mask exactly (given no time norm)."""
    root = plan.root
    family = getattr(plan, "family", "")
    name = type(root).__name__
    if family == "fairseq-wav2vec2":
        if hasattr(root, "forward_padding_mask"):
            return False, (f"{name} turns the sample padding mask into a frame mask by cutting it "
                           "into equal chunks, which keeps a frame that overlaps the padding")
        if callable(getattr(root, "_get_feat_extract_output_lengths", None)):
            return True, (f"{name} derives its frame mask from the convolutions' output lengths "
                          "and zeroes padded frames before the positional convolution")
        return False, f"{name} is not known to derive its frame mask exactly"
    if family == "torchaudio-wav2vec2":
        return True, ("torchaudio's encoder takes the lengths, computes the frame counts of its "
                      "convolutions and zeroes and masks the padded frames")
    if family == "transformers":
        return True, ("transformers computes the frame mask from the attention mask with the "
                      "convolutions' output lengths and zeroes and masks the padded frames")
    if family == "multires-hubert":
        return False, ("MR-HuBERT cuts the sample mask into equal chunks (as HuBERT does) and "
                       "resamples between resolutions over padded frames")
    if family == "espnet":
        return False, "ESPnet's SSL-task encoders are not proven exact under padding"
    return False, (f"{family or name} is not among the architectures proven exact under "
                   "padding (sslvitals.batching)")


def choose_policy(model: nn.Module, forward_fn: Callable[..., Any] | None = None) -> BatchingPolicy:
    """Decide how the probe is batched for ``model`` (see the module docstring for the rule).

    Args:
        model: The model (wrappers such as DDP or toolkit task models are searched).
        forward_fn: The forward function that will run the batches; padded batches need one
            marked with :func:`passes_padding`.

    Returns:
        The policy; padded only when it is exact for this model and forward function.
    """
    from sslvitals.hooks.architectures import detect

    try:
        plan = detect(model)
    except SSLVitalsError:
        return BatchingPolicy(False, type(model).__name__,
                              "not a recognised architecture: padding may change its features")
    arch = plan.architecture
    norms = time_normalisers(model)
    if norms:
        shown = ", ".join(norms[:3]) + (", ..." if len(norms) > 3 else "")
        verb = "normalises" if len(norms) == 1 else "normalise"
        return BatchingPolicy(False, arch, f"{shown} {verb} over the padded time axis")
    exact, why = _encoder_rule(plan)
    if not exact:
        return BatchingPolicy(False, arch, why)
    convolving = [path for path, block in plan.blocks
                  if any(isinstance(m, _CONVS) for m in block.modules())]
    if convolving:
        return BatchingPolicy(False, arch, (
            f"block {convolving[0]} convolves over time (e.g. a conformer), across padded frames"))
    for holder in _ancestors(model, plan.root_path):
        for stage in _PRE_ENCODER_STAGES:
            mod = getattr(holder, stage, None)
            if isinstance(mod, nn.Module):
                return BatchingPolicy(False, arch, (
                    f"the {stage} {type(mod).__name__} runs before the encoder and is not known "
                    "to be padding-independent"))
    if forward_fn is None or not getattr(forward_fn, PADDING_ATTRIBUTE, False):
        return BatchingPolicy(False, arch, (
            "the forward function does not declare that it passes the padding "
            "(sslvitals.batching.passes_padding)"))
    return BatchingPolicy(True, arch, why)


def apply_policy(model: nn.Module, forward_fn: Callable[..., Any] | None,
                 batches: Iterable[Any]) -> Iterator[Any]:
    """Choose the policy for ``model`` now, log it (once per process per decision) and apply it.

    Args:
        model: The model the batches are for.
        forward_fn: The forward function that will run them.
        batches: Probe batches (:class:`~sslvitals.probe.ProbeBatch`).

    Returns:
        An iterator over the batches to run (see :meth:`BatchingPolicy.apply`).
    """
    policy = choose_policy(model, forward_fn)
    key = (policy.architecture, policy.padded, policy.reason)
    if key not in _logged:
        _logged.add(key)
        logger.info("sslvitals: probe batching for %s", policy.describe())
    return policy.apply(batches)
