"""Helpers shared by the layer-capture tests: padded batches, tiny conv stacks, hook checks."""
from __future__ import annotations

import torch
from torch import nn

#: A 7-layer conv front-end with the HuBERT kernels / strides but 32 channels (fast).
TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
TINY_CONV_STR = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
#: Utterance lengths (samples at 16 kHz): 0.5 s, 1.2 s, 0.77 s.
LENGTHS = (8000, 19200, 12345)
TOL = 1e-6


def padded_batch(lengths=LENGTHS, seed: int = 0):
    """Random waveforms ``(B, S)`` zero-padded to the longest, the fairseq padding mask
    ``(B, S)`` (True at padding) and the lengths ``(B,)``."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths, dtype=torch.int64)
    s = int(lens.max())
    wav = torch.randn(len(lengths), s, generator=g)
    pad = torch.arange(s)[None, :] >= lens[:, None]
    wav[pad] = 0.0
    return wav, pad, lens


def hook_snapshot(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every forward (pre-)hook registered on any module: ``(path, dict name, handle id)``."""
    out = set()
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                     "_forward_pre_hooks_with_kwargs"):
            for key in getattr(m, attr, {}):
                out.add((name or "<root>", attr, key))
    return out


def hooks_left(model: nn.Module, before: set | None = None) -> list[tuple[str, str, int]]:
    """Hooks present now that were not in ``before`` (the model's own hooks, such as
    weight_norm's pre-hook, are in ``before``; default: taken from a fresh copy is not
    possible, so pass the snapshot taken before the tap)."""
    return sorted(hook_snapshot(model) - (before or set()))


def max_diff_valid(captured: list[torch.Tensor], reference: torch.Tensor,
                   counts, time_first: bool = False) -> float:
    """Largest |captured - reference| over the valid frames of each utterance."""
    ref = reference.transpose(0, 1) if time_first else reference
    worst = 0.0
    for b, (utt, n) in enumerate(zip(captured, counts)):
        assert utt.shape[0] == int(n), (b, utt.shape, int(n))
        worst = max(worst, float((utt - ref[b, : int(n)]).abs().max()))
    return worst

