"""Read fairseq checkpoints with torch's safe (``weights_only``) unpickler.

torch >= 2.6 loads with ``weights_only=True`` unless told otherwise: only tensors, plain
containers and numbers, and classes on an allow-list, are rebuilt. fairseq 0.12 calls
``torch.load`` with that default when it resumes ``checkpoint_last.pt``, reads
``model.w2v_path`` for fine-tuning, or rebuilds a model with
``load_model_ensemble_and_task``, and a HuBERT checkpoint holds pickled
``fairseq.data.dictionary.Dictionary`` objects (its label dictionaries, in ``task_state``), so
all of these stop with ``UnpicklingError``.

The rule sslvitals follows: **never switch the safe unpickler off; allow-list exactly the
classes fairseq checkpoints hold.** They were found by saving checkpoints of every kind the
project trains and listing what the safe unpickler refuses
(``torch.serialization.get_unsafe_globals_in_checkpoint``):

* ``fairseq.data.dictionary.Dictionary``: HuBERT label dictionaries, fine-tuning target
  dictionaries (the only class a fairseq 0.12 pretraining checkpoint needs);
* ``argparse.Namespace``: the ``args`` of checkpoints written before fairseq moved to Hydra;
* OmegaConf containers, their metadata and value nodes (with the ``typing.Any``, ``dict``,
  ``list``, ``int``, ``float``, ``str``, ``bool`` and ``collections.defaultdict`` objects the
  metadata refers to): checkpoints whose ``cfg`` was saved as a ``DictConfig`` rather than as
  plain containers;
* numpy scalars (``numpy...multiarray.scalar``, ``numpy.dtype`` and the numeric dtype
  classes): validation losses and meter values logged as numpy numbers.

None of these can run code when rebuilt: they are data holders, built from the pickled
attributes and arguments, each of which passes the same check. Arbitrary objects (functions,
modules, ``numpy.ndarray`` of objects, other classes) are still refused.

:func:`allow_fairseq_checkpoints` adds the list to torch's process-wide allow-list; the fairseq
plugin (the ``common.user_dir`` package, imported by fairseq before any checkpoint is read)
calls it, so that resuming, fine-tuning and feature dumping work with torch's safe default.
:func:`load_fairseq_file` reads one file with the same list, without changing the process-wide
state. A checkpoint that holds some other class is refused with an error naming it; if the file
is trusted, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes torch unpickle it fully.

fairseq tools that take no ``common.user_dir`` (e.g. ``examples/hubert/simple_kmeans/
dump_hubert_feature.py``) run with the list through this module::

    python -m sslvitals.integrations.fairseq.safe_load path/to/script.py [script arguments...]

This module imports torch; fairseq, omegaconf and numpy only when the list is built.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import sys
from typing import Any, Sequence

import torch

from sslvitals.errors import SSLVitalsError

__all__ = ["fairseq_safe_globals", "allow_fairseq_checkpoints", "load_fairseq_file", "run_script"]

logger = logging.getLogger(__name__)

_ALLOWED = False


def _numpy_globals() -> list[Any]:
    import numpy as np

    try:  # numpy >= 2
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
             np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128]
    dtype_classes = {type(np.dtype(kind)) for kind in kinds}
    dtype_classes.discard(np.dtype)
    return [scalar, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]


def _omegaconf_globals() -> list[Any]:
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    node_names = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                  "BytesNode", "PathNode")
    value_nodes = [getattr(nodes, name) for name in node_names if hasattr(nodes, name)]
    return [DictConfig, ListConfig, ContainerMetadata, Metadata, *value_nodes, typing.Any,
            dict, list, int, float, str, bool, collections.defaultdict]


def fairseq_safe_globals() -> list[Any]:
    """The classes fairseq checkpoints hold besides tensors and plain containers.

    Returns:
        Objects for ``torch.serialization.add_safe_globals`` / ``safe_globals`` (see the module
        docstring for why each is there).

    Raises:
        SSLVitalsError: if fairseq is not installed.
    """
    import argparse

    try:
        from fairseq.data.dictionary import Dictionary
    except ImportError as exc:
        raise SSLVitalsError(
            "reading fairseq checkpoints needs fairseq: pip install 'sslvitals[fairseq]'"
        ) from exc
    return [Dictionary, argparse.Namespace, *_omegaconf_globals(), *_numpy_globals()]


def allow_fairseq_checkpoints() -> None:
    """Allow-list :func:`fairseq_safe_globals` in torch, process-wide (idempotent).

    After this, fairseq's own ``torch.load`` calls (resuming from ``checkpoint_last.pt``,
    ``model.w2v_path``, ``load_model_ensemble_and_task``) read HuBERT / wav2vec 2.0 checkpoints
    with torch's safe default instead of failing.
    """
    global _ALLOWED
    if _ALLOWED:
        return
    torch.serialization.add_safe_globals(fairseq_safe_globals())
    _ALLOWED = True
    logger.debug("sslvitals: fairseq checkpoint classes allow-listed for torch.load")


#: How torch's safe unpickler names what it refused (its messages vary with the case).
_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>")


def load_fairseq_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` a fairseq checkpoint on CPU with the safe unpickler and the fairseq list.

    Args:
        path: The ``.pt`` file.

    Returns:
        The unpickled object (for a checkpoint, a dict).

    Raises:
        SSLVitalsError: if the file cannot be read, or holds a class outside the list (the
            message names it).
    """
    with torch.serialization.safe_globals(fairseq_safe_globals()):
        try:
            return torch.load(path, map_location="cpu")
        except pickle.UnpicklingError as exc:
            found = _UNSUPPORTED.search(str(exc))
            if found is None and "Unsupported global" not in str(exc):
                # not a refused class: the bytes are not a torch pickle at all
                reason = next((ln.strip() for ln in str(exc).splitlines()
                               if ln.strip().startswith("Unsupported")), type(exc).__name__)
                raise SSLVitalsError(f"{path} is not a readable torch file ({reason})") from exc
            name = next((g for g in found.groups() if g), None) if found else None
            what = f"an object of class {name}" if name else "an object"
            raise SSLVitalsError(
                f"{path} holds {what} that sslvitals does not allow torch to unpickle (it allows "
                "the classes fairseq checkpoints hold: Dictionary, argparse.Namespace, OmegaConf "
                "containers, numpy scalars); if you trust the file, set "
                "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to unpickle it fully"
            ) from exc


def run_script(argv: Sequence[str]) -> None:
    """Run a Python script as ``__main__`` after :func:`allow_fairseq_checkpoints`.

    Args:
        argv: The script's path followed by its arguments.

    Raises:
        SSLVitalsError: if no script is given or it does not exist.
    """
    import runpy

    if not argv:
        raise SSLVitalsError(
            "usage: python -m sslvitals.integrations.fairseq.safe_load SCRIPT.py [ARGS...]")
    script = str(argv[0])
    if not os.path.isfile(script):
        raise SSLVitalsError(f"script {script} does not exist")
    allow_fairseq_checkpoints()
    sys.argv = [script, *map(str, argv[1:])]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    run_script(sys.argv[1:])
