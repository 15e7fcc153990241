#!/usr/bin/env python
"""Seed noise of the paper miniature: how much of its correlation table survives a new seed?

``run.py --seed N`` retrains every configuration with another training seed (same corpora,
same targets). This script puts the seeds side by side:

* ``downstream_by_seed.csv``: each run's downstream scores per seed, and how well the seeds
  agree on the *order* of the configurations (Spearman rho between two seeds' scores);
* ``rho_by_seed.csv``: Spearman rho of every (metric, layer) with each downstream task, one
  column per seed, with mean, standard deviation, range and whether the sign agrees;
* ``pooled_early.csv``: the same correlation over all runs of all seeds at once (a unit is one
  configuration trained with one seed), so ``n`` = configurations x seeds;
* ``means_early.csv``: the correlation over configurations after averaging each metric and
  each score over the seeds (``n`` = configurations; less noise per point);
* ``within_early.csv`` (three seeds or more): metric and score ranked among the seeds of each
  configuration, then correlated over all runs: does the metric tell which seed of one
  configuration will end up better, with the configurations' own differences taken out?
* ``figures/rho_seed_agreement.png``: rho under every other seed against rho under the first,
  for every (metric, layer); ``figures/rho_by_seed_last_layer.png``: each seed's rho per metric at the
  last layer, next to the loss's;
* ``spread.csv``: per task, the spread of the configurations' mean scores against the median
  seed standard deviation, and which configurations beat (or trail) the MFCC reference in
  every seed;
* ``beats_loss.csv``: per task and (metric, layer), |rho| of the seed-averaged early metric
  minus that of the seed-averaged early loss, with a paired bootstrap interval over
  configurations, Benjamini-Hochberg q-values and a verdict (:func:`beats_loss`);
* ``figures/downstream_spread.png``: every configuration's scores per seed against the MFCC
  reference;
* ``noise.md``: the answer and the noise report quoted by the README.

The p-values of the pooled and averaged tables come with Benjamini-Hochberg q-values over all
(metric, layer) pairs of a task, since about 80 pairs are tested at once.

Usage::

    .venv/bin/python recipes/paper/mini/seeds.py --workdir ../mini-work \\
        --results recipes/paper/mini/results/seed0 recipes/paper/mini/results/seed1 \\
                  recipes/paper/mini/results/seed2 \\
        --out recipes/paper/mini/results
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

logger = logging.getLogger("mini.seeds")


def _run_module():
    """``run.py`` beside this file (its seed default and run-folder naming), loaded by path."""
    import importlib.util

    name = "paper_mini_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "run.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _seed_of(results: Path) -> int:
    info = results / "run_info.json"
    if not info.exists():
        raise SystemExit(f"{results} has no run_info.json: give folders written by run.py --results")
    return int(json.loads(info.read_text(encoding="utf-8")).get("seed", _run_module().SEED))


def _early_step(results: Path) -> int:
    return int(json.loads((results / "run_info.json").read_text(encoding="utf-8"))["early_step"])


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN entries stay NaN and are not counted).

    Args:
        p: ``(m,)`` p-values.

    Returns:
        ``(m,)`` q-values.
    """
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    m = len(pv)
    if m == 0:
        return out
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(q, 1.0)
    out[ok] = res
    return out


def load_downstream_by_seed(results_dirs: Sequence[Path]) -> pd.DataFrame:
    """Downstream scores of every seed (``run, task, score, direction, seed``)."""
    down = []
    for r in results_dirs:
        d = pd.read_csv(r / "downstream.csv")
        d["seed"] = _seed_of(r)
        down.append(d)
    seeds = [int(d["seed"].iloc[0]) for d in down]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"two result folders have the same seed: {seeds}")
    return pd.concat(down, ignore_index=True)


def per_seed_correlations(values: pd.DataFrame, down: pd.DataFrame, early: int) -> pd.DataFrame:
    """Each seed's own correlation table (as ``run.py`` writes it, without bootstrap), stacked.

    Returns:
        The :func:`sslvitals.offline.correlate.correlate` columns plus ``seed`` and ``at``
        (``"early"``: metrics at update ``early``; ``"final"``: at each run's last update).
    """
    from sslvitals.offline.correlate import correlate

    out = []
    for seed, d in down.groupby("seed", sort=True):
        units = d.assign(run=d["run"] + "@s" + d["seed"].astype(str))
        v = values[values["run"].str.endswith(f"@s{seed}")]
        for at, step in (("early", str(early)), ("final", "last")):
            c = correlate(v, _downstream_frame(units[["run", "task", "score"]]), n_boot=0, step=step)
            c["seed"], c["at"] = int(seed), at
            out.append(c)
    return pd.concat(out, ignore_index=True)


