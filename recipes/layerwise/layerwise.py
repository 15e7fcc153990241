"""Layer-wise analysis figure: CCA and MI with mel features, phones and words, per layer.

Draws the shape of the layer-wise figures of Pasad et al. (CCA-mel / CCA-phone / CCA-word and
MI-phone / MI-word against the layer, one line per model) and of Clark et al.'s MR-HuBERT
analysis (each layer drawn at its own frame rate) from ``sslvitals score`` output::

    python recipes/layerwise/layerwise.py scores.csv --out layerwise.png

One panel per measure, x = layer (or relative depth with ``--x depth``), one line per scored
checkpoint. With ``--rates auto`` (the default) every checkpoint named in the scores is loaded
once (no forward pass) to read each layer's frame rate from :class:`sslvitals.hooks.LayerTap`:
layers running below the model's input rate (MR-HuBERT's 25 Hz middle) get their own marker,
are labelled with their rate, and sit on a shaded band. See README.md beside this file.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

logger = logging.getLogger("sslvitals.recipes.layerwise")

__all__ = ["ModelLine", "DEFAULT_METRICS", "collect_lines", "layer_rates", "render", "main"]

#: The measures of the two papers' layer-wise figures, in panel order.
DEFAULT_METRICS: tuple[str, ...] = ("cca_mel", "cca_phone", "cca_word", "mi_phone", "mi_word")
_MARKERS = ("o", "s", "^", "D", "v", "P")


@dataclass
class ModelLine:
    """One model's values per layer.

    Attributes:
        label: Legend text (run name, with the update when a run has several checkpoints).
        checkpoint: The checkpoint path recorded in the scores.
        values: ``{metric: {layer: value}}``.
        rates: ``{layer: frames per second}`` or empty when unknown.
    """

    label: str
    checkpoint: str
    values: dict[str, dict[int, float]] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Highest layer index with a value."""
        return max((max(v) for v in self.values.values() if v), default=0)


def collect_lines(frame, metrics: Sequence[str]) -> list[ModelLine]:
    """Group a score table into one :class:`ModelLine` per checkpoint.

    Args:
        frame: ``sslvitals score`` output as read by ``sslvitals.offline.io.load_results``.
        metrics: Measures to keep.

    Returns:
        Lines in the order the checkpoints first appear.
    """
    lines: dict[tuple[str, str], ModelLine] = {}
    sub = frame[frame["metric"].isin(list(metrics))]
    steps_per_run = sub.groupby("run")["checkpoint"].nunique().to_dict()
    for row in sub.itertuples(index=False):
        key = (row.run, row.checkpoint)
        if key not in lines:
            label = row.run or Path(row.checkpoint).stem
            if steps_per_run.get(row.run, 1) > 1:
                step = "" if row.step is None or (isinstance(row.step, float) and math.isnan(row.step)) else row.step
                label = f"{label} @ {step or Path(row.checkpoint).stem}"
            lines[key] = ModelLine(label=label, checkpoint=row.checkpoint)
        lines[key].values.setdefault(row.metric, {})[int(row.layer)] = float(row.value)
    return list(lines.values())


def layer_rates(checkpoint: str) -> dict[int, float]:
    """Frame rate of every layer of a checkpoint (loaded on CPU, no forward pass).

    Returns:
        ``{layer: Hz}``; empty (with a warning) when the checkpoint cannot be loaded.
    """
    import torch

    from sslvitals.hooks import LayerTap
    from sslvitals.offline.loaders import detect_kind, load_checkpoint

    try:
        loaded = load_checkpoint(detect_kind(checkpoint), torch.device("cpu"))
        return {k: float(v) for k, v in LayerTap(loaded.model).frame_rates().items()}
    except Exception as exc:  # noqa: BLE001 - the figure is drawn without rates
        logger.warning("no frame rates for %s (%s); drawn as single-rate", checkpoint, exc)
        return {}


