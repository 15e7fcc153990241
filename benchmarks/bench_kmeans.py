#!/usr/bin/env python
"""k-means wall time: sslvitals (k-means++ seeds + FAISS Lloyd) against FAISS with random seeds.

On the frames of the default reservoir (40,000 x 768, seeded Gaussian blobs from
``bench_core.py``), for k = 1024 and k = 100, 20 Lloyd iterations, one process, cases
interleaved round by round (so a burst of load from other jobs hits every case alike):

* ``faiss random``: ``faiss.Kmeans(...).train(x)``, FAISS's own random initialisation, on
  all frames (``max_points_per_centroid`` raised so FAISS does not subsample; sslvitals does
  not either). Only training is timed; ``faiss random + labels`` adds the
  ``km.index.search(x, 1)`` that gives the labels.
* ``sslvitals``: ``sslvitals.metrics.kmeans(x, k, backend=...)``: seeding, the same FAISS
  Lloyd iterations, and the labels and inertia of the returned centroids.
* ``sslvitals, old seeding``: the same call with the previous step-by-step greedy seeding
  (``_seed_greedy``), i.e. the code before this change, measured in the same run.
* ``seeding only (new / old)``: the two seedings alone.

Each round uses its own seed (round r: seed r) for every case, so the inertia columns compare
the seedings on the same draws. Inertia is the sum of squared distances of all frames to the
returned centroids (computed outside the timed part for FAISS). Medians over the rounds are
reported with the load average; the markdown goes to ``--out``.

With ``--device cuda`` the sslvitals cases run the torch backend on CUDA tensors and the
reference is FAISS on the GPU when FAISS sees one (else that side is skipped, with a note).

Usage:
    python benchmarks/bench_kmeans.py                      # writes benchmarks/kmeans.md
    python benchmarks/bench_kmeans.py --quick --out q.md   # small smoke run
    python benchmarks/bench_kmeans.py --device cuda --out kmeans_cuda.md
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_core import D, materialise  # noqa: E402
from sslvitals.metrics import cluster as C  # noqa: E402


def _faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _inertia(x: torch.Tensor, centroids) -> float:
    _, sq = C.assign(x, torch.as_tensor(np.asarray(centroids)).to(x.device))
    return float(sq.double().sum())


def run_k(x_np: np.ndarray, k: int, rounds: int, niter: int, device: str, log) -> dict:
    """Interleaved rounds for one k; returns per-case lists of seconds and inertias."""
    faiss = _faiss()
    n = x_np.shape[0]
    x_dev = torch.from_numpy(x_np).to(device)
    backend = "auto"
    use_gpu_faiss = faiss is not None and device.startswith("cuda") and faiss.get_num_gpus() > 0
    cases: dict[str, dict] = {}

    def record(name, seconds, inertia=None, note=""):
        c = cases.setdefault(name, {"seconds": [], "inertia": [], "note": note})
        c["seconds"].append(seconds)
        if inertia is not None:
            c["inertia"].append(inertia)

    for r in range(rounds):
        # FAISS, random initialisation, all frames
        if faiss is not None and (device == "cpu" or use_gpu_faiss):
            km = faiss.Kmeans(D, k, niter=niter, seed=r, gpu=use_gpu_faiss, verbose=False,
                              max_points_per_centroid=math.ceil(n / k) + 1,
                              min_points_per_centroid=1)
            t = time.perf_counter()
            km.train(x_np)
            dt = time.perf_counter() - t
            t = time.perf_counter()
            km.index.search(x_np, 1)  # the labels a user of faiss.Kmeans computes next
            dt_labels = time.perf_counter() - t
            where = " (GPU)" if use_gpu_faiss else ""
            record("faiss random", dt, _inertia(x_dev, km.centroids),
                   f"faiss.Kmeans train, random init{where}; {len(km.obj)} iterations run")
            record("faiss random + labels", dt + dt_labels, None,
                   "the same train plus km.index.search(x, 1) for the labels")
        # sslvitals, new seeding
        _sync(device)
        t = time.perf_counter()
        res = C.kmeans(x_dev, k, niter=niter, seed=r, backend=backend)
        _sync(device)
        record("sslvitals", time.perf_counter() - t, res.inertia,
               f"kmeans(backend='{backend}'): {res.backend} on {res.device}")
        # sslvitals, previous seeding
        _sync(device)
        t = time.perf_counter()
        old = C._kmeans(x_dev, k, niter=niter, seed=r, backend=backend, seeding=C._seed_greedy)
        _sync(device)
        record("sslvitals, old seeding", time.perf_counter() - t, old.inertia,
               f"same call, previous greedy seeding: {old.backend} on {old.device}")
        # the seedings alone, inside the precision guard as kmeans runs them
        x32 = x_dev.float()
        for name, fn in (("seeding only, new", C._kmeanspp), ("seeding only, old", C._seed_greedy)):
            with C._full_float32_matmul():
                _sync(device)
                t = time.perf_counter()
                cents = fn(x32, k, r)
                _sync(device)
                dt = time.perf_counter() - t
            record(name, dt, _inertia(x_dev, cents), "inertia of the seeds themselves")
        load = os.getloadavg()[0]
        log(f"  k={k} round {r}: " + ", ".join(
            f"{name} {c['seconds'][-1]:.2f} s" for name, c in cases.items()
            if not name.startswith("_")) + f"; load {load:.2f}")
        cases.setdefault("_load", {"seconds": []})["seconds"].append(load)
    return cases


def _med(v):
    return statistics.median(v) if v else float("nan")


def _table(k: int, n: int, cases: dict) -> list[str]:
    ref_rounds = cases.get("faiss random", {}).get("seconds", [])
    ref = _med(ref_rounds)
    old_in = cases["sslvitals, old seeding"]["inertia"]
    lines = [f"## k = {k}, N = {n:,}, D = {D}", "",
             "| case | median s | all rounds (s) | / faiss random (medians) "
             "| / faiss random (median of same-round ratios) | median inertia/N "
             "| inertia / old seeding (per seed) | notes |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    for name, c in cases.items():
        if name.startswith("_"):
            continue
        med = _med(c["seconds"])
        ratio = f"{med / ref:.2f}x" if ref == ref and ref > 0 else "n/a"
        if len(ref_rounds) == len(c["seconds"]) and ref_rounds:
            paired = f"{_med([a / b for a, b in zip(c['seconds'], ref_rounds)]):.2f}x"
        else:
            paired = "n/a"
        inert = f"{_med(c['inertia']) / n:.4f}" if c["inertia"] else ""
        if c["inertia"] and len(c["inertia"]) == len(old_in):
            rel = [a / b for a, b in zip(c["inertia"], old_in)]
            vs_old = f"{min(rel):.4f} .. {max(rel):.4f}"
        else:
            vs_old = ""
        rounds = ", ".join(f"{s:.2f}" for s in c["seconds"])
        lines.append(f"| {name} | {med:.2f} | {rounds} | {ratio} | {paired} | {inert} | {vs_old} "
                     f"| {c['note']} |")
    loads = cases.get("_load", {}).get("seconds", [])
    lines += ["", f"Load average (1 min) after each round: {', '.join(f'{v:.2f}' for v in loads)}.", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "kmeans.md"),
                    help="markdown file to write (default: benchmarks/kmeans.md)")
    ap.add_argument("--n", type=int, default=40000, help="frames (default 40,000, the reservoir)")
    ap.add_argument("--ks", default="1024,100", help="comma-separated k values (default 1024,100)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per k (default 5)")
    ap.add_argument("--niter", type=int, default=20, help="Lloyd iterations (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="torch and FAISS threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--quick", action="store_true", help="N=6,000, k=128 and 20, 2 rounds: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.n, args.ks, args.rounds = 6000, "128,20", 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")

    torch.set_num_threads(args.threads)
    faiss = _faiss()
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    cmd = "python benchmarks/bench_kmeans.py " + " ".join(
        shlex.quote(a.replace(str(ROOT) + os.sep, "")) for a in sys.argv[1:])
    up_before = _uptime()
    print(f"before: {up_before}", flush=True)
    ks = [int(v) for v in args.ks.split(",") if v]
    t_all = time.perf_counter()
    # warm-up: thread pools, allocator, FAISS
    xw, _ = materialise(2048, 16, seed=1)
    C.kmeans(torch.from_numpy(xw).to(args.device), 16, niter=2)
    results = {}
    for k in ks:
        x_np, _ = materialise(args.n, k)
        results[k] = run_k(x_np, k, args.rounds, args.niter, args.device,
                           lambda s: print(s, flush=True))
    total = time.perf_counter() - t_all
    up_after = _uptime()
    print(f"after: {up_after}", flush=True)

    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or platform.machine()
    lines = [
        "# k-means: k-means++ seeding at matrix speed vs FAISS random initialisation",
        "",
        "Command (from the repository root):",
        "",
        "```",
        cmd.strip(),
        "```",
        "",
        f"Machine: {platform.machine()} ({dev_name}), {os.cpu_count()} CPU cores, device "
        f"{args.device}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"faiss {getattr(faiss, '__version__', 'not installed')}; {args.threads} threads.",
        f"`uptime` before: `{up_before}`",
        f"`uptime` after: `{up_after}`",
        f"Total wall time {total:.0f} s. The machine is shared with other jobs: compare the "
        "columns of one round, not absolute times across runs.",
        "",
        f"Data: `bench_core.materialise(N, k)` (seeded Gaussian blobs, anisotropic noise, offset), "
        f"float32, {args.niter} Lloyd iterations; {args.rounds} rounds, cases interleaved within "
        "each round, round r uses seed r for every case.",
        "",
    ]
    for k in ks:
        lines += _table(k, args.n, results[k])
    lines += [
        "Columns: '/ faiss random (medians)' is the median time over FAISS's median time; "
        "'(median of same-round ratios)' divides each round's time by FAISS's time in the same "
        "round first, which cancels slow drifts of the machine's load. 'faiss random' trains "
        "only; sslvitals also returns the labels and inertia of its final centroids (one more "
        "assignment pass), so 'faiss random + labels' is the like-for-like FAISS figure. FAISS "
        "stops before `niter` when its objective stops improving (the notes give the count). "
        "'inertia / old seeding' is, per seed, the final inertia over that of the previous "
        "seeding on the same seed (1.0000 = identical result). 'seeding only' rows report the "
        "inertia of the k seeds before any Lloyd iteration.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
