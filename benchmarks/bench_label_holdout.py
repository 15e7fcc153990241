"""Phone purity and PNMI in-sample against held-out, on the demo's probe and checkpoints.

For every layer of every checkpoint given, three ways to count (phone, cluster) pairs:

k-means fitted on one set of utterances and the (phone, cluster) pairs counted on another
(every probe utterance, the even-indexed ones, the odd-indexed ones), plain and with the
Miller-Madow correction, next to the value :class:`~sslvitals.monitor.VitalsMonitor` reports
(fit on the even-indexed utterances, count on the odd-indexed ones). Comparing the columns
separates the two biases of a plug-in PNMI: counting the frames that fitted the clusters, and
counting few frames.

Usage (after ``make demo``, which leaves its work folder in ``sslvitals-demo/``)::

    python benchmarks/bench_label_holdout.py --workdir sslvitals-demo --out benchmarks/label_holdout.md
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from sslvitals import metrics as M
from sslvitals.config import VitalsConfig
from sslvitals.hooks import LayerTap
from sslvitals.monitor import VitalsMonitor, align_labels, is_heldout
from sslvitals.offline.loaders import expand_checkpoints, load_checkpoint
from sslvitals.probe import ProbeSet
from sslvitals.streaming import ReservoirSampler, frame_keys


def _frames(loaded, probe: ProbeSet) -> dict[int, list[tuple[int, np.ndarray, torch.Tensor]]]:
    """Every probe utterance alone through the model: per layer (index, labels, (T, D))."""
    out: dict[int, list] = {}
    with torch.no_grad(), LayerTap(loaded.model, layers=loaded.tap_layers) as tap:
        rates = tap.frame_rates()
        for batch in probe.batches(batch_seconds=1e-3):  # one utterance per batch
            tap.clear()
            tap.set_input_lengths(batch.lengths)
            loaded.forward_fn(loaded.model, batch)
            for layer, utts in tap.utterances().items():
                u = utts[0].float().cpu()
                lab = align_labels(batch.labels[0], u.shape[0], rates.get(layer, 50.0))
                out.setdefault(layer, []).append((batch.index[0], lab, u))
    return out


def _fit(cfg: VitalsConfig, fit: list) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """k-means on a seeded reservoir of ``fit``: (centroids, reservoir frames, their labels)."""
    dim = fit[0][2].shape[1]
    res = ReservoirSampler(cfg.reservoir_size, dim, seed=cfg.seed)
    for idx, lab, u in fit:
        res.update(u, keys=frame_keys(idx, u.shape[0], cfg.seed), labels=torch.from_numpy(lab))
    x, y = res.sample()
    km = M.kmeans(x, cfg.k, niter=cfg.kmeans_iters, seed=cfg.seed, backend=cfg.backend)
    return km.centroids, x, np.asarray(y)


def _counts(centroids: torch.Tensor, frames: list) -> np.ndarray:
    """(phone, cluster) counts of ``frames`` assigned to ``centroids``."""
    xs = torch.cat([u for _, _, u in frames])
    clusters = M.assign(xs, centroids)[0].cpu().numpy()
    phones = np.concatenate([lab for _, lab, _ in frames])
    return M.contingency_matrix(phones, clusters)


def _pnmi_mm(c: np.ndarray) -> float:
    """PNMI with the Miller-Madow correction of each plug-in entropy (+ (bins - 1) / (2 N))."""
    c = np.asarray(c, dtype=np.float64)
    n = c.sum()

    def h(counts: np.ndarray) -> float:
        p = counts[counts > 0] / n
        return float(-(p * np.log(p)).sum() + (np.count_nonzero(counts) - 1) / (2 * n))

    hx, hy, hxy = h(c.sum(1)), h(c.sum(0)), h(c.ravel())
    return (hx + hy - hxy) / hx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="sslvitals-demo", help="the demo's work folder")
    ap.add_argument("--checkpoints", nargs="*", default=None,
                    help="checkpoints (default: the demo run's checkpoint_last.pt, its final model)")
    ap.add_argument("--k", type=int, default=100, help="k-means clusters (the demo's value)")
    ap.add_argument("--out", default=None, help="write the markdown here too")
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(args.workdir)
    probe = ProbeSet.from_path(work / "corpus" / "probe.tsv")
    ckpts = args.checkpoints or [str(work / "run" / "checkpoints" / "checkpoint_last.pt")]
    cfg = VitalsConfig(enabled=True, k=args.k, metrics="phone_purity,pnmi", silhouette_sample=0)
    lines = [
        "# Label metrics: in-sample against held-out frames",
        "",
        "Command: `python benchmarks/bench_label_holdout.py --workdir "
        + f"{args.workdir} --k {args.k}" + (f" --out {args.out}" if args.out else "") + "`",
        "",
        f"Probe: the demo's {probe.total_seconds / 60:.1f}-minute probe, {len(probe)} utterances "
        f"({sum(1 for it in probe.items if is_heldout(it.index))} held out, odd index); k = {cfg.k}, "
        f"reservoir {cfg.reservoir_size} (it holds every frame of this probe), seed {cfg.seed}. "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Columns: PNMI with k-means fitted on one set of utterances (`fit`) and the (phone, "
        "cluster) pairs counted on another (`count`); `all` = every probe utterance, `even` / "
        "`odd` = the utterances with an even / odd probe index. `all/all` is sslvitals 0.1 "
        "(in-sample); `even/odd` is today's value, and the `monitor` column is that value as "
        "`VitalsMonitor` reports it. In brackets: the same counts with the Miller-Madow "
        "correction of each entropy, which removes most of the plug-in estimate's finite-sample "
        "bias (about (phones - 1)(clusters - 1) / (2 N) nats of mutual information).",
        "",
        "| checkpoint | layer | all/all (0.1) | even/even (in-sample) | even/odd (held-out) | "
        "odd/even (held-out) | even/all | monitor | phone purity all/all | phone purity monitor |",
        "|---|---:|---|---|---|---|---|---:|---:|---:|",
    ]
    for path in ckpts:
        spec = expand_checkpoints([path])[0]
        loaded = load_checkpoint(spec, torch.device("cpu"))
        frames = _frames(loaded, probe)
        monitor = VitalsMonitor(cfg).measure(loaded.model, loaded.forward_fn,
                                             lambda: probe.batches(60.0), tap_layers=loaded.tap_layers)
        for layer in sorted(frames):
            every = frames[layer]
            even = [f for f in every if not is_heldout(f[0])]
            odd = [f for f in every if is_heldout(f[0])]
            fits = {"all": _fit(cfg, every)[0], "even": _fit(cfg, even)[0], "odd": _fit(cfg, odd)[0]}
            sets = {"all": every, "even": even, "odd": odd}
            cells = []
            for fit_name, count_name in (("all", "all"), ("even", "even"), ("even", "odd"),
                                         ("odd", "even"), ("even", "all")):
                c = _counts(fits[fit_name], sets[count_name])
                cells.append(f"{M.pnmi_from_counts(c):.4f} ({_pnmi_mm(c):.4f})")
            pur_all = M.purities_from_counts(_counts(fits["all"], every))[0]
            lines.append(
                f"| {Path(path).name} | {layer} | " + " | ".join(cells)
                + f" | {monitor[f'vitals/pnmi/L{layer}']:.4f} | {pur_all:.4f} | "
                f"{monitor[f'vitals/phone_purity/L{layer}']:.4f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
