"""Streaming, mergeable and distributed accumulators for validation-time measurements.

An hour of 50 Hz frames is about 180,000 rows per layer; nothing here keeps them all. Each
accumulator follows the same pattern (after torchmetrics): ``update(...)`` per batch,
``merge(other)`` to combine two accumulators of the same process, ``sync(group=None)`` to
combine the accumulators of all ranks of a ``torch.distributed`` job (a no-op when it is not
initialised), ``compute()`` for the numbers and ``reset()`` to start again.

* :class:`GramAccumulator`: float64 ``X^T X``, column sums and row count -> every rank measure
  of :mod:`sslvitals.metrics.rank`; memory ``O(D^2)``.
* :class:`ReservoirSampler`: a bounded uniform sample of rows (plus optional labels) for the
  measures that need points (k-means, silhouette); a bottom-k sketch, so the sample depends
  only on the row keys, not on batch order or sharding.
* :class:`ContingencyAccumulator`: joint (phone, cluster) frame counts -> purities and PNMI.

After ``sync()`` an accumulator holds the totals of all ranks; accumulating more into it would
count the other ranks' rows twice at the next ``sync()``, so ``update``/``merge`` then raise
until ``reset()``, and a second ``sync()`` is a no-op.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from sslvitals import distributed as dist
from sslvitals._validation import ArrayLike, as_labels, as_tensor_2d, degenerate
from sslvitals.errors import SSLVitalsError
from sslvitals.metrics.labels import pnmi_from_counts, purities_from_counts
from sslvitals.metrics.rank import data_eps_of, rank_measures_from_gram, singular_values_from_gram

__all__ = [
    "GramAccumulator",
    "ReservoirSampler",
    "ContingencyAccumulator",
    "frame_keys",
    "batch_frame_keys",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# 64-bit hashing (splitmix64 finaliser) in unsigned numpy arithmetic, which wraps modulo 2**64
# --------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_AUTO_TAG = 0xD1B54A32D192ED03  # separates generated keys from caller (utterance) keys


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 output function applied element-wise to a uint64 array (a bijection)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def _u64(value: int) -> np.ndarray:
    return np.array([int(value) & _MASK64], dtype=np.uint64)


def _hash_keys(seed: int, stream: int, positions: np.ndarray) -> torch.Tensor:
    """int64 keys ``mix(mix(mix(seed) ^ stream) ^ position)`` for uint64 ``positions``."""
    head = _mix64(_mix64(_u64(seed)) ^ _u64(stream))
    keys = _mix64(head ^ positions.astype(np.uint64, copy=False))
    return torch.from_numpy(keys.view(np.int64).copy())


def frame_keys(utt_index: int, n_frames: int, seed: int = 0) -> torch.Tensor:
    """Reservoir keys of the frames of one utterance: a hash of (seed, utterance, frame).

    Frames keep the same key wherever they are processed, so a :class:`ReservoirSampler` fed
    with these keys keeps exactly the same rows whatever the batch order, batch sizes or the
    sharding of utterances across ranks.

    Args:
        utt_index: Stable index of the utterance in the probe set (not its position in a
            shard).
        n_frames: Number of frames ``T`` of the utterance at this layer's frame rate.
        seed: Sampling seed; a different seed gives an independent sample.

    Returns:
        int64 tensor ``(T,)`` of keys, uniformly spread over the 64-bit range.

    Example:
        >>> k = frame_keys(3, 4, seed=0)
        >>> k.shape, k.dtype, bool(torch.equal(k, frame_keys(3, 4, seed=0)))
        (torch.Size([4]), torch.int64, True)
    """
    if n_frames < 0:
        raise SSLVitalsError(f"n_frames must be >= 0, got {n_frames}")
    return _hash_keys(seed, utt_index, np.arange(int(n_frames), dtype=np.uint64))


def batch_frame_keys(utt_indices: Sequence[int], lengths: Sequence[int] | torch.Tensor,
                     seed: int = 0) -> torch.Tensor:
    """Keys of the valid frames of a batch, utterance after utterance.

    Args:
        utt_indices: ``(B,)`` stable utterance indices (e.g. ``ProbeBatch.index``).
        lengths: ``(B,)`` numbers of valid frames per utterance.
        seed: Sampling seed.

    Returns:
        int64 tensor ``(sum(lengths),)``, the concatenation of :func:`frame_keys` per utterance,
        matching rows of ``LayerTap.frames()``.
    """
    lens = [int(v) for v in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
    if len(lens) != len(utt_indices):
        raise SSLVitalsError(
            f"got {len(utt_indices)} utterance indices but {len(lens)} lengths; pass one per "
            "utterance of the batch"
        )
    parts = [frame_keys(int(u), n, seed) for u, n in zip(utt_indices, lens)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def _argsort(keys: torch.Tensor) -> torch.Tensor:
    """Stable ascending argsort of int64 keys (numpy on CPU: far faster than torch.sort there)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
    return torch.sort(keys, stable=True).indices


