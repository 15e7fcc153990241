"""Why the ``cca_mel`` pass of ``sslvitals score`` grew faster than the probe, and the fix.

The pass pairs every frame of every layer with log-mel frames and keeps a seeded reservoir of
``--cca-frames`` pairs per layer (a bottom-k sample over frame keys). Before the fix, the
reservoir was updated once per forward batch and layer; HuBERT runs one utterance per forward
(``sslvitals.batching``), so every utterance paid a sort of the whole reservoir (20,000 keys)
for its ~200 frames, plus a dozen small tensor operations. That cost is
``capacity x utterances``, about 100 times the work the audio itself needs, and with torch's
intra-op threads on a busy CPU each small operation costs milliseconds.

Now pairs are offered in blocks of at least a quarter of the capacity, and once the reservoir
is full only pairs whose key is below its largest kept key (the only ones that can still
enter) are built and kept. The sample is the same set of (key, pair) rows, returned in key
order, so the value is bit-for-bit the same; this script checks that.

It measures, on seeded synthetic probes (utterances of 2-6 s, a tiny random fairseq HuBERT of
the demo's size: 4 layers, width 128, all 5 layers measured), the wall time of the old and the
new pass and the time spent inside ``ReservoirSampler.update``, for several probe lengths.

Usage:
    python benchmarks/bench_melcca.py --minutes 5 10 20 30 --threads 1 --out benchmarks/melcca.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "offline"))

import artifacts  # noqa: E402

from sslvitals.batching import apply_policy  # noqa: E402
from sslvitals.offline import melcca  # noqa: E402
from sslvitals.offline.loaders import expand_checkpoints, load_checkpoint  # noqa: E402
from sslvitals.probe import ProbeSet  # noqa: E402
from sslvitals.streaming import ReservoirSampler, frame_keys  # noqa: E402


def make_probe(folder: Path, minutes: float, seed: int = 0) -> Path:
    """Seeded noise + tone utterances of 2-6 s, ``minutes`` in all, as a fairseq manifest."""
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, total, i = [str(folder.resolve())], 0, 0
    while total < minutes * 60 * 16000:
        n = int(rng.uniform(2.0, 6.0) * 16000)
        t = np.arange(n) / 16000
        wav = 0.2 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.05 * rng.standard_normal(n)
        sf.write(folder / "wav" / f"u{i:05d}.wav", wav.astype(np.float32), 16000)
        lines.append(f"wav/u{i:05d}.wav\t{n}")
        total += n
        i += 1
    (folder / "probe.tsv").write_text("\n".join(lines) + "\n")
    return folder / "probe.tsv"


def old_pass(model: torch.nn.Module, forward_fn: Any, batches: Any, layers: list[int],
             capacity: int, seed: int) -> dict[int, float]:
    """The pass as it was: one reservoir update per forward batch and layer."""
    from sslvitals.hooks import LayerTap
    from sslvitals.metrics import cca_similarity

    samplers: dict[int, ReservoirSampler] = {}
    dims: dict[int, int] = {}
    model.eval()
    with torch.no_grad(), LayerTap(model) as tap:
        rates = tap.frame_rates()
        for batch in batches:
            tap.clear()
            forward_fn(model, batch)
            utts = tap.utterances()
            mels = [melcca.log_mel(batch.wav[i, : int(batch.lengths[i])], batch.sample_rate)
                    for i in range(batch.wav.shape[0])]
            for layer in layers:
                xs, ms, keys = [], [], []
                for i, u in enumerate(utts[layer]):
                    x, m = melcca.pair_with_mel(u.float().cpu(), mels[i], rates.get(layer, 50.0))
                    if x.shape[0] == 0:
                        continue
                    xs.append(x)
                    ms.append(m)
                    keys.append(torch.as_tensor(frame_keys(batch.index[i], x.shape[0], seed)))
                if not xs:
                    continue
                joint = torch.cat([torch.cat(xs), torch.cat(ms)], dim=1)
                if layer not in samplers:
                    dims[layer] = xs[0].shape[1]
                    samplers[layer] = ReservoirSampler(capacity, joint.shape[1], seed=seed)
                samplers[layer].update(joint, keys=torch.cat(keys))
    out = {}
    for layer in layers:
        joint, _ = samplers[layer].sample()
        joint = joint.double()
        d = dims[layer]
        out[layer] = float(cca_similarity(joint[:, :d], joint[:, d:], method="pwcca"))
    return out


class UpdateClock:
    """Adds up the wall time spent in ``ReservoirSampler.update`` (and counts the calls)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._orig = ReservoirSampler.update

    def __enter__(self) -> "UpdateClock":
        clock = self
        orig = self._orig

        def timed(sampler: ReservoirSampler, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            orig(sampler, *args, **kwargs)
            clock.seconds += time.perf_counter() - t0
            clock.calls += 1

        ReservoirSampler.update = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        ReservoirSampler.update = self._orig  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="torch intra-op threads (one table row per count and length)")
    parser.add_argument("--capacity", type=int, default=20000, help="--cca-frames")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ckpt = artifacts.make_fairseq_hubert(tmp_path / "run" / "checkpoint_1_100.pt", layers=4,
                                             dim=128)
        loaded = load_checkpoint(expand_checkpoints([str(ckpt)])[0], torch.device("cpu"))
        layers = [0, 1, 2, 3, 4]
        warm = ProbeSet.from_path(make_probe(tmp_path / "warm", 0.2), max_seconds=None)
        melcca.cca_mel_scores(loaded.model, loaded.forward_fn,  # imports and caches, untimed
                              apply_policy(loaded.model, loaded.forward_fn, warm.batches(60.0)),
                              layers, capacity=args.capacity, seed=0)
        probes = {m: ProbeSet.from_path(make_probe(tmp_path / f"probe{m:g}", m), max_seconds=None)
                  for m in args.minutes}
        for threads, minutes in [(t, m) for t in args.threads for m in args.minutes]:
            torch.set_num_threads(threads)
            probe = probes[minutes]
            timings = {}
            values = {}
            for name in ("old", "new"):
                batches = apply_policy(loaded.model, loaded.forward_fn, probe.batches(60.0))
                with UpdateClock() as clock:
                    t0 = time.perf_counter()
                    if name == "old":
                        values[name] = old_pass(loaded.model, loaded.forward_fn, batches, layers,
                                                args.capacity, 0)
                    else:
                        values[name] = melcca.cca_mel_scores(loaded.model, loaded.forward_fn,
                                                             batches, layers,
                                                             capacity=args.capacity, seed=0)
                    timings[name] = (time.perf_counter() - t0, clock.seconds, clock.calls)
            same = all(values["old"][ly] == values["new"][ly] for ly in layers)
            rows.append((threads, minutes, len(probe), timings, same,
                         max(abs(values["old"][ly] - values["new"][ly]) for ly in layers)))
            print(threads, minutes, len(probe), timings, same, flush=True)
    lines = [
        "# `cca_mel` pass: cost against probe length",
        "",
        "Command: `python benchmarks/bench_melcca.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {platform.machine()}, {platform.python_version()}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPU cores (shared with other work while this "
        "ran), tiny random fairseq HuBERT "
        f"(4 layers, width 128; 5 layers measured), capacity {args.capacity} pairs per layer, "
        "utterances of 2-6 s (one per forward pass, as the batching rule runs HuBERT).",
        "",
        "| torch threads | probe (min) | utterances | old pass (s) | old: in reservoir updates "
        "(s, calls, share) | new pass (s) | new: in reservoir updates (s, calls, share) | "
        "same values |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for threads, minutes, n_utts, t, same, diff in rows:
        lines.append(
            f"| {threads} | {minutes:g} | {n_utts} | {t['old'][0]:.1f} | {t['old'][1]:.1f} "
            f"({t['old'][2]}, {t['old'][1] / t['old'][0]:.0%}) | "
            f"{t['new'][0]:.1f} | {t['new'][1]:.2f} ({t['new'][2]}, {t['new'][1] / t['new'][0]:.0%}) | "
            f"{'yes, bit for bit' if same else f'no (max diff {diff:.2e})'} |"
        )
    lines.append("")
    for threads in args.threads:
        mine = [r for r in rows if r[0] == threads]
        first, last = mine[0], mine[-1]
        lines.append(
            f"{threads} thread(s), from {first[1]:g} to {last[1]:g} minutes "
            f"({last[1] / first[1]:g}x the audio): the old pass took "
            f"{last[3]['old'][0] / first[3]['old'][0]:.1f}x the time, its reservoir updates "
            f"{last[3]['old'][1] / max(first[3]['old'][1], 1e-9):.1f}x; the new pass "
            f"{last[3]['new'][0] / first[3]['new'][0]:.1f}x, its reservoir updates "
            f"{last[3]['new'][1] / max(first[3]['new'][1], 1e-9):.1f}x.")
    lines += [
        "",
        "Wall times on a shared machine vary from run to run (with 2 threads on 2 busy cores a "
        "pass took from 10 s to 220 s for the same probe, forward passes included); the numbers "
        "of reservoir updates (calls) and the equality of the values do not.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
