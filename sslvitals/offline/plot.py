"""``sslvitals plot``: figures sized for a paper column (3.3 in wide, 8 pt text).

Three kinds, each written as PNG and PDF:

* ``<prefix>_updates.{png,pdf}``: metric vs update, one small panel per metric, one line
  per layer (colour = layer depth; line style = run when there are several);
* ``<prefix>_heatmap_<metric>.{png,pdf}``: layer x checkpoint heat map of one metric;
* ``<prefix>_scatter_<task>.{png,pdf}``: metric vs downstream score for the best
  correlated (metric, layer) pairs, Spearman's rho in each panel title (positive = higher
  metric, better downstream).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sslvitals.errors import SSLVitalsError
from sslvitals.metric_table import display_name

__all__ = [
    "add_arguments",
    "run",
    "plot_metric_vs_update",
    "plot_heatmaps",
    "plot_downstream_scatter",
    "COLUMN_WIDTH_IN",
]

logger = logging.getLogger(__name__)

#: Width of one column of a two-column paper, in inches.
COLUMN_WIDTH_IN = 3.3
_FONT_PT = 8


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": _FONT_PT,
            "axes.titlesize": _FONT_PT,
            "axes.labelsize": _FONT_PT,
            "xtick.labelsize": _FONT_PT - 1,
            "ytick.labelsize": _FONT_PT - 1,
            "legend.fontsize": _FONT_PT - 1,
            "lines.linewidth": 1.0,
            "lines.markersize": 3,
            "axes.linewidth": 0.6,
            "pdf.fonttype": 42,
            "savefig.dpi": 200,
        }
    )
    return plt


def _figure_paths(prefix: str | Path, suffix: str) -> list[Path]:
    """The PNG and PDF files of one figure: ``<prefix><suffix>.png`` and ``.pdf``."""
    base = Path(f"{prefix}{suffix}")
    return [base.with_name(base.name + f".{ext}") for ext in ("png", "pdf")]


def _save(fig, prefix: str | Path, suffix: str) -> list[str]:
    """Write ``fig`` as PNG and PDF, each atomically, tagged as an sslvitals figure."""
    import matplotlib

    from sslvitals.offline.output import FIGURE_TAG, write_atomic

    tag = f"{FIGURE_TAG} with matplotlib {matplotlib.__version__}"
    out = []
    for path in _figure_paths(prefix, suffix):
        ext = path.suffix[1:]
        meta = {"Software": tag} if ext == "png" else {"Creator": tag, "CreationDate": None}
        write_atomic(path, lambda fh, ext=ext, meta=meta: fig.savefig(
            fh, format=ext, bbox_inches="tight", metadata=meta), binary=True)
        out.append(str(path))
    return out


def _safe_task(task: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(task))


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    from sslvitals.offline.io import normalise

    return normalise(frame)


def _metric_list(frame: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    from sslvitals.offline.table import _metric_order

    present = _metric_order(frame["metric"])
    if metrics is None:
        return present
    unknown = [m for m in metrics if m not in present]
    if unknown:
        raise SSLVitalsError(f"metric(s) {unknown} not in the results; present: {present}")
    return list(metrics)


def plot_metric_vs_update(
    frame: pd.DataFrame,
    out_prefix: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    ncols: int = 2,
) -> list[str]:
    """Plot each metric against the update number, one line per layer.

    Args:
        frame: Long-format table (``run, step, layer, metric, value``); rows without a step
            are ignored.
        out_prefix: Output path prefix; writes ``<prefix>_updates.png`` and ``.pdf``.
        metrics: Metrics to plot (one panel each); default all present.
        layers: Layers to draw; default all present.
        ncols: Panels per row.

    Returns:
        Paths written.

    Raises:
        SSLVitalsError: when no row has a step.
    """
    plt = _pyplot()
    frame = _prepare(frame)
    frame = frame[frame["step"].notna()]
    if frame.empty:
        raise SSLVitalsError("no result row has a step (update number); nothing to plot over updates")
    metric_names = _metric_list(frame, metrics)
    if layers is not None:
        frame = frame[frame["layer"].isin(list(layers))]
    layer_ids = sorted(int(x) for x in frame["layer"].dropna().unique())
    runs = list(dict.fromkeys(frame["run"]))
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    ncols = max(1, min(ncols, len(metric_names)))
    nrows = math.ceil(len(metric_names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH_IN, 1.25 * nrows + 0.45),
                             squeeze=False, sharex=True)
    from matplotlib.colors import BoundaryNorm

    n_colours = max(1, len(layer_ids))
    cmap = plt.get_cmap("viridis", n_colours)
    colour_of = {layer: cmap(i) for i, layer in enumerate(layer_ids)}
    for idx, metric in enumerate(metric_names):
        ax = axes[idx // ncols][idx % ncols]
        sub = frame[frame["metric"] == metric]
        for r_i, run_name in enumerate(runs):
            for layer in layer_ids:
                line = sub[(sub["run"] == run_name) & (sub["layer"] == layer)].sort_values("step")
                if line.empty:
                    continue
                ax.plot(line["step"].astype(float), line["value"], styles[r_i % len(styles)],
                        marker=markers[r_i % len(markers)] if len(line) < 12 else None,
                        color=colour_of[layer], label=f"{run_name}" if layer == layer_ids[0] else None)
        ax.set_title(display_name(metric), pad=2)
        ax.tick_params(length=2, pad=1)
        ax.grid(alpha=0.25, linewidth=0.4)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    for idx in range(len(metric_names), nrows * ncols):
        axes[idx // ncols][idx % ncols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("update")
    norm = BoundaryNorm(np.arange(n_colours + 1) - 0.5, n_colours)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=norm)
    cbar = fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.04, pad=0.02, aspect=30)
    every = max(1, math.ceil(n_colours / 13))
    cbar.set_ticks(list(range(0, n_colours, every)))
    cbar.set_ticklabels([str(layer_ids[i]) for i in range(0, n_colours, every)])
    cbar.ax.tick_params(length=0)
    cbar.set_label("layer")
    if len(runs) > 1:
        axes[0][0].legend(loc="best", frameon=False, handlelength=1.5)
    written = _save(fig, out_prefix, "_updates")
    plt.close(fig)
    return written


def plot_heatmaps(frame: pd.DataFrame, out_prefix: str | Path,
                  metrics: Sequence[str] | None = None) -> list[str]:
    """Write one layer x checkpoint heat map per metric.

    Columns are the checkpoints ordered by (run, step); with one run they are labelled by
    step, else ``run:step``.

    Returns:
        Paths written.
    """
    plt = _pyplot()
    frame = _prepare(frame)
    written: list[str] = []
    for metric in _metric_list(frame, metrics):
        sub = frame[frame["metric"] == metric].copy()
        sub["col_key"] = list(zip(sub["run"], sub["step"].fillna(-1).astype(int), sub["checkpoint"]))
        cols = sorted(set(sub["col_key"]), key=lambda c: (c[0], c[1], c[2]))
        layer_ids = sorted(int(x) for x in sub["layer"].dropna().unique())
        grid = np.full((len(layer_ids), len(cols)), np.nan)
        col_index = {c: i for i, c in enumerate(cols)}
        for r in sub.itertuples():
            if pd.isna(r.layer):
                continue
            grid[layer_ids.index(int(r.layer)), col_index[r.col_key]] = r.value
        single_run = len({c[0] for c in cols}) == 1
        labels = [
            (str(c[1]) if c[1] >= 0 else Path(c[2]).stem) if single_run else f"{c[0]}:{c[1]}"
            for c in cols
        ]
        height = max(1.4, 0.16 * len(layer_ids) + 0.9)
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, height))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
        ax.set_yticks(range(len(layer_ids)))
        ax.set_yticklabels([str(x) for x in layer_ids])
        step = max(1, len(cols) // 10)
        ax.set_xticks(range(0, len(cols), step))
        ax.set_xticklabels(labels[::step], rotation=45 if not single_run or len(cols) > 6 else 0,
                           ha="right" if not single_run or len(cols) > 6 else "center")
        ax.set_xlabel("update" if single_run else "run:update")
        ax.set_ylabel("layer")
        ax.set_title(display_name(metric), pad=3)
        ax.tick_params(length=2, pad=1)
        cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        cbar.ax.tick_params(length=2)
        written += _save(fig, out_prefix, f"_heatmap_{metric}")
        plt.close(fig)
    return written


#: Characters per line of a scatter panel's title or label (half of a 3.3 in column at 8 pt).
_PANEL_CHARS = 24


def _wrap(text: str, width: int = _PANEL_CHARS) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters (longer words kept
    whole)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text


def _scatter_title(metric: str, layer: int | None, rho: float) -> str:
    """Panel title of the downstream scatter in two short lines: the metric, then the layer
    and rho, e.g. ``"calinski harabasz\\nL4, $\\rho$ = -0.88"`` (no layer for ``loss``)."""
    value = "n/a" if math.isnan(rho) else f"{rho:+.2f}"
    where = "" if layer is None else f"L{layer}, "
    return f"{_wrap(metric.replace('_', ' '))}\n{where}$\\rho$ = {value}"


def _offset_into_xlabel(fig) -> None:  # noqa: ANN001 - a matplotlib Figure
    """Move each axis' x offset / scale text (``1e4``, ``+1e4``) into its x label, where it
    cannot collide with the label of a narrow panel. Draws ``fig`` once to know the texts."""
    fig.canvas.draw()
    for ax in fig.axes:
        offset = ax.xaxis.get_offset_text()
        text = offset.get_text()
        if ax.axison and text:
            ax.set_xlabel(f"{ax.get_xlabel()} ({text})")
            offset.set_visible(False)


def plot_downstream_scatter(
    results: pd.DataFrame,
    downstream: pd.DataFrame,
    out_prefix: str | Path,
    *,
    pairs: Sequence[tuple[str, int | None]] | None = None,
    top: int = 4,
    step: str = "last",
    n_boot: int = 0,
    allow_missing: bool = False,
) -> list[str]:
    """Scatter metric value vs downstream score, one figure per task.

    Args:
        results: Long-format table.
        downstream: Output of :func:`sslvitals.offline.correlate.load_downstream`.
        out_prefix: Output path prefix; writes ``<prefix>_scatter_<task>.{png,pdf}``.
        pairs: ``(metric, layer)`` panels to draw (layer None for ``loss``); default the
            ``top`` pairs by ``|rho|`` per task.
        top: Panels per task when ``pairs`` is None.
        step: Step selection for run-level tables (see ``correlate``).
        n_boot: Bootstrap resamples for the interval shown in the titles (0: none).
        allow_missing: Drop unmatched units with a warning instead of failing.

    Returns:
        Paths written.
    """
    from sslvitals.offline.correlate import correlate, join_downstream

    plt = _pyplot()
    results = _prepare(results)
    table = correlate(results, downstream, n_boot=n_boot, step=step, allow_missing=allow_missing)
    values, scores = join_downstream(results, downstream, step=step, allow_missing=allow_missing)
    written: list[str] = []
    for task, task_table in table.groupby("task", sort=True):
        if pairs is None:
            chosen = [(r.metric, None if pd.isna(r.layer) else int(r.layer))
                      for r in task_table.dropna(subset=["spearman"]).head(top).itertuples()]
        else:
            chosen = list(pairs)
        if not chosen:
            logger.warning("no correlation defined for task %s; no scatter plot", task)
            continue
        ts = scores[scores["task"] == task].set_index("unit")
        ncols = min(2, len(chosen))
        nrows = math.ceil(len(chosen) / ncols)
        # shared y (one score axis per task), titles of two short lines, and a layout engine
        # that keeps titles and labels of neighbouring panels apart at 3.3 in
        fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH_IN, 1.75 * nrows + 0.1),
                                 squeeze=False, sharey=True, layout="constrained")
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.04, hspace=0.04)
        for i, (metric, layer) in enumerate(chosen):
            ax = axes[i // ncols][i % ncols]
            sel = values[values["metric"] == metric]
            sel = sel[sel["layer"].isna()] if layer is None else sel[sel["layer"] == layer]
            sel = sel.set_index("unit")["value"]
            units = [u for u in ts.index if u in sel.index]
            x = sel.reindex(units).astype(float)
            y = ts.loc[units, "score"].astype(float)
            ax.scatter(x, y, s=9, color="tab:blue", edgecolor="none")
            row = task_table[(task_table["metric"] == metric)
                             & ((task_table["layer"].isna()) if layer is None else (task_table["layer"] == layer))]
            rho = float(row["spearman"].iloc[0]) if len(row) else math.nan
            ax.set_title(_scatter_title(metric, layer, rho), pad=2, linespacing=1.1)
            ax.set_xlabel(_wrap(metric.replace("_", " ")), labelpad=1)
            if i % ncols == 0:
                direction = ts["direction"].iloc[0]
                better = "lower" if direction == "lower" else "higher"
                ax.set_ylabel(f"{_wrap(str(task))}\n({better} better)", labelpad=1)
            ax.tick_params(length=2, pad=1)
            ax.grid(alpha=0.25, linewidth=0.4)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
        for j in range(len(chosen), nrows * ncols):
            axes[j // ncols][j % ncols].axis("off")
        _offset_into_xlabel(fig)
        written += _save(fig, out_prefix, f"_scatter_{_safe_task(str(task))}")
        plt.close(fig)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``plot`` options."""
    parser.add_argument("results", nargs="+", help="score outputs (.csv/.json) and/or training .jsonl files")
    parser.add_argument("--out", default="figures/vitals", help="output prefix (default figures/vitals)")
    parser.add_argument("--metrics", default=None, help="comma-separated metrics (default: all)")
    parser.add_argument("--layers", default=None, help="comma-separated layers for the update plot")
    parser.add_argument("--downstream", default=None,
                        help="downstream table (.csv/.yaml); adds metric-vs-downstream scatter plots")
    parser.add_argument("--top", type=int, default=4, help="scatter panels per task (best |rho|)")
    parser.add_argument("--step", default="last", help="step per run for run-level downstream tables")
    parser.add_argument("--allow-missing", action="store_true",
                        help="drop downstream units absent from the results (listed in a warning)")
    parser.add_argument("--kinds", default="updates,heatmap,scatter",
                        help="which figures: comma-separated from updates, heatmap, scatter")
    parser.add_argument("--force", action="store_true",
                        help="replace figure files even when sslvitals plot did not write them "
                        "(their content is lost)")


