"""Load fairseq HuBERT / wav2vec 2.0 / MR-HuBERT checkpoints for offline scoring.

``load_model_ensemble_and_task`` builds the task from the checkpoint's config. Two things get
in the way when the training data is not at hand:

* HuBERT's pretraining task builds its label dictionaries from ``<label_dir>/dict.<label>.txt``.
  fairseq 0.12 checkpoints usually carry them in ``task_state``; when they do not and the
  files are absent, dictionaries of the right size are rebuilt from the shape of the model's
  ``label_embs_concat`` (the symbols themselves are not needed to extract features).
* ``task.data`` / ``task.label_dir`` point at the training machine: they are overridden with
  a harmless existing directory (nothing is read from it).

MR-HuBERT (``multires_hubert``) is not part of the fairseq release on the package index; when
the installed fairseq has no such model, s3prl's port is used (same module tree and weights).
Files in s3prl's converted MR-HuBERT format (``task_cfg``, ``model_cfg``, ``model_weight``,
``dictionaries_symbols``, what s3prl's hub distributes) load through the port as well.

Checkpoints are read with torch's safe unpickler (``weights_only``), never with it switched
off: the classes fairseq checkpoints hold (``Dictionary``, ``argparse.Namespace``, OmegaConf
containers, numpy scalars) are allow-listed by :mod:`~sslvitals.integrations.fairseq.safe_load`,
and a file holding anything else is refused with the class named.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from typing import Any

import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["load_fairseq_checkpoint", "read_fairseq_state", "fairseq_step", "fairseq_forward"]

logger = logging.getLogger(__name__)


def read_fairseq_state(path: str) -> dict[str, Any]:
    """Read a fairseq checkpoint dict on CPU.

    The file is read with torch's safe unpickler and the allow-list of
    :mod:`sslvitals.integrations.fairseq.safe_load` (fairseq ``Dictionary``,
    ``argparse.Namespace``, OmegaConf containers, numpy scalars), the classes fairseq
    checkpoints hold; nothing else is unpickled.

    Raises:
        SSLVitalsError: if the file is not a fairseq checkpoint, or holds a class outside the
            allow-list (named in the message).
    """
    from sslvitals.integrations.fairseq.safe_load import load_fairseq_file

    try:
        state = load_fairseq_file(path)
    except SSLVitalsError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises several types for bad files
        raise SSLVitalsError(f"not a readable torch file ({type(exc).__name__}: {exc})") from exc
    from sslvitals.integrations.s3prl.multires_hubert import is_s3prl_converted

    if is_s3prl_converted(state):
        return state  # s3prl's converted MR-HuBERT format, read by load_fairseq_checkpoint
    if not isinstance(state, dict) or "model" not in state:
        raise SSLVitalsError(
            "not a fairseq checkpoint (no 'model' entry) nor an s3prl-converted MR-HuBERT one "
            "(task_cfg, model_cfg, model_weight, dictionaries_symbols)"
        )
    if state.get("cfg") is None and state.get("args") is None:
        raise SSLVitalsError("not a fairseq checkpoint (neither 'cfg' nor 'args' inside)")
    return state


def fairseq_step(state: dict[str, Any]) -> int | None:
    """Number of updates stored in a fairseq checkpoint, or None."""
    hist = state.get("optimizer_history") or []
    if hist and isinstance(hist[-1], dict) and hist[-1].get("num_updates") is not None:
        return int(hist[-1]["num_updates"])
    extra = state.get("extra_state") or {}
    for key in ("num_updates", "update"):
        if extra.get(key) is not None:
            return int(extra[key])
    return None


def _val_loss(state: dict[str, Any]) -> float | None:
    extra = state.get("extra_state") or {}
    v = extra.get("val_loss")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _cfg_section(state: dict[str, Any], name: str) -> Any:
    cfg = state.get("cfg")
    if cfg is not None:
        return cfg.get(name) if hasattr(cfg, "get") else getattr(cfg, name, None)
    return state.get("args")


def _get(section: Any, key: str, default: Any = None) -> Any:
    if section is None:
        return default
    if hasattr(section, "get"):
        try:
            return section.get(key, default)
        except Exception:  # noqa: BLE001 - omegaconf struct mode
            return default
    return getattr(section, key, default)


def fairseq_forward(normalize: bool) -> Any:
    """The forward function the training-time plugin uses, so offline and online numbers agree."""
    from sslvitals.integrations.fairseq.forward import make_forward_fn

    return make_forward_fn(normalize)


def _patch_hubert_dictionaries(state: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Give a HuBERT pretraining checkpoint dictionaries when neither it nor its label_dir has them."""
    from fairseq.data import Dictionary

    task = _cfg_section(state, "task")
    labels = list(_get(task, "labels", None) or ["km"])
    task_state = state.get("task_state") or {}
    if task_state.get("dictionaries") is not None:
        return
    label_dir = _get(task, "label_dir", None) or _get(task, "data", None)
    if label_dir and all(os.path.isfile(os.path.join(label_dir, f"dict.{lb}.txt")) for lb in labels):
        overrides.pop("label_dir", None)
        overrides.pop("data", None)
        return
    emb = state["model"].get("label_embs_concat")
    if emb is None:
        raise SSLVitalsError(
            "HuBERT checkpoint has no label dictionaries and no label_embs_concat; give the label "
            "directory with dict.<label>.txt files"
        )
    total = int(emb.shape[0])
    n_special = len(Dictionary())
    # All but the last label get one symbol; the last takes the remaining entries.
    sizes = [n_special + 1] * (len(labels) - 1)
    last = total - sum(sizes) - n_special
    if last < 1:
        raise SSLVitalsError(
            f"cannot rebuild {len(labels)} label dictionaries from {total} label embeddings"
        )
    dicts = []
    for n_symbols in [1] * (len(labels) - 1) + [last]:
        d = Dictionary()
        for s in range(n_symbols):
            d.add_symbol(str(s))
        dicts.append(d)
    logger.info("rebuilt %d HuBERT label dictionar%s (%d entries) from the checkpoint weights",
                len(dicts), "y" if len(dicts) == 1 else "ies", total)
    state["task_state"] = dict(task_state, dictionaries=dicts)


