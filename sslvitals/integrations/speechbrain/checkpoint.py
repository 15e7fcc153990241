"""Load a SpeechBrain checkpoint (``<output_folder>/save/CKPT+*``) for offline scoring.

A SpeechBrain checkpoint is a folder with one file per recoverable (``model.ckpt``,
``normalize.ckpt``, ``counter.ckpt``, ...) and ``CKPT.yaml`` (the meta the recipe saved:
``end-of-epoch``, its valid loss, and the vitals when it ran with sslvitals). The model it
belongs to is described by the recipe's ``hyperparams.yaml``, which
``sb.create_experiment_directory`` writes into the output folder (overrides applied). The
loader instantiates those hyperparameters (with ``output_folder`` / ``save_folder`` pointed at
the folders where the checkpoint actually lies), loads every recoverable of the recipe's
``checkpointer`` from the checkpoint, and assembles the encoder as during training
(:func:`~sslvitals.integrations.speechbrain.model.model_from_modules`), so offline numbers equal
the ones measured online. The step is the epoch (the recipe's epoch counter).

Instantiating the hyperparameters runs what they declare (e.g. ``__set_seed``, loggers'
constructors); nothing of the training data is read.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["load_speechbrain_checkpoint", "find_hyperparams", "read_meta"]

logger = logging.getLogger(__name__)

_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)


def find_hyperparams(ckpt: Path) -> Path:
    """The ``hyperparams.yaml`` of a ``CKPT+*`` folder: in the output folder above ``save/``
    (or beside the checkpoint folder).

    Raises:
        SSLVitalsError: if there is none.
    """
    for cand in (ckpt.parent.parent / "hyperparams.yaml", ckpt.parent / "hyperparams.yaml",
                 ckpt / "hyperparams.yaml"):
        if cand.is_file():
            return cand
    raise SSLVitalsError(
        f"no hyperparams.yaml found for {ckpt}: SpeechBrain writes it into the recipe's output "
        "folder (sb.create_experiment_directory); keep the CKPT+* folder under "
        "<output_folder>/save/ or copy hyperparams.yaml beside it")


def read_meta(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's ``CKPT.yaml`` meta (``{}`` when unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((ckpt / "CKPT.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def _overrides(text: str, ckpt: Path) -> dict[str, str]:
    """Point the output and save folders at where the files are now (only keys the file has)."""
    keys = set(_TOP_KEY.findall(text))
    out: dict[str, str] = {}
    if "output_folder" in keys:
        out["output_folder"] = str(ckpt.parent.parent if ckpt.parent.name == "save" else ckpt.parent)
    if "save_folder" in keys:
        out["save_folder"] = str(ckpt.parent)
    return out


def load_speechbrain_checkpoint(path: str, *, device: torch.device | str = "cpu") -> Any:
    """Load one ``CKPT+*`` folder with its recipe's hyperparameters.

    Args:
        path: The checkpoint folder.
        device: Where to put the model.

    Returns:
        A :class:`~sslvitals.loaded.LoadedModel` (toolkit ``"speechbrain"``, kind ``"bestrq"``
        or ``"wav2vec2"``, step = epoch, loss = the meta's valid loss when saved).

    Raises:
        SSLVitalsError: when the folder, its hyperparameters or its model cannot be read.
    """
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.utils.checkpoints import Checkpointer

    from sslvitals.integrations.speechbrain.model import model_from_modules, speechbrain_forward
    from sslvitals.loaded import LoadedModel

    ckpt = Path(path)
    if not (ckpt / "CKPT.yaml").is_file():
        raise SSLVitalsError(f"{path} is not a SpeechBrain checkpoint folder (no CKPT.yaml)")
    hp_file = find_hyperparams(ckpt)
    text = hp_file.read_text(encoding="utf-8")
    with open(hp_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, _overrides(text, ckpt))
    source = hparams.get("checkpointer")
    if not isinstance(source, Checkpointer):
        raise SSLVitalsError(f"{hp_file} defines no 'checkpointer' (a speechbrain Checkpointer), "
                             "so the checkpoint's files cannot be matched to modules")
    modules = hparams.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise SSLVitalsError(f"{hp_file} defines no 'modules:' mapping")
    loader = Checkpointer(ckpt.parent, recoverables=dict(source.recoverables))
    target = ckpt.resolve()
    found = loader.find_checkpoint(ckpt_predicate=lambda c: Path(c.path).resolve() == target)
    if found is None:
        raise SSLVitalsError(f"SpeechBrain does not list {ckpt} among the checkpoints of "
                             f"{ckpt.parent}")
    loader.load_checkpoint(found)
    model, kind = model_from_modules(modules, hparams)
    epoch = None
    for obj in source.recoverables.values():
        if type(obj).__name__ == "EpochCounter" and isinstance(getattr(obj, "current", None), int):
            epoch = int(obj.current)
    meta = read_meta(ckpt)
    loss = None
    for key in ("valid_loss", "loss"):
        value = meta.get(key)
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            loss = float(value)
            break
    vitals = {k: v for k, v in meta.items() if str(k).startswith("vitals/")}
    return LoadedModel(model.to(device).eval(), speechbrain_forward, "speechbrain", kind, epoch,
                       loss, info={"path": str(ckpt), "hyperparams": str(hp_file),
                                   "meta_vitals": vitals})