def run(args: argparse.Namespace) -> int:
    """Write the figures; returns the exit status."""
    from sslvitals.offline.io import load_results
    from sslvitals.offline.output import check_output, inputs_of

    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    unknown = kinds - {"updates", "heatmap", "scatter"}
    if unknown or not kinds:
        raise SSLVitalsError(f"unknown --kinds {sorted(unknown)}; use updates, heatmap, scatter")
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()] if args.layers else None
    except ValueError as exc:
        raise SSLVitalsError(
            f"--layers must be comma-separated integers (e.g. 0,6,12), got {args.layers!r}"
        ) from exc
    if args.top < 1:
        raise SSLVitalsError(f"--top must be >= 1, got {args.top}")
    frame = load_results(args.results)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    downstream = None
    if "scatter" in kinds and args.downstream:
        from sslvitals.offline.correlate import load_downstream

        downstream = load_downstream(args.downstream)
    # every file this run may write is checked before the first figure is drawn
    planned: list[Path] = []
    with_steps = bool(frame["step"].notna().any())
    if "updates" in kinds and with_steps:
        planned += _figure_paths(args.out, "_updates")
    if "heatmap" in kinds:
        for metric in _metric_list(_prepare(frame), metrics):
            planned += _figure_paths(args.out, f"_heatmap_{metric}")
    if downstream is not None:
        for task in sorted(set(downstream["task"])):
            planned += _figure_paths(args.out, f"_scatter_{_safe_task(str(task))}")
    inputs = inputs_of(list(args.results) + ([args.downstream] if args.downstream else []))
    for path in planned:
        check_output(path, kind="figure", command="plot", inputs=inputs,
                     force=getattr(args, "force", False))
    written: list[str] = []
    if "updates" in kinds:
        if with_steps:
            written += plot_metric_vs_update(frame, args.out, metrics, layers=layers)
        else:
            logger.warning("no steps in the results; skipping the metric-vs-update figure")
    if "heatmap" in kinds:
        written += plot_heatmaps(frame, args.out, metrics)
    if downstream is not None:
        # --metrics limits the scatter panels too (the pretraining loss stays a candidate)
        scatter_frame = frame[frame["metric"].isin(metrics)] if metrics else frame
        written += plot_downstream_scatter(scatter_frame, downstream, args.out,
                                           top=args.top, step=args.step,
                                           allow_missing=args.allow_missing)
    for w in written:
        logger.info("wrote %s", w)
    return 0
