"""Where each supported model keeps its transformer blocks, and how to read them.

The knowledge is kept in small :class:`ArchitectureSpec` objects, recognised from the module
tree (child names, class names as strings) so that this module never imports fairseq, ESPnet,
torchaudio, s3prl or transformers. :func:`detect` walks a model and turns the first match into
a :class:`LayerPlan`: the ordered blocks, whether they run time-first, how to read each
block's padding mask and the model's input lengths, and the frame rate of every block.

Layer numbering, common to every architecture: layer 0 is the input of the first transformer
block, read by a forward pre-hook on that block, and layer ``i >= 1`` is the raw output of block
``i``. Per architecture this means:

* fairseq ``HubertModel`` / ``Wav2Vec2Model`` (and s3prl's ports): layer 0 is the feature
  projection plus the positional convolution, after the encoder's ``layer_norm`` when
  ``layer_norm_first=False`` (Base models, which normalise before the blocks) and without it
  otherwise; layer ``i`` equals ``layer_results[i - 1][0]`` and
  ``extract_features(output_layer=i)``. The final ``encoder.layer_norm`` that
  ``layer_norm_first=True`` models apply after the last block is **not** included.
* transformers ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel``: layer ``i`` equals
  ``hidden_states[i]`` (``output_hidden_states=True``). For the ``do_stable_layer_norm=True``
  (pre-norm, "large") variants, ``last_hidden_state`` is ``encoder.layer_norm`` applied to
  layer ``L``; transformers 5 returns the un-normalised block output as ``hidden_states[L]``
  (as here), transformers 4 returned the normalised one.
* torchaudio's wav2vec 2.0 / HuBERT (ESPnet's ``TorchAudioHuBERTPretrainEncoder``): layer 0 is
  the input of ``encoder.transformer.layers[0]``; layer ``i`` equals element ``i - 1`` of
  ``Wav2Vec2Model.extract_features``. ESPnet's ``FairseqHubertPretrainEncoder`` wraps a fairseq
  ``HubertModel`` and is read as one.
* ESPnet's SSL task (``espnet2.ssl.espnet_model.ESPnetSSLModel`` with a
  ``TransformerEncoder`` / ``ConformerEncoder`` / ``EBranchformerEncoder``): layer 0 is the
  output of ``encoder.embed`` (the first block's input) and layer ``i`` the output of
  ``encoder.encoders[i - 1]``, i.e. element ``i - 1`` of the hidden states the encoder
  returns with ``return_all_hs=True``; the ``after_norm`` applied after the last block (which
  ``ESPnetSSLModel.encode`` substitutes for the last hidden state) is not included.
* MR-HuBERT (s3prl's ``MultiresHubertModel`` or fairseq main's ``multires_hubert``): the blocks
  are numbered along the U-Net: ``encoders[0].layers``, ``encoders[1].layers``, ...,
  ``middle_encoder.layers``, ``decoders[0].layers``, ...; each layer reports the frame rate at
  which its block runs (e.g. 50 Hz, 25 Hz in the middle, 50 Hz again). Block outputs are read
  before the U-Net's residual additions.
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable

import torch
from torch import nn

from sslvitals.errors import SSLVitalsError
from sslvitals.hooks.framing import conv_num_frames

__all__ = [
    "ArchitectureSpec",
    "LayerPlan",
    "SPECS",
    "detect",
    "plan_from_path",
    "find_block_containers",
    "conv_frontend",
    "bind_forward",
    "forward_signature",
]

logger = logging.getLogger(__name__)

MaskReader = Callable[[tuple, dict], "torch.Tensor | None"]
LengthReader = Callable[[inspect.BoundArguments], "torch.Tensor | None"]

_LAYERDROP_ATTRS = ("layerdrop", "encoder_layerdrop", "layer_drop", "layer_drop_rate")


@dataclass
class LayerPlan:
    """Everything :class:`~sslvitals.hooks.LayerTap` needs to capture one model.

    Attributes:
        architecture: Human-readable name, e.g. ``"fairseq.HubertModel"``.
        root: The module the architecture was recognised on (the user's model or a submodule).
        root_path: Its path in the user's model (``""`` for the model itself).
        blocks: ``(path, module)`` of every transformer block in layer order; ``L = len``.
        block_stage: Resolution stage of every block (index into ``stages``).
        stages: Per stage, the ``(up, down)`` resampling steps applied after the front-end
            (empty for single-rate models); the stage's frame rate is
            ``base_rate * prod(up / down)`` and its frame count ``ceil(n * up / down)`` per step.
        time_first: True if blocks take and return ``(T, B, C)``; False for ``(B, T, C)``;
            None to decide per call (fairseq convention when the block gets
            ``self_attn_padding_mask``).
        read_mask: ``(args, kwargs) -> (B, T) bool`` valid-frame mask from a block call, or
            None when the block gets none.
        read_input_lengths: ``BoundArguments -> (B,)`` input lengths in samples, from the
            arguments of ``root.forward`` (forward pre-hook on the root); None if not available.
        conv_stack: ``(kernel, stride)`` of the un-padded waveform convolutions, or None.
        hop: Samples per frame of the front-end (None if unknown).
        sample_rate: Input sample rate in Hz.
        layerdrop: Largest layer-drop probability found in the model (0 if none).
        numbering: One sentence on what layer 0 and layer L are for this architecture.
        family: Name of the :class:`ArchitectureSpec` that recognised the model (``""`` for a
            plan built from a path only); :mod:`sslvitals.batching` decides by it.
        stage_pairs: Per stage, the earlier stage whose output is added to this stage's output
            (a U-Net skip connection, which trims the longer of the two), or None; None for
            models without skip connections between resolutions. A stage paired with a stage of
            the same frame rate counts at most that stage's frames.
        fill_call: ``BoundArguments -> bool`` run on the arguments of ``root.forward`` before
            the call; it may complete them (e.g. an all-False padding mask where the model
            cannot take None) and returns True when it changed them; None for most models.
    """

    architecture: str
    root: nn.Module
    root_path: str
    blocks: list[tuple[str, nn.Module]]
    block_stage: list[int]
    stages: list[tuple[tuple[int, int], ...]]
    time_first: bool | None
    read_mask: MaskReader
    read_input_lengths: LengthReader | None
    conv_stack: tuple[tuple[int, int], ...] | None
    hop: int | None
    sample_rate: int
    layerdrop: float = 0.0
    numbering: str = ""
    family: str = ""
    stage_pairs: list[int | None] | None = None
    fill_call: Callable[[inspect.BoundArguments], bool] | None = None

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks ``L`` (valid layer ids are ``0..L``)."""
        return len(self.blocks)

    def stage_of_layer(self, layer: int) -> int:
        """Resolution stage of layer ``layer`` (layer 0 runs at the first block's rate)."""
        return self.block_stage[max(layer - 1, 0)]

    def frame_rate(self, layer: int) -> float:
        """Frames per second of ``layer``; NaN when the front-end is unknown."""
        if not self.hop:
            return math.nan
        rate = Fraction(self.sample_rate, self.hop)
        for up, down in self.stages[self.stage_of_layer(layer)]:
            rate = rate * up / down
        return float(rate)

    def frames_from_samples(self, samples: torch.Tensor, layer: int) -> torch.Tensor | None:
        """Valid frame count ``(B,)`` of ``layer`` for inputs of ``samples`` ``(B,)`` samples.

        Returns None when the front-end's convolutions are not known.
        """
        if self.conv_stack is None:
            return None
        n = conv_num_frames(samples.to(torch.int64), self.conv_stack)
        stage = self.stage_of_layer(layer)
        if self.stage_pairs is None:
            for up, down in self.stages[stage]:
                n = _resample_count(n, up, down)
            return n
        return self._paired_counts(n, stage)[stage]

    def _paired_counts(self, n0: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Frame counts ``(B,)`` of stages ``0..last`` of a U-Net (:attr:`stage_pairs` set).

        Stage ``s`` resamples what stage ``s - 1`` passed on (its steps beyond those of stage
        ``s - 1``); when a skip connection adds an earlier stage's output, the sum has the
        shorter length of the two, and that is what the next stage gets. The frames a stage
        counts are the trimmed ones when the paired stage runs at the same rate (the extra
        frame an up-sampler makes from an odd length is not part of the utterance), else its
        own.
        """
        assert self.stage_pairs is not None
        counted: list[torch.Tensor] = []
        passed: list[torch.Tensor] = []
        for s in range(last + 1):
            steps = self.stages[s]
            if s == 0:
                n, done = n0, ()
            else:
                n, done = passed[s - 1], self.stages[s - 1]
            if steps[: len(done)] != done:
                raise SSLVitalsError(
                    f"stage {s} does not continue stage {s - 1} ({steps} vs {done}); this "
                    "layer plan cannot give frame counts"
                )
            for up, down in steps[len(done):]:
                n = _resample_count(n, up, down)
            own = n
            pair = self.stage_pairs[s]
            if pair is not None:
                n = torch.minimum(n, passed[pair])
                same_rate = _stage_factor(self.stages[pair]) == _stage_factor(steps)
                own = n if same_rate else own
            counted.append(own)
            passed.append(n)
        return counted


def _resample_count(n: torch.Tensor, up: int, down: int) -> torch.Tensor:
    """``ceil(n * up / down)``: frames after an ``up / down`` resampling step."""
    return torch.div(n * up + down - 1, down, rounding_mode="floor")


def _stage_factor(steps: tuple[tuple[int, int], ...]) -> Fraction:
    rate = Fraction(1)
    for up, down in steps:
        rate = rate * up / down
    return rate


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to recognise one family of models and build its :class:`LayerPlan`.

    Attributes:
        name: Family name (``"fairseq-wav2vec2"``, ``"transformers"``, ...).
        matches: ``module -> bool``, a structural test on the module tree only.
        build: ``(module, path, sample_rate) -> LayerPlan``.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    build: Callable[[nn.Module, str, int], LayerPlan]


# --------------------------------------------------------------------------- module tree


def _child(module: nn.Module | None, dotted: str) -> nn.Module | None:
    """Submodule at ``dotted`` (registered children only) or None."""
    cur = module
    for part in dotted.split("."):
        if cur is None:
            return None
        cur = cur._modules.get(part)  # noqa: SLF001 - the registered-children mapping
    return cur


def _is_block_list(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _toolkit(module: nn.Module) -> str:
    return type(module).__module__.split(".")[0]


def _blocks(container: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    return [(_join(path, name), blk) for name, blk in container.named_children()]


def conv_frontend(
    module: nn.Module | None,
) -> tuple[tuple[tuple[int, int], ...] | None, int | None]:
    """Read a waveform front-end's convolutions from its module tree.

    Args:
        module: The front-end (e.g. ``feature_extractor``), or None.

    Returns:
        ``(conv_stack, hop)``: ``(kernel, stride)`` of every ``nn.Conv1d`` in registration
        order (point-wise 1x1 convolutions skipped), and the product of the strides.
        ``conv_stack`` is None when a convolution is padded or dilated (then the frame count
        does not follow the un-padded formula); both are None when there is no ``nn.Conv1d``.
    """
    if module is None:
        return None, None
    stack: list[tuple[int, int]] = []
    exact = True
    for m in module.modules():
        if isinstance(m, nn.Conv1d):
            k, s = int(m.kernel_size[0]), int(m.stride[0])
            pad = m.padding if isinstance(m.padding, str) else int(m.padding[0])
            if pad not in (0, "valid") or int(m.dilation[0]) != 1:
                exact = False
            if k == 1 and s == 1:
                continue
            stack.append((k, s))
    if not stack:
        return None, None
    hop = 1
    for _, s in stack:
        hop *= s
    return (tuple(stack) if exact else None), hop


def _max_layerdrop(modules: Iterable[nn.Module]) -> float:
    best = 0.0
    for m in modules:
        for attr in _LAYERDROP_ATTRS:
            val = getattr(m, attr, None)
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                best = max(best, float(val))
        cfg = getattr(m, "config", None)
        val = getattr(cfg, "layerdrop", None)
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            best = max(best, float(val))
    return best


# --------------------------------------------------------------------------- mask readers


def _arg(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _fairseq_block_mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """fairseq blocks get ``self_attn_padding_mask`` ``(B, T)``, True at padded frames."""
    m = _arg(args, kwargs, "self_attn_padding_mask", 2)
    if not isinstance(m, torch.Tensor) or m.dim() != 2:
        return None
    return ~m.bool()


def _espnet_block_mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """ESPnet blocks get ``mask`` ``(B, 1, T)``, True at valid frames."""
    m = _arg(args, kwargs, "mask", 1)
    if not isinstance(m, torch.Tensor) or m.dim() != 3 or m.shape[1] != 1:
        return None
    return m[:, 0, :].bool()


def _torchaudio_block_mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """torchaudio blocks get an additive ``attention_mask`` ``(B, 1, T, T)`` (large negative at
    padded keys) or, for WavLM, ``key_padding_mask`` ``(B, T)`` (True at padded frames)."""
    kpm = kwargs.get("key_padding_mask")
    if isinstance(kpm, torch.Tensor) and kpm.dim() == 2:
        return ~kpm.bool()
    m = _arg(args, kwargs, "attention_mask", 1)
    if not isinstance(m, torch.Tensor) or m.dim() != 4:
        return None
    return m[:, 0, 0, :] > -1.0


def _generic_block_mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
    m = _fairseq_block_mask((), kwargs)
    if m is not None:
        return m
    kpm = kwargs.get("key_padding_mask")
    if isinstance(kpm, torch.Tensor) and kpm.dim() == 2 and kpm.dtype == torch.bool:
        return ~kpm
    return None


def _no_mask(args: tuple, kwargs: dict) -> None:
    return None


# --------------------------------------------------------------------------- length readers


def _first_tensor_argument(bound: inspect.BoundArguments) -> torch.Tensor | None:
    for value in bound.arguments.values():
        if isinstance(value, torch.Tensor):
            return value
    return None


def _fairseq_input_lengths(bound: inspect.BoundArguments) -> torch.Tensor | None:
    """``forward(source (B, S), ..., padding_mask (B, S) True at padding)``."""
    source = bound.arguments.get("source", _first_tensor_argument(bound))
    if not isinstance(source, torch.Tensor) or source.dim() != 2:
        return None
    pm = bound.arguments.get("padding_mask")
    if isinstance(pm, torch.Tensor) and pm.shape == source.shape:
        return (~pm.bool()).sum(dim=1)
    if pm is None:
        return torch.full((source.shape[0],), source.shape[1], dtype=torch.int64,
                          device=source.device)
    return None


def _transformers_input_lengths(bound: inspect.BoundArguments) -> torch.Tensor | None:
    """``forward(input_values (B, S), attention_mask (B, S) 1 at samples to use)``."""
    values = bound.arguments.get("input_values", _first_tensor_argument(bound))
    if not isinstance(values, torch.Tensor) or values.dim() != 2:
        return None
    am = bound.arguments.get("attention_mask")
    if am is None:
        kw = bound.arguments.get("kwargs")
        am = kw.get("attention_mask") if isinstance(kw, dict) else None
    if isinstance(am, torch.Tensor) and am.shape == values.shape:
        return am.to(torch.int64).sum(dim=1)
    if am is None:
        return torch.full((values.shape[0],), values.shape[1], dtype=torch.int64,
                          device=values.device)
    return None


# --------------------------------------------------------------------------- specs


def _single_rate_plan(
    *,
    architecture: str,
    root: nn.Module,
    path: str,
    blocks_path: str,
    time_first: bool | None,
    read_mask: MaskReader,
    read_input_lengths: LengthReader | None,
    frontend: nn.Module | None,
    sample_rate: int,
    numbering: str,
    extra_downsampling: int = 1,
) -> LayerPlan:
    container = _child(root, blocks_path)
    assert container is not None
    conv_stack, hop = conv_frontend(frontend)
    if hop is not None and extra_downsampling != 1:
        hop *= extra_downsampling
        conv_stack = None  # the extra subsampling has its own (padded) arithmetic
    blocks = _blocks(container, _join(path, blocks_path))
    return LayerPlan(
        architecture=architecture,
        root=root,
        root_path=path,
        blocks=blocks,
        block_stage=[0] * len(blocks),
        stages=[()],
        time_first=time_first,
        read_mask=read_mask,
        read_input_lengths=read_input_lengths,
        conv_stack=conv_stack,
        hop=hop,
        sample_rate=sample_rate,
        layerdrop=_max_layerdrop(root.modules()),
        numbering=numbering,
    )


def _match_fairseq(m: nn.Module) -> bool:
    return (
        _child(m, "feature_extractor.conv_layers") is not None
        and _child(m, "encoder.pos_conv") is not None
        and _is_block_list(_child(m, "encoder.layers"))
    )


def _build_fairseq(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    ln_first = bool(getattr(_child(m, "encoder"), "layer_norm_first", False))
    return _single_rate_plan(
        architecture=f"{_toolkit(m)}.{type(m).__name__}",
        root=m,
        path=path,
        blocks_path="encoder.layers",
        time_first=True,
        read_mask=_fairseq_block_mask,
        read_input_lengths=_fairseq_input_lengths,
        frontend=_child(m, "feature_extractor"),
        sample_rate=sample_rate,
        numbering=(
            "layer 0 = encoder.layers[0] input (feature projection + positional conv"
            + ("" if ln_first else " + encoder.layer_norm")
            + "); layer i = layer_results[i-1][0] = extract_features(output_layer=i)"
            + ("; the final encoder.layer_norm is not applied to layer L" if ln_first else "")
        ),
    )


def _match_transformers(m: nn.Module) -> bool:
    return (
        _child(m, "feature_extractor") is not None
        and _child(m, "encoder.pos_conv_embed") is not None
        and _is_block_list(_child(m, "encoder.layers"))
    )


def _build_transformers(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    stable = bool(getattr(getattr(m, "config", None), "do_stable_layer_norm", False))
    return _single_rate_plan(
        architecture=f"{_toolkit(m)}.{type(m).__name__}",
        root=m,
        path=path,
        blocks_path="encoder.layers",
        time_first=False,
        read_mask=_no_mask,
        read_input_lengths=_transformers_input_lengths,
        frontend=_child(m, "feature_extractor"),
        sample_rate=sample_rate,
        numbering=(
            "layer 0 = encoder.layers[0] input; layer i = hidden_states[i]"
            + ("; last_hidden_state = encoder.layer_norm(layer L)" if stable else "")
        ),
    )


def _match_torchaudio(m: nn.Module) -> bool:
    return (
        _child(m, "feature_extractor.conv_layers") is not None
        and _child(m, "encoder.transformer.pos_conv_embed") is not None
        and _is_block_list(_child(m, "encoder.transformer.layers"))
    )


def _build_torchaudio(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    return _single_rate_plan(
        architecture=f"{_toolkit(m)}.{type(m).__name__}",
        root=m,
        path=path,
        blocks_path="encoder.transformer.layers",
        time_first=False,
        read_mask=_torchaudio_block_mask,
        read_input_lengths=None,
        frontend=_child(m, "feature_extractor"),
        sample_rate=sample_rate,
        numbering="layer 0 = encoder.transformer.layers[0] input; layer i = "
        "extract_features(...)[0][i-1]",
    )


def _espnet_encoder(m: nn.Module) -> bool:
    return hasattr(m, "embed") and _is_block_list(_child(m, "encoders"))


def _match_espnet(m: nn.Module) -> bool:
    return _espnet_encoder(m) or (
        _child(m, "encoder") is not None and _espnet_encoder(_child(m, "encoder"))
    )


# Time subsampling of ESPnet's input layers, by class name.
_ESPNET_SUBSAMPLING = {
    "Conv2dSubsampling": 4,
    "Conv2dSubsampling1": 1,
    "Conv2dSubsampling2": 2,
    "Conv2dSubsampling6": 6,
    "Conv2dSubsampling8": 8,
    "Conv1dSubsampling1": 1,
    "Conv1dSubsampling2": 2,
    "Conv1dSubsampling3": 3,
}


def _build_espnet(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    if _espnet_encoder(m):
        encoder, enc_path, frontend = m, "", None
    else:
        encoder, enc_path, frontend = _child(m, "encoder"), "encoder", _child(m, "frontend")
    embed = getattr(encoder, "embed", None)
    factor = _ESPNET_SUBSAMPLING.get(type(embed).__name__, 1) if embed is not None else 1
    plan = _single_rate_plan(
        architecture=f"{_toolkit(m)}.{type(m).__name__}",
        root=m,
        path=path,
        blocks_path=_join(enc_path, "encoders"),
        time_first=False,
        read_mask=_espnet_block_mask,
        read_input_lengths=None,
        frontend=frontend,
        sample_rate=sample_rate,
        extra_downsampling=factor,
        numbering="layer 0 = output of encoder.embed; layer i = encoder.encoders[i-1] output "
        "(return_all_hs element i-1); after_norm is not applied to layer L",
    )
    if plan.hop is None and frontend is not None:
        hop = getattr(frontend, "hop_length", None)
        if isinstance(hop, int) and hop > 0:
            plan.hop = hop * factor
    return plan


def _match_multires(m: nn.Module) -> bool:
    return (
        _child(m, "feature_extractor") is not None
        and _child(m, "middle_encoder") is not None
        and _is_block_list(_child(m, "encoders"))
        and isinstance(_child(m, "decoders"), nn.ModuleList)
        and _child(m, "downsample_modules") is not None
        and _child(m, "upsample_modules") is not None
    )


def _resampling(adapter: nn.Module) -> tuple[int, int]:
    """``(up, down)`` of an MR-HuBERT adapter (ConvAdapter, ConvDownsampler, ConvUpsampler)."""
    up = int(getattr(adapter, "upsample_rate", 1))
    down = int(getattr(adapter, "downsample_rate", 1))
    return up, down


def _build_multires(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    encoders = _child(m, "encoders")
    decoders = _child(m, "decoders")
    downs = list(_child(m, "downsample_modules").children())
    ups = list(_child(m, "upsample_modules").children())
    blocks: list[tuple[str, nn.Module]] = []
    block_stage: list[int] = []
    stages: list[tuple[tuple[int, int], ...]] = []
    steps: list[tuple[int, int]] = []

    def add(sub_path: str) -> None:
        stages.append(tuple(steps))
        cont = _child(m, sub_path + ".layers")
        if not _is_block_list(cont):
            return
        for bp, blk in _blocks(cont, _join(path, sub_path + ".layers")):
            blocks.append((bp, blk))
            block_stage.append(len(stages) - 1)

    # The forward pass: encoder i, then down-sampler i; the middle encoder; then decoder i after
    # its up-sampler, its output summed with encoder (n - 1 - i)'s output (trimmed to the
    # shorter). fairseq main runs decoder i after upsample_modules[n - 1 - i] (the inverse of
    # the down-sampler of that encoder); s3prl's port after upsample_modules[i]. The two
    # differ only when the rate ratios are uneven (released models use [1, 2]).
    s3prl_order = _multires_runs_s3prl_order(m)
    n_dec = len(decoders)
    encoder_stage: list[int] = []
    for i in range(len(encoders)):
        encoder_stage.append(len(stages))
        add(f"encoders.{i}")
        if i < len(downs):
            steps.append(_resampling(downs[i]))
    add("middle_encoder")
    pairs: list[int | None] = [None] * len(stages)
    for i in range(n_dec):
        up_index = i if s3prl_order else len(ups) - 1 - i
        if 0 <= up_index < len(ups):
            steps.append(_resampling(ups[up_index]))
        add(f"decoders.{i}")
        skip = n_dec - 1 - i
        pairs.append(encoder_stage[skip] if 0 <= skip < len(encoder_stage) else None)
    conv_stack, hop = conv_frontend(_child(m, "feature_extractor"))
    return LayerPlan(
        architecture=f"{_toolkit(m)}.{type(m).__name__}",
        root=m,
        root_path=path,
        blocks=blocks,
        block_stage=block_stage,
        stages=stages,
        time_first=True,
        read_mask=_fairseq_block_mask,
        read_input_lengths=_fairseq_input_lengths,
        conv_stack=conv_stack,
        hop=hop,
        sample_rate=sample_rate,
        layerdrop=_max_layerdrop(m.modules()),
        numbering="layers follow the U-Net: encoders[0..].layers, middle_encoder.layers, "
        "decoders[0..].layers; layer 0 = encoders[0].layers[0] input; each layer has the "
        "frame rate of its block; block outputs are read before the residual additions; "
        "decoder layers count the frames of the encoder layers at their rate",
        stage_pairs=pairs,
        fill_call=_multires_fill_padding_mask,
    )


def _multires_runs_s3prl_order(m: nn.Module) -> bool:
    """True when the class whose ``forward`` the model runs is s3prl's port (decoder i after
    ``upsample_modules[i]``); False for fairseq main's order and for subclasses that override
    ``forward`` (decoder i after ``upsample_modules[n - 1 - i]``)."""
    for cls in type(m).__mro__:
        if "forward" in vars(cls):
            return cls.__module__.split(".")[0] == "s3prl"
    return False


def _multires_fill_padding_mask(bound: inspect.BoundArguments) -> bool:
    """MR-HuBERT cannot run with ``padding_mask=None`` (its U-Net trims the mask when it sums
    a skip connection): give it an all-False ``(B, S)`` mask, which means the same."""
    if bound.arguments.get("padding_mask") is not None:
        return False
    if "padding_mask" not in bound.signature.parameters:
        return False
    source = bound.arguments.get("source", _first_tensor_argument(bound))
    if not isinstance(source, torch.Tensor) or source.dim() != 2:
        return False
    bound.arguments["padding_mask"] = torch.zeros(source.shape, dtype=torch.bool,
                                                  device=source.device)
    return True


#: Known architectures, tried in this order on every module of the model (outermost first).
SPECS: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec("multires-hubert", _match_multires, _build_multires),
    ArchitectureSpec("fairseq-wav2vec2", _match_fairseq, _build_fairseq),
    ArchitectureSpec("transformers", _match_transformers, _build_transformers),
    ArchitectureSpec("torchaudio-wav2vec2", _match_torchaudio, _build_torchaudio),
    ArchitectureSpec("espnet", _match_espnet, _build_espnet),
)


# --------------------------------------------------------------------------- entry points


def find_block_containers(model: nn.Module) -> list[tuple[str, int, str]]:
    """List the module containers that could hold transformer blocks.

    Args:
        model: Any ``nn.Module``.

    Returns:
        ``(path, length, child class name)`` for every ``nn.ModuleList`` and every
        ``nn.Sequential`` of at least two children of one class.
    """
    out = []
    for name, mod in model.named_modules():
        if not name or not _is_block_list(mod):
            continue
        kinds = {type(c).__name__ for c in mod.children()}
        if isinstance(mod, nn.ModuleList) or (len(mod) >= 2 and len(kinds) == 1):
            out.append((name, len(mod), "/".join(sorted(kinds))))
    return out


def _unknown_model_error(model: nn.Module) -> SSLVitalsError:
    found = find_block_containers(model)
    listing = "; ".join(f"'{p}' ({n} x {k})" for p, n, k in found[:20]) or "none"
    return SSLVitalsError(
        f"sslvitals does not recognise {type(model).__name__} (supported: fairseq HubertModel/"
        "Wav2Vec2Model, MR-HuBERT, ESPnet HuBERT and SSL encoders, torchaudio wav2vec2/HuBERT, "
        "transformers HubertModel/Wav2Vec2Model/WavLMModel). Pass the path of the ModuleList "
        f"that holds its transformer blocks, e.g. LayerTap(model, layers='<path>'); module "
        f"lists found: {listing}"
    )


def detect(model: nn.Module, sample_rate: int = 16000) -> LayerPlan:
    """Recognise ``model`` (or the first recognisable submodule) and plan its capture.

    Args:
        model: The model, or a wrapper holding it (e.g. a fine-tuning model or a task model).
        sample_rate: Input sample rate in Hz, for the frame rates.

    Returns:
        The plan of the outermost recognised module.

    Raises:
        SSLVitalsError: if no known architecture is found; the message lists the module lists
            of the model with their paths, to pass as ``layers="path"``.
    """
    for path, mod in model.named_modules():
        for spec in SPECS:
            if spec.matches(mod):
                plan = spec.build(mod, path, sample_rate)
                if plan.num_layers == 0:
                    continue
                plan.family = spec.name
                logger.debug("recognised %s at '%s' (%s)", plan.architecture, path, spec.name)
                return plan
    raise _unknown_model_error(model)


def plan_from_path(
    model: nn.Module,
    blocks_path: str,
    sample_rate: int = 16000,
    time_first: bool | None = None,
) -> LayerPlan:
    """Plan a capture of the blocks held by the container at ``blocks_path``.

    Used for models this module does not know. Layer 0 is the first block's input, layer ``i``
    the output of block ``i``. When the model is also recognised and ``blocks_path`` is its
    block list, the recognised plan (masks, frame rates) is used.

    Args:
        model: The model.
        blocks_path: Dotted path of an ``nn.ModuleList`` / ``nn.Sequential`` of blocks.
        sample_rate: Input sample rate in Hz.
        time_first: Whether blocks use ``(T, B, C)``; None: True when a block is called with
            fairseq's ``self_attn_padding_mask`` keyword, else False.

    Raises:
        SSLVitalsError: if the path does not exist or is not a non-empty module list.
    """
    try:
        container = model.get_submodule(blocks_path)
    except AttributeError as exc:
        found = ", ".join(f"'{p}'" for p, _, _ in find_block_containers(model)[:20]) or "none"
        raise SSLVitalsError(
            f"layers={blocks_path!r}: {exc}; module lists in this model: {found}"
        ) from exc
    if not _is_block_list(container):
        raise SSLVitalsError(
            f"layers={blocks_path!r} is a {type(container).__name__}, not a non-empty "
            "nn.ModuleList / nn.Sequential of transformer blocks"
        )
    try:
        known = detect(model, sample_rate)
    except SSLVitalsError:
        known = None
    if known is not None and [p for p, _ in known.blocks] == [
        _join(blocks_path, n) for n, _ in container.named_children()
    ]:
        if time_first is not None:
            known.time_first = time_first
        return known
    frontend = None
    for name in ("feature_extractor", "frontend"):
        for path, mod in model.named_modules():
            if path.split(".")[-1] == name:
                frontend = mod
                break
        if frontend is not None:
            break
    conv_stack, hop = conv_frontend(frontend)
    blocks = _blocks(container, blocks_path)
    return LayerPlan(
        architecture=f"{_toolkit(model)}.{type(model).__name__}[{blocks_path}]",
        root=model,
        root_path="",
        blocks=blocks,
        block_stage=[0] * len(blocks),
        stages=[()],
        time_first=time_first,
        read_mask=_generic_block_mask,
        read_input_lengths=None,
        conv_stack=conv_stack,
        hop=hop,
        sample_rate=sample_rate,
        layerdrop=_max_layerdrop(model.modules()),
        numbering=f"layer 0 = {blocks_path}[0] input; layer i = {blocks_path}[i-1] output",
    )


def bind_forward(
    signature: inspect.Signature | None, args: tuple, kwargs: dict
) -> inspect.BoundArguments | None:
    """Bind the arguments of a ``forward`` call to its signature, or None if they do not fit.

    Args:
        signature: ``inspect.signature(module.forward)`` (computed once by the caller).
        args: Positional arguments of the call.
        kwargs: Keyword arguments of the call.
    """
    if signature is None:
        return None
    try:
        return signature.bind_partial(*args, **kwargs)
    except TypeError:
        return None


def forward_signature(module: nn.Module) -> inspect.Signature | None:
    """``inspect.signature(module.forward)``, or None when it cannot be read."""
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- SpeechBrain
#
# SpeechBrain keeps a model as separate modules of a recipe (``modules:`` in its HyperPyYAML);
# the specs below recognise any module whose direct children are those parts:
#
# * BEST-RQ (``recipes/.../BEST-RQ``): a ``ConvolutionFrontEnd`` of 2-D convolutions over
#   filterbanks (``CNN``) and a ``TransformerASR`` (bare, or in the ``EncoderWrapper`` that runs
#   its encoder only) whose ``encoder`` is a ``ConformerEncoder`` / ``TransformerEncoder`` /
#   ``BranchformerEncoder``; an ``Fbank`` child, when present, gives the hop (else SpeechBrain's
#   default 10 ms). Layer 0 is the input of ``encoder.layers[0]`` (the CNN output through
#   ``custom_src_module``, plus the absolute positional encoding when the attention is not
#   ``RelPosMHAXL``); layer ``i`` is the output of ``encoder.layers[i-1]`` (element ``i`` of
#   the encoder's ``output_hidden_states``); the final ``encoder.norm`` is not part of layer
#   ``L``. With the recipe's 10 ms filterbanks and two stride-2 convolutions, frames are 40 ms
#   (25 Hz); 50 Hz phone labels are resampled to that rate as for MR-HuBERT's 25 Hz layers.
# * wav2vec 2.0 (``recipes/.../wav2vec2``): a ``W2VLatentExtractor`` and the wav2vec
#   ``EncoderWrapper`` (``input_projector``, positional encoding, ``latent_encoder``). Layer 0
#   is the input of ``latent_encoder.layers[0]`` (projected latents plus positional encoding);
#   layer ``i`` the output of block ``i``; ``latent_encoder.norm`` is not part of layer ``L``.
#   The frame rate follows the extractor's un-padded 1-D convolutions.
# * Any other SpeechBrain ``TransformerASR`` / ``EncoderWrapper`` / bare encoder: the same
#   numbering, frame rate unknown.
#
# Blocks are batch-first and get ``src_key_padding_mask`` (True at padded frames).

_SB_ENCODERS = ("ConformerEncoder", "TransformerEncoder", "BranchformerEncoder")
#: Hop of SpeechBrain's ``Fbank`` (``hop_length=10`` ms) when the model holds no Fbank.
_SB_DEFAULT_HOP_SECONDS = 0.010


def _is_speechbrain(m: nn.Module | None) -> bool:
    return m is not None and type(m).__module__.startswith("speechbrain.")


def _sb_encoder_path(m: nn.Module | None) -> str | None:
    """Path, relative to ``m``, of the SpeechBrain encoder that holds the blocks (``layers``):
    ``m`` itself, ``m.encoder`` (``TransformerASR``) or ``m.transformer.encoder``
    (``EncoderWrapper``); None when there is none."""
    for path in ("", "encoder", "transformer.encoder"):
        enc = m if not path else _child(m, path)
        if (_is_speechbrain(enc) and type(enc).__name__ in _SB_ENCODERS
                and _is_block_list(_child(enc, "layers"))):
            return path
    return None


def _speechbrain_block_mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """SpeechBrain blocks get ``src_key_padding_mask`` ``(B, T)``, True at padded frames."""
    m = _arg(args, kwargs, "src_key_padding_mask", 2)
    if not isinstance(m, torch.Tensor) or m.dim() != 2:
        return None
    return ~m.bool()


def _speechbrain_input_lengths(bound: inspect.BoundArguments) -> torch.Tensor | None:
    """``forward(wavs (B, S), wav_lens (B,) relative lengths)``, SpeechBrain's convention."""
    wav = _first_tensor_argument(bound)
    if not isinstance(wav, torch.Tensor) or wav.dim() != 2:
        return None
    rel = bound.arguments.get("wav_lens")
    if rel is None:
        return torch.full((wav.shape[0],), wav.shape[1], dtype=torch.int64, device=wav.device)
    if isinstance(rel, torch.Tensor) and rel.shape == (wav.shape[0],):
        return torch.round(rel.double() * wav.shape[1]).to(torch.int64)
    return None


def _sb_children(m: nn.Module, class_name: str) -> list[tuple[str, nn.Module]]:
    return [(n, c) for n, c in m.named_children()
            if _is_speechbrain(c) and type(c).__name__ == class_name]


def _sb_encoder_children(m: nn.Module) -> list[tuple[str, str]]:
    """``(child name, encoder path inside it)`` of the direct children holding an encoder."""
    out = []
    for name, child in m.named_children():
        path = _sb_encoder_path(child)
        if path is not None:
            out.append((name, path))
    return out


def _sb_cnn_time_stride(cnn: nn.Module) -> int:
    """Time subsampling of a SpeechBrain 2-D ``ConvolutionFrontEnd``: the product of the time
    strides of its ``speechbrain.nnet.CNN.Conv2d`` layers (time is the last axis the inner
    ``nn.Conv2d`` sees, the first one with ``swap=True``)."""
    factor = 1
    for mod in cnn.modules():
        if _is_speechbrain(mod) and type(mod).__name__ == "Conv2d":
            stride = tuple(getattr(mod, "stride", (1, 1)))
            factor *= int(stride[0] if getattr(mod, "swap", False) else stride[-1])
    return factor


def _sb_has_conv2d(cnn: nn.Module) -> bool:
    return any(isinstance(mod, nn.Conv2d) for mod in cnn.modules())


def _match_sb_bestrq(m: nn.Module) -> bool:
    cnns = [c for _, c in _sb_children(m, "ConvolutionFrontEnd") if _sb_has_conv2d(c)]
    return len(cnns) == 1 and len(_sb_encoder_children(m)) == 1


def _sb_numbering(enc_path: str, absolute_pos: bool, front: str) -> str:
    return (f"layer 0 = {enc_path}.layers[0] input ({front}"
            + (" + absolute positional encoding" if absolute_pos else "")
            + f"); layer i = {enc_path}.layers[i-1] output (output_hidden_states[i]); "
            f"{enc_path}.norm is not applied to layer L")


def _build_sb_bestrq(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    (cnn_name, cnn), = [(n, c) for n, c in _sb_children(m, "ConvolutionFrontEnd")
                        if _sb_has_conv2d(c)]
    (holder, enc_rel), = _sb_encoder_children(m)
    enc_path = _join(holder, enc_rel)
    fbanks = _sb_children(m, "Fbank")
    hop = None
    if fbanks:
        stft = getattr(fbanks[0][1], "compute_STFT", None)
        hop = getattr(stft, "hop_length", None)
    if not isinstance(hop, int) or hop <= 0:
        hop = int(round(sample_rate * _SB_DEFAULT_HOP_SECONDS))
    transformer = _child(m, holder) if enc_rel in ("encoder", "transformer.encoder") else None
    if transformer is not None and enc_rel == "transformer.encoder":
        transformer = _child(transformer, "transformer")
    absolute = (transformer is not None
                and getattr(transformer, "attention_type", None) not in ("RelPosMHAXL", "RoPEMHA",
                                                                         "hypermixing")
                and getattr(transformer, "positional_encoding_type", None) == "fixed_abs_sine")
    blocks = _blocks(_child(m, _join(enc_path, "layers")), _join(path, enc_path, "layers"))
    front = f"{cnn_name} output" + (" through custom_src_module" if transformer is not None else "")
    return LayerPlan(
        architecture=f"speechbrain.BEST-RQ[{type(_child(m, enc_path)).__name__}]",
        root=m,
        root_path=path,
        blocks=blocks,
        block_stage=[0] * len(blocks),
        stages=[()],
        time_first=False,
        read_mask=_speechbrain_block_mask,
        read_input_lengths=_speechbrain_input_lengths,
        conv_stack=None,  # 'same'-padded 2-D convolutions over filterbank frames
        hop=hop * _sb_cnn_time_stride(cnn),
        sample_rate=sample_rate,
        layerdrop=_max_layerdrop(m.modules()),
        numbering=_sb_numbering(enc_path, absolute, front),
    )


def _is_sb_w2v_wrapper(m: nn.Module | None) -> bool:
    return (_is_speechbrain(m) and type(m).__name__ == "EncoderWrapper"
            and _child(m, "input_projector") is not None
            and _sb_encoder_path(_child(m, "latent_encoder")) == "")


def _match_sb_wav2vec2(m: nn.Module) -> bool:
    if _is_sb_w2v_wrapper(m):
        return True
    wrappers = [n for n, c in m.named_children() if _is_sb_w2v_wrapper(c)]
    return len(wrappers) == 1 and len(_sb_children(m, "W2VLatentExtractor")) == 1


def _build_sb_wav2vec2(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    if _is_sb_w2v_wrapper(m):
        holder, extractor = "", None
    else:
        holder = next(n for n, c in m.named_children() if _is_sb_w2v_wrapper(c))
        extractor = _sb_children(m, "W2VLatentExtractor")[0][1]
    enc_path = _join(holder, "latent_encoder")
    conv_stack, hop = conv_frontend(extractor)
    blocks = _blocks(_child(m, _join(enc_path, "layers")), _join(path, enc_path, "layers"))
    return LayerPlan(
        architecture="speechbrain.wav2vec2",
        root=m,
        root_path=path,
        blocks=blocks,
        block_stage=[0] * len(blocks),
        stages=[()],
        time_first=False,
        read_mask=_speechbrain_block_mask,
        read_input_lengths=_speechbrain_input_lengths if extractor is not None else None,
        conv_stack=conv_stack,
        hop=hop,
        sample_rate=sample_rate,
        layerdrop=_max_layerdrop(m.modules()),
        numbering=_sb_numbering(enc_path, True, "input_projector output"),
    )


def _match_sb_encoder(m: nn.Module) -> bool:
    return _sb_encoder_path(m) is not None


def _build_sb_encoder(m: nn.Module, path: str, sample_rate: int) -> LayerPlan:
    enc_rel = _sb_encoder_path(m) or ""
    blocks = _blocks(_child(m, _join(enc_rel, "layers")), _join(path, enc_rel, "layers"))
    return LayerPlan(
        architecture=f"speechbrain.{type(m).__name__}",
        root=m,
        root_path=path,
        blocks=blocks,
        block_stage=[0] * len(blocks),
        stages=[()],
        time_first=False,
        read_mask=_speechbrain_block_mask,
        read_input_lengths=None,
        conv_stack=None,
        hop=None,
        sample_rate=sample_rate,
        layerdrop=_max_layerdrop(m.modules()),
        numbering=_sb_numbering(enc_rel or type(m).__name__, False, "the encoder's input"),
    )


SPECS = (
    *SPECS,
    ArchitectureSpec("speechbrain-wav2vec2", _match_sb_wav2vec2, _build_sb_wav2vec2),
    ArchitectureSpec("speechbrain-bestrq", _match_sb_bestrq, _build_sb_bestrq),
    ArchitectureSpec("speechbrain-encoder", _match_sb_encoder, _build_sb_encoder),
)
