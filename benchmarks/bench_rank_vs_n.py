#!/usr/bin/env python
"""Numerical rank and alpha-ReQ against the number of probe frames, old and new zero threshold.

Frames come from one distribution: D = 256, a random rotation of independent Gaussian
coordinates with standard deviations ``exp(-k / 15)`` (k = 0..255, an exponentially decaying
spectrum) plus a mean, stored as float32 (``decaying``); and the same with standard deviations
``exp(-k / 48)`` passed through a LayerNorm-like row normalisation, which removes the all-ones
direction exactly (``layernorm``). N = 5,000 / 20,000 / 180,000 frames (180,000 = one hour at
50 Hz) are drawn independently and streamed in batches of 4,000 into
:class:`sslvitals.streaming.GramAccumulator`, as in training.

Two "numerically zero" rules are compared on the same spectra:

* OLD (the rule before issue 11, reimplemented below for this table only): a singular value
  ``s_k`` of the ``(N, D)`` matrix is zero when ``s_k <= s_1 * max(N, D) * eps32``; alpha-ReQ
  fits the covariance eigenvalues above that cut. Its threshold grows with ``N``.
* NEW (sslvitals.metrics.rank): zero when ``s_k / sqrt(N) <= max(D * eps32 * s_1 / sqrt(N),
  data_eps * rms(X))``, a threshold on the per-frame spectrum, which does not grow with ``N``.

RankMe and effective rank use no threshold; they are shown for contrast.

Usage:
    python benchmarks/bench_rank_vs_n.py --out benchmarks/rank_vs_n.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sslvitals.metrics import rank as R
from sslvitals.streaming import GramAccumulator

D = 256
SIZES = (5_000, 20_000, 180_000)
BATCH = 4_000
EPS32 = float(np.finfo(np.float32).eps)
KINDS = {"decaying": 15.0, "layernorm": 48.0}  # decay length of the standard deviations


def population(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard deviations ``(D,)``, rotation ``(D, D)`` and mean ``(D,)`` of the distribution."""
    rng = np.random.default_rng(21)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return np.exp(-np.arange(D) / KINDS[kind]), q, 0.5 * q[0]


def stream(kind: str, n: int, seed: int) -> GramAccumulator:
    """Draw ``n`` float32 frames of ``kind`` batch by batch into a Gram accumulator."""
    std, q, mean = population(kind)
    rng = np.random.default_rng([seed, n])
    acc = GramAccumulator(D)
    left = n
    while left:
        b = min(BATCH, left)
        x = (rng.standard_normal((b, D)) * std) @ q + mean
        if kind == "layernorm":
            x -= x.mean(axis=1, keepdims=True)
            x /= x.std(axis=1, keepdims=True)
        acc.update(torch.from_numpy(x.astype(np.float32)))
        left -= b
    return acc


def old_rule(acc: GramAccumulator) -> tuple[float, float]:
    """OLD rule (before issue 11), reimplemented for this table: numerical rank, alpha-ReQ."""
    n, d = acc.count, acc.dim
    s = acc.spectrum(center=False).numpy()
    c = acc.spectrum(center=True).numpy()
    rank = float(np.sum(s > s[0] * max(n, d) * EPS32))
    k = min(int(np.sum(c > c[0] * max(n, d) * EPS32)), n - 1, d)
    lam = c[:k] ** 2 / (n - 1)
    j = np.arange(1, k + 1)
    alpha = -float(np.polyfit(np.log(j), np.log(lam), 1)[0])
    return rank, alpha


def table(kind: str, seed: int) -> list[str]:
    rows = ["| N frames | numerical rank OLD | numerical rank NEW | alpha-ReQ OLD | alpha-ReQ NEW "
            "| RankMe | effective rank |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in SIZES:
        acc = stream(kind, n, seed)
        new = acc.compute(["numerical_rank", "alpha_req", "rankme", "effective_rank"])
        old_rank, old_alpha = old_rule(acc)
        rows.append(f"| {n:,} | {old_rank:.0f} | {new['numerical_rank']:.0f} | {old_alpha:.3f} | "
                    f"{new['alpha_req']:.3f} | {new['rankme']:.3f} | "
                    f"{new['effective_rank']:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    cmd = "python benchmarks/bench_rank_vs_n.py" + (f" --out {args.out}" if args.out else "")
    if args.seed:
        cmd += f" --seed {args.seed}"
    lines = [
        "# Numerical rank and alpha-ReQ vs the number of probe frames",
        "",
        f"Command (from the repository root): `{cmd}`",
        "",
        f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}. Frames streamed into `GramAccumulator` in batches of {BATCH:,}, "
        "float32, D = 256; each N is an independent draw of the same distribution.",
        "",
        "OLD = the zero threshold before issue 11 (`s_k <= s_1 * max(N, D) * eps32` on the "
        "singular values of the (N, D) matrix; reimplemented in the script for this column). "
        "NEW = `s_k / sqrt(N) <= max(D * eps32 * s_1 / sqrt(N), data_eps * rms(X))`, a "
        "threshold on the per-frame spectrum (`sslvitals.metrics.rank`). RankMe and effective "
        "rank use no threshold.",
    ]
    for kind, title in (("decaying", "Exponentially decaying spectrum (std exp(-k / 15))"),
                        ("layernorm", "LayerNorm-like: std exp(-k / 48), then the all-ones "
                                      "direction removed exactly (true rank 255)")):
        lines += ["", f"## {title}", ""] + table(kind, args.seed)
    lines += ["", f"Wall time {time.time() - start:.0f} s."]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