def downstream_agreement(down: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run scores by seed, and the Spearman rho between each pair of seeds per task."""
    wide = down.pivot_table(index=["task", "run"], columns="seed", values="score").reset_index()
    seeds = sorted(down["seed"].unique())
    wide.columns = ["task", "run"] + [f"seed{s}" for s in seeds]
    cols = [f"seed{s}" for s in seeds]
    wide["mean"] = wide[cols].mean(axis=1)
    wide["sd"] = wide[cols].std(axis=1, ddof=1)
    pairs = []
    for task, g in wide.groupby("task", sort=True):
        for a, b in itertools.combinations(cols, 2):
            pairs.append({"task": task, "seeds": f"{a} vs {b}",
                          "spearman": float(stats.spearmanr(g[a], g[b]).statistic)})
    return wide, pd.DataFrame(pairs)


def rho_by_seed(corr: pd.DataFrame) -> pd.DataFrame:
    """One row per (at, task, metric, layer); one rho column per seed plus their spread."""
    seeds = sorted(corr["seed"].unique())
    key = ["at", "task", "metric", "layer"]
    c = corr.copy()
    c["layer"] = c["layer"].fillna(-1).astype(int)
    wide = c.pivot_table(index=key, columns="seed", values="spearman").reset_index()
    cols = [f"rho_seed{s}" for s in seeds]
    wide.columns = key + cols
    v = wide[cols].to_numpy(float)
    wide["mean"] = np.nanmean(v, axis=1)
    wide["sd"] = np.nanstd(v, axis=1, ddof=1)
    wide["min"] = np.nanmin(v, axis=1)
    wide["max"] = np.nanmax(v, axis=1)
    wide["same_sign"] = (np.sign(v) == np.sign(v[:, :1])).all(axis=1) & ~np.isnan(v).any(axis=1)
    wide["layer"] = wide["layer"].replace(-1, pd.NA).astype("Int64")
    return wide.sort_values(["at", "task", "metric", "layer"]).reset_index(drop=True)


def run_frames(workdir: Path, seeds: Sequence[int], runs: Sequence[str], early: int) -> pd.DataFrame:
    """Long-format metric values of every run of every seed at every update, units ``<run>@s<seed>``."""
    from sslvitals.offline.io import records_to_frame
    from sslvitals.records import read_records

    frames = []
    for seed in seeds:
        for run in runs:
            path = _run_module().runs_root(workdir, seed) / run / "checkpoints" / "vitals.jsonl"
            if not path.exists():
                raise SystemExit(f"{path} is missing: is --workdir the folder run.py trained in?")
            recs = [dict(r, run=f"{run}@s{seed}") for r in read_records([str(path)])]
            if not any(r.get("update") == early for r in recs):
                raise SystemExit(f"{path} has no record at update {early}")
            frames.append(records_to_frame(recs, source=str(path)))
    return pd.concat(frames, ignore_index=True)


def _downstream_frame(units: pd.DataFrame) -> pd.DataFrame:
    """Rows ``unit, unit_kind, task, score, direction, loss`` as :func:`load_downstream` gives."""
    out = units.rename(columns={"run": "unit"}).copy()
    out["unit_kind"] = "run"
    out["direction"] = "higher"
    out["loss"] = math.nan
    return out[["unit", "unit_kind", "task", "score", "direction", "loss"]]


def _with_q(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["spearman_q"] = np.nan
    for task, idx in table.groupby("task").groups.items():
        sub = table.loc[idx]
        keep = sub["metric"] != "loss"
        table.loc[sub.index[keep], "spearman_q"] = bh_qvalues(sub.loc[keep, "spearman_p"].to_numpy(float))
    return table


def seed_means(values: pd.DataFrame, step: int) -> pd.DataFrame:
    """Metric values (and the loss) at update ``step`` averaged over the seeds of each configuration.

    Returns:
        Long-format frame with one unit per configuration (``run`` = configuration name).
    """
    v = values[values["step"] == step].copy()
    v["config"] = v["run"].str.rsplit("@s", n=1).str[0]
    keys = ["config", "layer", "metric"]
    mean_vals = v.groupby(keys, dropna=False, as_index=False).agg(value=("value", "mean"), loss=("loss", "mean"))
    mean_vals = mean_vals.rename(columns={"config": "run"})
    mean_vals["checkpoint"] = ""
    mean_vals["step"] = step
    mean_vals["toolkit"] = "fairseq"
    return mean_vals


def pooled_and_means(values: pd.DataFrame, down: pd.DataFrame, step: int, n_boot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correlations over all (run, seed) units, and over runs after averaging across seeds."""
    from sslvitals.offline.correlate import correlate

    units = down.assign(run=down["run"] + "@s" + down["seed"].astype(str))
    values = values[values["step"] == step]
    pooled = correlate(values, _downstream_frame(units[["run", "task", "score"]]), n_boot=n_boot,
                       seed=0, step=str(step))
    mean_down = down.groupby(["run", "task"], as_index=False)["score"].mean()
    means = correlate(seed_means(values, step), _downstream_frame(mean_down), n_boot=n_boot, seed=0, step=str(step))
    return _with_q(pooled), _with_q(means)


def _rank_rows(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    return stats.rankdata(a, axis=-1)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of matching rows of ``x`` and ``y`` (``(B, n)`` each); NaN where one is constant."""
    rx, ry = _rank_rows(x), _rank_rows(y)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / den, np.nan)


def beats_loss(values: pd.DataFrame, down: pd.DataFrame, step: int, rho: pd.DataFrame, *,
               n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Does an early (metric, layer) predict the final score better than the early loss?

    On the seed-averaged data (one point per configuration), the statistic is
    ``|rho(metric, score)| - |rho(loss, score)|``. Its interval and one-sided p-value come from a
    paired bootstrap over configurations (the same resampled configurations for the metric and
    the loss; ``p = (#{diff* <= 0} + 1) / (n_boot + 1)``), and ``q`` is Benjamini-Hochberg over
    the task's (metric, layer) pairs. ``every_seed`` says whether the metric's |rho| is above the
    loss's under each training seed on its own (from ``rho``, the per-seed table).

    A pair *beats the loss* here when ``q < 0.05``, ``every_seed`` holds and its own
    seed-averaged correlation is significant after correction (``rho_q < 0.05``). A pair *loses
    to the loss* when the mirror statistic passes the same corrected test.

    Returns:
        Frame ``task, metric, layer, n, rho, rho_q, loss_rho, diff, diff_lo, diff_hi, p_better,
        q_better, p_worse, q_worse, every_seed, verdict``.
    """
    mean_vals = seed_means(values, step)
    mean_down = down.groupby(["run", "task"], as_index=False)["score"].mean()
    rng = np.random.default_rng(seed)
    configs = sorted(mean_down["run"].unique())
    n = len(configs)
    idx = rng.integers(0, n, size=(n_boot, n))
    loss = mean_vals.drop_duplicates("run").set_index("run")["loss"].reindex(configs).to_numpy(float)
    rows = []
    early = rho[rho["at"] == "early"]
    rcols = [c for c in rho.columns if c.startswith("rho_seed")]
    for task, d in mean_down.groupby("task", sort=True):
        score = d.set_index("run")["score"].reindex(configs).to_numpy(float)
        loss_rho = float(stats.spearmanr(loss, score).statistic)
        boot_loss = np.abs(_spearman_rows(loss[idx], score[idx]))
        seed_loss = early[(early["task"] == task) & (early["metric"] == "loss")]
        for (metric, layer), g in mean_vals.groupby(["metric", "layer"], sort=True):
            x = g.set_index("run")["value"].reindex(configs).to_numpy(float)
            if np.isnan(x).any() or np.ptp(x) == 0:
                continue
            res = stats.spearmanr(x, score)
            r = float(res.statistic)
            diff_b = np.abs(_spearman_rows(x[idx], score[idx])) - boot_loss
            diff_b = diff_b[~np.isnan(diff_b)]
            sr = early[(early["task"] == task) & (early["metric"] == metric) & (early["layer"] == layer)]
            every = bool(len(sr) and len(seed_loss)
                         and all(abs(float(sr[c].iloc[0])) > abs(float(seed_loss[c].iloc[0])) for c in rcols))
            rows.append({"task": task, "metric": metric, "layer": int(layer), "n": n, "rho": r,
                         "rho_p": float(res.pvalue), "loss_rho": loss_rho,
                         "diff": abs(r) - abs(loss_rho),
                         "diff_lo": float(np.quantile(diff_b, 0.025)), "diff_hi": float(np.quantile(diff_b, 0.975)),
                         "p_better": (int((diff_b <= 0).sum()) + 1) / (len(diff_b) + 1),
                         "p_worse": (int((diff_b >= 0).sum()) + 1) / (len(diff_b) + 1),
                         "every_seed": every})
    out = pd.DataFrame(rows)
    for col in ("rho", "better", "worse"):
        out[f"{col}_q" if col == "rho" else f"q_{col}"] = np.nan
    for _, ix in out.groupby("task").groups.items():
        sub = out.loc[ix]
        out.loc[ix, "rho_q"] = bh_qvalues(sub["rho_p"].to_numpy(float))
        out.loc[ix, "q_better"] = bh_qvalues(sub["p_better"].to_numpy(float))
        out.loc[ix, "q_worse"] = bh_qvalues(sub["p_worse"].to_numpy(float))
    out["verdict"] = np.where((out["q_better"] < 0.05) & out["every_seed"] & (out["rho_q"] < 0.05), "beats the loss",
                              np.where(out["q_worse"] < 0.05, "worse than the loss", "not distinguishable"))
    out = out.sort_values(["task", "diff"], ascending=[True, False], kind="stable").reset_index(drop=True)
    return out


def spread_vs_noise(down_wide: pd.DataFrame, baseline: dict | None) -> pd.DataFrame:
    """Per task: how far apart the configurations are, against the seed noise and the MFCC reference.

    ``ratio`` = (best - worst configuration mean) / median over configurations of the seed sd.
    A configuration is *above* (*below*) the reference when every one of its seeds is.
    """
    rows = []
    cols = [c for c in down_wide.columns if c.startswith("seed")]
    for task, g in down_wide.groupby("task", sort=True):
        spread = float(g["mean"].max() - g["mean"].min())
        sd = float(g["sd"].median())
        ref = (baseline or {}).get(task)
        row = {"task": task, "configs": len(g), "seeds": len(cols), "best": str(g.loc[g["mean"].idxmax(), "run"]),
               "best_mean": float(g["mean"].max()), "worst": str(g.loc[g["mean"].idxmin(), "run"]),
               "worst_mean": float(g["mean"].min()), "spread": spread, "median_seed_sd": sd,
               "ratio": spread / sd if sd > 0 else math.inf, "mfcc": ref}
        if ref is not None:
            vals = g[cols].to_numpy(float)
            row["above_mfcc"] = ", ".join(g["run"][(vals > ref).all(axis=1)])
            row["below_mfcc"] = ", ".join(g["run"][(vals < ref).all(axis=1)])
        rows.append(row)
    return pd.DataFrame(rows)


def within_config(values: pd.DataFrame, down: pd.DataFrame, step: int, *, n_perm: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """Does a metric predict which *seed* of a configuration ends up better?

    Metric values (at update ``step``) and scores are ranked among the seeds of each
    configuration, so differences between configurations (width, targets, ...) cannot drive
    the result; the statistic is the correlation of those within-configuration ranks over all
    runs, and its p-value comes from permuting the scores' ranks within each configuration
    (``(hits + 1) / (n_perm + 1)``, never 0). A configuration with fewer than 3 seeds is left
    out; a metric that is constant within every configuration gets NaN.

    Args:
        values: Long-format metric values, units ``<run>@s<seed>``.
        down: Downstream scores with ``run, task, score, seed``.
        step: The early update.
        n_perm: Permutations for the p-value.
        seed: Seed of the permutations.

    Returns:
        Frame ``task, metric, layer, n, configs, rho_within, p, q, configs_same_sign``.
    """
    v = values[values["step"] == step].copy()
    v["config"] = v["run"].str.rsplit("@s", n=1).str[0]
    loss = v.drop_duplicates("run")[["run", "config", "loss"]].rename(columns={"loss": "value"})
    loss["metric"], loss["layer"] = "loss", -1
    v = pd.concat([v[["run", "config", "metric", "layer", "value"]], loss], ignore_index=True)
    v["layer"] = v["layer"].fillna(-1).astype(int)
    rng = np.random.default_rng(seed)
    rows = []
    for task, d in down.groupby("task", sort=True):
        score = dict(zip(d["run"] + "@s" + d["seed"].astype(str), d["score"]))
        for (metric, layer), g in v.groupby(["metric", "layer"], sort=True):
            g = g[g["run"].isin(score.keys()) & g["value"].notna()]
            xs, ys, per = [], [], []
            for _, c in g.groupby("config", sort=True):
                if len(c) < 3:
                    continue
                x = stats.rankdata(c["value"].to_numpy(float))
                y = stats.rankdata([score[u] for u in c["run"]])
                xs.append(x - x.mean())
                ys.append(y - y.mean())
                if np.ptp(x) > 0 and np.ptp(y) > 0:
                    per.append(float(np.corrcoef(x, y)[0, 1]))
            row = {"task": task, "metric": metric, "layer": layer if layer >= 0 else pd.NA,
                   "n": int(sum(len(x) for x in xs)), "configs": len(xs)}
            if len(xs) < 2:
                rows.append(row | {"rho_within": math.nan, "p": math.nan, "configs_same_sign": 0})
                continue
            x, y = np.concatenate(xs), np.concatenate(ys)
            den = math.sqrt(float((x * x).sum() * (y * y).sum()))
            obs = float((x * y).sum() / den) if den > 0 else math.nan
            if math.isnan(obs):
                rows.append(row | {"rho_within": math.nan, "p": math.nan, "configs_same_sign": 0})
                continue
            perm = np.concatenate([np.stack([rng.permutation(yc) for _ in range(n_perm)]) for yc in ys], axis=1)
            null = perm @ x / den
            hits = int((np.abs(null) >= abs(obs) - 1e-12).sum())
            rows.append(row | {"rho_within": obs, "p": (hits + 1) / (n_perm + 1),
                               "configs_same_sign": int(sum(np.sign(r) == np.sign(obs) for r in per))})
    out = pd.DataFrame(rows)
    out["q"] = np.nan
    for _, idx in out.groupby("task").groups.items():
        sub = out.loc[idx]
        keep = sub["metric"] != "loss"
        out.loc[sub.index[keep], "q"] = bh_qvalues(sub.loc[keep, "p"].to_numpy(float))
    out["layer"] = pd.array(out["layer"], dtype="Int64")
    out["_abs"] = out["rho_within"].abs()
    out = out.sort_values(["task", "_abs"], ascending=[True, False], na_position="last", kind="stable")
    return out.drop(columns="_abs").reset_index(drop=True)


def table_agreement(rho: pd.DataFrame, task: str, at: str = "early") -> list[float]:
    """Pearson r between two seeds' rho over all (metric, layer) pairs, for every pair of seeds."""
    sub = rho[(rho["at"] == at) & (rho["task"] == task) & (rho["metric"] != "loss")]
    cols = [c for c in rho.columns if c.startswith("rho_seed")]
    out = []
    for a, b in itertools.combinations(cols, 2):
        x, y = sub[a].to_numpy(float), sub[b].to_numpy(float)
        ok = ~(np.isnan(x) | np.isnan(y))
        out.append(float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 else math.nan)
    return out


def agreement_figure(rho: pd.DataFrame, path: Path) -> None:
    """Rho of each (metric, layer) under every other seed against the first seed, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in rho.columns if c.startswith("rho_seed")]
    tasks = sorted(rho["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.3 * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = rho[(rho["at"] == "early") & (rho["task"] == task) & (rho["metric"] != "loss")]
        ref = cols[0]
        for other, marker in zip(cols[1:], itertools.cycle("s^Dvo")):
            x, y = sub[ref].to_numpy(float), sub[other].to_numpy(float)
            ok = ~(np.isnan(x) | np.isnan(y))
            r = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 else math.nan
            ax.scatter(x[ok], y[ok], s=11, marker=marker, alpha=0.7,
                       label=f"{other.replace('rho_', '')} (r = {r:+.2f})")
        ax.plot([-1, 1], [-1, 1], color="k", lw=0.8, ls="--")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel(f"rho under {ref.replace('rho_', '')}")
        ax.set_ylabel("rho under another seed")
        ax.set_title(f"early metrics vs final {task}", fontsize=9)
        ax.legend(fontsize=6.5, loc="upper left", title="each point: one (metric, layer)", title_fontsize=6.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def seeds_figure(rho: pd.DataFrame, path: Path, task: str = "phone_acc") -> None:
    """Per metric, the rho of each seed at the last layer (dots) and their mean (bar), with the loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = rho[(rho["at"] == "early") & (rho["task"] == task)]
    cols = [c for c in rho.columns if c.startswith("rho_seed")]
    met = sub[sub["metric"] != "loss"]
    if met.empty:
        return
    last = int(met["layer"].max())
    rows = met[met["layer"] == last].sort_values("mean")
    loss = sub[sub["metric"] == "loss"]
    rows = pd.concat([loss, rows]) if len(loss) else rows
    labels = [("validation loss" if m == "loss" else m) for m in rows["metric"]]
    fig, ax = plt.subplots(figsize=(5.6, 0.28 * len(rows) + 1.4))
    ys = np.arange(len(rows))
    ax.barh(ys, rows["mean"].to_numpy(float), height=0.6, color="#c6dbef", label="mean over seeds")
    for j, c in enumerate(cols):
        ax.scatter(rows[c].to_numpy(float), ys, s=10, color="k", alpha=0.7, zorder=3,
                   label="one seed" if j == 0 else None)
    ax.axvline(0, color="k", lw=0.6)
    if len(loss):
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_yticks(ys, labels, fontsize=7.5)
    ax.set_xlim(-1, 1)
    ax.set_xlabel(f"Spearman rho, metric at the early update vs final {task}")
    ax.set_title(f"Last layer (L{last}), {len(cols)} training seeds", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def summary_markdown(down_wide: pd.DataFrame, down_pairs: pd.DataFrame, rho: pd.DataFrame,
                     pooled: pd.DataFrame, means: pd.DataFrame, seeds: Sequence[int], step: int,
                     top: int = 8, within: pd.DataFrame | None = None) -> str:
    """The noise report (markdown)."""
    cols = [f"seed{s}" for s in seeds]
    rcols = [f"rho_seed{s}" for s in seeds]
    n_units = int(pooled["n"].max()) if len(pooled) else 0
    lines = [f"# Miniature: seed noise ({len(seeds)} training seeds: {', '.join(map(str, seeds))})", "",
             "Every configuration was trained once per seed, on the same corpora and k-means targets. The seed "
             "sets fairseq's initialisation, masking and batch order, and the metrics' own k-means "
             f"initialisation and frame sample. Metrics are taken at update {step} (early), scores from the "
             "frozen final model.", "",
             "## Downstream scores per seed", ""]
    for task, g in down_wide.groupby("task", sort=True):
        lines += [f"### {task}", "", "| run | " + " | ".join(cols) + " | mean | sd |",
                  "|---|" + "---:|" * (len(cols) + 2)]
        for _, r in g.sort_values("mean", ascending=False).iterrows():
            lines.append(f"| {r['run']} | " + " | ".join(f"{r[c]:.4f}" for c in cols)
                         + f" | {r['mean']:.4f} | {r['sd']:.4f} |")
        spread = float(g["mean"].max() - g["mean"].min())
        lines += ["", f"- spread of the per-run means (best - worst): {spread:.4f}; median sd over seeds: "
                  f"{float(g['sd'].median()):.4f}",
                  "- do two seeds rank the configurations alike? Spearman rho between seeds: "
                  + ", ".join(f"{p['seeds']} {p['spearman']:+.2f}" for _, p in down_pairs[down_pairs['task'] == task].iterrows()),
                  ""]
    lines += ["## The same correlation under each seed (metrics at the early update)", ""]
    for task, g in rho[(rho["at"] == "early")].groupby("task", sort=True):
        loss = g[g["metric"] == "loss"]
        met = g[g["metric"] != "loss"]
        lines += [f"### {task}", "",
                  "- validation loss: rho " + ", ".join(f"{c.replace('rho_', '')} {_fmt(float(loss[c].iloc[0]))}"
                                                       for c in rcols) if len(loss) else "- validation loss: -"]
        beat = []
        for c in rcols:
            lrho = abs(float(loss[c].iloc[0])) if len(loss) else math.nan
            beat.append(f"{c.replace('rho_', '')} {int((met[c].abs() > lrho).sum())}/{int(met[c].notna().sum())}")
        stable = met[met["same_sign"] & (met[rcols].abs().min(axis=1) >= 0.5)]
        agree = table_agreement(rho, task)
        lines += ["- (metric, layer) pairs with |rho| above the loss's: " + ", ".join(beat),
                  f"- agreement of two seeds' tables (Pearson r between their rho over the {len(met)} pairs): "
                  f"median {float(np.nanmedian(agree)):+.2f}, range {np.nanmin(agree):+.2f} to {np.nanmax(agree):+.2f} "
                  f"over the {len(agree)} pairs of seeds",
                  f"- median sd of a pair's rho over seeds: {float(met['sd'].median()):.2f} "
                  f"(median |mean rho|: {float(met['mean'].abs().median()):.2f})",
                  f"- pairs with the same sign under every seed: {int(met['same_sign'].sum())} of {len(met)}; "
                  f"same sign and |rho| >= 0.5 under every seed: {len(stable)}",
                  ""]
        if len(stable):
            lines += ["| metric | layer | " + " | ".join(c.replace("rho_", "") for c in rcols) + " |",
                      "|---|---:|" + "---:|" * len(rcols)]
            for _, r in stable.sort_values("mean", key=lambda s: -s.abs()).iterrows():
                lines.append(f"| {r['metric']} | L{int(r['layer'])} | " + " | ".join(_fmt(float(r[c])) for c in rcols) + " |")
            lines.append("")
        lines += ["Top pairs by |mean rho| over the seeds:", "",
                  "| metric | layer | " + " | ".join(c.replace("rho_", "") for c in rcols) + " | mean | sd |",
                  "|---|---:|" + "---:|" * (len(rcols) + 2)]
        for _, r in met.reindex(met["mean"].abs().sort_values(ascending=False).index).head(top).iterrows():
            lines.append(f"| {r['metric']} | L{int(r['layer'])} | " + " | ".join(_fmt(float(r[c])) for c in rcols)
                         + f" | {_fmt(float(r['mean']))} | {r['sd']:.2f} |")
        lines.append("")
    for title, table, what in (
            (f"## Pooled: all {n_units} runs (configurations x seeds) at once", pooled,
             "one point per trained model"),
            ("## Seed-averaged: metrics and scores averaged over the seeds per configuration", means,
             "one point per configuration")):
        lines += [title, "", f"({what}; q = Benjamini-Hochberg over the task's (metric, layer) pairs"
                  + ("; the runs of one configuration are not independent points, so these p-values are "
                     "optimistic" if table is pooled else "") + ")", ""]
        for task, g in table.groupby("task", sort=True):
            loss = g[g["metric"] == "loss"]
            met = g[g["metric"] != "loss"].dropna(subset=["spearman"])
            lrho = float(loss["spearman"].iloc[0]) if len(loss) else math.nan
            lp = float(loss["spearman_p"].iloc[0]) if len(loss) else math.nan
            beat = int((met["spearman"].abs() > abs(lrho)).sum()) if not math.isnan(lrho) else 0
            lines += [f"### {task}", "", f"- validation loss: rho {_fmt(lrho)} (p {lp:.3g})",
                      f"- pairs with |rho| above the loss's: {beat} of {len(met)}; with q < 0.05: "
                      f"{int((met['spearman_q'] < 0.05).sum())}", "",
                      "| metric | layer | n | rho | 95% CI | p | q |", "|---|---:|---:|---:|---|---:|---:|"]
            for _, r in met.head(top).iterrows():
                lines.append(f"| {r['metric']} | L{int(r['layer'])} | {int(r['n'])} | {_fmt(float(r['spearman']))} | "
                             f"[{_fmt(float(r['spearman_lo']), 2)}, {_fmt(float(r['spearman_hi']), 2)}] | "
                             f"{float(r['spearman_p']):.3g} | {float(r['spearman_q']):.3g} |")
            lines.append("")
    if within is not None:
        lines += ["## Within configurations: does an early metric pick the better seed?", "",
                  "(metric and score ranked among the seeds of each configuration, so the configurations' "
                  "own differences cannot drive it; p from permuting within configurations; q = "
                  "Benjamini-Hochberg; `configs` = configurations whose own rho has the overall sign)", ""]
        for task, g in within.groupby("task", sort=True):
            loss = g[g["metric"] == "loss"]
            met = g[(g["metric"] != "loss") & g["rho_within"].notna()]
            lrho = float(loss["rho_within"].iloc[0]) if len(loss) else math.nan
            lp = float(loss["p"].iloc[0]) if len(loss) else math.nan
            lines += [f"### {task}", "", f"- validation loss: rho {_fmt(lrho)} (p {lp:.3g})",
                      f"- pairs with |rho| above the loss's: {int((met['rho_within'].abs() > abs(lrho)).sum())} of "
                      f"{len(met)}; with q < 0.05: {int((met['q'] < 0.05).sum())}", "",
                      "| metric | layer | n | rho within | p | q | configs |", "|---|---:|---:|---:|---:|---:|---:|"]
            for _, r in met.head(top).iterrows():
                lines.append(f"| {r['metric']} | L{int(r['layer'])} | {int(r['n'])} | {_fmt(float(r['rho_within']))} | "
                             f"{float(r['p']):.3g} | {float(r['q']):.3g} | {int(r['configs_same_sign'])}/{int(r['configs'])} |")
            lines.append("")
    return "\n".join(lines)


def answer_markdown(spread: pd.DataFrame, verdict: pd.DataFrame, seeds: Sequence[int], step: int,
                    top: int = 10) -> str:
    """The answer section: downstream signal against seed noise, and which metrics beat the loss."""
    lines = [f"# Miniature: do early metrics predict final quality better than the loss? "
             f"({len(seeds)} seeds: {', '.join(map(str, seeds))})", "", "## Signal: downstream spread against seed noise", "",
             "| task | configs | best (mean) | worst (mean) | spread | median seed sd | spread / sd | MFCC reference | "
             "above MFCC in every seed | below MFCC in every seed |",
             "|---|---:|---|---|---:|---:|---:|---:|---|---|"]
    for _, r in spread.iterrows():
        mf = "-" if r.get("mfcc") is None or pd.isna(r.get("mfcc")) else f"{r['mfcc']:.4f}"
        lines.append(f"| {r['task']} | {r['configs']} | {r['best']} ({r['best_mean']:.4f}) | {r['worst']} "
                     f"({r['worst_mean']:.4f}) | {r['spread']:.4f} | {r['median_seed_sd']:.4f} | {r['ratio']:.1f} | {mf} | "
                     f"{r.get('above_mfcc', '') or '-'} | {r.get('below_mfcc', '') or '-'} |")
    lines += ["", f"## Early metrics (update {step}) against the early validation loss", "",
              "Seed-averaged metrics and scores, one point per configuration. `diff` = |rho metric| - |rho loss| "
              "with a 95 % paired bootstrap interval over configurations; `q` = Benjamini-Hochberg over the task's "
              "(metric, layer) pairs; `every seed` = |rho metric| > |rho loss| under each seed alone. Verdict "
              "'beats the loss' needs q(diff > 0) < 0.05, every seed, and the metric's own rho significant "
              "after correction (q < 0.05).", ""]
    for task, g in verdict.groupby("task", sort=True):
        lrho = float(g["loss_rho"].iloc[0]) if len(g) else math.nan
        wins = g[g["verdict"] == "beats the loss"]
        losses = g[g["verdict"] == "worse than the loss"]
        lines += [f"### {task}", "", f"- validation loss at update {step}: rho {_fmt(lrho)}",
                  f"- beat the loss: {len(wins)} of {len(g)} (metric, layer) pairs"
                  + (": " + ", ".join(f"{r['metric']} L{r['layer']}" for _, r in wins.iterrows()) if len(wins) else ""),
                  f"- worse than the loss: {len(losses)} of {len(g)}"
                  + (": " + ", ".join(f"{r['metric']} L{r['layer']}" for _, r in losses.iterrows()) if len(losses) else ""),
                  f"- not distinguishable from the loss: {len(g) - len(wins) - len(losses)}", "",
                  "| metric | layer | rho | q(rho) | diff | 95% CI | q(better) | every seed | verdict |",
                  "|---|---:|---:|---:|---:|---|---:|---|---|"]
        per_metric = g.loc[g.groupby("metric")["diff"].idxmax()].sort_values("diff", ascending=False)
        for _, r in per_metric.head(top + 20).iterrows():
            lines.append(f"| {r['metric']} | L{r['layer']} | {_fmt(r['rho'])} | {r['rho_q']:.3g} | {_fmt(r['diff'])} | "
                         f"[{_fmt(r['diff_lo'], 2)}, {_fmt(r['diff_hi'], 2)}] | {r['q_better']:.3g} | "
                         f"{'yes' if r['every_seed'] else 'no'} | {r['verdict']} |")
        lines += ["", "(one row per metric: its layer with the largest diff; every layer is in `beats_loss.csv`)", ""]
    return "\n".join(lines) + "\n"


def spread_figure(down_wide: pd.DataFrame, baseline: dict | None, path: Path) -> None:
    """Per task, each configuration's mean score with its seeds, and the MFCC reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = sorted(down_wide["task"].unique())
    cols = [c for c in down_wide.columns if c.startswith("seed")]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.6), squeeze=False)
    order = down_wide[down_wide["task"] == tasks[0]].sort_values("mean")["run"].tolist()
    for ax, task in zip(axes[0], tasks):
        g = down_wide[down_wide["task"] == task].set_index("run").reindex(order)
        ys = np.arange(len(order))
        for c in cols:
            ax.plot(g[c], ys, "o", ms=3, alpha=0.5, color="grey")
        ax.plot(g["mean"], ys, "D", ms=5, color="C0", label="mean over seeds")
        if baseline and task in baseline:
            ax.axvline(baseline[task], color="C3", ls="--", label=f"MFCC + deltas ({baseline[task]:.3f})")
        ax.set_yticks(ys, order, fontsize=7)
        ax.set_xlabel(task)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Final downstream scores: configurations x seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the work directory run.py trained every seed in")
    p.add_argument("--results", nargs="+", required=True, help="run.py --results folders, one per seed")
    p.add_argument("--out", required=True, help="where the noise tables, figure and noise.md go")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--drop-runs", default=None,
                   help="comma-separated configurations to leave out of every table (e.g. an outlier)")
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give at least two --results folders (two seeds) to measure seed noise")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = [Path(r) for r in args.results]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {_early_step(r) for r in results}
    if len(steps) != 1:
        raise SystemExit(f"the result folders have different early steps: {sorted(steps)}")
    step = steps.pop()
    down = load_downstream_by_seed(results)
    if args.drop_runs:
        dropped = [r.strip() for r in args.drop_runs.split(",") if r.strip()]
        unknown = sorted(set(dropped) - set(down["run"]))
        if unknown:
            raise SystemExit(f"--drop-runs: unknown run(s) {unknown}; the runs are {sorted(down['run'].unique())}")
        down = down[~down["run"].isin(dropped)]
    seeds = sorted(int(s) for s in down["seed"].unique())
    runs = sorted(down["run"].unique())
    if len(runs) < 3:
        raise SystemExit(f"only {len(runs)} run(s) left; need 3 to correlate")
    down_wide, down_pairs = downstream_agreement(down)
    down_wide.to_csv(out / "downstream_by_seed.csv", index=False, float_format="%.6g")
    values = run_frames(Path(args.workdir), seeds, runs, step)
    rho = rho_by_seed(per_seed_correlations(values, down, step))
    rho.to_csv(out / "rho_by_seed.csv", index=False, float_format="%.6g")
    pooled, means = pooled_and_means(values, down, step, args.n_boot)
    pooled.to_csv(out / "pooled_early.csv", index=False, float_format="%.6g")
    means.to_csv(out / "means_early.csv", index=False, float_format="%.6g")
    within = within_config(values, down, step) if len(seeds) >= 3 else None
    if within is not None:
        within.to_csv(out / "within_early.csv", index=False, float_format="%.6g")
    info = json.loads((results[0] / "run_info.json").read_text(encoding="utf-8"))
    baseline = info.get("mfcc_reference")
    spread = spread_vs_noise(down_wide, baseline)
    spread.to_csv(out / "spread.csv", index=False, float_format="%.6g")
    verdict = beats_loss(values, down, step, rho, n_boot=max(args.n_boot, 200))
    verdict.to_csv(out / "beats_loss.csv", index=False, float_format="%.6g")
    agreement_figure(rho, out / "figures" / "rho_seed_agreement.png")
    for task in sorted(down["task"].unique()):
        seeds_figure(rho, out / "figures" / f"rho_by_seed_last_layer_{task}.png", task=task)
    spread_figure(down_wide, baseline, out / "figures" / "downstream_spread.png")
    cmd = " ".join([".venv/bin/python", "recipes/paper/mini/seeds.py", *(sys.argv[1:] if argv is None else argv)])
    text = answer_markdown(spread, verdict, seeds, step)
    text += "\n" + summary_markdown(down_wide, down_pairs, rho, pooled, means, seeds, step, within=within)
    (out / "noise.md").write_text(f"{text}\nMade by `{cmd}`.\n", encoding="utf-8")
    logger.info("wrote %s", out / "noise.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
