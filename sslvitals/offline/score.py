"""``sslvitals score``: measure every layer of saved checkpoints on a probe set.

Example::

    sslvitals score runs/hubert/checkpoints/ --probe probe/probe.tsv --out scores.csv

Each checkpoint (fairseq ``.pt``, ESPnet experiment directory or ``.pth``, transformers model
directory; folders are expanded) is loaded with its toolkit, run over the probe with
:class:`~sslvitals.monitor.VitalsMonitor` (label-free metrics always; phone purity, cluster
purity, PNMI and ``cca_phone`` when the probe has frame labels) and, for ``cca_mel``, a second
pass that pairs each layer with 80-band log-mel frames. Rows are written in the long format
``run, checkpoint, step, layer, metric, value, toolkit, loss`` plus the settings that produced
each value (:data:`sslvitals.offline.io.SETTING_COLUMNS`) after every checkpoint (atomically:
temporary file, then rename).

Settings: a setting not given on the command line is taken from the run that wrote the
checkpoint (the ``settings`` of the last record in the ``vitals.jsonl`` beside it, written when
the run trained with vitals on), else from :class:`~sslvitals.config.VitalsConfig`'s defaults:
so scoring a checkpoint offline reproduces the numbers its training run logged.

A re-run keeps every row the output already holds and measures only the missing
``(checkpoint, layer, metric)`` triples; rows measured with other settings stop the run before
any work, with a message naming the difference (never a stale value). A checkpoint that fails
to load is reported by name with the reason; the others go on; the exit status is 1 when any
failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from sslvitals.config import ALL_METRICS, LABEL_METRICS, VitalsConfig, parse_layers, parse_metrics
from sslvitals.errors import SSLVitalsError
from sslvitals.metric_table import OFFLINE_ONLY_METRICS

__all__ = [
    "add_arguments",
    "run",
    "score_checkpoints",
    "resolve_metrics",
    "EXTRA_METRICS",
    "OFFLINE_METRICS",
    "RUN_SETTINGS",
    "recorded_settings",
    "settings_difference",
]

logger = logging.getLogger(__name__)

#: Metrics computed here in addition to the monitor's (from the metric table).
EXTRA_METRICS: tuple[str, ...] = OFFLINE_ONLY_METRICS
#: Every metric ``sslvitals score`` knows.
OFFLINE_METRICS: tuple[str, ...] = ALL_METRICS + EXTRA_METRICS


def resolve_metrics(spec: str, has_labels: bool) -> tuple[list[str], list[str]]:
    """Split a metric specification into (monitor metrics, extra metrics), honouring labels.

    Args:
        spec: ``"default"``/``"all"``/``"label_free"`` or comma-separated names (may include
            ``cca_mel``).
        has_labels: Whether the probe has frame labels.

    Returns:
        ``(monitor_metrics, extra_metrics)`` in canonical order.

    Raises:
        SSLVitalsError: on an unknown name, or when a label metric is named explicitly and
            the probe has no labels.
    """
    items = [s.strip() for s in spec.split(",") if s.strip()]
    extras = [m for m in EXTRA_METRICS if m in items]
    rest = [s for s in items if s not in EXTRA_METRICS]
    if any(s in ("default", "all") for s in rest):
        extras = list(EXTRA_METRICS)
    try:
        monitor = list(parse_metrics(rest)) if rest else []
    except SSLVitalsError as exc:
        raise SSLVitalsError(f"{exc}; sslvitals score also knows: {', '.join(EXTRA_METRICS)}") from exc
    named_label = [s for s in rest if s in LABEL_METRICS]
    if not has_labels:
        if named_label:
            raise SSLVitalsError(
                f"metric(s) {named_label} need frame-level phone labels but the probe has none; "
                "put a '<probe>.phn' file beside the manifest (one line per utterance, "
                "(num_samples - 400) // 320 + 1 integer phone ids), pass --labels FILE, or drop "
                "these metrics"
            )
        skipped = [m for m in monitor if m in LABEL_METRICS]
        if skipped:
            logger.info("the probe has no frame labels: skipping %s", ", ".join(skipped))
        monitor = [m for m in monitor if m not in LABEL_METRICS]
    if not monitor and not extras:
        raise SSLVitalsError(f"no metric left to compute from {spec!r}")
    return monitor, extras


#: The options whose default comes from the scored run's records (then VitalsConfig).
RUN_SETTINGS: tuple[str, ...] = ("k", "kmeans_iters", "reservoir_size", "silhouette_sample",
                                 "seed", "backend", "max_probe_seconds")
#: Settings compared when resuming into an existing output (device is recorded, not compared).
_COMPARED = ("k", "kmeans_iters", "reservoir_size", "silhouette_sample", "seed", "backend",
             "max_probe_seconds", "probe_fingerprint", "label_frames", "version")


def _same_checkpoint(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:  # pragma: no cover - unresolvable paths are simply different
        return False


def _rows_of(frame: pd.DataFrame | None, checkpoint: str) -> pd.DataFrame | None:
    if frame is None or frame.empty:
        return None
    mask = frame["checkpoint"].map(lambda c: _same_checkpoint(str(c), checkpoint))
    rows = frame[mask.astype(bool)]
    return None if rows.empty else rows


def _existing(rows: pd.DataFrame | None) -> set[tuple[int, str]]:
    if rows is None:
        return set()
    return {(int(r.layer), str(r.metric)) for r in rows.itertuples() if not pd.isna(r.layer)}


def _norm_setting(value: Any) -> Any:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value)
    try:
        return float(text)
    except ValueError:
        return text


def settings_difference(rows: pd.DataFrame, settings: dict[str, Any]) -> list[str]:
    """Describe how ``rows`` (already in an output) differ from ``settings`` (this run's).

    Args:
        rows: Rows of one checkpoint, with the setting columns (missing columns count as
            "not recorded").
        settings: ``{setting column: value}`` of this run.

    Returns:
        One ``"name: the file has A, this run B"`` string per differing setting (empty when
        all agree).
    """
    diffs = []
    for col in _COMPARED:
        now = _norm_setting(settings.get(col))
        have = ({_norm_setting(v) for v in rows[col].tolist()} if col in rows.columns else {None})
        if have != {now}:
            shown = ", ".join(sorted("not recorded" if h is None else str(h) for h in have))
            diffs.append(f"{col}: the file has {shown}, this run {now}")
    return diffs


def recorded_settings(checkpoint: str) -> tuple[dict[str, Any] | None, str | None]:
    """The settings and probe path recorded by the run that wrote ``checkpoint``.

    Looks for ``vitals.jsonl`` in the checkpoint's folder (a file's parent; a folder itself,
    then its parent) and returns the ``settings`` and ``probe.path`` of its last record that
    has settings.

    Args:
        checkpoint: A checkpoint file or folder.

    Returns:
        ``(settings, probe_path)``, both None when no such record exists.
    """
    from sslvitals.records import read_records

    p = Path(checkpoint)
    folders = [p.parent] if p.is_file() else [p, p.parent]
    for folder in folders:
        f = folder / "vitals.jsonl"
        if not f.is_file():
            continue
        try:
            records = [r for r in read_records(f) if r.get("settings")]
        except SSLVitalsError:
            continue
        if not records:
            continue
        last = records[-1]
        distinct = {tuple(sorted((k, str(v)) for k, v in r["settings"].items()
                                 if k in RUN_SETTINGS)) for r in records}
        if len(distinct) > 1:
            logger.warning("%s holds records with different settings; scoring %s with the last "
                           "record's", f, checkpoint)
        probe = last.get("probe") or {}
        return dict(last["settings"]), probe.get("path")
    return None, None


def _num_layers(model: torch.nn.Module, tap_layers: Any) -> int:
    from sslvitals.hooks import LayerTap

    with LayerTap(model, layers=tap_layers) as tap:
        return int(tap.num_layers)


def _tqdm(iterable: Any, **kwargs: Any) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, **kwargs)


def score_checkpoints(
    checkpoints: Sequence[str],
    probe_path: str,
    out: str,
    *,
    labels: str | None = None,
    metrics: str = "default",
    layers: str = "all",
    run_name: str | None = None,
    device: str = "auto",
    k: int | None = None,
    kmeans_iters: int | None = None,
    reservoir_size: int | None = None,
    silhouette_sample: int | None = None,
    cca_frames: int = 20000,
    max_probe_seconds: float | None = None,
    batch_seconds: float = 60.0,
    seed: int | None = None,
    backend: str | None = None,
    json_out: str | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score checkpoints and write the long-format table (resumable).

    Args:
        checkpoints: Files or folders (expanded by
            :func:`sslvitals.offline.loaders.expand_checkpoints`).
        probe_path: fairseq ``.tsv`` manifest or Kaldi-style folder (16 kHz audio); None: the
            probe the checkpoint's run recorded.
        out: Output ``.csv`` (or ``.json``); rows it already holds are kept and not recomputed.
        labels: Frame-label file (default: ``<probe stem>.phn`` if present).
        metrics: Metric specification (see :func:`resolve_metrics`).
        layers: ``"all"`` or comma-separated layer indices.
        run_name: Run name for every checkpoint (default: the checkpoint's folder name).
        device: ``"auto"`` (CUDA when visible), ``"cpu"`` or ``"cuda[:N]"``.
        k: k-means clusters.
        kmeans_iters: k-means iterations.
        reservoir_size: Frames kept per layer for k-means.
        silhouette_sample: Frames for the silhouette score (0 = exact).
        cca_frames: Frame pairs kept per layer for ``cca_mel``.
        max_probe_seconds: Seeded subset of the probe.
        batch_seconds: Audio per forward batch (the batching policy keeps values independent
            of it).
        seed: Seed of the probe subset, reservoirs and k-means.
        backend: k-means backend (``auto``, ``faiss``, ``torch``).

        Each of ``k`` .. ``backend`` left None comes from the run's recorded settings (see
        :func:`recorded_settings`), else from :class:`~sslvitals.config.VitalsConfig`.
        json_out: Also write the rows as JSON here.
        progress: Show tqdm progress bars.

    Returns:
        ``(table, failures)``: the full table as written, and ``(checkpoint, reason)`` for
        every checkpoint that could not be scored.
    """
    from sslvitals.batching import apply_policy
    from sslvitals.keys import parse_key
    from sslvitals.offline.io import COLUMNS, normalise, read_score_file, write_results
    from sslvitals.offline.loaders import default_run_name, expand_checkpoints, load_checkpoint
    from sslvitals.offline.melcca import cca_mel_scores
    from sslvitals.monitor import VitalsMonitor
    from sslvitals.probe import ProbeSet

    from sslvitals.metric_table import measurement_settings
    from sslvitals.offline.io import SETTING_COLUMNS, settings_columns

    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SSLVitalsError("--device cuda but no CUDA device is visible; use --device auto or cpu")
        dev = torch.device(device)
    logger.info("scoring on %s", dev)
    explicit = {"k": k, "kmeans_iters": kmeans_iters, "reservoir_size": reservoir_size,
                "silhouette_sample": silhouette_sample, "seed": seed, "backend": backend,
                "max_probe_seconds": max_probe_seconds}
    defaults = VitalsConfig()
    if layers != "all":
        parse_layers(layers, None)
    specs = expand_checkpoints(checkpoints)
    out_path = Path(out)
    table = read_score_file(out_path) if out_path.exists() else None
    if table is not None:
        logger.info("%s holds %d rows; only missing (checkpoint, layer, metric) rows are computed",
                    out_path, len(table))

    # plan every checkpoint before any model loads: settings, probe, and the resume check
    probes: dict[tuple[str, float, int], Any] = {}
    plans: list[tuple[Any, VitalsConfig, Any, dict[str, Any]]] = []
    for spec in specs:
        recorded, recorded_probe = recorded_settings(spec.path)
        chosen: dict[str, Any] = {}
        for name in RUN_SETTINGS:
            if explicit[name] is not None:
                chosen[name] = explicit[name]
            elif recorded is not None and recorded.get(name) is not None:
                chosen[name] = recorded[name]
            else:
                chosen[name] = getattr(defaults, name)
        source = "its run's vitals.jsonl" if recorded is not None else "the defaults"
        the_probe = probe_path or recorded_probe
        if not the_probe:
            raise SSLVitalsError(
                f"no probe for {spec.path}: pass --probe (a fairseq .tsv manifest or a Kaldi-style "
                "folder); only checkpoints of runs trained with vitals on know their probe"
            )
        try:
            cfg = VitalsConfig(enabled=True, probe=str(the_probe), layers=layers,
                               k=int(chosen["k"]), kmeans_iters=int(chosen["kmeans_iters"]),
                               reservoir_size=int(chosen["reservoir_size"]),
                               silhouette_sample=int(chosen["silhouette_sample"]),
                               seed=int(chosen["seed"]), backend=str(chosen["backend"]),
                               max_probe_seconds=float(chosen["max_probe_seconds"]),
                               device=str(dev) if dev.type == "cuda" else "cpu",
                               batch_seconds=batch_seconds)
            cfg.validate()
        except SSLVitalsError as exc:
            raise SSLVitalsError(
                f"{exc} (settings of {spec.path}, from {source} and the command line: "
                + ", ".join(f"--{n.replace('_', '-')} {chosen[n]}" for n in RUN_SETTINGS) + ")"
            ) from None
        pkey = (str(the_probe), cfg.max_probe_seconds, cfg.seed)
        if pkey not in probes:
            probe = ProbeSet.from_path(str(the_probe), labels=labels,
                                       max_seconds=cfg.max_probe_seconds, seed=cfg.seed)
            logger.info("probe %s: %d utterances, %.1f s, labels: %s", the_probe, len(probe),
                        probe.total_seconds, probe.has_labels)
            probes[pkey] = probe
        probe = probes[pkey]
        resolve_metrics(metrics, probe.has_labels)  # a bad --metrics fails before any work
        row_settings = settings_columns(measurement_settings(cfg, probe=probe.describe(),
                                                             device=dev.type))
        rows = _rows_of(table, spec.path)
        if rows is not None:
            diffs = settings_difference(rows, row_settings)
            if diffs:
                raise SSLVitalsError(
                    f"{out_path} already holds rows for {spec.path} measured with other settings ("
                    + "; ".join(diffs) + "). Nothing was computed. Score into another --out file, "
                    "or pass the settings the file has (e.g. --k, --seed) to add to it"
                )
        logger.info("%s: settings from %s: %s", spec.path, source,
                    ", ".join(f"{n}={chosen[n]}" for n in RUN_SETTINGS))
        plans.append((spec, cfg, probe, row_settings))

    failures: list[tuple[str, str]] = []
    bar = _tqdm(plans, desc="checkpoints", unit="ckpt", disable=not progress)
    for spec, cfg, probe, row_settings in bar:
        monitor_metrics, extra_metrics = resolve_metrics(metrics, probe.has_labels)
        wanted_metrics = monitor_metrics + extra_metrics
        done = _existing(_rows_of(table, spec.path))
        if done and layers != "all":
            want_layers = parse_layers(layers, None) or []
            if min(want_layers) >= 0 and all((ly, m) in done for ly in want_layers for m in wanted_metrics):
                logger.info("%s: every requested row is already in %s; skipped", spec.path, out_path)
                continue
        t0 = time.perf_counter()
        try:
            loaded = load_checkpoint(spec, dev)
            n_layers = _num_layers(loaded.model, loaded.tap_layers)
            layer_ids = parse_layers(layers, n_layers) or []
        except SSLVitalsError as exc:
            logger.error("FAILED %s: %s", spec.path, exc)
            failures.append((spec.path, str(exc)))
            continue
        missing = [(ly, m) for ly in layer_ids for m in wanted_metrics if (ly, m) not in done]
        if not missing:
            logger.info("%s: every requested row is already in %s; skipped", spec.path, out_path)
            continue
        miss_layers = sorted({ly for ly, _ in missing})
        miss_monitor = [m for m in monitor_metrics if any(mm == m for _, mm in missing)]
        miss_extra = [m for m in extra_metrics if any(mm == m for _, mm in missing)]
        values: dict[tuple[int, str], float] = {}
        try:
            if miss_monitor:
                run_cfg = dataclasses.replace(cfg, layers=",".join(map(str, miss_layers)),
                                              metrics=",".join(miss_monitor))
                monitor = VitalsMonitor(run_cfg)

                def probe_batches() -> Any:
                    return _tqdm(probe.batches(batch_seconds), desc=f"{Path(spec.path).name}",
                                 unit="batch", leave=False, disable=not progress)

                result = monitor.measure(loaded.model, loaded.forward_fn, probe_batches,
                                         step=loaded.step, tap_layers=loaded.tap_layers)
                for key, value in result.items():
                    parsed = parse_key(key)
                    if parsed is not None:
                        values[(parsed.layer, parsed.metric)] = float(value)
            if "cca_mel" in miss_extra:
                cca_layers = sorted({ly for ly, m in missing if m == "cca_mel"})
                batches = apply_policy(loaded.model, loaded.forward_fn,
                                       probe.batches(batch_seconds))
                scores = cca_mel_scores(
                    loaded.model, loaded.forward_fn, batches, cca_layers, capacity=cca_frames,
                    seed=cfg.seed, tap_layers=loaded.tap_layers,
                    progress=lambda it: _tqdm(it, desc="cca_mel", unit="batch", leave=False,
                                              disable=not progress),
                )
                for ly, v in scores.items():
                    values[(ly, "cca_mel")] = v
        except SSLVitalsError as exc:
            logger.error("FAILED %s while measuring: %s", spec.path, exc)
            failures.append((spec.path, str(exc)))
            continue
        finally:
            del loaded.model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        run = run_name or default_run_name(spec)
        rows = [
            {"run": run, "checkpoint": spec.path, "step": loaded.step, "layer": ly, "metric": m,
             "value": values.get((ly, m), math.nan), "toolkit": loaded.toolkit,
             "loss": math.nan if loaded.loss is None else loaded.loss, **row_settings}
            for ly, m in missing
        ]
        new = pd.DataFrame(rows, columns=list(COLUMNS) + list(SETTING_COLUMNS))
        table = normalise(new if table is None or table.empty else pd.concat([table, new], ignore_index=True))
        write_results(table, out_path)
        if json_out:
            write_results(table, json_out)
        logger.info("%s (%s %s, step %s): %d rows in %.1f s", spec.path, loaded.toolkit,
                    loaded.kind, loaded.step, len(rows), time.perf_counter() - t0)
    if table is None:
        table = normalise(pd.DataFrame(columns=list(COLUMNS)))
        if not failures:
            write_results(table, out_path)
    elif json_out and not Path(json_out).exists():
        write_results(table, json_out)
    if out_path.exists():
        table = read_score_file(out_path)
    if failures:
        logger.error("%d of %d checkpoint(s) failed:\n%s", len(failures), len(specs),
                     "\n".join(f"  {c}: {r}" for c, r in failures))
    return table, failures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``score`` options."""
    parser.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT",
        help="fairseq .pt files, ESPnet experiment directories or .pth files, transformers model "
        "directories, or folders holding any of these (expanded; checkpoint_last/best.pt skipped)",
    )
    parser.add_argument("--probe", default=None,
                        help="probe audio (16 kHz): fairseq .tsv manifest or Kaldi-style folder "
                        "(default: the probe the checkpoint's run recorded in its vitals.jsonl)")
    parser.add_argument("--labels", default=None,
                        help="frame-level phone labels (default: <probe stem>.phn if present)")
    parser.add_argument("--out", default="scores.csv",
                        help="output table (.csv or .json); re-runs keep and skip its rows")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the rows as a JSON list of objects")
    parser.add_argument("--metrics", default="default",
                        help="'default' (everything the probe allows), 'label_free', or names from: "
                        + ", ".join(OFFLINE_METRICS))
    parser.add_argument("--layers", default="all", help="'all' or comma-separated layers, e.g. 0,6,12")
    parser.add_argument("--run", default=None, help="run name (default: the checkpoint's folder)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda[:N]")
    from sslvitals.config import VitalsConfig

    d = VitalsConfig()
    run_note = "default: the run's recorded setting, else %s"
    parser.add_argument("--k", type=int, default=None,
                        help="k-means clusters (" + run_note % d.k + ", the paper's value)")
    parser.add_argument("--kmeans-iters", type=int, default=None,
                        help="k-means iterations (" + run_note % d.kmeans_iters + ")")
    parser.add_argument("--reservoir-size", type=int, default=None,
                        help="frames kept per layer for k-means (" + run_note % d.reservoir_size + ")")
    parser.add_argument("--silhouette-sample", type=int, default=None,
                        help="frames for the silhouette, 0 = exact (" + run_note % d.silhouette_sample + ")")
    parser.add_argument("--cca-frames", type=int, default=20000, help="frame pairs per layer for cca_mel")
    parser.add_argument("--max-probe-seconds", type=float, default=None,
                        help="seeded subset of the probe, seconds (" + run_note % d.max_probe_seconds + ")")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio per batch")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the probe subset, reservoirs and k-means (" + run_note % d.seed + ")")
    parser.add_argument("--backend", default=None, choices=("auto", "faiss", "torch"),
                        help="k-means backend (" + run_note % d.backend + ")")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Score the checkpoints; 0 when all succeeded, 1 when any failed."""
    _table, failures = score_checkpoints(
        args.checkpoints, args.probe, args.out, labels=args.labels, metrics=args.metrics,
        layers=args.layers, run_name=args.run, device=args.device, k=args.k,
        kmeans_iters=args.kmeans_iters, reservoir_size=args.reservoir_size,
        silhouette_sample=args.silhouette_sample, cca_frames=args.cca_frames,
        max_probe_seconds=args.max_probe_seconds, batch_seconds=args.batch_seconds,
        seed=args.seed, backend=args.backend, json_out=args.json, progress=not args.no_progress,
    )
    return 1 if failures else 0
