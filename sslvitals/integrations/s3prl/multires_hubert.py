"""MR-HuBERT (multi-resolution HuBERT) from a fairseq checkpoint, through s3prl's port.

The fairseq release on the package index has no ``multires_hubert`` model; s3prl ships a
port (``s3prl.upstream.multires_hubert.hubert_model``) with fairseq's module names, so the
fairseq state dict loads into it unchanged. The label dictionaries are only needed for
their sizes, which the ``label_embs_concat.<i>`` weights give.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["load_multires_hubert_state", "build_multires_hubert"]

logger = logging.getLogger(__name__)


def _as_dict(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(section):
            return dict(OmegaConf.to_container(section, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf comes with s3prl/fairseq
        pass
    if isinstance(section, Mapping):
        return dict(section)
    return dict(vars(section))


def _dataclass_from(dc: type, values: Mapping[str, Any]) -> Any:
    names = set(dc.__dataclass_fields__)
    unknown = sorted(set(values) - names - {"_name"})
    if unknown:
        logger.debug("ignoring config keys unknown to s3prl's %s: %s", dc.__name__, unknown)
    return dc(**{k: v for k, v in values.items() if k in names})


def build_multires_hubert(model_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any],
                          num_classes: list[int]) -> torch.nn.Module:
    """Build an (untrained) s3prl ``MultiresHubertModel``.

    Args:
        model_cfg: fairseq ``cfg.model`` as a mapping.
        task_cfg: fairseq ``cfg.task`` as a mapping.
        num_classes: Dictionary size of each prediction head.

    Returns:
        The model.
    """
    from s3prl.upstream.multires_hubert.hubert_model import (
        MultiresHubertConfig,
        MultiresHubertModel,
        MultiresHubertPretrainingConfig,
    )

    mcfg = _dataclass_from(MultiresHubertConfig, model_cfg)
    tcfg = _dataclass_from(MultiresHubertPretrainingConfig, task_cfg)
    dictionaries = [[str(i) for i in range(n)] for n in num_classes]
    return MultiresHubertModel(mcfg, tcfg, dictionaries)


def load_multires_hubert_state(state: Mapping[str, Any]) -> torch.nn.Module:
    """Build s3prl's MR-HuBERT from a fairseq checkpoint dict and load its weights.

    Args:
        state: The dict read from the ``.pt`` file (``cfg`` with ``model`` and ``task``;
            ``model`` state dict).

    Returns:
        The model in eval mode.

    Raises:
        SSLVitalsError: if the config lacks sections or the weights do not fit.
    """
    cfg = state.get("cfg")
    if cfg is None:
        raise SSLVitalsError("MR-HuBERT checkpoint without a 'cfg' entry (old argparse format)")
    cfg = _as_dict(cfg)
    model_cfg, task_cfg = _as_dict(cfg.get("model")), _as_dict(cfg.get("task"))
    if not model_cfg or not task_cfg:
        raise SSLVitalsError("MR-HuBERT checkpoint config lacks its 'model' or 'task' section")
    weights = state["model"]
    heads = sorted(
        int(k.split(".")[1]) for k in weights if k.startswith("label_embs_concat.")
    )
    num_classes = [int(weights[f"label_embs_concat.{i}"].shape[0]) for i in heads]
    if not num_classes:
        raise SSLVitalsError("MR-HuBERT checkpoint has no label_embs_concat.<i> weights")
    model = build_multires_hubert(model_cfg, task_cfg, num_classes)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SSLVitalsError(
            f"MR-HuBERT weights do not fit s3prl's port: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    return model.eval()
