"""Capture the hidden states of every transformer layer of a speech model with forward hooks.

:class:`LayerTap` needs no change to the model's code: it registers hooks on the blocks found by
:mod:`sslvitals.hooks.architectures`, collects what the model computes during any forward the
caller runs inside the ``with`` block, removes every hook on exit (also when the forward
raises), and hands back the frames without padding.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sslvitals.config import parse_layers
from sslvitals.errors import SSLVitalsError
from sslvitals.hooks.architectures import (
    LayerPlan,
    bind_forward,
    detect,
    forward_signature,
    plan_from_path,
)

__all__ = ["LayerTap"]

logger = logging.getLogger(__name__)

_LAYER_SPEC_RE = re.compile(r"^\s*(all|-?\d+(\s*,\s*-?\d+)*)\s*$")
#: A dotted module path (``encoder.layers``); anything else that is not a layer list is an error.
_MODULE_PATH_RE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")


@dataclass
class _Batch:
    """What one forward pass left behind."""

    tensors: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, T, D)
    mask_counts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B,) int64
    input_lengths: torch.Tensor | None = None  # (B,) samples


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor at the head of nested tuples / lists (a block's hidden states)."""
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) else None


class LayerTap:
    """Context manager that records the output of every transformer layer of a model.

    Layer numbering: layer 0 is the input of the first transformer block (after the feature
    projection and the positional convolution, and after the encoder's pre-block LayerNorm
    where the architecture applies one before the blocks, as transformers'
    ``hidden_states[0]``); layer ``i >= 1`` is the raw output of block ``i``, as fairseq's
    ``layer_results[i - 1]`` and transformers' ``hidden_states[i]``. A final LayerNorm that
    pre-norm ("stable layer norm") models apply after the last block is not part of layer
    ``L``. :mod:`sslvitals.hooks.architectures` states per architecture what this means.

    Valid frames: for each utterance, the frames the model itself treats as non-padding (the
    padding mask its blocks receive), further limited, when the input length in samples is
    known, to the frames its convolutional front-end produces from the unpadded samples
    (``conv_num_frames``), which is what the utterance alone would give. Input lengths are read
    by a forward pre-hook on the recognised model when it is called (fairseq ``padding_mask``,
    transformers ``attention_mask``) or given with :meth:`set_input_lengths`. (fairseq's
    HuBERT marks a frame as padding only when all of its 320 samples are padding, so without
    known input lengths a padded utterance may keep up to two frames that straddle the end.)

    Reuse: each ``with`` block starts empty (what an earlier block captured is dropped when
    the next one is entered); inside one block, successive forwards accumulate until
    :meth:`clear`. What the last block captured stays readable after it exits.

    Train mode: by default the model is switched to eval mode inside the block (no dropout,
    no layer drop, so layer ``i`` is always block ``i``) and every module's own ``training``
    flag is restored on exit. With ``eval_mode=False`` the model's mode is left alone, and a
    model in training mode with layer drop > 0 is refused, since skipped blocks would leave
    layers missing.

    Example:
        >>> with LayerTap(model, layers=[0, 6, 12]) as tap:          # doctest: +SKIP
        ...     model.extract_features(wav, padding_mask=pad, mask=False)
        >>> tap.frames()[12].shape                                    # doctest: +SKIP
        torch.Size([N_valid, 768])

    Args:
        model: The model, or any module that contains a supported one (fairseq ``HubertModel``
            / ``Wav2Vec2Model``, MR-HuBERT, ESPnet HuBERT / SSL encoders, torchaudio wav2vec2 /
            HuBERT, transformers ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel``).
        layers: None or ``"all"`` for layers ``0..L``; a list of ints or a comma-separated
            string of ints (negative counts from the end); or the dotted path of the
            ``nn.ModuleList`` holding the blocks of a model not recognised (all its layers).
            Any other string (e.g. ``"0,x"``) is an error.
        blocks: Dotted path of the block list, to combine with an int ``layers`` selection for
            a model not recognised.
        eval_mode: Switch the model to eval mode inside the block (default True).
        sample_rate: Input sample rate in Hz, for :meth:`frame_rates`.
        time_first: Override whether the blocks use ``(T, B, C)`` (only needed for unknown
            models whose blocks are not called the fairseq way).

    Raises:
        SSLVitalsError: for an unknown model (listing its module lists), an out-of-range layer
            (naming the valid range), a malformed layer list or a bad block path.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int] | str | None = None,
        *,
        blocks: str | None = None,
        eval_mode: bool = True,
        sample_rate: int = 16000,
        time_first: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise SSLVitalsError(
                f"LayerTap needs a torch.nn.Module, got {type(model).__name__}"
            )
        if isinstance(layers, str) and not _LAYER_SPEC_RE.match(layers):
            if not _MODULE_PATH_RE.match(layers.strip()):
                raise SSLVitalsError(
                    f"layers={layers!r} is neither 'all', nor comma-separated layer indices "
                    "(e.g. '0,6,12' or '-1'), nor the dotted path of the ModuleList holding the "
                    "blocks (e.g. 'encoder.layers'); fix the layer list"
                )
            if blocks is not None:
                raise SSLVitalsError(
                    "give the block list either as layers='path' or as blocks='path', not both"
                )
            blocks, layers = layers.strip(), None
        if blocks is not None:
            plan = plan_from_path(model, blocks, sample_rate, time_first)
        else:
            plan = detect(model, sample_rate)
            if time_first is not None:
                plan.time_first = time_first
        self.model = model
        self.plan: LayerPlan = plan
        spec = "all" if layers is None else layers
        self._layer_ids: list[int] = list(parse_layers(spec, plan.num_layers) or [])
        self.eval_mode = eval_mode
        self._handles: list[RemovableHandle] = []
        self._modes: dict[nn.Module, bool] = {}
        self._batches: list[_Batch] = []
        self._pending_lengths: torch.Tensor | None = None
        self._root_signature = (
            forward_signature(plan.root) if plan.read_input_lengths is not None else None
        )
        logger.debug("LayerTap on %s: %d blocks, layers %s; %s", plan.architecture,
                     plan.num_layers, self._layer_ids, plan.numbering)

    # ------------------------------------------------------------------ properties
    @property
    def num_layers(self) -> int:
        """Number of transformer blocks ``L``; valid layer ids are ``0..L``."""
        return self.plan.num_layers

    @property
    def layer_ids(self) -> list[int]:
        """The selected layer ids, sorted."""
        return list(self._layer_ids)

    @property
    def architecture(self) -> str:
        """Name of the recognised architecture, e.g. ``"fairseq.HubertModel"``."""
        return self.plan.architecture

    @property
    def active(self) -> bool:
        """True between ``__enter__`` and ``__exit__``."""
        return bool(self._handles)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "LayerTap":
        if self._handles:
            raise SSLVitalsError("this LayerTap is already active; do not nest `with tap:`")
        # a new `with` block is a new capture: frames of an earlier block are not kept
        # (input lengths given for the next forward stay)
        self._batches = []
        self._modes = {m: m.training for m in self.model.modules()}
        if self.eval_mode:
            self.model.eval()
        elif self.plan.layerdrop > 0 and any(b.training for _, b in self.plan.blocks):
            self._modes = {}
            raise SSLVitalsError(
                f"the model is in training mode with layer drop {self.plan.layerdrop}: blocks "
                "would be skipped at random and layers would be missing; use "
                "LayerTap(..., eval_mode=True) (the default) or call model.eval() first"
            )
        try:
            self._register()
        except BaseException:
            self._remove()
            self._restore_modes()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._remove()
        self._restore_modes()
        return False

    def _register(self) -> None:
        plan = self.plan
        if plan.read_input_lengths is not None:
            self._handles.append(
                plan.root.register_forward_pre_hook(self._on_root_call, with_kwargs=True)
            )
        for layer in self._layer_ids:
            if layer == 0:
                block = plan.blocks[0][1]
                hook = functools.partial(self._on_block_input, 0)
                self._handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                block = plan.blocks[layer - 1][1]
                hook = functools.partial(self._on_block_output, layer)
                self._handles.append(block.register_forward_hook(hook, with_kwargs=True))

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def _restore_modes(self) -> None:
        for module, mode in self._modes.items():
            module.training = mode
        self._modes = {}

    # ------------------------------------------------------------------ hooks
    def _on_root_call(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        lengths, changed = None, None
        if self.plan.read_input_lengths is not None:
            bound = bind_forward(self._root_signature, args, kwargs)
            if bound is not None:
                lengths = self.plan.read_input_lengths(bound)
                # e.g. MR-HuBERT: padding_mask=None becomes an all-False mask (same meaning)
                if self.plan.fill_call is not None and self.plan.fill_call(bound):
                    changed = (bound.args, bound.kwargs)
        batch = self._new_batch()
        if batch.input_lengths is None and lengths is not None:
            batch.input_lengths = lengths.detach()
        return changed

    def _on_block_input(self, layer: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _first_tensor(args) if args else None
        if x is None:
            x = next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        self._capture(layer, x, args, kwargs)

    def _on_block_output(
        self, layer: int, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> None:
        self._capture(layer, _first_tensor(output), args, kwargs)

    def _capture(
        self, layer: int, x: torch.Tensor | None, args: tuple, kwargs: dict
    ) -> None:
        path = self.plan.blocks[max(layer - 1, 0)][0]
        if x is None or x.dim() != 3:
            raise SSLVitalsError(
                f"layer {layer} ({path}): expected a (B, T, D) or (T, B, D) hidden-state tensor, "
                f"got {None if x is None else tuple(x.shape)}; this block list does not hold "
                "transformer blocks, pass the right one with layers='path.to.ModuleList'"
            )
        time_first = self.plan.time_first
        if time_first is None:
            time_first = "self_attn_padding_mask" in kwargs
        x = x.detach()
        if time_first:
            x = x.transpose(0, 1)
        mask = self.plan.read_mask(args, kwargs)
        batch = self._batch_for(layer)
        batch.tensors[layer] = x
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
            batch.mask_counts[layer] = mask.detach().sum(dim=1)

    def _new_batch(self) -> _Batch:
        if self._batches and not self._batches[-1].tensors:
            batch = self._batches[-1]  # a call that captured nothing (e.g. it raised early)
            batch.input_lengths = None
        else:
            batch = _Batch()
            self._batches.append(batch)
        if self._pending_lengths is not None:
            batch.input_lengths = self._pending_lengths
            self._pending_lengths = None
        return batch

    def _batch_for(self, layer: int) -> _Batch:
        if not self._batches or layer in self._batches[-1].tensors:
            return self._new_batch()
        return self._batches[-1]

    # ------------------------------------------------------------------ results
    def set_input_lengths(self, lengths: torch.Tensor | Sequence[int]) -> None:
        """Give the unpadded input length (samples) of each utterance of the next forward.

        Needed only when the model's own forward is not called through ``__call__`` on the
        recognised module (e.g. fairseq's ``extract_features`` calls ``self.forward``), to make
        the number of frames per utterance independent of the batch it was padded in.

        Args:
            lengths: ``(B,)`` sample counts, in batch order.
        """
        t = torch.as_tensor(lengths, dtype=torch.int64).reshape(-1)
        self._pending_lengths = t

    def clear(self) -> None:
        """Drop every captured tensor (call between probe batches)."""
        self._batches = []
        self._pending_lengths = None

    def _valid_counts(self, batch: _Batch, layer: int) -> list[int]:
        x = batch.tensors[layer]
        n = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        if layer in batch.mask_counts:
            n = torch.minimum(n, batch.mask_counts[layer].cpu().to(torch.int64))
        if batch.input_lengths is not None:
            lengths = batch.input_lengths.cpu()
            if lengths.shape[0] != x.shape[0]:
                raise SSLVitalsError(
                    f"{lengths.shape[0]} input lengths were given for a batch of {x.shape[0]} "
                    "utterances; pass one length per utterance of the forward"
                )
            from_samples = self.plan.frames_from_samples(lengths, layer)
            if from_samples is not None:
                n = torch.minimum(n, from_samples)
        return n.clamp(min=0).tolist()

    def utterances(self) -> dict[int, list[torch.Tensor]]:
        """Per layer, one ``(T_i, D)`` tensor per utterance, without padding, in batch order
        (and in call order over several forwards since the last :meth:`clear`).

        Returns:
            ``{layer: [ (T_i, D) ]}``; views of the captured tensors, on the model's device.

        Raises:
            SSLVitalsError: if no forward was captured, or a selected layer did not run.
        """
        batches = [b for b in self._batches if b.tensors]
        if not batches:
            raise SSLVitalsError(
                "no forward pass was captured: run the model inside `with LayerTap(model) as "
                "tap:` (and after tap.clear(), run it again) before reading the layers"
            )
        out: dict[int, list[torch.Tensor]] = {layer: [] for layer in self._layer_ids}
        for batch in batches:
            missing = [layer for layer in self._layer_ids if layer not in batch.tensors]
            if missing:
                raise SSLVitalsError(
                    f"layers {missing} were not computed in a forward pass (a truncated forward "
                    "such as output_layer=k, layer drop in training mode, or a forward that "
                    "raised); run a full forward in eval mode, or select only the layers it runs"
                )
            for layer in self._layer_ids:
                x = batch.tensors[layer]
                counts = self._valid_counts(batch, layer)
                out[layer].extend(x[b, :c] for b, c in enumerate(counts))
        return out

    def frames(self) -> dict[int, torch.Tensor]:
        """Per layer, every valid frame of every captured utterance, ``(N_valid, D)``.

        Returns:
            ``{layer: (N_valid, D)}`` (utterances concatenated in batch order).
        """
        return {layer: torch.cat(utts, dim=0) for layer, utts in self.utterances().items()}

    def frame_rates(self) -> dict[int, float]:
        """Frames per second of every selected layer (NaN when the front-end is unknown)."""
        return {layer: self.plan.frame_rate(layer) for layer in self._layer_ids}

    def __repr__(self) -> str:
        return (
            f"LayerTap({self.architecture}, layers={self._layer_ids}, num_layers="
            f"{self.num_layers}, active={self.active})"
        )
