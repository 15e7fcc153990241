"""``sslvitals table``: print a metric x layer table per step as markdown.

Example:
    ``sslvitals table results.csv runs/hubert/vitals.jsonl --steps last``
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Sequence

import pandas as pd

from sslvitals.errors import SSLVitalsError

__all__ = ["add_arguments", "run", "format_table", "select_steps"]

logger = logging.getLogger(__name__)


def _fmt(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.{digits}g}"


def select_steps(frame: pd.DataFrame, steps: str | Sequence[int] | None) -> pd.DataFrame:
    """Keep the rows of the requested steps (per run).

    Args:
        frame: Long-format table.
        steps: None or ``"all"`` (every step), ``"last"`` / ``"first"`` (per run), or step
            numbers (a list or a comma-separated string).

    Returns:
        The selected rows.

    Raises:
        SSLVitalsError: if a requested step is absent (the message lists the steps present).
    """
    if steps is None or (isinstance(steps, str) and steps == "all"):
        return frame
    if isinstance(steps, str) and steps in ("last", "first"):
        keep = []
        for _, group in frame.groupby("run", sort=False, dropna=False):
            present = group["step"].dropna()
            if present.empty:
                keep.append(group)
                continue
            target = present.max() if steps == "last" else present.min()
            keep.append(group[group["step"] == target])
        return pd.concat(keep) if keep else frame.iloc[:0]
    if isinstance(steps, str):
        try:
            wanted = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError as exc:
            raise SSLVitalsError(
                f"--steps must be 'all', 'last', 'first' or comma-separated integers, got {steps!r}"
            ) from exc
    else:
        wanted = [int(s) for s in steps]
    present = sorted(int(s) for s in frame["step"].dropna().unique())
    absent = [s for s in wanted if s not in present]
    if absent:
        raise SSLVitalsError(f"step(s) {absent} not in the results; steps present: {present}")
    return frame[frame["step"].isin(wanted)]


def format_table(
    frame: pd.DataFrame,
    *,
    steps: str | Sequence[int] | None = None,
    metrics: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    digits: int = 4,
) -> str:
    """Format a long-format table as markdown: one metric x layer table per (run, step).

    Args:
        frame: Long-format table (``run, checkpoint, step, layer, metric, value``).
        steps: Which steps to show (see :func:`select_steps`); default all.
        metrics: Metrics to show (rows), in this order; default all present.
        layers: Layers to show (columns); default all present.
        digits: Significant digits of each value.

    Returns:
        Markdown text; one ``### run - step N (checkpoint)`` heading and table per step.

    Example:
        >>> import pandas as pd
        >>> f = pd.DataFrame({"run": ["r", "r"], "checkpoint": ["c.pt", "c.pt"],
        ...     "step": [10, 10], "layer": [0, 1], "metric": ["rankme", "rankme"],
        ...     "value": [3.0, 4.5]})
        >>> print(format_table(f))
        ### r - step 10 (c.pt)
        <BLANKLINE>
        | metric | L0 | L1 |
        |---|---|---|
        | rankme | 3 | 4.5 |
        <BLANKLINE>
    """
    from sslvitals.offline.io import normalise

    frame = normalise(frame)
    frame = select_steps(frame, steps)
    if metrics is not None:
        unknown = sorted(set(metrics) - set(frame["metric"]))
        if unknown:
            raise SSLVitalsError(
                f"metric(s) {unknown} not in the results; present: {sorted(set(frame['metric']))}"
            )
        frame = frame[frame["metric"].isin(metrics)]
    if layers is not None:
        frame = frame[frame["layer"].isin(list(layers))]
    if frame.empty:
        return "(no results)\n"
    blocks: list[str] = []
    frame = frame.assign(_step=frame["step"].fillna(-1))
    for (run_name, step, ckpt), group in frame.groupby(["run", "_step", "checkpoint"], sort=True):
        step_txt = "?" if step == -1 else str(int(step))
        title = f"### {run_name or '(run)'} - step {step_txt}"
        if ckpt:
            title += f" ({ckpt})"
        layer_ids = sorted(int(x) for x in group["layer"].dropna().unique())
        metric_order = list(metrics) if metrics is not None else _metric_order(group["metric"])
        lines = [title, "", "| metric | " + " | ".join(f"L{i}" for i in layer_ids) + " |"]
        lines.append("|---" * (len(layer_ids) + 1) + "|")
        values = group.set_index(["metric", "layer"])["value"]
        for metric in metric_order:
            if metric not in set(group["metric"]):
                continue
            cells = []
            for layer in layer_ids:
                v = values.get((metric, layer), float("nan"))
                if isinstance(v, pd.Series):
                    v = v.iloc[0]
                cells.append(_fmt(float(v), digits))
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _metric_order(metrics: pd.Series) -> list[str]:
    from sslvitals.config import ONLINE_METRICS

    present = list(dict.fromkeys(metrics))
    known = [m for m in ONLINE_METRICS if m in present]
    return known + sorted(m for m in present if m not in known)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``table`` options."""
    parser.add_argument(
        "results", nargs="+", help="score outputs (.csv/.json) and/or training vitals .jsonl files"
    )
    parser.add_argument(
        "--steps", default="all", help="'all' (default), 'last', 'first' or comma-separated steps"
    )
    parser.add_argument("--metrics", default=None, help="comma-separated metrics (default: all)")
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    parser.add_argument("--digits", type=int, default=4, help="significant digits (default 4)")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    parser.add_argument("--force", action="store_true",
                        help="replace --out even when it is not a table written by sslvitals "
                        "table (its content is lost)")


def run(args: argparse.Namespace) -> int:
    """Print the tables; returns the exit status."""
    from sslvitals.offline.io import load_results
    from sslvitals.offline.output import check_output, inputs_of, markdown_marker, write_atomic

    if args.digits < 1:
        raise SSLVitalsError(f"--digits must be >= 1, got {args.digits}")
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()] if args.layers else None
    except ValueError as exc:
        raise SSLVitalsError(
            f"--layers must be comma-separated integers (e.g. 0,6,12), got {args.layers!r}"
        ) from exc
    if args.out:
        check_output(args.out, kind="table-md", command="table", inputs=inputs_of(args.results),
                     force=args.force)
    frame = load_results(args.results)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    text = format_table(frame, steps=args.steps, metrics=metrics, layers=layers, digits=args.digits)
    sys.stdout.write(text)
    if args.out:
        write_atomic(args.out, markdown_marker("table") + text)
        logger.info("wrote %s", args.out)
    return 0
