"""Layers spread across ranks: time and peak memory per rank, two gloo processes, CPU.

Runs :meth:`sslvitals.monitor.VitalsMonitor.measure` on the demo's probe and final checkpoint
in two ``torch.distributed`` (gloo) processes, twice, each time in fresh processes:

* ``rank 0 computes`` (sslvitals 0.1): every rank receives every layer's reservoir union, rank 0
  runs all k-means and cluster scores while the other waits;
* ``spread`` (today): each layer has an owner rank (round-robin), only the owner gathers that
  layer's reservoir and computes it; the results are all-gathered, so every rank logs the same
  numbers.

Reports per rank the wall time of ``measure`` and the growth of the process's peak resident
memory during it (``ru_maxrss`` after minus before), and checks that both modes give identical
values.

Usage (after ``make demo``)::

    python benchmarks/bench_spread_layers.py --workdir sslvitals-demo --out benchmarks/spread_layers.md
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init: str, out: str, workdir: str, spread: bool, k: int) -> None:
    from sslvitals.config import VitalsConfig
    from sslvitals.monitor import VitalsMonitor
    from sslvitals.offline.loaders import expand_checkpoints, load_checkpoint
    from sslvitals.probe import ProbeSet

    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                         world_size=world)
    torch.set_num_threads(1)
    work = Path(workdir)
    probe = ProbeSet.from_path(work / "corpus" / "probe.tsv").shard(rank, world)
    spec = expand_checkpoints([str(work / "run" / "checkpoints" / "checkpoint_last.pt")])[0]
    loaded = load_checkpoint(spec, torch.device("cpu"))
    cfg = VitalsConfig(enabled=True, k=k, metrics="label_free", backend="torch")
    monitor = VitalsMonitor(cfg)
    monitor.spread_layers = spread
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    values = monitor.measure(loaded.model, loaded.forward_fn, lambda: probe.batches(60.0),
                             tap_layers=loaded.tap_layers)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    values.pop("vitals/seconds", None)
    torch.save({"seconds": seconds, "rss_growth_mb": (after - before) / 1024,
                "peak_mb": after / 1024, "values": values}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def _run(workdir: str, spread: bool, k: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), os.path.join(tmp, "out"), workdir,
                                spread, k), nprocs=2, join=True)
        return [torch.load(os.path.join(tmp, f"out.{r}")) for r in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="sslvitals-demo")
    ap.add_argument("--k", type=int, default=1024, help="k-means clusters (library default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    old = _run(args.workdir, False, args.k)
    new = _run(args.workdir, True, args.k)
    same = all(old[0]["values"][key] == new[r]["values"][key] or
               (old[0]["values"][key] != old[0]["values"][key] and new[r]["values"][key] != new[r]["values"][key])
               for key in old[0]["values"] for r in (0, 1))
    cmd = f"python benchmarks/bench_spread_layers.py --workdir {args.workdir} --k {args.k}" + (
        f" --out {args.out}" if args.out else "")
    lines = [
        "# Layers spread across ranks (2 gloo processes, CPU)",
        "",
        f"Command: `{cmd}`",
        "",
        f"The demo's final checkpoint (tiny HuBERT, 5 layers x 128) on its 10-minute probe, split "
        f"over two processes; label-free metrics, k = {args.k}, reservoir 40,000, silhouette "
        f"sample 10,000, torch k-means, one thread per process. Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average before the run "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine).",
        "",
        "| mode | rank | measure wall time (s) | peak RSS growth during measure (MB) | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, res in (("rank 0 computes every layer (0.1)", old), ("each layer on its owner rank", new)):
        for r, d in enumerate(res):
            lines.append(f"| {name} | {r} | {d['seconds']:.1f} | {d['rss_growth_mb']:.0f} | {d['peak_mb']:.0f} |")
    lines += ["", f"Values identical in both modes on both ranks: {'yes' if same else 'NO'} "
              f"({len(old[0]['values'])} values)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