class _SyncGuard:
    """Shared bookkeeping: refuse to accumulate into totals that already include other ranks."""

    _synced: bool = False

    def _check_not_synced(self, action: str) -> None:
        if self._synced:
            raise SSLVitalsError(
                f"cannot {action}: this {type(self).__name__} already holds the totals of all "
                "ranks after sync(); call reset() before accumulating a new pass"
            )

    @property
    def synced(self) -> bool:
        """True after :meth:`sync` until :meth:`reset`."""
        return self._synced


# --------------------------------------------------------------------------------------------
class GramAccumulator(_SyncGuard):
    """Float64 sufficient statistics of a stream of ``(N, D)`` rows for the rank measures.

    Keeps ``G = sum_i x_i x_i^T`` ``(D, D)``, ``s = sum_i x_i`` ``(D,)`` and the row count in
    float64, whatever the dtype of the rows; memory is ``O(D^2)`` regardless of the number of
    rows. The counter is stored in float64 as well (exact up to 2**53 rows).

    Args:
        dim: Feature dimension ``D``.
        device: Device holding the statistics (e.g. ``"cuda"`` to accumulate on the GPU).

    Example:
        >>> acc = GramAccumulator(2)
        >>> acc.update(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
        >>> round(acc.compute(["effective_rank"])["effective_rank"], 6)
        2.0
    """

    def __init__(self, dim: int, *, device: str | torch.device = "cpu") -> None:
        if int(dim) < 1:
            raise SSLVitalsError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every row."""
        self._gram = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device)
        self._sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self._count = 0
        self._data_eps = data_eps_of(None)
        self._synced = False

    @property
    def count(self) -> int:
        """Number of rows accumulated."""
        return self._count

    @property
    def data_eps(self) -> float:
        """Machine epsilon of the coarsest dtype fed so far (float32's for float32/float64 rows).

        :meth:`compute` uses it as the "numerically zero" threshold of alpha-ReQ and the
        numerical rank, so float16/bfloat16 activations are judged by their own precision.
        """
        return self._data_eps

    @property
    def gram(self) -> torch.Tensor:
        """``(D, D)`` float64 ``X^T X`` (a view of the state: do not modify)."""
        return self._gram

    @property
    def col_sum(self) -> torch.Tensor:
        """``(D,)`` float64 column sums (a view of the state: do not modify)."""
        return self._sum

    def update(self, x: ArrayLike) -> None:
        """Add rows.

        Args:
            x: ``(N, D)`` numpy array or tensor of any floating dtype and device; rows are
                converted to float64 on the accumulator's device.

        Raises:
            SSLVitalsError: on a wrong shape, NaN/Inf, or after :meth:`sync`.
        """
        self._check_not_synced("update")
        t = as_tensor_2d(x, "x")
        if t.shape[1] != self.dim:
            raise SSLVitalsError(
                f"x has {t.shape[1]} features but this GramAccumulator was built for dim="
                f"{self.dim}; use one accumulator per layer"
            )
        if t.shape[0] == 0:
            return
        self._data_eps = max(self._data_eps, data_eps_of(t.dtype))
        t = t.to(device=self.device, dtype=torch.float64)
        self._gram.addmm_(t.T, t)
        self._sum += t.sum(dim=0)
        self._count += int(t.shape[0])

    def merge(self, other: "GramAccumulator") -> None:
        """Add the statistics of another accumulator (of disjoint rows) to this one.

        Raises:
            SSLVitalsError: if ``other`` is not a GramAccumulator of the same ``dim``.
        """
        self._check_not_synced("merge")
        if not isinstance(other, GramAccumulator) or other.dim != self.dim:
            raise SSLVitalsError("can only merge a GramAccumulator of the same dim")
        self._gram += other._gram.to(self.device)
        self._sum += other._sum.to(self.device)
        self._count += other._count
        self._data_eps = max(self._data_eps, other._data_eps)

    def sync(self, group: Any = None) -> None:
        """Sum the statistics of all ranks (one all-reduce); no-op when not distributed.

        Every rank must call it (it is a collective). Afterwards every rank holds the totals.
        """
        if self._synced:
            logger.debug("GramAccumulator.sync called twice; the second call does nothing")
            return
        if dist.is_distributed() and dist.world_size(group) > 1:
            d = self.dim
            flat = torch.cat([
                self._gram.reshape(-1), self._sum,
                torch.tensor([float(self._count)], dtype=torch.float64, device=self.device),
            ])
            flat = dist.all_reduce_sum(flat, group)
            self._gram = flat[: d * d].reshape(d, d).clone()
            self._sum = flat[d * d: d * d + d].clone()
            self._count = int(round(float(flat[-1])))
            self._data_eps = max(float(e) for e in dist.all_gather_object(self._data_eps, group))
        self._synced = True

    def spectrum(self, center: bool) -> torch.Tensor:
        """Singular values of the accumulated rows (centered or not), descending.

        Returns:
            float64 tensor ``(min(N, D),)``, see
            :func:`sslvitals.metrics.rank.singular_values_from_gram`.
        """
        return singular_values_from_gram(self._gram, self._sum, self._count, center=center)

    def compute(self, measures: Iterable[str] | str | None = None,
                **options: Any) -> dict[str, float]:
        """Rank measures of all rows seen (call :meth:`sync` first in a distributed job).

        Args:
            measures: Names from :data:`sslvitals.metrics.rank.RANK_MEASURES`; None = all.
            **options: Passed to :func:`sslvitals.metrics.rank.rank_measures_from_gram`
                (``eps``, ``center``, ``spectrum``, ``fit_range``, ``tol``, ``data_eps``;
                ``data_eps`` defaults to :attr:`data_eps`).

        Returns:
            ``{measure: float}``; NaN entries (one warning) when undefined.
        """
        options.setdefault("data_eps", self._data_eps)
        return rank_measures_from_gram(self._gram, self._sum, self._count, measures=measures,
                                       **options)

    def state_dict(self) -> dict[str, Any]:
        """Serializable copy of the state."""
        return {"dim": self.dim, "gram": self._gram.cpu().clone(),
                "col_sum": self._sum.cpu().clone(), "count": self._count,
                "data_eps": self._data_eps, "synced": self._synced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        if int(state["dim"]) != self.dim:
            raise SSLVitalsError(
                f"state has dim={state['dim']} but this accumulator has dim={self.dim}")
        self._gram = state["gram"].to(device=self.device, dtype=torch.float64).clone()
        self._sum = state["col_sum"].to(device=self.device, dtype=torch.float64).clone()
        self._count = int(state["count"])
        self._data_eps = float(state.get("data_eps", data_eps_of(None)))
        self._synced = bool(state.get("synced", False))


# --------------------------------------------------------------------------------------------
class ReservoirSampler(_SyncGuard):
    """Bounded uniform sample of rows: a bottom-k sketch over 64-bit row keys.

    Every row gets an int64 key; the sampler keeps the ``capacity`` rows with the smallest
    keys. With keys that behave like independent uniform draws, the kept rows are a uniform
    sample without replacement of all rows seen. Because the result depends only on the set
    of (key, row) pairs, ``merge`` and ``sync`` (union, then keep the smallest keys) give
    exactly the sample one sampler would keep after seeing every row; with caller-given keys
    (:func:`frame_keys`) this holds across any sharding and batch order. Rows with equal keys
    are treated as the same row and kept once (a frame duplicated by a distributed sampler
    that pads its shards is therefore not counted twice).

    Without caller keys, keys are hashed from ``(seed, rank, running row number)``: the sample
    is reproducible for a fixed batch sequence, and ranks draw independent keys.

    Memory: ``capacity * D`` float32 values plus ``capacity`` keys and labels.

    Args:
        capacity: Maximum number of rows kept (``M``).
        dim: Feature dimension ``D``.
        seed: Seed of the generated keys.
        label_dtype: dtype in which per-row labels are stored.
        device: Device holding the sample.

    Example:
        >>> r = ReservoirSampler(3, 2)
        >>> r.update(torch.arange(20.0).reshape(10, 2))
        >>> r.sample()[0].shape
        torch.Size([3, 2])
    """

    def __init__(self, capacity: int, dim: int, *, seed: int = 0,
                 label_dtype: torch.dtype = torch.int64,
                 device: str | torch.device = "cpu") -> None:
        if int(capacity) < 1:
            raise SSLVitalsError(f"capacity must be >= 1, got {capacity}")
        if int(dim) < 1:
            raise SSLVitalsError(f"dim must be >= 1, got {dim}")
        self.capacity = int(capacity)
        self.dim = int(dim)
        self.seed = int(seed)
        self.label_dtype = label_dtype
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Drop the sample and all counters."""
        self._set_storage(torch.zeros(0, dtype=torch.int64, device=self.device),
                          torch.zeros(0, self.dim, dtype=torch.float32, device=self.device),
                          torch.zeros(0, dtype=self.label_dtype, device=self.device))
        self._has_labels: bool | None = None
        self._n_seen = 0
        self._generated = 0
        self._streams: set[int] = set()
        self._synced = False

    # -- storage: buffers that grow geometrically up to ``capacity`` rows -----------------
    def _set_storage(self, keys: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> None:
        self._kbuf, self._xbuf, self._lbuf = keys, x, labels
        self._m = int(keys.shape[0])

    def _reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows (doubling, capped at ``capacity``)."""
        alloc = int(self._kbuf.shape[0])
        if rows <= alloc:
            return
        alloc = min(self.capacity, max(rows, 2 * alloc, 1024))
        m = self._m
        kbuf = torch.empty(alloc, dtype=torch.int64, device=self.device)
        xbuf = torch.empty(alloc, self.dim, dtype=torch.float32, device=self.device)
        lbuf = torch.empty(alloc, dtype=self.label_dtype, device=self.device)
        kbuf[:m], xbuf[:m], lbuf[:m] = self._kbuf[:m], self._xbuf[:m], self._lbuf[:m]
        self._kbuf, self._xbuf, self._lbuf = kbuf, xbuf, lbuf

    @property
    def _keys(self) -> torch.Tensor:
        return self._kbuf[: self._m]

    @property
    def _x(self) -> torch.Tensor:
        return self._xbuf[: self._m]

    @property
    def _labels(self) -> torch.Tensor:
        return self._lbuf[: self._m]

    # -- properties ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._m

    @property
    def n_seen(self) -> int:
        """Number of rows offered to the sampler (over all ranks after :meth:`sync`)."""
        return self._n_seen

    @property
    def keys(self) -> torch.Tensor:
        """``(M,)`` int64 keys of the kept rows, ascending (a copy)."""
        return self._keys[_argsort(self._keys)]

    @property
    def has_labels(self) -> bool:
        """Whether rows carry labels."""
        return bool(self._has_labels)

    # -- core ------------------------------------------------------------------------------
    def _absorb(self, keys: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Union the current sample with ``(keys, x, labels)`` and keep the smallest keys.

        The buffer is not kept in key order: accepted rows overwrite the slots of evicted
        ones (or are appended while the buffer is not full), so an update costs a sort of
        ``capacity + N`` keys plus a copy of the accepted rows only.
        """
        if keys.numel() == 0:
            return
        keys = keys.to(self.device)
        m = self._m
        if m == self.capacity:  # full: only keys below the current largest can enter
            keep = keys < self._keys.max()
            if not bool(keep.any()):
                return
            idx = keep.nonzero().squeeze(1)
            keys, x = keys[idx], x[idx.to(x.device)]
            labels = None if labels is None else labels[idx.to(labels.device)]
        all_keys = torch.cat([self._keys, keys])
        order = _argsort(all_keys)  # stable: on equal keys the row already kept wins
        sorted_keys = all_keys[order]
        first = torch.ones_like(sorted_keys, dtype=torch.bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        sel = order[first][: self.capacity]
        src = sel[sel >= m] - m  # accepted new rows
        if src.numel() == 0:
            return
        kept = torch.zeros(m, dtype=torch.bool, device=self.device)
        kept[sel[sel < m]] = True
        slots = (~kept).nonzero().squeeze(1)  # evicted rows; never more than accepted ones
        n_slots = int(slots.shape[0])
        new_keys = keys[src]
        new_x = x[src.to(x.device)].to(device=self.device, dtype=torch.float32)
        end = m + int(src.shape[0]) - n_slots  # > m only while the buffer is not full yet
        self._reserve(end)
        self._kbuf[slots] = new_keys[:n_slots]
        self._kbuf[m:end] = new_keys[n_slots:]
        self._xbuf[slots] = new_x[:n_slots]
        self._xbuf[m:end] = new_x[n_slots:]
        if self._has_labels:
            assert labels is not None
            new_l = labels[src.to(labels.device)].to(device=self.device, dtype=self.label_dtype)
            self._lbuf[slots] = new_l[:n_slots]
            self._lbuf[m:end] = new_l[n_slots:]
        self._m = end

    def _set_label_mode(self, has: bool, where: str) -> None:
        if self._has_labels is None:
            self._has_labels = has
        elif self._has_labels != has:
            state = "with" if self._has_labels else "without"
            raise SSLVitalsError(
                f"{where}: this ReservoirSampler was filled {state} labels; pass labels "
                "either always or never"
            )

    def update(self, x: ArrayLike, keys: ArrayLike | None = None,
               labels: ArrayLike | None = None) -> None:
        """Offer rows to the sample.

        Args:
            x: ``(N, D)`` rows, any floating dtype/device (stored as float32).
            keys: Optional ``(N,)`` int64 keys, e.g. from :func:`batch_frame_keys`; they make
                the sample independent of sharding and batch order. Generated when None.
            labels: Optional ``(N,)`` non-negative integer labels kept with their rows.

        Raises:
            SSLVitalsError: on shape/dtype problems, NaN/Inf rows, mixing calls with and
                without labels, or after :meth:`sync`.
        """
        self._check_not_synced("update")
        t = as_tensor_2d(x, "x")
        n = int(t.shape[0])
        if t.shape[1] != self.dim:
            raise SSLVitalsError(
                f"x has {t.shape[1]} features but this ReservoirSampler was built for dim="
                f"{self.dim}; use one sampler per layer"
            )
        lab = None if labels is None else as_labels(labels, "labels", n)
        self._set_label_mode(lab is not None, "update")
        if keys is None:
            stream = dist.rank()
            self._streams.add(stream)
            pos = np.arange(self._generated, self._generated + n, dtype=np.uint64)
            k = _hash_keys(self.seed, _AUTO_TAG ^ stream, pos)
            self._generated += n
        else:
            k = keys if isinstance(keys, torch.Tensor) else torch.from_numpy(np.asarray(keys))
            if k.dtype.is_floating_point or k.dtype == torch.bool or k.dim() != 1:
                raise SSLVitalsError(
                    f"keys must be a 1-D integer array (int64), got dtype {k.dtype} and shape "
                    f"{tuple(k.shape)}; build them with sslvitals.streaming.frame_keys"
                )
            if k.shape[0] != n:
                raise SSLVitalsError(f"keys has {k.shape[0]} entries but x has {n} rows")
            k = k.to(torch.int64)
        self._n_seen += n
        self._absorb(k, t, lab)

    def merge(self, other: "ReservoirSampler") -> None:
        """Union with another sampler's sample, keeping the ``capacity`` smallest keys.

        Raises:
            SSLVitalsError: on different capacity/dim, label mode, or when both samplers
                generated keys from the same seed and rank (their keys would coincide; give
                them different seeds).
        """
        self._check_not_synced("merge")
        if not isinstance(other, ReservoirSampler) or other.dim != self.dim \
                or other.capacity != self.capacity:
            raise SSLVitalsError("can only merge a ReservoirSampler with the same capacity and dim")
        if other._has_labels is not None:
            self._set_label_mode(other._has_labels, "merge")
        if self.seed == other.seed and self._streams & other._streams:
            raise SSLVitalsError(
                "both samplers generated their keys from the same seed on the same rank, so "
                "their keys collide; construct them with different seeds or pass frame keys"
            )
        self._streams |= other._streams
        self._n_seen += other._n_seen
        self._absorb(other._keys, other._x, other._labels if other._has_labels else None)

    def sync(self, group: Any = None, *, dst: int | None = None) -> None:
        """Make every rank (or only rank ``dst``) hold the sample of the union of all ranks' rows.

        Two rounds: the keys of all ranks are gathered to find the global ``capacity``-th
        smallest key; then only rows at or below it travel, so a balanced job moves about
        ``capacity`` rows in total. No-op when not distributed.

        Args:
            group: Process group.
            dst: Only this global rank receives the rows; the others end with an empty sample
                (their memory does not hold the union). None: every rank receives them.
        """
        if self._synced:
            logger.debug("ReservoirSampler.sync called twice; the second call does nothing")
            return
        if not dist.is_distributed() or dist.world_size(group) == 1:
            self._synced = True
            return
        meta = dist.all_gather_object((self._has_labels, self._n_seen), group)
        modes = {m[0] for m in meta if m[0] is not None}
        if len(modes) > 1:
            raise SSLVitalsError(
                "some ranks passed labels to their ReservoirSampler and others did not; pass "
                "labels on every rank or on none"
            )
        has = modes.pop() if modes else None
        all_keys = torch.cat(dist.all_gather_rows(self._keys, group))
        uniq = all_keys[_argsort(all_keys)].unique_consecutive()
        if uniq.shape[0] > self.capacity:
            mask = self._keys <= uniq[self.capacity - 1]
        else:
            mask = torch.ones_like(self._keys, dtype=torch.bool)
        if dst is None:
            def gather(t: torch.Tensor) -> list[torch.Tensor]:
                return dist.all_gather_rows(t, group)
        else:
            def gather(t: torch.Tensor) -> list[torch.Tensor]:
                return dist.gather_rows(t, dst, group)
        keys_parts = gather(self._keys[mask])
        x_parts = gather(self._x[mask])
        if has:
            labels = self._labels if self._has_labels else torch.zeros(
                0, dtype=self.label_dtype, device=self.device)
            label_parts: list[torch.Tensor | None] = list(gather(labels[mask]))
        else:
            label_parts = [None] * len(keys_parts)
        self._set_storage(torch.zeros(0, dtype=torch.int64, device=self.device),
                          torch.zeros(0, self.dim, dtype=torch.float32, device=self.device),
                          torch.zeros(0, dtype=self.label_dtype, device=self.device))
        self._has_labels = has
        for k, xp, lp in zip(keys_parts, x_parts, label_parts):
            self._absorb(k, xp, lp)
        self._n_seen = sum(int(m[1]) for m in meta)
        self._synced = True

    def sample(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kept rows and their labels, ordered by ascending key.

        Returns:
            ``(x, labels)``: float32 ``(M, D)`` with ``M = min(capacity, rows seen)`` and
            ``(M,)`` labels in ``label_dtype``, or None when no labels were given.
        """
        order = _argsort(self._keys)
        labels = self._labels[order] if self._has_labels else None
        return self._x[order], labels

    def compute(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same as :meth:`sample` (accumulator protocol)."""
        return self.sample()

    def state_dict(self) -> dict[str, Any]:
        """Serializable copy of the state."""
        return {"capacity": self.capacity, "dim": self.dim, "seed": self.seed,
                "keys": self._keys.cpu().clone(), "x": self._x.cpu().clone(),
                "labels": self._labels.cpu().clone(), "has_labels": self._has_labels,
                "n_seen": self._n_seen, "generated": self._generated,
                "streams": sorted(self._streams), "synced": self._synced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        if int(state["capacity"]) != self.capacity or int(state["dim"]) != self.dim:
            raise SSLVitalsError("state was saved from a sampler with another capacity or dim")
        self.seed = int(state["seed"])
        labels = state["labels"]
        if labels.shape[0] != state["keys"].shape[0]:  # saved without labels
            labels = torch.zeros(state["keys"].shape[0], dtype=self.label_dtype)
        self._set_storage(state["keys"].to(self.device).clone(),
                          state["x"].to(self.device, torch.float32).clone(),
                          labels.to(self.device, self.label_dtype).clone())
        self._has_labels = state["has_labels"]
        self._n_seen = int(state["n_seen"])
        self._generated = int(state["generated"])
        self._streams = set(int(s) for s in state["streams"])
        self._synced = bool(state.get("synced", False))


# --------------------------------------------------------------------------------------------
class ContingencyAccumulator(_SyncGuard):
    """Joint frame counts of (phone, cluster) pairs, growing as new ids appear.

    The counts live in a dense int64 matrix ``(n_phones, n_clusters)`` indexed by the ids
    themselves (row ``p`` = phone id ``p``); ids never seen leave zero rows/columns, which do
    not change purities or PNMI. Dense is right for speech (tens of phones x about a thousand
    clusters); ``max_cells`` guards against ids that are not small integers.

    Args:
        max_cells: Largest allowed ``n_phones * n_clusters``.

    Example:
        >>> acc = ContingencyAccumulator()
        >>> acc.update([0, 0, 1, 1], [2, 2, 0, 0])
        >>> acc.counts().tolist()
        [[0, 0, 2], [2, 0, 0]]
    """

    def __init__(self, *, max_cells: int = 1 << 24) -> None:
        self.max_cells = int(max_cells)
        self.reset()

    def reset(self) -> None:
        """Set all counts to zero."""
        self._counts = torch.zeros(0, 0, dtype=torch.int64)
        self._synced = False

    @property
    def total(self) -> int:
        """Number of frames counted."""
        return int(self._counts.sum())

    def _grow(self, n_rows: int, n_cols: int) -> None:
        r, c = self._counts.shape
        if n_rows <= r and n_cols <= c:
            return
        n_rows, n_cols = max(n_rows, r), max(n_cols, c)
        if n_rows * n_cols > self.max_cells:
            raise SSLVitalsError(
                f"a {n_rows} x {n_cols} phone-by-cluster count matrix exceeds max_cells="
                f"{self.max_cells}; map phone and cluster labels to small consecutive ids "
                "(0..n-1) or raise max_cells"
            )
        grown = torch.zeros(n_rows, n_cols, dtype=torch.int64)
        grown[:r, :c] = self._counts
        self._counts = grown

    def update(self, phones: ArrayLike, clusters: ArrayLike) -> None:
        """Count frames.

        Args:
            phones: ``(N,)`` non-negative integer phone ids.
            clusters: ``(N,)`` non-negative integer cluster ids of the same frames.

        Raises:
            SSLVitalsError: on lengths that differ, negative or non-integer ids, or after
                :meth:`sync`.
        """
        self._check_not_synced("update")
        p = as_labels(phones, "phones").cpu()
        c = as_labels(clusters, "clusters", int(p.shape[0])).cpu()
        if p.numel() == 0:
            return
        self._grow(int(p.max()) + 1, int(c.max()) + 1)
        n_rows, n_cols = self._counts.shape
        flat = torch.bincount(p * n_cols + c, minlength=n_rows * n_cols)
        self._counts += flat.reshape(n_rows, n_cols)

    def merge(self, other: "ContingencyAccumulator") -> None:
        """Add another accumulator's counts."""
        self._check_not_synced("merge")
        if not isinstance(other, ContingencyAccumulator):
            raise SSLVitalsError("can only merge a ContingencyAccumulator")
        r, c = other._counts.shape
        self._grow(r, c)
        self._counts[:r, :c] += other._counts

    def sync(self, group: Any = None) -> None:
        """Sum the counts of all ranks (shapes are padded to the largest first); no-op when
        not distributed."""
        if self._synced:
            logger.debug("ContingencyAccumulator.sync called twice; the second call does nothing")
            return
        if dist.is_distributed() and dist.world_size(group) > 1:
            shapes = dist.all_gather_object(tuple(self._counts.shape), group)
            self._grow(max(s[0] for s in shapes), max(s[1] for s in shapes))
            self._counts = dist.all_reduce_sum(self._counts, group).clone()
        self._synced = True

    def counts(self) -> np.ndarray:
        """Copy of the count matrix, int64 ``(n_phones, n_clusters)``."""
        return self._counts.numpy().copy()

    def compute(self) -> dict[str, float]:
        """Phone purity, cluster purity and PNMI of the counted frames.

        Returns:
            ``{"phone_purity", "cluster_purity", "pnmi"}``; all NaN with one RuntimeWarning
            when no frame was counted.
        """
        if self.total == 0:
            nan = degenerate("phone_purity/cluster_purity/pnmi", "no frames were counted")
            return {"phone_purity": nan, "cluster_purity": nan, "pnmi": nan}
        counts = self.counts()
        phone_pur, cluster_pur = purities_from_counts(counts)
        return {"phone_purity": phone_pur, "cluster_purity": cluster_pur,
                "pnmi": pnmi_from_counts(counts)}

    def state_dict(self) -> dict[str, Any]:
        """Serializable copy of the state."""
        return {"counts": self._counts.clone(), "synced": self._synced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self._counts = state["counts"].to(torch.int64).clone()
        self._synced = bool(state.get("synced", False))
