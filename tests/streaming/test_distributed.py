"""sslvitals.distributed helpers, and a real 2-process gloo run of the accumulators' sync()."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sslvitals import distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import _dist_worker as W  # noqa: E402  (spawned processes import it by this name)


def test_helpers_are_noops_in_one_process():
    assert not dist.is_distributed()
    assert dist.rank() == 0 and dist.world_size() == 1
    t = torch.arange(4.0)
    assert dist.all_reduce_sum(t) is t
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object("x", src=0) == "x"
    rows = dist.all_gather_rows(torch.ones(3, 2))
    assert len(rows) == 1 and rows[0].shape == (3, 2)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.timeout(120)
def test_two_process_gloo_sync_equals_one_process(tmp_path):
    mp.spawn(W.worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    data = W.make_data()
    ref = W.one_process(data)
    lonely_accs = W.new_accumulators()
    W.feed(lonely_accs, list(range(0, W.N_UTT, 3)), data, batch_seed=7)
    lonely_ref = W.results(lonely_accs)
    n_frames = sum(len(u) for u in data[0])
    outs = []
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            outs.append(pickle.load(fh))
    for rank, out in enumerate(outs):
        h = out["helpers"]
        assert h["is_distributed"] and h["rank"] == rank and h["world_size"] == 2
        assert h["sum_f64"] == 3.0 and h["sum_i64"] == 2 * 2**40 + 1
        assert h["objects"] == [{"rank": 0, "tag": "r0"}, {"rank": 1, "tag": "r1"}]
        assert h["broadcast"] == "sent by 1"
        assert h["rows"] == [[0], [0, 10]]

        got = out["sharded"]
        # Gram: same rows summed in another order -> equal to rounding
        assert got["gram_count"] == ref["gram_count"] == n_frames
        torch.testing.assert_close(got["gram"], ref["gram"], rtol=1e-12, atol=1e-9)
        for name, value in ref["gram_measures"].items():
            assert _rel(got["gram_measures"][name], value) < 1e-9, name
        assert _rel(got["rankme_t"], ref["rankme_t"]) < 1e-9
        # reservoir and contingency: exactly the one-process result
        assert torch.equal(got["reservoir_keys"], ref["reservoir_keys"])
        assert torch.equal(got["reservoir_x"], ref["reservoir_x"])
        assert torch.equal(got["reservoir_labels"], ref["reservoir_labels"])
        assert got["reservoir_x"].shape == (W.CAPACITY, W.DIM)
        assert got["reservoir_seen"] == n_frames + len(data[0][0])  # + the padded duplicate
        np.testing.assert_array_equal(got["counts"], ref["counts"])
        assert got["counts"].shape == (16, 48)  # rank 1's extra ids reached rank 0
        assert got["contingency"] == ref["contingency"]

        lonely = out["lonely"]
        assert torch.equal(lonely["reservoir_x"], lonely_ref["reservoir_x"])
        np.testing.assert_array_equal(lonely["counts"], lonely_ref["counts"])
        for name, value in lonely_ref["gram_measures"].items():
            assert _rel(lonely["gram_measures"][name], value) < 1e-9, name
        assert out["mixed_data_eps"] == float(torch.finfo(torch.bfloat16).eps)
