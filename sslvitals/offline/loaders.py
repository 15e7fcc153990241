"""Find, classify and load saved checkpoints for ``sslvitals score``.

The toolkit-specific loading lives in ``sslvitals.integrations.<toolkit>.checkpoint`` (and
``sslvitals.integrations.transformers`` / ``sslvitals.integrations.s3prl``) and is imported
only when a checkpoint of that kind is met, so this module never imports fairseq, ESPnet or
hydra itself.

Kinds:

* ``fairseq``: a ``.pt`` file saved by fairseq (keys ``model`` and ``cfg`` or ``args``);
  HuBERT and wav2vec 2.0 load through fairseq, MR-HuBERT through s3prl's port when the
  installed fairseq has no ``multires_hubert`` model.
* ``espnet``: a ``.pth`` model file with a ``config.yaml`` beside it, or an experiment
  directory (``config.yaml`` + ``<N>epoch.pth`` files: one entry per epoch).
* ``transformers``: a directory with ``config.json`` (``save_pretrained`` output), loaded
  from local files only.
* ``speechbrain``: a ``CKPT+*`` folder (``CKPT.yaml`` inside) written by a SpeechBrain
  ``Checkpointer``, with the recipe's ``hyperparams.yaml`` in the experiment folder above it;
  the recipe's ``save`` folder, or its output folder, stands for every ``CKPT+*`` in it.

``LoadedModel`` (what every loader returns) lives in :mod:`sslvitals.loaded` and is
re-exported here.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from sslvitals.errors import SSLVitalsError
from sslvitals.loaded import ForwardFn, LoadedModel, normalise_waveforms

__all__ = [
    "LoadedModel",
    "ForwardFn",
    "CheckpointSpec",
    "expand_checkpoints",
    "detect_kind",
    "load_checkpoint",
    "normalise_waveforms",
    "default_run_name",
]

logger = logging.getLogger(__name__)

_FAIRSEQ_SKIP = ("checkpoint_last.pt", "checkpoint_best.pt")
_ESPNET_EPOCH = re.compile(r"^(\d+)epoch\.pth$")
_HF_STEP = re.compile(r"^checkpoint-(\d+)$")
_FAIRSEQ_STEP = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


@dataclass(frozen=True)
class CheckpointSpec:
    """One thing to score: a file or a directory, and how to read it.

    Attributes:
        path: The checkpoint as named in the output (normalised, not resolved).
        kind: ``"fairseq"``, ``"espnet"``, ``"transformers"`` or ``"speechbrain"``.
        config: ESPnet ``config.yaml`` (ESPnet only).
    """

    path: str
    kind: str
    config: str | None = None


def _espnet_entries(directory: Path, config: Path) -> list[CheckpointSpec]:
    epochs = sorted(
        (int(m.group(1)), f)
        for f in directory.iterdir()
        if (m := _ESPNET_EPOCH.match(f.name)) and f.is_file()
    )
    if epochs:
        return [CheckpointSpec(os.path.normpath(str(f)), "espnet", str(config)) for _, f in epochs]
    others = sorted(
        f for f in directory.glob("*.pth") if f.is_file() and f.name != "checkpoint.pth"
    )
    if not others and (directory / "checkpoint.pth").is_file():
        others = [directory / "checkpoint.pth"]
    if not others:
        raise SSLVitalsError(
            f"ESPnet directory {directory} has config.yaml but no model file (<N>epoch.pth, "
            "valid.*.best.pth or checkpoint.pth)"
        )
    # Best-model links point at epoch files: keep one entry per real file.
    seen: dict[str, Path] = {}
    for f in others:
        seen.setdefault(str(f.resolve()), f)
    return [CheckpointSpec(os.path.normpath(str(f)), "espnet", str(config)) for f in seen.values()]


def detect_kind(path: str | os.PathLike[str]) -> CheckpointSpec:
    """Classify one checkpoint file or model directory.

    Raises:
        SSLVitalsError: if the path is missing or of no known kind.
    """
    p = Path(path)
    name = os.path.normpath(str(path))
    if not p.exists():
        raise SSLVitalsError(f"checkpoint {path} does not exist")
    if p.is_dir():
        if (p / "config.json").is_file():
            return CheckpointSpec(name, "transformers")
        if _is_speechbrain_ckpt(p):
            return CheckpointSpec(name, "speechbrain")
        if (p / "config.yaml").is_file():
            raise SSLVitalsError(f"{path} is an ESPnet directory; expand it with expand_checkpoints")
        raise SSLVitalsError(f"{path} is a directory without config.json, config.yaml or "
                             "CKPT.yaml (a SpeechBrain CKPT+* folder)")
    if p.suffix == ".pth":
        for cand in (p.parent / "config.yaml", p.parent.parent / "config.yaml"):
            if cand.is_file():
                return CheckpointSpec(name, "espnet", str(cand))
        raise SSLVitalsError(
            f"{path} looks like an ESPnet model file but no config.yaml is beside it; ESPnet "
            "checkpoints need the experiment's config.yaml in the same directory"
        )
    if p.suffix == ".pt":
        return CheckpointSpec(name, "fairseq")
    raise SSLVitalsError(
        f"cannot tell what kind of checkpoint {path} is: expected a fairseq .pt file, an ESPnet "
        ".pth file / experiment directory (config.yaml), a transformers model directory "
        "(config.json) or a SpeechBrain CKPT+* folder (CKPT.yaml)"
    )


def expand_checkpoints(paths: Sequence[str | os.PathLike[str]]) -> list[CheckpointSpec]:
    """Expand files and directories into checkpoint specs (duplicates removed, order kept;
    the same file named by two paths counts once).

    A directory is one transformers model (``config.json``), an ESPnet experiment
    (``config.yaml``: every ``<N>epoch.pth``), or a folder of checkpoints: its fairseq
    ``*.pt`` files (``checkpoint_last.pt`` / ``checkpoint_best.pt`` skipped: they copy a
    numbered one; name them explicitly to score them; a folder without numbered ones gives its
    ``checkpoint_last.pt``, with a warning), transformers ``checkpoint-N``
    sub-directories and ESPnet sub-directories. A SpeechBrain ``CKPT+*`` folder is one
    checkpoint; a SpeechBrain ``save`` folder, or the output folder above it, gives every
    ``CKPT+*`` in it (in name order, which is time order); sub-directories holding either are
    expanded the same way.

    Raises:
        SSLVitalsError: when a path does not exist or a folder holds no checkpoint.
    """
    specs: list[CheckpointSpec] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise SSLVitalsError(f"checkpoint {raw} does not exist")
        if p.is_dir() and (p / "config.json").is_file():
            specs.append(CheckpointSpec(os.path.normpath(str(raw)), "transformers"))
        elif p.is_dir() and _is_speechbrain_ckpt(p):
            specs.append(CheckpointSpec(os.path.normpath(str(raw)), "speechbrain"))
        elif p.is_dir() and _speechbrain_ckpts(p):
            specs.extend(_speechbrain_ckpts(p))
        elif p.is_dir() and (p / "config.yaml").is_file():
            specs.extend(_espnet_entries(p, p / "config.yaml"))
        elif p.is_dir():
            found: list[CheckpointSpec] = []
            skipped = []
            for child in sorted(p.iterdir(), key=_natural_key):
                if child.is_file() and child.suffix == ".pt":
                    if child.name in _FAIRSEQ_SKIP:
                        skipped.append(child.name)
                        continue
                    found.append(CheckpointSpec(os.path.normpath(str(child)), "fairseq"))
                elif child.is_dir() and (child / "config.json").is_file():
                    found.append(CheckpointSpec(os.path.normpath(str(child)), "transformers"))
                elif child.is_dir() and (child / "config.yaml").is_file():
                    found.extend(_espnet_entries(child, child / "config.yaml"))
                elif child.is_dir() and _speechbrain_ckpts(child):
                    found.extend(_speechbrain_ckpts(child))
            if skipped and not found:
                # a save dir with no numbered checkpoint (e.g. --save-interval-updates unset):
                # the newest model is checkpoint_last.pt
                chosen = "checkpoint_last.pt" if "checkpoint_last.pt" in skipped else skipped[0]
                logger.warning("%s holds no numbered checkpoint (checkpoint_<epoch>_<update>.pt), "
                               "only %s: scoring %s; name the others explicitly to score them",
                               p, " and ".join(skipped), chosen)
                found.append(CheckpointSpec(os.path.normpath(str(p / chosen)), "fairseq"))
            elif skipped:
                logger.info("%s: skipping %s (copies of numbered checkpoints)", p, ", ".join(skipped))
            if not found:
                raise SSLVitalsError(
                    f"folder {raw} holds no checkpoint (.pt files, model directories with "
                    "config.json, ESPnet directories with config.yaml, SpeechBrain CKPT+* "
                    "folders)"
                )
            specs.extend(found)
        else:
            specs.append(detect_kind(p))
    unique: dict[str, CheckpointSpec] = {}
    for s in specs:
        key = os.path.realpath(s.path)  # the same file by another path is the same checkpoint
        if key in unique:
            logger.warning("checkpoint %s given twice (as %s); scoring it once", s.path,
                           unique[key].path)
            continue
        unique[key] = s
    return list(unique.values())


def _is_speechbrain_ckpt(p: Path) -> bool:
    """A SpeechBrain checkpoint folder: ``CKPT+<name>`` holding ``CKPT.yaml``."""
    return p.name.startswith("CKPT+") and (p / "CKPT.yaml").is_file()


def _speechbrain_ckpts(p: Path) -> list[CheckpointSpec]:
    """The ``CKPT+*`` folders of a SpeechBrain ``save`` folder (or of ``<p>/save``), by name."""
    for folder in (p, p / "save"):
        if not folder.is_dir():
            continue
        found = [c for c in sorted(folder.iterdir(), key=_natural_key)
                 if c.is_dir() and _is_speechbrain_ckpt(c)]
        if found:
            return [CheckpointSpec(os.path.normpath(str(c)), "speechbrain") for c in found]
    return []


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def default_run_name(spec: CheckpointSpec) -> str:
    """The run a checkpoint belongs to: its folder's name (``checkpoint-N`` folders: the parent)."""
    p = Path(spec.path)
    if spec.kind == "transformers":
        return p.parent.name if _HF_STEP.match(p.name) else p.name
    if spec.kind == "speechbrain":  # <output_folder>/save/CKPT+...: the output folder
        return (p.parent.parent.name if p.parent.name == "save" else p.parent.name) or "."
    return p.parent.name or "."


