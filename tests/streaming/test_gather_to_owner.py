"""``ReservoirSampler.sync(dst=r)``: only the owner rank receives the union, and it equals what
``sync()`` gives every rank; the monitor spreads layers over ranks with the same numbers."""
from __future__ import annotations

import torch
import torch.multiprocessing as mp

from sslvitals.streaming import ReservoirSampler, frame_keys


def _data(rank: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    utts = [(i, torch.randn(int(torch.randint(5, 30, (1,), generator=g)), 6, generator=g))
            for i in range(20)]
    return [(i, x, torch.full((x.shape[0],), i % 4)) for i, x in utts if i % 2 == rank]


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                         world_size=world)
    results = {}
    for mode in ("all", "owner"):
        r = ReservoirSampler(40, 6, seed=3)
        for i, x, y in _data(rank):
            r.update(x, keys=frame_keys(i, x.shape[0], 3), labels=y)
        r.sync(dst=None if mode == "all" else 1)
        results[mode] = r.sample()
    torch.save(results, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_gather_to_owner_equals_all_gather(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = torch.load(f"{tmp_path}/out.0"), torch.load(f"{tmp_path}/out.1")
    # one process holding everything is the reference
    ref = ReservoirSampler(40, 6, seed=3)
    for rank in (0, 1):
        for i, x, y in _data(rank):
            ref.update(x, keys=frame_keys(i, x.shape[0], 3), labels=y)
    rx, ry = ref.sample()
    for res in (r0["all"], r1["all"], r1["owner"]):
        assert torch.equal(res[0], rx) and torch.equal(res[1], ry)
    assert r0["owner"][0].shape[0] == 0  # not the owner: holds nothing
