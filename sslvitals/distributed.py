"""Thin helpers over ``torch.distributed`` that degrade to no-ops in a single process.

The accumulators in :mod:`sslvitals.streaming` call these to combine their state across the
ranks of a training job. Every helper works with the gloo backend (CPU tensors) and with NCCL
(tensors are moved to the current CUDA device for the collective and moved back after); when
``torch.distributed`` is unavailable or not initialised they return the local value.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from sslvitals.errors import SSLVitalsError

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "all_reduce_sum",
    "all_gather_object",
    "broadcast_object",
    "all_gather_rows",
    "gather_rows",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


def rank(group: Any = None) -> int:
    """Rank of this process in ``group`` (the default group when None); 0 when not distributed."""
    return int(torch.distributed.get_rank(group)) if is_distributed() else 0


def world_size(group: Any = None) -> int:
    """Number of processes in ``group``; 1 when not distributed."""
    return int(torch.distributed.get_world_size(group)) if is_distributed() else 1


def _comm_device(group: Any) -> torch.device:
    """Device the collectives of ``group``'s backend expect tensors on."""
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend:
        if not torch.cuda.is_available():
            raise SSLVitalsError(
                "the process group uses NCCL but CUDA is not available in this process; "
                "initialise torch.distributed with backend='gloo' for CPU runs"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum ``tensor`` element-wise over all ranks.

    Args:
        tensor: Any shape, same shape and dtype on every rank.
        group: Process group (default group when None).

    Returns:
        The summed tensor, on the input's device and dtype (the input itself, unchanged, when
        not distributed). The input is not modified in place.
    """
    if not is_distributed() or world_size(group) == 1:
        return tensor
    dev = _comm_device(group)
    buf = tensor.detach().to(dev, copy=True).contiguous()
    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM, group=group)
    return buf.to(tensor.device)


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    """Gather one picklable object from every rank.

    Args:
        obj: Any picklable object (keep it small: it is pickled and sent to every rank).
        group: Process group.

    Returns:
        List of length ``world_size`` with rank ``r``'s object at index ``r``
        (``[obj]`` when not distributed).
    """
    if not is_distributed() or world_size(group) == 1:
        return [obj]
    out: list[Any] = [None] * world_size(group)
    torch.distributed.all_gather_object(out, obj, group=group)
    return out


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed).

    Args:
        obj: Picklable object; only the value on ``src`` matters.
        src: Global rank of the sender.
        group: Process group.
    """
    if not is_distributed() or world_size(group) == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _padded_rows(tensor: torch.Tensor, group: Any, caller: str) -> tuple[list[Any], torch.Tensor]:
    """Agree on every rank's row count, check trailing shape and dtype, and pad to the longest.

    Returns:
        ``(meta, buf)``: ``(rows, trailing shape, dtype)`` per rank, and this rank's tensor
        zero-padded to the largest row count on the communication device.
    """
    meta = all_gather_object((int(tensor.shape[0]), tuple(tensor.shape[1:]), str(tensor.dtype)),
                             group)
    if len({(m[1], m[2]) for m in meta}) != 1:
        raise SSLVitalsError(
            f"{caller} needs the same trailing shape and dtype on every rank, got {meta}"
        )
    dev = _comm_device(group)
    longest = max(m[0] for m in meta)
    buf = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
    buf[: tensor.shape[0]] = tensor.detach().to(dev)
    return meta, buf


def all_gather_rows(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Gather tensors whose first dimension differs between ranks.

    Each rank pads its ``(M_r, *rest)`` tensor to the largest ``M`` with zeros, one
    ``all_gather`` moves them, and the padding is cut off again.

    Args:
        tensor: ``(M_r, *rest)``; ``rest`` and the dtype must agree across ranks.
        group: Process group.

    Returns:
        List of ``world_size`` tensors, rank ``r``'s ``(M_r, *rest)`` at index ``r``, on the
        input's device (``[tensor]`` when not distributed).

    Raises:
        SSLVitalsError: if the trailing shapes or dtypes differ between ranks.
    """
    if not is_distributed() or world_size(group) == 1:
        return [tensor]
    meta, buf = _padded_rows(tensor, group, "all_gather_rows")
    parts = [torch.empty_like(buf) for _ in meta]
    torch.distributed.all_gather(parts, buf, group=group)
    return [p[: m[0]].to(tensor.device) for p, m in zip(parts, meta)]


def gather_rows(tensor: torch.Tensor, dst: int, group: Any = None) -> list[torch.Tensor]:
    """Gather tensors whose first dimension differs between ranks to rank ``dst`` only.

    Like :func:`all_gather_rows`, but only ``dst`` receives (and allocates) the parts, so the
    other ranks' memory does not grow with the world size.

    Args:
        tensor: ``(M_r, *rest)``; ``rest`` and the dtype must agree across ranks.
        dst: Global rank that receives.
        group: Process group.

    Returns:
        On ``dst``: ``world_size`` tensors, rank ``r``'s at index ``r``; elsewhere an empty
        list (``[tensor]`` when not distributed).

    Raises:
        SSLVitalsError: if the trailing shapes or dtypes differ between ranks.
    """
    if not is_distributed() or world_size(group) == 1:
        return [tensor]
    meta, buf = _padded_rows(tensor, group, "gather_rows")
    if rank(group) == dst:
        parts = [torch.empty_like(buf) for _ in meta]
        torch.distributed.gather(buf, gather_list=parts, dst=dst, group=group)
        return [p[: m[0]].to(tensor.device) for p, m in zip(parts, meta)]
    torch.distributed.gather(buf, gather_list=None, dst=dst, group=group)
    return []
