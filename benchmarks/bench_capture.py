"""Overhead of LayerTap on a forward pass of fairseq HuBERT (tiny and Base-sized), on CPU.

For each model size, times (median CPU and wall time of ``--repeats`` runs after one warm-up)
a no-grad eval forward of a padded batch:

* ``forward``: the model alone;
* ``+ tap``: the same forward inside ``LayerTap(model)`` (all layers; hooks registered and
  removed every time) followed by ``tap.utterances()`` (unpadded views);
* ``+ frames()``: as above, then ``tap.frames()`` (one concatenated ``(N, D)`` copy per layer).

Random weights (no checkpoint needed): the cost of the hooks does not depend on the weights.

Usage:
    python benchmarks/bench_capture.py --out benchmarks/CAPTURE.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sslvitals.hooks import LayerTap

SIZES = {
    "tiny (2 x 64, 32-channel convs)": dict(
        encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
        encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"),
    "base (12 x 768)": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                            encoder_attention_heads=12),
}


def build_hubert(size: dict):
    from fairseq.data import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    torch.manual_seed(0)
    dictionary = Dictionary()
    for i in range(100):
        dictionary.add_symbol(str(i))
    cfg = HubertConfig(label_rate=50, **size)
    return HubertModel(cfg, HubertPretrainingConfig(label_rate=50), [dictionary]).eval()


def paired_medians(fns: list, repeats: int) -> list[tuple[float, float]]:
    """``(median wall seconds, median CPU seconds of this process)`` of each function; the
    functions run back to back in every repeat (in a rotating order) so that the load of a
    shared machine hits them alike. CPU time is the steadier figure on a loaded machine."""
    for fn in fns:
        fn()  # warm-up
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            w0, c0 = time.perf_counter(), time.process_time()
            fns[i]()
            cpu[i].append(time.process_time() - c0)
            wall[i].append(time.perf_counter() - w0)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def run(seconds: tuple[float, ...], repeats: int) -> list[dict]:
    lens = torch.tensor([int(s * 16000) for s in seconds])
    wav = torch.randn(len(seconds), int(lens.max()))
    pad = torch.arange(wav.shape[1])[None] >= lens[:, None]
    wav[pad] = 0.0
    rows = []
    for name, size in SIZES.items():
        model = build_hubert(size)

        def plain():
            with torch.no_grad():
                model(wav, padding_mask=pad, mask=False, features_only=True)

        def tapped(cat: bool = False):
            with LayerTap(model) as tap:
                with torch.no_grad():
                    model(wav, padding_mask=pad, mask=False, features_only=True)
            out = tap.frames() if cat else tap.utterances()
            return tap, out

        (w_plain, t_plain), (w_tap, t_tap), (w_cat, t_cat) = paired_medians(
            [plain, tapped, lambda: tapped(True)], repeats)
        tap, frames = tapped(True)
        mb = sum(f.numel() * f.element_size() for f in frames.values()) / 2**20
        rows.append(dict(model=name, layers=len(tap.layer_ids), frames=frames[0].shape[0],
                         plain=t_plain, tap=t_tap, cat=t_cat, mb=mb,
                         wall=(w_plain, w_tap, w_cat)))
    return rows


def to_markdown(rows: list[dict], seconds, repeats: int, command: str) -> str:
    lines = [
        "# LayerTap capture overhead (fairseq HuBERT, CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Batch: {len(seconds)} utterances of {', '.join(f'{s:g}' for s in seconds)} s at 16 kHz "
        f"(zero-padded), no-grad eval forward; median of {repeats} runs after one warm-up, the "
        "three variants interleaved; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()} ({platform.processor() or 'cpu'}).",
        "",
        "CPU time of this process (median):",
        "",
        "| model | layers captured | valid frames / layer | forward (ms) "
        "| + tap, utterances() (ms) | overhead | + frames() (ms) | overhead | frames() size (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['frames']} | {1e3 * r['plain']:.1f} | "
            f"{1e3 * r['tap']:.1f} | {100 * (r['tap'] / r['plain'] - 1):+.1f}% | "
            f"{1e3 * r['cat']:.1f} | {100 * (r['cat'] / r['plain'] - 1):+.1f}% | {r['mb']:.1f} |"
        )
    lines += ["", "Wall-clock time (median; sensitive to the other jobs on the machine):", "",
              "| model | forward (ms) | + tap, utterances() (ms) | + frames() (ms) |",
              "|---|---|---|---|"]
    for r in rows:
        w = r["wall"]
        lines.append(f"| {r['model']} | {1e3 * w[0]:.1f} | {1e3 * w[1]:.1f} | {1e3 * w[2]:.1f} |")
    lines += [
        "",
        "`+ tap` includes registering and removing the hooks and slicing out the unpadded "
        "frames (views, no copy); `+ frames()` adds one concatenated copy per layer. The machine "
        "is shared with other jobs: differences of a few percent are within noise.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 1.5],
                        help="utterance durations of the batch (seconds)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(tuple(args.seconds), args.repeats)
    command = "python benchmarks/bench_capture.py" + (
        f" --out {args.out}" if args.out else "")
    if args.seconds != [2.0, 1.5]:
        command += " --seconds " + " ".join(f"{s:g}" for s in args.seconds)
    if args.repeats != 5:
        command += f" --repeats {args.repeats}"
    if args.threads != 1:
        command += f" --threads {args.threads}"
    text = to_markdown(rows, args.seconds, args.repeats, command)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
