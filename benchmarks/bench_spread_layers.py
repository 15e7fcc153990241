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


class Framer(torch.nn.Module):
    """A Base-width stand-in: 25 ms windows every 20 ms, a random projection to ``dim``, then
    ``layers`` random ``Linear + GELU`` blocks (13 layer outputs for 12 blocks, like HuBERT Base).
    Its frames have Base's width and count, which is what the metric work and memory depend on."""

    def __init__(self, dim: int = 768, layers: int = 12, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(400, dim)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU()) for _ in range(layers))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.proj(wav.unfold(-1, 400, 320))
        for block in self.blocks:
            x = block(x)
        return x


def _framer_forward(model: torch.nn.Module, batch) -> None:  # noqa: ANN001 - a ProbeBatch
    model(batch.wav)


def _worker(rank: int, world: int, init: str, out: str, workdir: str, spread: bool, k: int,
            model_kind: str) -> None:
    from sslvitals.config import VitalsConfig
    from sslvitals.monitor import VitalsMonitor
    from sslvitals.offline.loaders import expand_checkpoints, load_checkpoint
    from sslvitals.probe import ProbeSet

    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                                         world_size=world)
    torch.set_num_threads(1)
    work = Path(workdir)
    probe = ProbeSet.from_path(work / "corpus" / "probe.tsv").shard(rank, world)
    if model_kind == "demo":
        spec = expand_checkpoints([str(work / "run" / "checkpoints" / "checkpoint_last.pt")])[0]
        loaded = load_checkpoint(spec, torch.device("cpu"))
        model, forward_fn, tap = loaded.model, loaded.forward_fn, loaded.tap_layers
    else:
        for item in probe.items:  # label-free only: the stand-in has no phone framing
            item.labels = None
        probe.has_labels = False
        model, forward_fn, tap = Framer(), _framer_forward, "blocks"
    cfg = VitalsConfig(enabled=True, k=k, metrics="label_free", backend="torch")
    monitor = VitalsMonitor(cfg)
    monitor.spread_layers = spread
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    values = monitor.measure(model, forward_fn, lambda: probe.batches(60.0), tap_layers=tap)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    values.pop("vitals/seconds", None)
    torch.save({"seconds": seconds, "rss_growth_mb": (after - before) / 1024,
                "peak_mb": after / 1024, "values": values}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def _run(workdir: str, spread: bool, k: int, model_kind: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), os.path.join(tmp, "out"), workdir,
                                spread, k, model_kind), nprocs=2, join=True)
        return [torch.load(os.path.join(tmp, f"out.{r}")) for r in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="sslvitals-demo")
    ap.add_argument("--k", type=int, default=1024, help="k-means clusters (library default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cmd = f"python benchmarks/bench_spread_layers.py --workdir {args.workdir} --k {args.k}" + (
        f" --out {args.out}" if args.out else "")
    load = os.getloadavg()[0]
    runs = {}
    for kind in ("demo", "base-width"):
        runs[kind] = (_run(args.workdir, False, args.k, kind), _run(args.workdir, True, args.k, kind))
    lines = [
        "# Layers spread across ranks (2 gloo processes, CPU)",
        "",
        f"Command: `{cmd}`",
        "",
        f"The demo's 10-minute probe (146 utterances) split over two processes; label-free "
        f"metrics, k = {args.k}, reservoir 40,000, silhouette sample 10,000, torch k-means, one "
        f"thread per process. Models: `demo` = the demo's final checkpoint (tiny HuBERT, 5 layer "
        f"outputs x 128); `base-width` = a random stand-in with HuBERT Base's frame width and "
        f"layer count (13 outputs x 768, see `Framer`). Python {platform.python_version()}, torch "
        f"{torch.__version__}; load average before the run {load:.1f} on {os.cpu_count()} cores "
        f"(a shared machine: times are noisy, memory is not).",
        "",
        "| model | mode | rank | measure wall time (s) | peak RSS growth during measure (MB) | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for kind, (old, new) in runs.items():
        for name, res in (("rank 0 computes every layer (0.1)", old), ("each layer on its owner rank", new)):
            for r, d in enumerate(res):
                lines.append(f"| {kind} | {name} | {r} | {d['seconds']:.1f} | {d['rss_growth_mb']:.0f} "
                             f"| {d['peak_mb']:.0f} |")
        same = all(old[0]["values"][key] == new[r]["values"][key]
                   or (old[0]["values"][key] != old[0]["values"][key]
                       and new[r]["values"][key] != new[r]["values"][key])
                   for key in old[0]["values"] for r in (0, 1))
        verdicts.append(f"{kind}: values identical in both modes on both ranks: "
                        f"{'yes' if same else 'NO'} ({len(old[0]['values'])} values).")
    lines += [""] + verdicts
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
