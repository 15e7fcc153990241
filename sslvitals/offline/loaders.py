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
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sslvitals.errors import SSLVitalsError

__all__ = [
    "LoadedModel",
    "CheckpointSpec",
    "expand_checkpoints",
    "detect_kind",
    "load_checkpoint",
    "normalise_waveforms",
    "default_run_name",
]

logger = logging.getLogger(__name__)

ForwardFn = Callable[[torch.nn.Module, Any], Any]

_FAIRSEQ_SKIP = ("checkpoint_last.pt", "checkpoint_best.pt")
_ESPNET_EPOCH = re.compile(r"^(\d+)epoch\.pth$")
_HF_STEP = re.compile(r"^checkpoint-(\d+)$")
_FAIRSEQ_STEP = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")


@dataclass
class LoadedModel:
    """A model ready to be measured.

    Attributes:
        model: The module (eval mode, on the requested device).
        forward_fn: ``forward_fn(model, batch)`` runs one forward pass on a
            :class:`~sslvitals.probe.ProbeBatch` (no masking, no dropout).
        toolkit: ``"fairseq"``, ``"espnet"``, ``"transformers"`` or ``"s3prl"``.
        kind: Model family, e.g. ``"hubert"``, ``"wav2vec2"``, ``"multires_hubert"``.
        step: Number of updates (fairseq, transformers) or epoch (ESPnet), or None.
        loss: Validation loss stored in the checkpoint, or None.
        tap_layers: Optional ``LayerTap`` layers override (None: LayerTap finds them).
        info: Free-form details for logs.

    How the probe is cut into forward passes is not the loader's business: the monitor
    applies :mod:`sslvitals.batching` to every model.
    """

    model: torch.nn.Module
    forward_fn: ForwardFn
    toolkit: str
    kind: str
    step: int | None = None
    loss: float | None = None
    tap_layers: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSpec:
    """One thing to score: a file or a directory, and how to read it.

    Attributes:
        path: The checkpoint as named in the output (normalised, not resolved).
        kind: ``"fairseq"``, ``"espnet"`` or ``"transformers"``.
        config: ESPnet ``config.yaml`` (ESPnet only).
    """

    path: str
    kind: str
    config: str | None = None


def normalise_waveforms(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per utterance over its valid samples (padding stays 0).

    This is what fairseq's ``task.normalize=true`` (wav2vec 2.0 / HuBERT Large) expects.

    Args:
        wav: ``(B, T)`` waveforms.
        lengths: ``(B,)`` valid samples.

    Returns:
        ``(B, T)`` normalised waveforms.
    """
    out = torch.zeros_like(wav)
    for i, n in enumerate(lengths.tolist()):
        seg = wav[i, :n]
        out[i, :n] = (seg - seg.mean()) / torch.sqrt(seg.var(unbiased=False) + 1e-5)
    return out


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
        if (p / "config.yaml").is_file():
            raise SSLVitalsError(f"{path} is an ESPnet directory; expand it with expand_checkpoints")
        raise SSLVitalsError(f"{path} is a directory without config.json or config.yaml")
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
        ".pth file / experiment directory (config.yaml), or a transformers model directory "
        "(config.json)"
    )


def expand_checkpoints(paths: Sequence[str | os.PathLike[str]]) -> list[CheckpointSpec]:
    """Expand files and directories into checkpoint specs (duplicates removed, order kept).

    A directory is one transformers model (``config.json``), an ESPnet experiment
    (``config.yaml``: every ``<N>epoch.pth``), or a folder of checkpoints: its fairseq
    ``*.pt`` files (``checkpoint_last.pt`` / ``checkpoint_best.pt`` skipped: they copy a
    numbered one; name them explicitly to score them), transformers ``checkpoint-N``
    sub-directories and ESPnet sub-directories.

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
            if skipped:
                logger.info("%s: skipping %s (copies of numbered checkpoints)", p, ", ".join(skipped))
            if not found:
                raise SSLVitalsError(
                    f"folder {raw} holds no checkpoint (.pt files, model directories with "
                    "config.json, ESPnet directories with config.yaml)"
                )
            specs.extend(found)
        else:
            specs.append(detect_kind(p))
    unique: dict[str, CheckpointSpec] = {}
    for s in specs:
        if s.path in unique:
            logger.warning("checkpoint %s given twice; scoring it once", s.path)
            continue
        unique[s.path] = s
    return list(unique.values())


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def default_run_name(spec: CheckpointSpec) -> str:
    """The run a checkpoint belongs to: its folder's name (``checkpoint-N`` folders: the parent)."""
    p = Path(spec.path)
    if spec.kind == "transformers":
        return p.parent.name if _HF_STEP.match(p.name) else p.name
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
