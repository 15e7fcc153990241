"""What the batching rule changes: ESPnet ``torchaudio_hubert`` with the group-norm front-end.

ESPnet's default HuBERT Base layout normalises the first convolution of its front-end with a
``GroupNorm`` over the whole (padded) waveform, so an utterance measured inside a padded batch
gets other features than the same utterance measured alone. This script measures every
default metric of every layer of a tiny random-weight ESPnet ``TorchAudioHubertPretrainModel``
(``extractor_mode=group_norm``, ESPnet's default) on a seeded probe of utterances of 0.8-6 s,
three ways, in one process:

* **one at a time**: every utterance in its own unpadded batch (the reference);
* **old default**: padded batches of ``--batch-seconds`` (60, the default), the batching rule
  bypassed, i.e. what ESPnet runs measured before ``sslvitals.batching``;
* **new default**: the same padded batches given to ``VitalsMonitor.measure``, which applies
  ``sslvitals.batching`` (here: one utterance per forward pass).

For old and new it reports the median and the largest relative difference to the reference
over all ``vitals/<metric>/L<layer>`` values, the worst keys, and the wall time of each run.

The probe: seeded harmonic tones and band-limited noise bursts (a new class every 100-250 ms,
each with its own loudness), with the class of each 20 ms frame written as its frame label.

Usage:
    python benchmarks/bench_batching.py --out benchmarks/batching.md
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import soundfile as sf
import torch

from sslvitals import batching
from sslvitals.config import VitalsConfig
from sslvitals.keys import TIME_KEY
from sslvitals.monitor import VitalsMonitor
from sslvitals.probe import ProbeSet, frame_count

SR = 16000
CLASSES = 8


def write_probe(root: Path, n_utts: int, lo: float, hi: float, seed: int) -> Path:
    """Seeded utterances of ``lo``-``hi`` seconds and their 50 Hz class labels; the manifest."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    manifest, labels = [str(root / "wav")], []
    for u in range(n_utts):
        n = int(rng.uniform(lo, hi) * SR)
        x = np.zeros(n)
        owner = np.zeros(n, dtype=np.int64)
        pos = 0
        while pos < n:
            seg = min(int(rng.uniform(0.1, 0.25) * SR), n - pos)
            c = int(rng.integers(CLASSES))
            t = np.arange(seg) / SR
            f0 = 140.0 * 1.25 ** c
            if c % 2 == 0:
                y = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in (1, 2, 3))
            else:
                spec = np.fft.rfft(rng.standard_normal(seg))
                freq = np.fft.rfftfreq(seg, 1.0 / SR)
                spec[(freq < f0) | (freq > 4 * f0)] = 0.0
                y = np.fft.irfft(spec, seg)
            y = y / (np.abs(y).max() + 1e-9) * rng.uniform(0.05, 0.6)
            x[pos:pos + seg] = y
            owner[pos:pos + seg] = c
            pos += seg
        x += 0.003 * rng.standard_normal(n)
        sf.write(root / "wav" / f"u{u:03d}.wav", x.astype(np.float32), SR)
        manifest.append(f"u{u:03d}.wav\t{n}")
        centres = np.minimum(np.arange(frame_count(n)) * 320 + 200, n - 1)
        labels.append(" ".join(str(int(c)) for c in owner[centres]))
    (root / "probe.tsv").write_text("\n".join(manifest) + "\n")
    (root / "probe.phn").write_text("\n".join(labels) + "\n")
    return root / "probe.tsv"


def build_model(layers: int, dim: int, channels: int) -> tuple[torch.nn.Module, Callable]:
    """A random-weight ESPnet TorchAudioHubertPretrainModel with the group-norm front-end."""
    from espnet2.asr.encoder.hubert_encoder import TorchAudioHuBERTPretrainEncoder
    from espnet2.hubert.espnet_model import TorchAudioHubertPretrainModel

    from sslvitals.integrations.espnet.forward import espnet_forward

    torch.manual_seed(0)
    conv = [[channels, 10, 5]] + [[channels, 3, 2]] * 4 + [[channels, 2, 2]] * 2
    enc = TorchAudioHuBERTPretrainEncoder(
        input_size=1, extractor_mode="group_norm", extractor_conv_layer_config=conv,
        encoder_embed_dim=dim, encoder_pos_conv_kernel=32, encoder_pos_conv_groups=8,
        encoder_num_layers=layers, encoder_num_heads=4, encoder_ff_interm_features=2 * dim,
        encoder_layer_drop=0.0, num_classes=CLASSES, final_dim=32)
    model = TorchAudioHubertPretrainModel(
        vocab_size=CLASSES, token_list=[str(i) for i in range(CLASSES)], frontend=None,
        specaug=None, normalize=None, preencoder=None, encoder=enc)
    return model.eval(), espnet_forward


