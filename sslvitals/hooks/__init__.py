"""Layer capture for self-supervised speech models, and frame-level label helpers.

``LayerTap(model, layers=None)`` records every transformer layer of fairseq HuBERT /
wav2vec 2.0 / MR-HuBERT, ESPnet HuBERT and SSL encoders, torchaudio wav2vec 2.0 / HuBERT and
transformers HuBERT / wav2vec 2.0 / WavLM models with forward hooks. Layer 0 is the input of
the first transformer block, layer ``i`` the output of block ``i``.

This package imports only torch and numpy: the toolkits are recognised from the module tree.
"""
from sslvitals.hooks.architectures import (
    ArchitectureSpec,
    LayerPlan,
    detect,
    find_block_containers,
)
from sslvitals.hooks.framing import (
    DEFAULT_CONV_LAYERS,
    alignments_to_frame_labels,
    conv_num_frames,
    frame_centres,
    frame_shift,
    receptive_field,
    resample_labels,
)
from sslvitals.hooks.tap import LayerTap

__all__ = [
    "LayerTap",
    "ArchitectureSpec",
    "LayerPlan",
    "detect",
    "find_block_containers",
    "DEFAULT_CONV_LAYERS",
    "conv_num_frames",
    "receptive_field",
    "frame_shift",
    "frame_centres",
    "alignments_to_frame_labels",
    "resample_labels",
]
