"""``sslvitals correlate``: rank correlation of every metric and layer with downstream scores.

Sign convention: every correlation is reported between the metric and the downstream
*goodness*, i.e. the score multiplied by -1 for tasks where lower is better (WER, PER, EER).
A positive rho therefore always means "higher metric value goes with a better downstream
result", whatever the task's direction. The pretraining loss, when known, is treated like a
metric (so a loss that predicts well gets a *negative* rho: lower loss, better model).

Downstream table (CSV or YAML): one row per (run or checkpoint, task) with columns

* ``checkpoint`` or ``run``: which unit the score belongs to (matched against the results
  by exact string, then by file name; an ambiguous or missing match is an error);
* ``task``: task name, e.g. ``asr_wer``;
* ``score``: the downstream number;
* ``direction`` (optional when the task name makes it obvious): ``lower`` /
  ``lower_is_better`` or ``higher`` / ``higher_is_better``. A ``lower_is_better`` column of
  booleans is accepted too;
* ``loss`` (optional): the pretraining loss of that unit, if the results do not carry it.

YAML may be a list of such rows, or ``{"scores": [rows], "directions": {task: lower|higher}}``.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sslvitals.errors import SSLVitalsError
from sslvitals.metric_table import better_of
from sslvitals.offline.output import CORRELATION_COLUMNS

__all__ = [
    "add_arguments",
    "run",
    "load_downstream",
    "join_downstream",
    "correlate",
    "bootstrap_ci",
    "spearman_rows",
    "spearman_pvalue",
    "kendall_rows",
    "format_markdown",
    "infer_direction",
]

logger = logging.getLogger(__name__)

_LOWER_HINTS = ("wer", "per", "cer", "eer", "der", "loss", "error", "mse", "mae", "dcf")
_HIGHER_HINTS = ("acc", "f1", "bleu", "map", "auc", "precision", "recall", "score", "mos")


def infer_direction(task: str) -> str:
    """Guess ``"lower"`` or ``"higher"`` (is better) from a task name.

    Raises:
        SSLVitalsError: when the name gives no hint (the message says how to state it).
    """
    name = task.lower()
    tokens = [t for t in name.replace("-", "_").replace("/", "_").split("_") if t]
    for hint in _LOWER_HINTS:
        if hint in tokens or name.endswith(hint):
            return "lower"
    for hint in _HIGHER_HINTS:
        if hint in tokens or name.endswith(hint) or name.startswith(hint):
            return "higher"
    raise SSLVitalsError(
        f"cannot tell whether lower or higher is better for downstream task {task!r}; add a "
        "'direction' column (lower_is_better / higher_is_better) to the downstream table"
    )


def _parse_direction(value: object, task: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return infer_direction(task)
    if isinstance(value, (bool, np.bool_)):
        return "lower" if value else "higher"
    text = str(value).strip().lower()
    if text in ("lower", "lower_is_better", "min", "minimize", "down", "true", "1"):
        return "lower"
    if text in ("higher", "higher_is_better", "max", "maximize", "up", "false", "0"):
        return "higher"
    raise SSLVitalsError(
        f"unknown direction {value!r} for task {task!r}; use lower_is_better or higher_is_better"
    )


def load_downstream(path: str | Path) -> pd.DataFrame:
    """Read a downstream table.

    Args:
        path: ``.csv``/``.tsv`` or ``.yaml``/``.yml`` (format in the module docstring).

    Returns:
        Frame with columns ``unit`` (the run or checkpoint name), ``unit_kind``
        (``"run"`` or ``"checkpoint"``), ``task``, ``score`` (float), ``direction``
        (``"lower"``/``"higher"``) and ``loss`` (float, may be NaN).

    Raises:
        SSLVitalsError: on a missing column, a non-numeric score, a duplicated
            (unit, task) row or a task with two directions.
    """
    p = Path(path)
    if not p.exists():
        raise SSLVitalsError(f"downstream table {p} does not exist")
    directions: dict[str, str] = {}
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        with open(p, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        if isinstance(data, dict):
            directions = {str(k): str(v) for k, v in (data.get("directions") or {}).items()}
            data = data.get("scores")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise SSLVitalsError(
                f"{p}: a YAML downstream table must be a list of rows (checkpoint or run, task, "
                "score, direction) or a mapping with 'scores: [rows]' and optional 'directions'"
            )
        frame = pd.DataFrame(data)
    else:
        from io import StringIO

        from sslvitals.offline.io import check_complete_csv

        sep = "\t" if p.suffix.lower() == ".tsv" else ","
        text = check_complete_csv(p, delimiter=sep, require_newline=False)
        try:
            frame = pd.read_csv(StringIO(text), sep=sep)
        except (OSError, ValueError) as exc:
            raise SSLVitalsError(f"cannot read downstream table {p}: {exc}") from exc
    if "checkpoint" in frame.columns and frame["checkpoint"].notna().all():
        unit_kind = "checkpoint"
    elif "run" in frame.columns and frame["run"].notna().all():
        unit_kind = "run"
    else:
        raise SSLVitalsError(
            f"{p}: the downstream table needs a 'checkpoint' or a 'run' column filled on every "
            f"row; found columns {list(frame.columns)}"
        )
    for col in ("task", "score"):
        if col not in frame.columns:
            raise SSLVitalsError(
                f"{p}: missing column {col!r}; columns must be (checkpoint or run), task, score "
                f"[, direction]; found {list(frame.columns)}"
            )
    scores = pd.to_numeric(frame["score"], errors="coerce")
    bad = frame.loc[scores.isna(), unit_kind].astype(str).tolist()
    if bad:
        raise SSLVitalsError(f"{p}: non-numeric or empty score for {bad[:10]}")
    if "direction" in frame.columns:
        raw_dir = frame["direction"]
    elif "lower_is_better" in frame.columns:
        raw_dir = frame["lower_is_better"].map(
            lambda v: v if isinstance(v, (bool, np.bool_)) else str(v).strip().lower() in ("true", "1", "yes")
        )
    else:
        raw_dir = frame["task"].map(lambda t: directions.get(str(t)))
    out = pd.DataFrame(
        {
            "unit": frame[unit_kind].astype(str).str.strip(),
            "unit_kind": unit_kind,
            "task": frame["task"].astype(str).str.strip(),
            "score": scores.astype(float),
            "direction": [
                _parse_direction(d, str(t)) for d, t in zip(raw_dir, frame["task"].astype(str))
            ],
            "loss": pd.to_numeric(frame["loss"], errors="coerce").astype(float)
            if "loss" in frame.columns
            else np.nan,
        }
    )
    dup = out.duplicated(["unit", "task"], keep=False)
    if bool(dup.any()):
        raise SSLVitalsError(
            f"{p}: duplicated ({unit_kind}, task) rows: "
            f"{sorted(set(zip(out.loc[dup, 'unit'], out.loc[dup, 'task'])))[:10]}; keep one score "
            "per pair (average repeated fine-tunings yourself)"
        )
    conflicting = out.groupby("task")["direction"].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        raise SSLVitalsError(f"{p}: task(s) {list(conflicting.index)} have both directions")
    return out


def _match_units(downstream_units: Sequence[str], result_units: Sequence[str], kind: str) -> tuple[dict[str, str], list[str]]:
    """Map each downstream unit to one result unit: exact string, then file name, then stem."""
    results = list(dict.fromkeys(result_units))
    mapping: dict[str, str] = {}
    missing: list[str] = []

    def _keys(name: str) -> list[str]:
        p = Path(name.rstrip("/"))
        return [name, p.name, p.stem] if kind == "checkpoint" else [name]

    for unit in dict.fromkeys(downstream_units):
        found: list[str] = []
        for level in range(len(_keys(unit))):
            key = _keys(unit)[level]
            found = [r for r in results if len(_keys(r)) > level and _keys(r)[level] == key]
            if found:
                break
        if not found:
            missing.append(unit)
        elif len(found) > 1:
            raise SSLVitalsError(
                f"downstream {kind} {unit!r} matches several results {found}; write the full "
                f"{kind} name as it appears in the results"
            )
        else:
            mapping[unit] = found[0]
    taken = pd.Series(list(mapping.values()))
    if taken.duplicated().any():
        twice = sorted(set(taken[taken.duplicated()]))
        raise SSLVitalsError(
            f"several downstream {kind}s map onto the same results {kind}(s) {twice}; "
            "write the full names"
        )
    return mapping, missing


def join_downstream(
    results: pd.DataFrame,
    downstream: pd.DataFrame,
    *,
    step: str = "last",
    allow_missing: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach downstream scores to the metric values of each run or checkpoint.

    Args:
        results: Long-format table (see :func:`sslvitals.offline.io.load_results`).
        downstream: Output of :func:`load_downstream`.
        step: For run-level downstream tables: which step of each run predicts its score:
            ``"last"``, ``"first"`` or a step number (the run must have it).
        allow_missing: If True, units missing from either side are listed in a warning
            and dropped; if False (default) they are an error.

    Returns:
        ``(values, scores)``: ``values`` has columns ``unit, metric, layer, value`` plus
        one ``metric="loss"`` row per unit (layer NA) where a loss is known; ``scores`` has
        ``unit, task, score, direction, goodness`` (goodness = score, negated when lower
        is better).

    Raises:
        SSLVitalsError: listing the missing units by name, never joining silently.
    """
    from sslvitals.offline.io import normalise

    if downstream.empty:
        raise SSLVitalsError("the downstream table is empty")
    kind = str(downstream["unit_kind"].iloc[0])
    results = normalise(results)
    res_units = results[kind].astype(str)
    if (res_units == "").all():
        raise SSLVitalsError(
            f"the downstream table is keyed by {kind} but the results have no {kind} names; "
            f"key the downstream table by {'run' if kind == 'checkpoint' else 'checkpoint'} instead"
        )
    mapping, missing = _match_units(downstream["unit"].tolist(), res_units.tolist(), kind)
    unused = sorted(set(res_units) - set(mapping.values()) - {""})
    if missing:
        msg = (
            f"{len(missing)} downstream {kind}(s) have no metrics in the results: {missing}. "
            f"Results hold the {kind}s {sorted(set(res_units) - {''})}. Score them, or fix the "
            "names in the downstream table"
        )
        if not allow_missing:
            raise SSLVitalsError(msg + " (or pass --allow-missing to drop them)")
        logger.warning("%s; dropping them (--allow-missing)", msg)
    if unused:
        logger.info("results %ss without downstream scores (not used): %s", kind, unused)
    inv = {v: k for k, v in mapping.items()}
    results = results[res_units.isin(list(inv))].copy()
    results["unit"] = results[kind].astype(str).map(inv)
    # One step per unit.
    from sslvitals.offline.table import select_steps

    chosen = []
    for unit, group in results.groupby("unit", sort=False):
        steps_present = sorted(int(s) for s in group["step"].dropna().unique())
        if len(steps_present) > 1:
            if kind == "checkpoint":
                raise SSLVitalsError(
                    f"checkpoint {unit!r} appears at several steps {steps_present} in the results; "
                    "a checkpoint file must have one step (rename copies)"
                )
            if step in ("last", "first"):
                group = select_steps(group, step)
            else:
                try:
                    wanted = int(step)
                except ValueError as exc:
                    raise SSLVitalsError(f"--step must be last, first or an integer, got {step!r}") from exc
                if wanted not in steps_present:
                    raise SSLVitalsError(
                        f"run {unit!r} has no results at step {wanted}; its steps are {steps_present}"
                    )
                group = group[group["step"] == wanted]
        chosen.append(group)
    results = pd.concat(chosen) if chosen else results.iloc[:0]
    twice = results.duplicated(["unit", "metric", "layer"], keep=False)
    if bool(twice.any()):
        r = results[twice].iloc[0]
        sources = sorted(set(results[twice & (results["unit"] == r["unit"])]["checkpoint"]))
        raise SSLVitalsError(
            f"{kind} {r['unit']!r} has several values of {r['metric']} on layer {r['layer']} at the "
            f"chosen step (from {sources}); pass one source per {kind} (e.g. either the training "
            "JSON-lines file or the score output), or key the downstream table by checkpoint"
        )
    values = results[["unit", "metric", "layer", "value"]].copy()
    loss = results.groupby("unit")["loss"].agg(lambda s: s.dropna().iloc[0] if s.notna().any() else np.nan)
    ds_loss = downstream.groupby("unit")["loss"].agg(lambda s: s.dropna().iloc[0] if s.notna().any() else np.nan)
    loss = loss.reindex(sorted(set(loss.index) | set(ds_loss.index)))
    loss = loss.fillna(ds_loss.reindex(loss.index))
    loss = loss.dropna()
    if len(loss):
        values = pd.concat(
            [values, pd.DataFrame({"unit": loss.index, "metric": "loss", "layer": pd.NA, "value": loss.values})],
            ignore_index=True,
        )
    scores = downstream[downstream["unit"].isin(list(mapping))].copy()
    scores["goodness"] = np.where(scores["direction"] == "lower", -scores["score"], scores["score"])
    return values, scores[["unit", "task", "score", "direction", "goodness"]]


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (average ranks for ties).

    Args:
        x: ``(B, n)`` values.
        y: ``(B, n)`` values.

    Returns:
        ``(B,)`` rho; NaN for rows where either side is constant.
    """
    rx = stats.rankdata(x, axis=1)
    ry = stats.rankdata(y, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rx * ry).sum(axis=1) / den
    out[den <= 1e-12] = np.nan
    return np.clip(out, -1.0, 1.0)


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair (the tie-corrected form, as scipy's default).

    Args:
        x: ``(B, n)`` values.
        y: ``(B, n)`` values.

    Returns:
        ``(B,)`` tau-b; NaN for rows where either side is constant.
    """
    n = x.shape[1]
    iu, ju = np.triu_indices(n, k=1)
    sx = np.sign(x[:, iu] - x[:, ju])
    sy = np.sign(y[:, iu] - y[:, ju])
    den = np.sqrt((sx != 0).sum(axis=1).astype(float) * (sy != 0).sum(axis=1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (sx * sy).sum(axis=1) / den
    out[den == 0] = np.nan
    return out


_EXACT_MAX_N = 8


def spearman_pvalue(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Spearman's rho.

    For ``n <= 8`` units it is exact: the share of all ``n!`` orderings of ``y`` whose
    ``|rho|`` reaches the observed one (scipy's t approximation is far off at such ``n``,
    e.g. it gives about 1e-24 for a perfect rank agreement of 5 units, whose exact p-value
    is 2/120). Larger ``n`` uses scipy's approximation.

    Args:
        x: ``(n,)`` values.
        y: ``(n,)`` values.

    Returns:
        The p-value; NaN when rho is undefined (a constant side).
    """
    n = len(x)
    if n > _EXACT_MAX_N:
        return float(stats.spearmanr(x, y).pvalue)
    from itertools import permutations

    observed = abs(float(spearman_rows(x[None, :], y[None, :])[0]))
    if math.isnan(observed):  # a constant side: no correlation, so no p-value
        return math.nan
    perms = np.array(list(permutations(range(n))))
    rhos = spearman_rows(np.broadcast_to(x, (len(perms), n)), y[perms])
    return float(np.mean(np.abs(rhos) >= observed - 1e-12))


def bootstrap_ci(
    x: np.ndarray, y: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of Spearman's rho and Kendall's tau.

    Units (pairs ``(x_i, y_i)``) are resampled with replacement; resamples where one side
    is constant are dropped. Fewer than half usable resamples gives NaN bounds.

    Args:
        x: ``(n,)`` metric values.
        y: ``(n,)`` downstream goodness.
        n_boot: Number of resamples.
        seed: Seed of the resampling (the same indices for every metric of a task).
        level: Coverage of the interval.

    Returns:
        ``{"spearman": (lo, hi), "kendall": (lo, hi)}``.
    """
    n = len(x)
    if n < 3 or n_boot <= 0:
        return {"spearman": (math.nan, math.nan), "kendall": (math.nan, math.nan)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb, yb = x[idx], y[idx]
    out = {}
    alpha = (1.0 - level) / 2.0
    # Kendall's pairwise signs take n (n - 1) / 2 values per resample: bound the block size.
    block = max(1, min(n_boot, int(2e7 // max(1, n * (n - 1) // 2))))
    for name, fn in (("spearman", spearman_rows), ("kendall", kendall_rows)):
        vals = []
        for start in range(0, n_boot, block):
            vals.append(fn(xb[start : start + block], yb[start : start + block]))
        v = np.concatenate(vals)
        v = v[~np.isnan(v)]
        if len(v) < n_boot / 2:
            out[name] = (math.nan, math.nan)
        else:
            out[name] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha)))
    return out


def correlate(
    results: pd.DataFrame,
    downstream: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    step: str = "last",
    allow_missing: bool = False,
) -> pd.DataFrame:
    """Spearman and Kendall correlation of every (metric, layer) with every downstream task.

    Args:
        results: Long-format table.
        downstream: Output of :func:`load_downstream`.
        n_boot: Bootstrap resamples for the confidence intervals (0 = none).
        seed: Bootstrap seed.
        level: Confidence level of the intervals.
        step: Which step of each run to use for run-level tables (see :func:`join_downstream`).
        allow_missing: Drop (with a warning) instead of failing on unmatched units.

    Returns:
        Frame with columns ``task, direction, metric, layer, n, metric_better, spearman,
        spearman_lo, spearman_hi, spearman_p, kendall, kendall_lo, kendall_hi, kendall_p``,
        sorted per task by ``|spearman|`` descending. Positive = higher metric, better
        downstream. ``metric_better`` is the metric's own better direction from
        :mod:`sslvitals.metric_table` (empty for the loss and unknown columns), so a
        negative rho on a ``lower`` metric reads as "the better-clustered model did better".
    """
    values, scores = join_downstream(results, downstream, step=step, allow_missing=allow_missing)
    rows = []
    nan_stats = {k: math.nan for k in ("spearman", "spearman_lo", "spearman_hi", "spearman_p",
                                       "kendall", "kendall_lo", "kendall_hi", "kendall_p")}
    for task, task_scores in scores.groupby("task", sort=True):
        good = task_scores.set_index("unit")["goodness"]
        direction = str(task_scores["direction"].iloc[0])
        undefined: dict[str, list[str]] = {}
        n_pairs = 0
        for (metric, layer), group in values.groupby(["metric", "layer"], dropna=False, sort=True):
            n_pairs += 1
            g = group.set_index("unit")["value"].astype(float)
            # inf and NaN values carry no rank: such units are left out of this pair
            common = [u for u in good.index if u in g.index and math.isfinite(g[u])
                      and math.isfinite(float(good[u]))]
            x = g.reindex(common).to_numpy(float)
            y = good.reindex(common).to_numpy(float)
            row = {"task": task, "direction": direction, "metric": metric,
                   "layer": layer, "n": len(common), "metric_better": better_of(str(metric))}
            name = str(metric) if pd.isna(layer) else f"{metric} L{int(layer)}"
            if len(common) < 3:
                reason = "fewer than 3 units with a finite value"
            elif np.ptp(x) == 0:
                reason = "the metric is constant over the units"
            elif np.ptp(y) == 0:
                reason = f"the {task} scores are constant over the units"
            else:
                reason = ""
            if reason:
                undefined.setdefault(reason, []).append(name)
                row.update(nan_stats)
            else:
                sp = stats.spearmanr(x, y)
                kt = stats.kendalltau(x, y)
                ci = bootstrap_ci(x, y, n_boot=n_boot, seed=seed, level=level)
                row.update(
                    {
                        "spearman": float(sp.statistic),
                        "spearman_lo": ci["spearman"][0],
                        "spearman_hi": ci["spearman"][1],
                        "spearman_p": spearman_pvalue(x, y),
                        "kendall": float(kt.statistic),
                        "kendall_lo": ci["kendall"][0],
                        "kendall_hi": ci["kendall"][1],
                        "kendall_p": float(kt.pvalue),
                    }
                )
                # a p-value only goes with a defined correlation
                for stat_name in ("spearman", "kendall"):
                    if not math.isfinite(row[stat_name]):
                        row[f"{stat_name}_p"] = math.nan
            rows.append(row)
        if undefined:
            n_undefined = sum(len(v) for v in undefined.values())
            detail = "; ".join(f"{reason}: {', '.join(names[:6])}"
                               + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                               for reason, names in undefined.items())
            logger.warning("%s: no correlation for %d of %d (metric, layer) pairs (%s)%s", task,
                           n_undefined, n_pairs, detail,
                           "; the table of this task is empty" if n_undefined == n_pairs else "")
    out = pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
    if out.empty:
        return out
    out["layer"] = pd.array(out["layer"], dtype="Int64")
    out["_abs"] = out["spearman"].abs()
    out = out.sort_values(["task", "_abs"], ascending=[True, False], na_position="last", kind="stable")
    return out.drop(columns="_abs").reset_index(drop=True)


def format_markdown(table: pd.DataFrame, *, top: int | None = None, digits: int = 3) -> str:
    """Render :func:`correlate` output as markdown, one table per task.

    Args:
        table: Output of :func:`correlate`.
        top: Show only the ``top`` rows per task (all when None).
        digits: Decimals.

    Returns:
        Markdown text.
    """
    if table.empty:
        return "(no correlations)\n"
    blocks = []
    for task, group in table.groupby("task", sort=True):
        direction = group["direction"].iloc[0]
        lines = [
            f"### {task} ({direction} is better; rho > 0: higher metric = better {task})",
            "",
            "| rank | metric | layer | n | Spearman rho [95% CI] | p | Kendall tau [95% CI] | p |",
            "|---:|---|---:|---:|---|---:|---|---:|",
        ]
        if top is not None:
            group = group.head(top)
        for rank, r in enumerate(group.itertuples(), start=1):
            layer = "-" if pd.isna(r.layer) else f"L{int(r.layer)}"

            def f(v: float) -> str:
                return "nan" if pd.isna(v) else f"{v:+.{digits}f}"

            def p(v: float) -> str:
                return "nan" if pd.isna(v) else f"{v:.2g}"

            lines.append(
                f"| {rank} | {r.metric} | {layer} | {r.n} | {f(r.spearman)} [{f(r.spearman_lo)}, "
                f"{f(r.spearman_hi)}] | {p(r.spearman_p)} | {f(r.kendall)} [{f(r.kendall_lo)}, "
                f"{f(r.kendall_hi)}] | {p(r.kendall_p)} |"
            )
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``correlate`` options."""
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RESULTS... DOWNSTREAM",
        help="results files (score .csv/.json, training .jsonl) followed by the downstream "
        "table (.csv or .yaml: checkpoint|run, task, score, direction)",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    parser.add_argument(
        "--step",
        default="last",
        help="for run-level downstream tables: the step of each run whose metrics are used "
        "('last' (default), 'first' or a number, e.g. an early checkpoint)",
    )
    parser.add_argument("--out", default="correlations", help="output prefix: writes PREFIX.csv and PREFIX.md")
    parser.add_argument("--top", type=int, default=None, help="rows per task in the markdown (default all)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="drop (with a warning listing them) downstream units absent from the results",
    )
    parser.add_argument("--force", action="store_true",
                        help="replace PREFIX.csv / PREFIX.md even when they are not outputs of "
                        "sslvitals correlate (their content is lost)")


def run(args: argparse.Namespace) -> int:
    """Compute and write the correlation tables.

    Returns:
        0, or 1 when no correlation at all is defined (the warnings say why); the tables are
        written either way.
    """
    from sslvitals.offline.io import load_results
    from sslvitals.offline.output import check_output, markdown_marker, write_atomic

    if len(args.inputs) < 2:
        raise SSLVitalsError("give at least one results file and then the downstream table")
    *result_paths, downstream_path = args.inputs
    if Path(downstream_path).suffix.lower() not in (".csv", ".tsv", ".yaml", ".yml"):
        raise SSLVitalsError(
            f"the last argument must be the downstream table (.csv or .yaml), got {downstream_path}"
        )
    if args.n_boot < 0:
        raise SSLVitalsError(f"--n-boot must be >= 0 (0: no intervals), got {args.n_boot}")
    if not 0.0 < args.level < 1.0:
        raise SSLVitalsError(f"--level must be between 0 and 1 (e.g. 0.95), got {args.level}")
    if args.top is not None and args.top < 1:
        raise SSLVitalsError(f"--top must be >= 1, got {args.top}")
    # every output is checked before any work: never an input, never a file of someone else
    from sslvitals.offline.output import inputs_of

    inputs = inputs_of(args.inputs)
    prefix = Path(args.out)
    csv_path = prefix.with_name(prefix.name + ".csv")
    md_path = prefix.with_name(prefix.name + ".md")
    force = getattr(args, "force", False)
    check_output(csv_path, kind="correlations", command="correlate", inputs=inputs, force=force)
    check_output(md_path, kind="correlate-md", command="correlate", inputs=inputs, force=force)
    results = load_results(result_paths)
    downstream = load_downstream(downstream_path)
    table = correlate(
        results, downstream, n_boot=args.n_boot, seed=args.seed, level=args.level,
        step=args.step, allow_missing=args.allow_missing,
    )
    md = format_markdown(table, top=args.top)
    note = (
        "Sign convention: rho > 0 means a higher metric value goes with a better downstream "
        f"result (scores of lower-is-better tasks are negated). {args.n_boot} bootstrap "
        f"resamples, seed {args.seed}.\n\n"
    )
    write_atomic(csv_path, lambda fh: table.to_csv(fh, index=False, float_format="%.6g"))
    write_atomic(md_path, markdown_marker("correlate") + note + md)
    sys.stdout.write(note + md)
    logger.info("wrote %s and %s", csv_path, md_path)
    if table.empty or not table["spearman"].notna().any():
        logger.warning("no correlation is defined (see the warnings above: at least 3 units with "
                       "finite, non-constant values are needed); exit status 1")
        return 1
    return 0