def run(model: torch.nn.Module, fwd: Callable, cfg: VitalsConfig, batches: Iterator[Any]
        ) -> tuple[dict[str, float], float]:
    t0 = time.perf_counter()
    out = VitalsMonitor(cfg).measure(model, fwd, batches)
    return {k: v for k, v in out.items() if k != TIME_KEY}, time.perf_counter() - t0


def rel_diffs(a: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, r in ref.items():
        x = a[key]
        if math.isnan(x) and math.isnan(r):
            out[key] = 0.0
        elif math.isnan(x) or math.isnan(r):
            out[key] = math.inf
        else:
            out[key] = abs(x - r) / max(abs(r), 1e-12)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--min-seconds", type=float, default=0.8)
    parser.add_argument("--max-seconds", type=float, default=6.0)
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the markdown report to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, fwd = build_model(args.layers, args.dim, args.channels)
    cfg = VitalsConfig(enabled=True, k=args.k, seed=args.seed, backend="auto", device="cpu")
    with tempfile.TemporaryDirectory(prefix="sslvitals_bench_batching_") as tmp:
        probe = ProbeSet.from_path(write_probe(Path(tmp), args.utterances, args.min_seconds,
                                               args.max_seconds, args.seed), max_seconds=None)
        padded = list(probe.batches(args.batch_seconds))
        policy = batching.choose_policy(model, fwd)
        run(model, fwd, cfg, iter(probe.batches(1e-3)))  # warm-up, not reported
        ref, t_ref = run(model, fwd, cfg, (b for b in probe.batches(1e-3)))
        new, t_new = run(model, fwd, cfg, iter(padded))
        forced = batching.BatchingPolicy(True, policy.architecture, "bypassed by the benchmark")
        real_choose = batching.choose_policy
        batching.choose_policy = lambda m, f=None: forced
        try:
            old, t_old = run(model, fwd, cfg, iter(padded))
        finally:
            batching.choose_policy = real_choose
        seconds = probe.total_seconds

    lines = [
        "# Probe batching: padded batches vs one utterance at a time (ESPnet torchaudio_hubert, "
        "group_norm)",
        "",
        "Command: `python benchmarks/bench_batching.py"
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"Model: ESPnet `TorchAudioHubertPretrainModel`, `extractor_mode=group_norm` (ESPnet's "
        f"default), random weights, {args.layers} layers x {args.dim}, {args.channels}-channel "
        f"convolutions with HuBERT's kernels and strides. Probe: {len(probe)} seeded utterances "
        f"of {args.min_seconds}-{args.max_seconds} s ({seconds:.0f} s) with frame labels; "
        f"padded batches of at most {args.batch_seconds:g} s ({len(padded)} batches, sizes "
        f"{[int(b.wav.shape[0]) for b in padded]}). Settings: every default metric, k = {args.k}, "
        f"reservoir {cfg.reservoir_size}, silhouette sample {cfg.silhouette_sample}, seed "
        f"{args.seed}; one process, torch {torch.__version__}, {platform.machine()} CPU, 1 thread.",
        "",
        f"Policy chosen by `sslvitals.batching`: {policy.describe()}.",
        "",
        "| measurement | values | median relative difference | largest | worst keys | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, vals, secs in (("old default (padded, rule bypassed)", old, t_old),
                              ("new default (padded input, rule applied)", new, t_new)):
        d = rel_diffs(vals, ref)
        worst = [k for k in sorted(d, key=d.get, reverse=True)[:3] if d[k] > 0]
        lines.append(
            f"| {label} | {len(d)} | {statistics.median(d.values()):.2e} | {max(d.values()):.2e} | "
            + (", ".join(f"`{k}` {d[k]:.2e}" for k in worst) or "none") + f" | {secs:.1f} |")
    lines.append(f"| one at a time (reference) | {len(ref)} | 0 | 0 | | {t_ref:.1f} |")
    lines += [
        "",
        "Relative difference: |value - reference| / |reference| per `vitals/<metric>/L<layer>` "
        "key (0 when both are NaN). The new default runs the same forward passes as the "
        "reference, so it matches it to rounding; the old one fed the group-norm front-end "
        "zero padding. Wall times: one run each after a warm-up, on a shared machine (noise of "
        "several percent); for this tiny model the metric maths dominate, so one utterance "
        "per forward pass costs little here (a Base-sized model on a GPU loses more).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
