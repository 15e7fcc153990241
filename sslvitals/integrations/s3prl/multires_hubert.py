"""MR-HuBERT (multi-resolution HuBERT) from a fairseq checkpoint, through s3prl's port.

The fairseq release on the package index has no ``multires_hubert`` model; s3prl ships a
port (``s3prl.upstream.multires_hubert.hubert_model``) with fairseq's module names, so the
fairseq state dict loads into it unchanged. The label dictionaries are only needed for
their sizes, which the ``label_embs_concat.<i>`` weights give.

Two on-disk formats are read: fairseq's (``cfg`` with ``model`` and ``task``, weights under
``model``) and the one s3prl converts fairseq checkpoints to and distributes (``task_cfg``,
``model_cfg``, ``model_weight``, ``dictionaries_symbols``; see :data:`S3PRL_CONVERTED_KEYS`).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from sslvitals.errors import SSLVitalsError

__all__ = [
    "S3PRL_CONVERTED_KEYS",
    "is_s3prl_converted",
    "load_multires_hubert_state",
    "load_converted_multires_hubert",
    "build_multires_hubert",
]

#: The entries of a checkpoint in s3prl's converted MR-HuBERT format.
S3PRL_CONVERTED_KEYS: tuple[str, ...] = ("task_cfg", "model_cfg", "model_weight",
                                         "dictionaries_symbols")

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


def is_s3prl_converted(state: Any) -> bool:
    """True when ``state`` (a loaded checkpoint) is in s3prl's converted format: a dict with
    every key of :data:`S3PRL_CONVERTED_KEYS` and no fairseq ``model`` entry."""
    return (isinstance(state, Mapping) and "model" not in state
            and all(k in state for k in S3PRL_CONVERTED_KEYS))


def _num_classes(weights: Mapping[str, Any]) -> list[int]:
    heads = sorted(
        int(k.split(".")[1]) for k in weights if k.startswith("label_embs_concat.")
    )
    return [int(weights[f"label_embs_concat.{i}"].shape[0]) for i in heads]


def _load_weights(model: torch.nn.Module, weights: Mapping[str, Any]) -> torch.nn.Module:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SSLVitalsError(
            f"MR-HuBERT weights do not fit s3prl's port: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}"
        )
    return model.eval()


def load_converted_multires_hubert(state: Mapping[str, Any]) -> torch.nn.Module:
    """Build s3prl's MR-HuBERT from a checkpoint in s3prl's converted format.

    Args:
        state: The dict read from the file: ``task_cfg`` and ``model_cfg`` (fairseq's
            ``cfg.task`` / ``cfg.model``), ``model_weight`` (state dict) and
            ``dictionaries_symbols`` (one symbol list per label set).

    Returns:
        The model in eval mode.

    Raises:
        SSLVitalsError: if an entry is missing or malformed, or the weights do not fit.
    """
    missing = [k for k in S3PRL_CONVERTED_KEYS if k not in state]
    if missing:
        raise SSLVitalsError(
            f"s3prl MR-HuBERT checkpoint lacks {missing}; a converted checkpoint holds "
            f"{list(S3PRL_CONVERTED_KEYS)}"
        )
    model_cfg, task_cfg = _as_dict(state["model_cfg"]), _as_dict(state["task_cfg"])
    weights = state["model_weight"]
    if not isinstance(weights, Mapping):
        raise SSLVitalsError("s3prl MR-HuBERT checkpoint: 'model_weight' is not a state dict")
    symbols = state["dictionaries_symbols"]
    sizes = [len(d) for d in symbols] if isinstance(symbols, (list, tuple)) else []
    from_weights = _num_classes(weights)
    num_classes = from_weights or sizes
    if not num_classes:
        raise SSLVitalsError(
            "s3prl MR-HuBERT checkpoint: neither 'dictionaries_symbols' nor "
            "label_embs_concat.<i> weights give the label set sizes"
        )
    return _load_weights(build_multires_hubert(model_cfg, task_cfg, num_classes), weights)


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
    num_classes = _num_classes(weights)
    if not num_classes:
        raise SSLVitalsError("MR-HuBERT checkpoint has no label_embs_concat.<i> weights")
    return _load_weights(build_multires_hubert(model_cfg, task_cfg, num_classes), weights)
