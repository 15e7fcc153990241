"""Helpers for tests/streaming/test_distributed.py: data, feeding, and the spawned worker.

Kept in its own module so that processes started with the ``spawn`` method can import it.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslvitals import distributed as dist
from sslvitals.metrics.rank import utterance_sums
from sslvitals.streaming import (
    ContingencyAccumulator,
    GramAccumulator,
    ReservoirSampler,
    batch_frame_keys,
)

DIM = 24
CAPACITY = 96
SEED = 11
N_UTT = 36


def make_data(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Seeded utterances ``(T_i, DIM)`` float32 with per-frame phone and cluster ids.

    Utterance 1 (an odd index, so rank 1 of 2 in an interleaved split) carries a phone id and
    a cluster id that no even utterance has, so the ranks' count matrices differ in shape.
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, DIM)) / np.arange(1, 9)[:, None]
    utts, phones, clusters = [], [], []
    for i in range(N_UTT):
        t = int(rng.integers(5, 40))
        z = rng.standard_normal((t, 8))
        utts.append((z @ basis + 0.1 * rng.standard_normal((t, DIM)) + 0.5).astype(np.float32))
        p = rng.integers(0, 12, size=t)
        c = (p * 3 + rng.integers(0, 3, size=t)) % 40
        if i == 1:
            p[0], c[0] = 15, 47
        phones.append(p)
        clusters.append(c)
    return utts, phones, clusters


def new_accumulators() -> dict[str, Any]:
    return {
        "gram": GramAccumulator(DIM),
        "utt_gram": GramAccumulator(DIM),
        "reservoir": ReservoirSampler(CAPACITY, DIM, seed=SEED),
        "contingency": ContingencyAccumulator(),
    }


def feed(accs: dict[str, Any], indices: list[int], data: tuple, batch_seed: int) -> None:
    """Stream the utterances ``indices`` in batches of 1-4 utterances into ``accs``."""
    utts, phones, clusters = data
    rng = np.random.default_rng(batch_seed)
    pos = 0
    while pos < len(indices):
        idx = indices[pos: pos + int(rng.integers(1, 5))]
        pos += len(idx)
        frames = torch.from_numpy(np.concatenate([utts[i] for i in idx]))
        keys = batch_frame_keys(idx, [len(utts[i]) for i in idx], seed=SEED)
        ph = np.concatenate([phones[i] for i in idx])
        cl = np.concatenate([clusters[i] for i in idx])
        accs["gram"].update(frames)
        accs["utt_gram"].update(utterance_sums([utts[i] for i in idx]))
        accs["reservoir"].update(frames, keys=keys, labels=ph)
        accs["contingency"].update(ph, cl)


def results(accs: dict[str, Any]) -> dict[str, Any]:
    """Plain-Python/tensor summary of the accumulators, for comparison across processes."""
    x, labels = accs["reservoir"].sample()
    return {
        "gram_measures": accs["gram"].compute(),
        "gram_count": accs["gram"].count,
        "gram": accs["gram"].gram.clone(),
        "rankme_t": accs["utt_gram"].compute(["rankme"])["rankme"],
        "reservoir_x": x,
        "reservoir_labels": labels,
        "reservoir_keys": accs["reservoir"].keys.clone(),
        "reservoir_seen": accs["reservoir"].n_seen,
        "counts": accs["contingency"].counts(),
        "contingency": accs["contingency"].compute(),
    }


def one_process(data: tuple) -> dict[str, Any]:
    """The reference: every utterance through one set of accumulators, in order."""
    accs = new_accumulators()
    feed(accs, list(range(N_UTT)), data, batch_seed=123)
    return results(accs)


def _check_helpers(rank: int, world: int) -> dict[str, Any]:
    return {
        "is_distributed": dist.is_distributed(),
        "rank": dist.rank(),
        "world_size": dist.world_size(),
        "sum_f64": dist.all_reduce_sum(torch.tensor([rank + 1.0], dtype=torch.float64)).item(),
        "sum_i64": dist.all_reduce_sum(torch.tensor([2**40 + rank])).item(),
        "objects": dist.all_gather_object({"rank": rank, "tag": "r%d" % rank}),
        "broadcast": dist.broadcast_object("sent by %d" % rank, src=world - 1),
        "rows": [t.tolist() for t in dist.all_gather_rows(torch.arange(rank + 1) * 10)],
    }


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Entry point of one spawned process: shard, stream, sync, write results."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        data = make_data()
        out: dict[str, Any] = {"helpers": _check_helpers(rank, world)}
        accs = new_accumulators()
        mine = list(range(rank, N_UTT, world))  # interleaved utterances
        feed(accs, mine, data, batch_seed=rank)
        if rank == world - 1:
            # a shard padded with an utterance another rank also has (as DistributedSampler
            # does): the reservoir must keep it once
            utts = data[0]
            accs["reservoir"].update(
                torch.from_numpy(utts[0]), keys=batch_frame_keys([0], [len(utts[0])], seed=SEED),
                labels=data[1][0])
        for acc in accs.values():
            acc.sync()
            acc.sync()  # second call: no-op
        out["sharded"] = results(accs)
        # a rank without any data: its empty state must still sync
        lonely = new_accumulators()
        if rank == 0:
            feed(lonely, list(range(0, N_UTT, 3)), data, batch_seed=7)
        for acc in lonely.values():
            acc.sync()
        out["lonely"] = results(lonely)
        # one rank fed bfloat16 activations: after sync every rank judges "numerically zero"
        # by bfloat16's precision
        mixed = GramAccumulator(DIM)
        frames = torch.from_numpy(np.concatenate([data[0][i] for i in mine]))
        mixed.update(frames.to(torch.bfloat16) if rank == 1 else frames)
        mixed.sync()
        out["mixed_data_eps"] = mixed.data_eps
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as fh:
            pickle.dump(out, fh)
    finally:
        torch.distributed.destroy_process_group()