def _x(line: ModelLine, layer: int, mode: str) -> float:
    return layer / max(line.num_layers, 1) if mode == "depth" else float(layer)


def render(lines: Sequence[ModelLine], metrics: Sequence[str], out: str | Path, *,
           x_mode: str = "layer", title: str | None = None) -> Path:
    """Draw one panel per measure, one line per model; save to ``out`` (.png / .pdf / .svg).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from sslvitals.metric_table import display_name

    metrics = [m for m in metrics if any(m in ln.values for ln in lines)]
    if not metrics:
        raise SystemExit("none of the requested measures is in the scores; score them first "
                         "(sslvitals score ... --metrics cca_mel,cca_phone,cca_word,mi_phone,mi_word)")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_rates = sorted({r for ln in lines for r in ln.rates.values()}, reverse=True)
    marker_of = {r: _MARKERS[i % len(_MARKERS)] for i, r in enumerate(all_rates)}
    for ax, metric in zip(axes[0], metrics):
        for i, ln in enumerate(lines):
            vals = ln.values.get(metric)
            if not vals:
                continue
            layers = sorted(vals)
            xs = [_x(ln, k, x_mode) for k in layers]
            ys = [vals[k] for k in layers]
            colour = colours[i % len(colours)]
            ax.plot(xs, ys, "-", color=colour, lw=1.2, label=ln.label)
            base = max(ln.rates.values()) if ln.rates else None
            for k, x, y in zip(layers, xs, ys):
                rate = ln.rates.get(k)
                ax.plot([x], [y], marker_of.get(rate, "o"), color=colour, ms=4.5,
                        mfc=colour if rate is None or rate == base else "white")
                if rate is not None and base is not None and rate < base:
                    ax.axvspan(x - 0.5 if x_mode == "layer" else x - 0.5 / max(ln.num_layers, 1),
                               x + 0.5 if x_mode == "layer" else x + 0.5 / max(ln.num_layers, 1),
                               color=colour, alpha=0.06, lw=0)
        ax.set_title(display_name(metric), fontsize=10)
        ax.set_xlabel("relative depth" if x_mode == "depth" else "layer")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    extra = []
    if len(all_rates) > 1:
        from matplotlib.lines import Line2D

        extra = [Line2D([], [], ls="", marker=marker_of[r], color="0.3", mfc="white" if r < all_rates[0] else "0.3",
                        label=f"{r:g} Hz layers") for r in all_rates]
    fig.legend(handles + extra, labels + [h.get_label() for h in extra], loc="lower center",
               ncol=min(4, len(handles) + len(extra)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95 if title else 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> list[ModelLine]:
    """Command line: read score files, draw the figure. Returns the lines drawn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", nargs="+", help="sslvitals score outputs (.csv / .json) or vitals.jsonl")
    parser.add_argument("--out", required=True, help="figure file (.png, .pdf or .svg)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated measures, one panel each (default: %(default)s)")
    parser.add_argument("--rates", choices=("auto", "none"), default="auto",
                        help="auto: load each checkpoint once to place its layers at their "
                        "frame rates; none: draw every layer alike")
    parser.add_argument("--x", choices=("layer", "depth"), default="layer",
                        help="x axis: layer index, or layer / number of layers")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from sslvitals.offline.io import load_results

    frame = load_results(args.scores)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    lines = collect_lines(frame, metrics)
    if not lines:
        raise SystemExit(f"no rows of {metrics} in {args.scores}")
    if args.rates == "auto":
        cache: dict[str, dict[int, float]] = {}
        for ln in lines:
            if ln.checkpoint not in cache:
                cache[ln.checkpoint] = layer_rates(ln.checkpoint) if Path(ln.checkpoint).exists() else {}
            ln.rates = cache[ln.checkpoint]
    path = render(lines, metrics, args.out, x_mode=args.x, title=args.title)
    logger.info("wrote %s (%d models, %s)", path, len(lines), ", ".join(metrics))
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