def load_fairseq_checkpoint(path: str, *, device: torch.device | str = "cpu") -> Any:
    """Load a fairseq pretraining checkpoint without its training data.

    Args:
        path: ``.pt`` file written by fairseq (``checkpoint_E_U.pt`` etc.).
        device: Where to put the model.

    Returns:
        :class:`~sslvitals.offline.loaders.LoadedModel` (toolkit ``"fairseq"``, or ``"s3prl"``
        for MR-HuBERT through s3prl's port).

    Raises:
        SSLVitalsError: naming the reason (not a fairseq file, unknown model, ...).
    """
    from sslvitals.loaded import LoadedModel

    state = read_fairseq_state(path)
    from sslvitals.integrations.s3prl.multires_hubert import (
        is_s3prl_converted,
        load_converted_multires_hubert,
    )

    if is_s3prl_converted(state):
        # s3prl's converted MR-HuBERT: no training state (step, loss) is kept in this format
        normalize = bool(_get(state["task_cfg"], "normalize", False))
        model = load_converted_multires_hubert(state)
        return LoadedModel(model.to(device).eval(), fairseq_forward(normalize), "s3prl",
                           "multires_hubert", None, None,
                           info={"path": path, "format": "s3prl-converted"})
    step = fairseq_step(state)
    loss = _val_loss(state)
    model_cfg = _cfg_section(state, "model")
    model_name = _get(model_cfg, "_name", None) or _get(model_cfg, "arch", None)
    task_cfg = _cfg_section(state, "task")
    normalize = bool(_get(task_cfg, "normalize", False))

    from fairseq.models import MODEL_REGISTRY

    # runs trained with the sslvitals plugin record its task names (e.g. hubert_pretraining_vitals)
    from sslvitals.integrations.fairseq.tasks import stock_task_name  # registers the wrappers

    if model_name == "multires_hubert" and model_name not in MODEL_REGISTRY:
        from sslvitals.integrations.s3prl.multires_hubert import load_multires_hubert_state

        model = load_multires_hubert_state(state)
        return LoadedModel(model.to(device).eval(), fairseq_forward(normalize), "s3prl",
                           "multires_hubert", step, loss, info={"path": path})
    if model_name not in MODEL_REGISTRY:
        raise SSLVitalsError(
            f"model {model_name!r} is not registered in this fairseq (known audio models: "
            f"{sorted(n for n in MODEL_REGISTRY if 'hubert' in n or 'wav2vec' in n)}); pass the "
            "plugin that defines it or convert the checkpoint"
        )
    from fairseq import checkpoint_utils
    from fairseq.checkpoint_utils import _upgrade_state_dict
    from fairseq.dataclass.utils import overwrite_args_by_name
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory(prefix="sslvitals_fairseq_") as scratch:
        overrides: dict[str, Any] = {"data": scratch}
        if stock_task_name(str(_get(task_cfg, "_name", ""))) in ("hubert_pretraining",
                                                                 "multires_hubert_pretraining"):
            overrides["label_dir"] = scratch
            _patch_hubert_dictionaries(state, overrides)
        if state.get("cfg") is not None:
            state["cfg"] = OmegaConf.create(state["cfg"], flags={"allow_objects": True})
            overwrite_args_by_name(state["cfg"], overrides)
        elif state.get("args") is not None:
            for k, v in overrides.items():
                setattr(state["args"], k, v)
        state = _upgrade_state_dict(state)
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
            [path], arg_overrides=overrides, state=state
        )
    model = models[0]
    name = type(model).__name__
    kind = {"HubertModel": "hubert", "Wav2Vec2Model": "wav2vec2"}.get(name, str(model_name))
    if not hasattr(model, "extract_features"):
        raise SSLVitalsError(f"{name} has no extract_features; only pretraining models are supported")
    if name not in ("HubertModel", "Wav2Vec2Model"):
        logger.warning("%s: %s is not a pretraining HuBERT/wav2vec 2.0 model; trying extract_features", path, name)
    return LoadedModel(model.to(device).eval(), fairseq_forward(normalize), "fairseq", kind, step,
                       loss, info={"path": path, "model": name})
