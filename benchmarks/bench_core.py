#!/usr/bin/env python
"""Core benchmark: sslvitals' metric maths against the pipeline a user would write today.

Compares, on seeded synthetic clustered frames (Gaussian blobs + anisotropic noise + a common
offset, D = 768):

* k-means: sslvitals (FAISS and torch backends, k-means++ seeds, 20 iterations) vs
  scikit-learn ``KMeans`` (k-means++, 1 init, 20 iterations) and ``MiniBatchKMeans``;
* exact silhouette, Davies-Bouldin, Calinski-Harabasz: sslvitals vs ``sklearn.metrics``;
* rank measures: sslvitals' streaming float64 Gram accumulator vs ``numpy.linalg.svd``;
* the full label-free suite of one layer on 180,000 frames (one hour at 50 Hz): frames
  streamed batch by batch into ``GramAccumulator`` and a 40,000-frame ``ReservoirSampler``
  (the defaults of ``VitalsConfig``), k-means k = 1024 on the reservoir, inertia, DB, CH,
  simplified and sampled (10,000) silhouette, all rank measures; against scikit-learn
  ``MiniBatchKMeans`` on all frames + sklearn metrics + numpy SVD.

Every case runs in a fresh subprocess, so the peak resident memory reported (``ru_maxrss``)
is that case's alone (it includes the Python/torch import, shown as "base"); tracemalloc
would not see torch or FAISS buffers. Results go to stdout and to a markdown file.

Usage:
    python benchmarks/bench_core.py                 # full run, writes benchmarks/RESULTS.md
    python benchmarks/bench_core.py --quick --out quick.md   # small smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
D = 768
GEN_BATCH = 4000  # frames per generated batch (80 s of audio at 50 Hz)


# --------------------------------------------------------------------------------- data

def _centres(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1_000_003])
    return (rng.standard_normal((k, D)) * 0.6).astype(np.float32)


def _noise_scales() -> np.ndarray:
    # power-law variance profile, like speech representations (a few strong directions)
    return (1.5 / np.sqrt(1.0 + np.arange(D) / 8.0)).astype(np.float32)


def batches(n: int, k: int, seed: int = 0):
    """Yield ``(x (b, D) float32, labels (b,) int64)``; deterministic for (n, k, seed)."""
    centres = _centres(k, seed)
    scales = _noise_scales()
    for b, start in enumerate(range(0, n, GEN_BATCH)):
        m = min(GEN_BATCH, n - start)
        rng = np.random.default_rng([seed, b])
        lab = rng.integers(0, k, m)
        x = centres[lab] + rng.standard_normal((m, D), dtype=np.float32) * scales + 0.5
        yield x, lab


def materialise(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((n, D), dtype=np.float32)
    lab = np.empty(n, dtype=np.int64)
    pos = 0
    for xb, lb in batches(n, k, seed):
        x[pos : pos + len(xb)] = xb
        lab[pos : pos + len(lb)] = lb
        pos += len(xb)
    return x, lab


# --------------------------------------------------------------------------------- workers

def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _numpy_rank(x: np.ndarray) -> dict[str, float]:
    """RankMe (uncentred) and effective rank (centred) from two numpy SVDs, as a user would."""
    s = np.linalg.svd(x, compute_uv=False).astype(np.float64)
    p = s / s.sum() + 1e-7
    rankme = float(np.exp(-(p * np.log(p)).sum()))
    c = np.linalg.svd(x - x.mean(axis=0), compute_uv=False).astype(np.float64)
    q = c / c.sum()
    q = q[q > 0]
    erank = float(np.exp(-(q * np.log(q)).sum()))
    return {"rankme": rankme, "effective_rank": erank}


def worker(case: str, n: int, k: int, threads: int) -> dict:
    """Run one case in this (fresh) process and return its measurements."""
    import torch

    torch.set_num_threads(threads)
    out: dict = {}
    streaming_case = case == "suite_ours"
    if not streaming_case:
        x, lab = materialise(n, k)
    out["base_rss_mb"] = _rss_mb()
    t0 = time.perf_counter()
    if case.startswith("kmeans_ours"):
        from sslvitals.metrics.cluster import kmeans

        backend = case.split(":")[1]
        res = kmeans(x, k, niter=20, seed=0, backend=backend)
        out["values"] = {"inertia/N": res.inertia / n}
        out["note"] = f"{res.backend} on {res.device}"
    elif case == "kmeans_sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=0).fit(x)
        out["values"] = {"inertia/N": float(km.inertia_) / n}
        out["note"] = f"KMeans k-means++ 1 init, {km.n_iter_} iters"
    elif case == "kmeans_minibatch":
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(n_clusters=k, n_init=1, max_iter=20, batch_size=10000,
                             random_state=0).fit(x)
        out["values"] = {"inertia/N": float(km.inertia_) / n}
        out["note"] = "MiniBatchKMeans batch 10000, 1 init, <=20 epochs"
    elif case == "silhouette_ours":
        from sslvitals.metrics.cluster import silhouette_score

        out["values"] = {"silhouette": silhouette_score(x, lab)}
        out["note"] = "exact, blocked float32 products, float64 sums"
    elif case == "silhouette_sklearn":
        from sklearn.metrics import silhouette_score

        out["values"] = {"silhouette": float(silhouette_score(x, lab))}
        out["note"] = "sklearn.metrics.silhouette_score, exact"
    elif case == "dbch_ours":
        from sslvitals.metrics.cluster import calinski_harabasz_score, davies_bouldin_score

        out["values"] = {"davies_bouldin": davies_bouldin_score(x, lab),
                         "calinski_harabasz": calinski_harabasz_score(x, lab)}
    elif case == "dbch_sklearn":
        from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

        out["values"] = {"davies_bouldin": float(davies_bouldin_score(x, lab)),
                         "calinski_harabasz": float(calinski_harabasz_score(x, lab))}
    elif case == "rank_ours":
        from sslvitals.streaming import GramAccumulator

        acc = GramAccumulator(D)
        for s in range(0, n, GEN_BATCH):
            acc.update(x[s : s + GEN_BATCH])
        vals = acc.compute()
        out["values"] = {m: vals[m] for m in ("rankme", "effective_rank")}
        out["note"] = "float64 Gram accumulated per batch; all 6 measures computed"
    elif case == "rank_numpy":
        out["values"] = _numpy_rank(x)
        out["note"] = "numpy.linalg.svd of X and of X - mean (float32)"
    elif case == "suite_ours":
        out.update(_suite_ours(n, k, t0))
    elif case == "suite_sklearn":
        out.update(_suite_sklearn(x, k))
    else:
        raise SystemExit(f"unknown case {case}")
    out["seconds"] = time.perf_counter() - t0 - out.pop("excluded_s", 0.0)
    out["peak_rss_mb"] = _rss_mb()
    return out


def _suite_ours(n: int, k: int, t0: float) -> dict:
    """The label-free suite as the validation hook runs it, frames arriving batch by batch."""
    import torch

    from sslvitals.metrics.cluster import (calinski_harabasz_score, davies_bouldin_score, kmeans,
                                           silhouette_score, simplified_silhouette_score)
    from sslvitals.streaming import GramAccumulator, ReservoirSampler

    gram = GramAccumulator(D)
    reservoir = ReservoirSampler(40000, D, seed=0)
    gen_s = 0.0
    stamps = {}
    tg = time.perf_counter()
    it = batches(n, k)
    while True:
        g0 = time.perf_counter()
        try:
            xb, _ = next(it)
        except StopIteration:
            break
        gen_s += time.perf_counter() - g0
        xt = torch.from_numpy(xb)
        gram.update(xt)
        reservoir.update(xt)
    stamps["stream"] = time.perf_counter() - tg - gen_s
    t = time.perf_counter()
    ranks = gram.compute()
    stamps["rank"] = time.perf_counter() - t
    xs, _ = reservoir.sample()
    t = time.perf_counter()
    km = kmeans(xs, k, niter=20, seed=0)
    stamps["kmeans"] = time.perf_counter() - t
    t = time.perf_counter()
    vals = {
        "inertia/N": km.inertia / xs.shape[0],
        "davies_bouldin": davies_bouldin_score(xs, km.labels),
        "calinski_harabasz": calinski_harabasz_score(xs, km.labels),
        "simplified_silhouette": simplified_silhouette_score(xs, km.labels),
    }
    stamps["db_ch_ssil"] = time.perf_counter() - t
    t = time.perf_counter()
    vals["silhouette(10k)"] = silhouette_score(xs, km.labels, sample_size=10000, seed=0)
    stamps["silhouette"] = time.perf_counter() - t
    vals["rankme"] = ranks["rankme"]
    vals["effective_rank"] = ranks["effective_rank"]
    note = (f"{km.backend} on {km.device}; stages (s): "
            + ", ".join(f"{a} {b:.1f}" for a, b in stamps.items())
            + f"; data generation {gen_s:.1f} s excluded")
    return {"values": vals, "note": note, "excluded_s": gen_s}


def _suite_sklearn(x: np.ndarray, k: int) -> dict:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    stamps = {}
    t = time.perf_counter()
    # 5 epochs over all frames ~ the distance computations of 20 Lloyd iterations on a
    # 40,000-frame reservoir plus one assignment of everything.
    km = MiniBatchKMeans(n_clusters=k, n_init=1, max_iter=5, batch_size=10000, random_state=0).fit(x)
    stamps["kmeans"] = time.perf_counter() - t
    lab = km.labels_
    t = time.perf_counter()
    vals = {
        "inertia/N": float(km.inertia_) / len(x),
        "davies_bouldin": float(davies_bouldin_score(x, lab)),
        "calinski_harabasz": float(calinski_harabasz_score(x, lab)),
    }
    stamps["db_ch"] = time.perf_counter() - t
    t = time.perf_counter()
    vals["silhouette(10k)"] = float(silhouette_score(x, lab, sample_size=10000, random_state=0))
    stamps["silhouette"] = time.perf_counter() - t
    t = time.perf_counter()
    vals.update(_numpy_rank(x))
    stamps["svd"] = time.perf_counter() - t
    note = ("MiniBatchKMeans (5 epochs) on all frames + sklearn metrics + numpy SVD; stages (s): "
            + ", ".join(f"{a} {b:.1f}" for a, b in stamps.items()))
    return {"values": vals, "note": note}


# --------------------------------------------------------------------------------- driver

def plan(quick: bool) -> list[tuple[str, str, int, int, str]]:
    """(group, case, n, k, who) rows in run order."""
    small, big = (3000, 12000) if quick else (20000, 180000)
    k_small, k_big = (20, 64) if quick else (100, 1024)
    rows = []
    g = f"k-means, N={small:,}, k={k_small}"
    rows += [(g, "kmeans_ours:faiss", small, k_small, "sslvitals (faiss)"),
             (g, "kmeans_ours:torch", small, k_small, "sslvitals (torch)"),
             (g, "kmeans_minibatch", small, k_small, "sklearn MiniBatchKMeans"),
             (g, "kmeans_sklearn", small, k_small, "sklearn KMeans")]
    # k = 1024: full-batch sklearn KMeans is left out to keep the run under 15 minutes on a
    # shared 2-core machine; MiniBatchKMeans is what users run at this size anyway.
    g = f"k-means, N={small:,}, k={k_big}"
    rows += [(g, "kmeans_ours:faiss", small, k_big, "sslvitals (faiss)"),
             (g, "kmeans_minibatch", small, k_big, "sklearn MiniBatchKMeans")]
    for k in (k_small, k_big):
        g = f"exact silhouette, N={small:,}, k={k}"
        rows += [(g, "silhouette_ours", small, k, "sslvitals"),
                 (g, "silhouette_sklearn", small, k, "sklearn")]
    g = f"Davies-Bouldin + Calinski-Harabasz, N={small:,}, k={k_small}"
    rows += [(g, "dbch_ours", small, k_small, "sslvitals"), (g, "dbch_sklearn", small, k_small, "sklearn")]
    g = f"rank measures, N={small:,}"
    rows += [(g, "rank_ours", small, k_small, "sslvitals Gram"), (g, "rank_numpy", small, k_small, "numpy SVD")]
    g = f"label-free suite of one layer, N={big:,}, k={k_big}"
    rows += [(g, "suite_ours", big, k_big, "sslvitals (stream + reservoir 40k)"),
             (g, "suite_sklearn", big, k_big, "sklearn + numpy on all frames")]
    return rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e4 else f"{v:,.1f}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                    help="markdown file to write (default: benchmarks/RESULTS.md)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per case (default 2)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--only", default="", help="comma-separated case names to run (default all)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.k, args.threads)))
        return 0

    # the command as typed, with this checkout's location shown as a relative path
    cmd = "python benchmarks/bench_core.py " + " ".join(
        shlex.quote(a.replace(str(ROOT) + os.sep, "")) for a in sys.argv[1:])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    only = {c for c in args.only.split(",") if c}
    load_before = os.getloadavg()
    results = []
    t_all = time.perf_counter()
    for group, case, n, k, who in plan(args.quick):
        if only and case not in only:
            continue
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", case, "--n", str(n),
             "--k", str(k), "--threads", str(args.threads)],
            capture_output=True, text=True, env=env, cwd=str(ROOT))
        if proc.returncode != 0:
            res = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            res = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update(group=group, case=case, who=who, load=os.getloadavg()[0])
        results.append(res)
        vals = ", ".join(f"{a}={_fmt(b)}" for a, b in res.get("values", {}).items())
        print(f"[{group}] {who}: {res.get('seconds', float('nan')):.2f} s, peak "
              f"{res.get('peak_rss_mb', float('nan')):.0f} MB  {vals} {res.get('error', '')}",
              flush=True)
    total = time.perf_counter() - t_all
    load_after = os.getloadavg()
    _write(args, cmd, results, total, load_before, load_after)
    return 0


def _write(args, cmd, results, total, load_before, load_after) -> None:
    import faiss
    import sklearn
    import torch

    lines = [
        "# Core benchmark results",
        "",
        "Command (from the repository root):",
        "",
        "```",
        cmd.strip(),
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, faiss {faiss.__version__}, "
        f"scikit-learn {sklearn.__version__}; {args.threads} threads per case.",
        f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"(other jobs share this machine; the per-row column shows the load when each case "
        f"finished). Total wall time {total:.0f} s.",
        "",
        f"Data: seeded Gaussian blobs (k centres), anisotropic noise and a common offset, D = {D}, "
        "float32; the cluster scores use the generating blob of each frame as labels, so both "
        "sides score the same partition. Each case runs in a fresh subprocess; 'peak RSS' is "
        "`ru_maxrss` of that process (Python + torch imports + data included; 'base' is the "
        "RSS before the timed part).",
        "",
    ]
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["group"], []).append(r)
    for g, rows in groups.items():
        lines += [f"## {g}", "",
                  "| implementation | seconds | speed-up | peak RSS MB (base) | values "
                  "| abs. difference to last row | notes | load |",
                  "|---|---:|---:|---:|---|---|---|---:|"]
        ref = rows[-1].get("seconds") if len(rows) > 1 else None
        ref_vals = rows[-1].get("values", {})
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['who']} | n/a | | | | | failed: {r['error']} | |")
                continue
            speed = f"{ref / r['seconds']:.1f}x" if ref and r is not rows[-1] else ""
            vals = "<br>".join(f"{a} = {_fmt(b)}" for a, b in r["values"].items())
            diffs = "" if r is rows[-1] else "<br>".join(
                f"{a}: {abs(b - ref_vals[a]):.2g}" for a, b in r["values"].items()
                if isinstance(ref_vals.get(a), float))
            lines.append(f"| {r['who']} | {r['seconds']:.2f} | {speed} | "
                         f"{r['peak_rss_mb']:.0f} ({r['base_rss_mb']:.0f}) | {vals} | {diffs} | "
                         f"{r.get('note', '')} | {r['load']:.1f} |")
        lines.append("")
    lines += [
        "Speed-up is relative to the last row of each table (the scikit-learn / numpy pipeline).",
        "",
        "Reading the suite table: sslvitals scores the 40,000-frame reservoir, the reference "
        "all 180,000 frames with a different k-means, so cluster scores agree only roughly; "
        "Calinski-Harabasz grows with the number of frames (factor (N - k) / (k - 1)) and is "
        "not comparable across sample sizes. The rank measures see the same frames on both "
        "sides and agree to 1e-6.",
        "",
        "Not run: scikit-learn `KMeans` (full batch) at k = 1024, to keep the whole run under "
        "15 minutes on this shared machine (its cost is that of 20 Lloyd iterations plus a "
        "greedy k-means++ over all 20,000 frames, several times the FAISS row).",
        "",
        "Not run: exact silhouette at N = 180,000. It needs about N^2 D = 2.5e13 multiply-adds "
        "(sslvitals uses the symmetric half): about 140 s at this CPU's ~180 GFLOP/s fp32 ceiling "
        "for sslvitals, far longer for scikit-learn (which computes both halves and upcasts "
        "chunks to float64), and about a second on one GPU. The suite therefore reports the "
        "seeded 10,000-frame silhouette, as the validation hook does by default.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