def step_from_name(path: str) -> int | None:
    """Step encoded in a checkpoint name (``checkpoint_E_U.pt``, ``<N>epoch.pth``, ``checkpoint-N``)."""
    name = Path(path).name
    for rx, group in ((_FAIRSEQ_STEP, 2), (_ESPNET_EPOCH, 1), (_HF_STEP, 1)):
        m = rx.match(name)
        if m:
            return int(m.group(group))
    return None


def load_checkpoint(spec: CheckpointSpec, device: torch.device) -> LoadedModel:
    """Load one checkpoint with the matching toolkit (imported here, lazily).

    Raises:
        SSLVitalsError: naming the checkpoint and the reason.
    """
    try:
        if spec.kind == "fairseq":
            from sslvitals.integrations.fairseq.checkpoint import load_fairseq_checkpoint

            loaded = load_fairseq_checkpoint(spec.path, device=device)
        elif spec.kind == "espnet":
            from sslvitals.integrations.espnet.checkpoint import load_espnet_checkpoint

            loaded = load_espnet_checkpoint(spec.path, config=spec.config, device=device)
        elif spec.kind == "transformers":
            from sslvitals.integrations.transformers.checkpoint import load_transformers_model

            loaded = load_transformers_model(spec.path, device=device)
        elif spec.kind == "speechbrain":
            from sslvitals.integrations.speechbrain.checkpoint import load_speechbrain_checkpoint

            loaded = load_speechbrain_checkpoint(spec.path, device=device)
        else:
            raise SSLVitalsError(f"unknown checkpoint kind {spec.kind!r}")
    except SSLVitalsError as exc:
        raise SSLVitalsError(f"cannot load {spec.kind} checkpoint {spec.path}: {exc}") from exc
    except ImportError as exc:
        raise SSLVitalsError(
            f"cannot load {spec.kind} checkpoint {spec.path}: {exc}; install the toolkit "
            f"(pip install 'sslvitals[{spec.kind}]' or make install)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - toolkits raise anything; report and go on
        raise SSLVitalsError(
            f"cannot load {spec.kind} checkpoint {spec.path}: {type(exc).__name__}: {exc}"
        ) from exc
    if loaded.step is None:
        loaded.step = step_from_name(spec.path)
    loaded.model.eval()
    return loaded
