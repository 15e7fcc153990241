"""Load ESPnet HuBERT / SSL models from an experiment directory for offline scoring.

An ESPnet experiment directory holds ``config.yaml`` and model files: ``<N>epoch.pth``
(weights after epoch N), ``valid.<criterion>.best.pth`` links, and ``checkpoint.pth`` (the
resumable state: ``model``, ``reporter`` with the epoch, optimisers). The model is built by
the task's own ``build_model_from_file``; the step reported is the epoch.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from sslvitals.batching import passes_padding
from sslvitals.errors import SSLVitalsError

__all__ = ["load_espnet_checkpoint", "espnet_epoch", "espnet_forward"]

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"^(\d+)epoch\.pth$")


def espnet_epoch(model_file: str) -> int | None:
    """Epoch of an ESPnet model file: from ``<N>epoch.pth`` (links followed) or ``checkpoint.pth``."""
    p = Path(model_file)
    for cand in (p, p.resolve()):
        m = _EPOCH.match(cand.name)
        if m:
            return int(m.group(1))
    if p.name == "checkpoint.pth":
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001
            return None
        reporter = state.get("reporter") if isinstance(state, dict) else None
        if isinstance(reporter, dict) and reporter.get("epoch") is not None:
            return int(reporter["epoch"])
    return None


def _task_for(config: dict[str, Any]) -> Any:
    """Pick the ESPnet task class that wrote ``config``."""
    if "hubert" in str(config.get("encoder", "")).lower():
        from espnet2.tasks.hubert import HubertTask

        return HubertTask
    from espnet2.tasks.ssl import SSLTask

    return SSLTask


@passes_padding
def espnet_forward(model: torch.nn.Module, batch: Any) -> Any:
    """The forward function the training-time trainer uses, so offline and online numbers agree."""
    from sslvitals.integrations.espnet.forward import espnet_forward as _training_forward

    return _training_forward(model, batch)


def load_espnet_checkpoint(model_file: str, *, config: str | None = None,
                           device: torch.device | str = "cpu") -> Any:
    """Build an ESPnet model from ``config.yaml`` and load one model file.

    Args:
        model_file: ``<N>epoch.pth``, ``valid.*.best.pth`` or ``checkpoint.pth``.
        config: The experiment's ``config.yaml`` (default: beside the model file).
        device: Where to put the model.

    Returns:
        :class:`~sslvitals.offline.loaders.LoadedModel` with ``step`` = epoch.

    Raises:
        SSLVitalsError: if the config is missing or the weights do not fit the model.
    """
    import yaml

    from sslvitals.loaded import LoadedModel

    cfg_path = Path(config) if config else Path(model_file).parent / "config.yaml"
    if not cfg_path.is_file():
        raise SSLVitalsError(f"no config.yaml for {model_file} (looked at {cfg_path})")
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    task = _task_for(cfg)
    weights_file = model_file
    tmp = None
    if Path(model_file).name == "checkpoint.pth":
        state = torch.load(model_file, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "model" not in state:
            raise SSLVitalsError(f"{model_file} has no 'model' entry")
        import tempfile

        fd, tmp = tempfile.mkstemp(suffix=".pth")
        os.close(fd)
        torch.save(state["model"], tmp)
        weights_file = tmp
    try:
        model, _args = task.build_model_from_file(str(cfg_path), None, "cpu")
        state_dict = torch.load(weights_file, map_location="cpu", weights_only=False)
        if isinstance(state_dict, dict) and "module" in state_dict:
            state_dict = state_dict["module"]
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing:
            raise SSLVitalsError(
                f"{len(missing)} weights of the model built from {cfg_path} are absent from "
                f"{model_file} (e.g. {missing[:3]}); the model file does not belong to this config"
            )
        if unexpected:
            logger.warning("%s: ignoring %d unexpected weights (e.g. %s)", model_file,
                           len(unexpected), unexpected[:3])
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    kind = "hubert" if "hubert" in str(cfg.get("encoder", "")) else str(cfg.get("encoder", "ssl"))
    return LoadedModel(model.to(device).eval(), espnet_forward, "espnet", kind,
                       espnet_epoch(model_file), None,
                       info={"path": model_file, "config": str(cfg_path)})
