"""Load a transformers HuBERT / wav2vec 2.0 / WavLM directory for offline scoring.

The directory is what ``save_pretrained`` writes (``config.json`` plus weights); it is read
from local files only, nothing is downloaded. The step comes from ``trainer_state.json``
(``global_step``) when a Trainer wrote one, else from a ``checkpoint-N`` folder name.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from sslvitals.batching import passes_padding
from sslvitals.errors import SSLVitalsError

__all__ = ["load_transformers_model", "transformers_forward"]

logger = logging.getLogger(__name__)


@passes_padding
def transformers_forward(model: torch.nn.Module, batch: Any, *, normalize: bool = False) -> Any:
    """Run a transformers speech model on a probe batch (hidden states captured by hooks).

    The attention mask is always passed. Models with group-norm feature extractors
    (``feat_extract_norm="group"``, the Base checkpoints) never see zero padding: the monitor's
    batching rule (:mod:`sslvitals.batching`) gives them one utterance per call, so their mask
    is all ones and changes nothing; ``feat_extract_norm="layer"`` models get padded batches
    and need it.

    Args:
        model: The model.
        batch: Probe batch (``wav (B, T)``, ``lengths (B,)``).
        normalize: Zero-mean unit-variance per utterance (``do_normalize`` of the
            directory's ``preprocessor_config.json``).
    """
    device = next(model.parameters()).device
    wav = batch.wav.to(device)
    lengths = batch.lengths.to(device)
    if normalize:
        from sslvitals.loaded import normalise_waveforms

        wav = normalise_waveforms(wav, lengths)
    mask = (torch.arange(wav.shape[1], device=device)[None, :] < lengths[:, None]).long()
    return model(input_values=wav, attention_mask=mask)


def load_transformers_model(path: str, *, device: torch.device | str = "cpu") -> Any:
    """Load ``AutoModel.from_pretrained(path)`` from local files.

    Raises:
        SSLVitalsError: if the directory is not a transformers model.
    """
    from transformers import AutoModel

    from sslvitals.loaded import LoadedModel

    p = Path(path)
    if not (p / "config.json").is_file():
        raise SSLVitalsError(f"{path} has no config.json (not a save_pretrained directory)")
    model = AutoModel.from_pretrained(str(p), local_files_only=True)
    step = None
    for cand in (p / "trainer_state.json",):
        if cand.is_file():
            try:
                step = int(json.loads(cand.read_text())["global_step"])
            except (KeyError, ValueError, TypeError):
                step = None
    normalize = False
    pre = p / "preprocessor_config.json"
    if pre.is_file():
        try:
            normalize = bool(json.loads(pre.read_text()).get("do_normalize", False))
        except ValueError:
            logger.warning("%s is not valid JSON; not normalising the input", pre)
    kind = str(getattr(model.config, "model_type", type(model).__name__))

    @passes_padding
    def forward(m: torch.nn.Module, batch: Any) -> Any:
        return transformers_forward(m, batch, normalize=normalize)

    return LoadedModel(model.to(device).eval(), forward, "transformers", kind, step,
                       None, info={"path": path})
