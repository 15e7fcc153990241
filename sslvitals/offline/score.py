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

Safety: every option is checked before any model loads, with messages that name the option
as typed; the probe is checked up front (at least one utterance after ``--max-probe-seconds``,
none shorter than the front-end's receptive field, enough frames for ``--k``); ``--out`` and
``--json`` are checked before any work (writable, not an input, and either absent or a results
table sslvitals wrote, unless ``--force``). Rows are never stored for a checkpoint whose every
value came out NaN, nor for a pass that raised; a NaN row measured with other settings than
this run's is recomputed, never kept.

Settings: a setting not given on the command line is taken from the run that wrote the
checkpoint (the ``settings`` of the last record in the ``vitals.jsonl`` beside it, written when
the run trained with vitals on), else from :class:`~sslvitals.config.VitalsConfig`'s defaults:
so scoring a checkpoint offline reproduces the numbers its training run logged.

A re-run keeps every row the output already holds and measures only the missing
``(checkpoint, layer, metric)`` triples; rows measured with other settings (among those the
metric depends on, :mod:`sslvitals.metric_table`, plus the probe, its selection and the
version) stop the run before any work, with a message naming the difference (never a stale
value). A checkpoint that fails
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

from sslvitals.config import (LABEL_METRICS, ONLINE_METRICS, VitalsConfig, parse_layers,
                              parse_metrics)
from sslvitals.errors import SSLVitalsError
from sslvitals.metric_table import OFFLINE_ONLY_METRICS, metric_info

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
OFFLINE_METRICS: tuple[str, ...] = ONLINE_METRICS + EXTRA_METRICS


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
#: Compared for every metric; the others only for the metrics that depend on them.
_ALWAYS_COMPARED = ("max_probe_seconds", "probe_fingerprint", "label_frames", "version")
#: Metrics that need a k-means fit on the reservoir (at least k frames).
_KMEANS_METRICS = tuple(m for m in ONLINE_METRICS if "k" in metric_info(m).settings)


def _compared_settings(metric: str) -> tuple[str, ...]:
    """The setting columns a row of ``metric`` is compared on when resuming."""
    try:
        own = metric_info(metric).settings
    except SSLVitalsError:  # a metric this version does not know: compare everything
        return _COMPARED
    return tuple(c for c in _COMPARED if c in _ALWAYS_COMPARED or c in own)


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

    A row is compared on the settings its metric depends on (``MetricInfo.settings`` of
    :mod:`sslvitals.metric_table`) plus the probe, its selection, the label protocol and the
    version: e.g. a ``rankme`` row does not depend on ``k``.

    Args:
        rows: Rows of one checkpoint, with the setting columns (missing columns count as
            "not recorded").
        settings: ``{setting column: value}`` of this run.

    Returns:
        One ``"name: the file has A, this run B"`` string per differing setting (empty when
        all agree).
    """
    diffs = []
    metrics = rows["metric"].astype(str) if "metric" in rows.columns else pd.Series([""] * len(rows))
    for col in _COMPARED:
        mask = metrics.map(lambda m: col in _compared_settings(m)).astype(bool).to_numpy()
        if not mask.any():
            continue
        now = _norm_setting(settings.get(col))
        have = ({_norm_setting(v) for v in rows.loc[mask, col].tolist()} if col in rows.columns
                else {None})
        if have != {now}:
            shown = ", ".join(sorted(_show(h) for h in have))
            diffs.append(f"{col}: the file has {shown}, this run {_show(now)}")
    return diffs


def _show(value: Any) -> str:
    """A setting as a person writes it (``4``, not ``4.0``)."""
    if value is None:
        return "not recorded"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _stale_nan_rows(rows: pd.DataFrame, settings: dict[str, Any]) -> pd.Index:
    """Index of the NaN rows measured with other settings than ``settings`` (recomputed)."""
    stale = []
    for idx, row in rows.iterrows():
        if not pd.isna(row["value"]):
            continue
        one = rows.loc[[idx]]
        if settings_difference(one, settings):
            stale.append(idx)
    return pd.Index(stale)


def recorded_settings(checkpoint: str) -> tuple[dict[str, Any] | None, str | None]:
    """The settings and probe path recorded by the run that wrote ``checkpoint``.

    Looks for ``vitals.jsonl`` in the checkpoint's folder and the two above it (a file's
    parent; a folder itself, then its parents) and returns the ``settings`` and ``probe.path`` of its last record that
    has settings.

    Args:
        checkpoint: A checkpoint file or folder.

    Returns:
        ``(settings, probe_path)``, both None when no such record exists.
    """
    from sslvitals.records import read_records

    p = Path(checkpoint)
    # fairseq / ESPnet: beside the checkpoint; SpeechBrain: <output>/save/CKPT+*/ -> <output>
    folders = [p.parent, p.parent.parent] if p.is_file() else [p, p.parent, p.parent.parent]
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


def _inspect_model(model: torch.nn.Module, tap_layers: Any, probe: Any,
                   layers: str) -> tuple[list[int], list[str]]:
    """The layer ids to measure, and the probe utterances too short for this model.

    Returns:
        ``(layer_ids, too_short)``: ``too_short`` lists ``"uid (N samples)"`` for every
        utterance that gives no frame on some selected layer (empty when the front-end is not
        known).
    """
    from sslvitals.hooks import LayerTap

    with LayerTap(model, layers=tap_layers) as tap:
        n_layers = int(tap.num_layers)
        plan = tap.plan
    try:
        layer_ids = parse_layers(layers, n_layers) or []
    except SSLVitalsError as exc:
        raise SSLVitalsError(f"--layers {layers}: {exc}") from None
    lengths = torch.tensor([it.num_samples for it in probe.items], dtype=torch.int64)
    short: set[int] = set()
    for layer in layer_ids:
        frames = plan.frames_from_samples(lengths, layer)
        if frames is None:
            break
        short |= {int(i) for i in (frames <= 0).nonzero().flatten().tolist()}
    return layer_ids, [f"{probe.items[i].uid} ({probe.items[i].num_samples} samples)"
                       for i in sorted(short)]


def _parse_device(device: str) -> torch.device:
    """``--device`` as a torch device, checked against what this machine has."""
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text != "cpu" and not (text == "cuda" or text.startswith("cuda:")):
        raise SSLVitalsError(
            f"--device {device} is not a device sslvitals knows: use auto (a GPU when one is "
            "visible, else the CPU), cpu, cuda or cuda:N"
        )
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise SSLVitalsError(f"--device {device} is not a valid device: use auto, cpu, cuda or "
                             "cuda:N with N a GPU index (0, 1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SSLVitalsError(f"--device {device} but no CUDA device is visible; use --device "
                                 "auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SSLVitalsError(f"--device {device} but only {torch.cuda.device_count()} CUDA "
                                 f"device(s) are visible (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


def _check_options(*, metrics: str, layers: str, k: int | None, kmeans_iters: int | None,
                   reservoir_size: int | None, silhouette_sample: int | None, cca_frames: int,
                   max_probe_seconds: float | None, batch_seconds: float,
                   backend: str | None, word_vocab_size: int | None = None) -> None:
    """Check every option before any file is read or model loaded; messages name the flag."""
    def bad(flag: str, value: Any, need: str) -> SSLVitalsError:
        return SSLVitalsError(f"{flag} {value}: {need}")

    if layers != "all":
        try:
            parse_layers(layers, None)
        except SSLVitalsError:
            raise SSLVitalsError(f"--layers {layers!r}: give 'all' or comma-separated layer "
                                 "indices, e.g. --layers 0,6,12 (negative counts from the last "
                                 "layer: -1)") from None
    if k is not None and k < 2:
        raise bad("--k", k, "k-means needs at least 2 clusters; use e.g. --k 100")
    if kmeans_iters is not None and kmeans_iters < 1:
        raise bad("--kmeans-iters", kmeans_iters, "must be at least 1 (the default is "
                  f"{VitalsConfig().kmeans_iters})")
    if reservoir_size is not None and reservoir_size < 1:
        raise bad("--reservoir-size", reservoir_size, "must be a positive number of frames")
    if reservoir_size is not None and k is not None and reservoir_size < k:
        raise SSLVitalsError(
            f"--reservoir-size {reservoir_size} is below --k {k}: k-means needs at least k frames. "
            f"Pass --reservoir-size >= {k} (39 x k = {39 * k} for stable clusters) or a smaller --k"
        )
    if silhouette_sample is not None and silhouette_sample < 0:
        raise bad("--silhouette-sample", silhouette_sample, "must be >= 0 (0: exact)")
    if cca_frames < 2:
        raise bad("--cca-frames", cca_frames, "must be at least 2 frame pairs (default 20000)")
    if max_probe_seconds is not None and not max_probe_seconds > 0:
        raise bad("--max-probe-seconds", f"{max_probe_seconds:g}", "must be > 0 seconds "
                  f"(default {VitalsConfig().max_probe_seconds:g})")
    if not batch_seconds > 0:
        raise bad("--batch-seconds", f"{batch_seconds:g}", "must be > 0 seconds (default 60)")
    if backend is not None and backend not in ("auto", "faiss", "torch"):
        raise bad("--backend", backend, "use auto, faiss or torch")
    if word_vocab_size is not None and word_vocab_size < 2:
        raise bad("--word-vocab-size", word_vocab_size, "the word measures need at least 2 words "
                  "to tell apart (default 500)")
    resolve_metrics(metrics, has_labels=True)  # names only; labels are checked with the probe


def _check_settings(chosen: dict[str, Any], origin: dict[str, str], checkpoint: str) -> None:
    """Check the merged settings of one checkpoint; messages name the flag and the source."""
    def named(name: str) -> str:
        return f"--{name.replace('_', '-')} {chosen[name]} ({origin[name]})"

    k, reservoir = int(chosen["k"]), int(chosen["reservoir_size"])
    where = f" for {checkpoint}"
    if k < 2:
        raise SSLVitalsError(f"{named('k')}{where}: k-means needs at least 2 clusters; pass --k")
    if int(chosen["kmeans_iters"]) < 1:
        raise SSLVitalsError(f"{named('kmeans_iters')}{where}: must be >= 1; pass --kmeans-iters")
    if reservoir < k:
        raise SSLVitalsError(
            f"{named('reservoir_size')} is below {named('k')}{where}: k-means needs at least k "
            f"frames. Pass --reservoir-size >= {k} (39 x k = {39 * k} for stable clusters) or a "
            "smaller --k"
        )
    if int(chosen["silhouette_sample"]) < 0:
        raise SSLVitalsError(f"{named('silhouette_sample')}{where}: must be >= 0; pass "
                             "--silhouette-sample")
    if not float(chosen["max_probe_seconds"]) > 0:
        raise SSLVitalsError(f"{named('max_probe_seconds')}{where}: must be > 0; pass "
                             "--max-probe-seconds")
    if str(chosen["backend"]) not in ("auto", "faiss", "torch"):
        raise SSLVitalsError(f"{named('backend')}{where}: use auto, faiss or torch; pass --backend")


def _check_kmeans_frames(chosen: dict[str, Any], origin: dict[str, str], probe: Any,
                         monitor_metrics: Sequence[str]) -> None:
    """Refuse, before any model loads, a k larger than the frames k-means will be fitted on.

    k-means is fitted on the even-indexed probe utterances (the odd ones are held out for the
    label metrics), at most ``reservoir_size`` of their frames; at 50 Hz (the highest frame
    rate of the supported models) their frame count bounds what any layer can give.
    """
    from sslvitals.monitor import is_heldout
    from sslvitals.probe import frame_count

    wanted = [m for m in monitor_metrics if m in _KMEANS_METRICS]
    if not wanted:
        return
    fit = [it for it in probe.items if not is_heldout(it.index)]
    frames = sum(frame_count(it.num_samples) for it in fit)
    available = min(frames, int(chosen["reservoir_size"]))
    k = int(chosen["k"])
    if available < k:
        how = (f"the probe gives it {frames} frames (the 50 Hz frames of its {len(fit)} "
               "even-indexed utterances; the odd-indexed ones are held out for the label metrics)"
               if frames <= int(chosen["reservoir_size"]) else
               f"--reservoir-size keeps {available} frames")
        raise SSLVitalsError(
            f"--k {k} ({origin['k']}) is larger than the frames k-means can be fitted on: {how}, so "
            f"{', '.join(wanted)} would all be NaN. Lower --k to at most {available}, or use a "
            "longer probe (--probe, --max-probe-seconds)"
        )


def _tqdm(iterable: Any, **kwargs: Any) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, **kwargs)


def score_checkpoints(
    checkpoints: Sequence[str],
    probe_path: str | None,
    out: str,
    *,
    labels: str | None = None,
    words: str | None = None,
    word_vectors: str | None = None,
    word_vocab_size: int | None = None,
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
    force: bool = False,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Score checkpoints and write the long-format table (resumable).

    Args:
        checkpoints: Files or folders (expanded by
            :func:`sslvitals.offline.loaders.expand_checkpoints`).
        probe_path: fairseq ``.tsv`` manifest or Kaldi-style folder (16 kHz audio); None: the
            probe the checkpoint's run recorded.
        out: Output ``.csv`` (or ``.json``); rows it already holds are kept and not recomputed.
        labels: Frame-label file (default: ``<probe stem>.phn`` if present).
        words: Word alignments for the word-level measures (default: ``<probe
            stem>.words.tsv`` / ``.ctm`` / ``.textgrid`` if present).
        word_vectors: Word-vector text file for ``cca_word`` (default: one-hot identity).
        word_vocab_size: Most frequent probe words the word measures count (default: the
            :class:`~sslvitals.config.VitalsConfig` default).
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
        force: Replace ``out`` / ``json_out`` even when they are not results tables written
            by ``sslvitals score`` (see :func:`sslvitals.offline.output.check_output`).

    Returns:
        ``(table, failures)``: the full table as written, and ``(checkpoint, reason)`` for
        every checkpoint that could not be scored.

    Raises:
        SSLVitalsError: before any model loads, for a bad option, probe or output file.
    """
    from sslvitals.batching import apply_policy
    from sslvitals.keys import parse_key
    from sslvitals.metric_table import measurement_settings
    from sslvitals.monitor import VitalsMonitor
    from sslvitals.offline.io import (COLUMNS, SETTING_COLUMNS, normalise, read_score_file,
                                      settings_columns, write_results)
    from sslvitals.offline.loaders import default_run_name, expand_checkpoints, load_checkpoint
    from sslvitals.offline.melcca import cca_mel_scores
    from sslvitals.offline.output import check_output, inputs_of, recognise
    from sslvitals.probe import ProbeSet

    # 1. options, before anything is read
    _check_options(metrics=metrics, layers=layers, k=k, kmeans_iters=kmeans_iters,
                   reservoir_size=reservoir_size, silhouette_sample=silhouette_sample,
                   cca_frames=cca_frames, max_probe_seconds=max_probe_seconds,
                   batch_seconds=batch_seconds, backend=backend,
                   word_vocab_size=word_vocab_size)
    dev = _parse_device(device)
    logger.info("scoring on %s", dev)
    explicit = {"k": k, "kmeans_iters": kmeans_iters, "reservoir_size": reservoir_size,
                "silhouette_sample": silhouette_sample, "seed": seed, "backend": backend,
                "max_probe_seconds": max_probe_seconds}
    defaults = VitalsConfig()
    specs = expand_checkpoints(checkpoints)

    # 2. the outputs: writable, not an input, and ours (or absent) unless --force
    inputs = inputs_of(list(checkpoints) + [s.path for s in specs]
                       + [p for p in (probe_path, labels, words, word_vectors) if p])
    out_path = check_output(out, kind="results", command="score", flag="--out", inputs=inputs,
                            force=force)
    if json_out:
        check_output(json_out, kind="results", command="score", flag="--json", inputs=inputs,
                     force=force)
    table = None
    if out_path.exists() and recognise(out_path) == "results":
        try:
            table = read_score_file(out_path)
        except SSLVitalsError:
            if not force:
                raise
            logger.warning("%s cannot be read; starting it anew (--force)", out_path)
    if table is not None:
        logger.info("%s holds %d rows; only missing (checkpoint, layer, metric) rows are computed",
                    out_path, len(table))

    # 3. plan every checkpoint before any model loads: settings, probe, and the resume check
    probes: dict[tuple[str, float, int], Any] = {}
    plans: list[tuple[Any, VitalsConfig, Any, dict[str, Any]]] = []
    for spec in specs:
        recorded, recorded_probe = recorded_settings(spec.path)
        chosen: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name in RUN_SETTINGS:
            if explicit[name] is not None:
                chosen[name], origin[name] = explicit[name], "given"
            elif recorded is not None and recorded.get(name) is not None:
                chosen[name], origin[name] = recorded[name], "from the run's vitals.jsonl"
            else:
                chosen[name], origin[name] = getattr(defaults, name), "the default"
        source = "its run's vitals.jsonl" if recorded is not None else "the defaults"
        the_probe = probe_path or recorded_probe
        if not the_probe:
            raise SSLVitalsError(
                f"no probe for {spec.path}: pass --probe (a fairseq .tsv manifest or a Kaldi-style "
                "folder); only checkpoints of runs trained with vitals on know their probe"
            )
        _check_settings(chosen, origin, spec.path)
        try:
            cfg = VitalsConfig(enabled=True, probe=str(the_probe), layers=layers,
                               k=int(chosen["k"]), kmeans_iters=int(chosen["kmeans_iters"]),
                               reservoir_size=int(chosen["reservoir_size"]),
                               silhouette_sample=int(chosen["silhouette_sample"]),
                               seed=int(chosen["seed"]), backend=str(chosen["backend"]),
                               max_probe_seconds=float(chosen["max_probe_seconds"]),
                               device=str(dev) if dev.type == "cuda" else "cpu",
                               batch_seconds=batch_seconds, probe_words=words,
                               word_vectors=word_vectors,
                               word_vocab_size=int(word_vocab_size or defaults.word_vocab_size))
            cfg.validate()
        except SSLVitalsError as exc:
            raise SSLVitalsError(
                f"{exc} (settings of {spec.path}, from {source} and the command line: "
                + ", ".join(f"--{n.replace('_', '-')} {chosen[n]}" for n in RUN_SETTINGS) + ")"
            ) from None
        pkey = (str(the_probe), cfg.max_probe_seconds, cfg.seed)
        if pkey not in probes:
            probe = ProbeSet.from_path(str(the_probe), labels=labels, words=words,
                                       max_seconds=cfg.max_probe_seconds, seed=cfg.seed)
            logger.info("probe %s: %d utterances, %.1f s, labels: %s", the_probe, len(probe),
                        probe.total_seconds, probe.has_labels)
            probes[pkey] = probe
        probe = probes[pkey]
        monitor_metrics, _extra = resolve_metrics(metrics, probe.has_labels)  # fails before work
        _check_kmeans_frames(chosen, origin, probe, monitor_metrics)
        row_settings = settings_columns(measurement_settings(cfg, probe=probe.describe(),
                                                             device=dev.type))
        rows = _rows_of(table, spec.path)
        if rows is not None:
            stale = _stale_nan_rows(rows, row_settings)
            if len(stale):
                logger.warning("%s: %d NaN row(s) in %s were measured with other settings "
                               "(%s); they are measured again", spec.path, len(stale), out_path,
                               "; ".join(settings_difference(rows.loc[stale], row_settings)))
                table = table.drop(index=stale)
                rows = rows.drop(index=stale)
            diffs = settings_difference(rows, row_settings) if len(rows) else []
            if diffs:
                raise SSLVitalsError(
                    f"{out_path} already holds rows for {spec.path} measured with other settings ("
                    + "; ".join(diffs) + "). Nothing was computed. Score into another --out file, "
                    "or pass the settings the file has (e.g. --k, --seed) to add to it"
                )
        logger.info("%s: settings from %s: %s", spec.path, source,
                    ", ".join(f"{n}={chosen[n]}" for n in RUN_SETTINGS))
        plans.append((spec, cfg, probe, row_settings))

    # 4. measure, one checkpoint at a time; the file is rewritten after each
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
            layer_ids, too_short = _inspect_model(loaded.model, loaded.tap_layers, probe, layers)
            if too_short:
                raise SSLVitalsError(
                    f"{len(too_short)} probe utterance(s) are shorter than this model's receptive "
                    f"field and give no frame: {', '.join(too_short[:5])}; remove them from the probe"
                )
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
        not_measured: set[str] = set()  # metrics whose pass raised: no row is stored
        try:
            if miss_monitor:
                run_cfg = dataclasses.replace(cfg, layers=",".join(map(str, miss_layers)),
                                              metrics=",".join(miss_monitor))
                monitor = VitalsMonitor(run_cfg)

                def probe_batches() -> Any:
                    return _tqdm(probe.batches(batch_seconds), desc=f"{Path(spec.path).name}",
                                 unit="batch", leave=False, disable=not progress)

                try:
                    result = monitor.measure(loaded.model, loaded.forward_fn, probe_batches,
                                             step=loaded.step, tap_layers=loaded.tap_layers)
                except Exception as exc:  # noqa: BLE001 - reported with the checkpoint, the rest go on
                    reason = f"the metric pass failed: {type(exc).__name__}: {exc}"
                    logger.error("FAILED %s: %s", spec.path, reason)
                    failures.append((spec.path, reason))
                    not_measured.update(miss_monitor)
                    result = {}
                for key, value in result.items():
                    parsed = parse_key(key)
                    if parsed is not None:
                        values[(parsed.layer, parsed.metric)] = float(value)
            if "cca_mel" in miss_extra:
                cca_layers = sorted({ly for ly, m in missing if m == "cca_mel"})
                batches = apply_policy(loaded.model, loaded.forward_fn,
                                       probe.batches(batch_seconds))
                try:
                    scores = cca_mel_scores(
                        loaded.model, loaded.forward_fn, batches, cca_layers, capacity=cca_frames,
                        seed=cfg.seed, tap_layers=loaded.tap_layers,
                        progress=lambda it: _tqdm(it, desc="cca_mel", unit="batch", leave=False,
                                                  disable=not progress),
                    )
                except Exception as exc:  # noqa: BLE001 - reported with the checkpoint
                    reason = f"the cca_mel pass failed: {type(exc).__name__}: {exc}"
                    logger.error("FAILED %s: %s", spec.path, reason)
                    failures.append((spec.path, reason))
                    not_measured.add("cca_mel")
                    scores = {}
                for ly, v in scores.items():
                    values[(ly, "cca_mel")] = v
        finally:
            del loaded.model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        measured = [(ly, m) for ly, m in missing if m not in not_measured]
        nan_keys = [(ly, m) for ly, m in measured if not math.isfinite(values.get((ly, m), math.nan))]
        if measured and len(nan_keys) == len(measured):
            reason = (f"every one of its {len(measured)} values came out NaN (see the warnings "
                      "above); no row was stored, so a re-run measures it again")
            logger.error("FAILED %s: %s", spec.path, reason)
            failures.append((spec.path, reason))
            continue
        if nan_keys:
            names = sorted({m for _, m in nan_keys})
            hint = ""
            if set(names) & set(_KMEANS_METRICS):
                hint = (f" k-means metrics depend on --k {cfg.k}, --reservoir-size "
                        f"{cfg.reservoir_size} and the probe's frames (e.g. a layer at a lower "
                        "frame rate gives fewer frames than k);")
            logger.warning("%s: %d of %d values are NaN (%s); the warnings above say why.%s a "
                           "re-run with other settings measures NaN rows again", spec.path,
                           len(nan_keys), len(measured), ", ".join(names), hint)
        if not measured:
            continue
        run = run_name or default_run_name(spec)
        rows = [
            {"run": run, "checkpoint": spec.path, "step": loaded.step, "layer": ly, "metric": m,
             "value": values.get((ly, m), math.nan), "toolkit": loaded.toolkit,
             "loss": math.nan if loaded.loss is None else loaded.loss, **row_settings}
            for ly, m in measured
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
    if out_path.exists() and recognise(out_path) == "results":
        table = read_score_file(out_path)
    if failures:
        logger.error("%d of %d checkpoint(s) failed:\n%s", len({c for c, _ in failures}),
                     len(specs), "\n".join(f"  {c}: {r}" for c, r in failures))
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
    parser.add_argument("--words", default=None,
                        help="word alignments for mi_word / nmi_word / cca_word: 'utt start end "
                        "word' TSV, Kaldi .ctm or a folder of <utt>.TextGrid (default: <probe "
                        "stem>.words.tsv / .ctm / .textgrid if present)")
    parser.add_argument("--word-vectors", default=None,
                        help="'word v1 v2 ...' text file (e.g. GloVe) for cca_word (default: "
                        "one-hot identity of the most frequent words)")
    parser.add_argument("--word-vocab-size", type=int, default=None,
                        help="most frequent probe words the word measures count (default 500)")
    parser.add_argument("--out", default="scores.csv",
                        help="output table (.csv or .json); re-runs keep and skip its rows")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the rows as a JSON list of objects")
    parser.add_argument("--metrics", default="default",
                        help="'default' (everything the probe allows), 'label_free', 'layerwise' "
                        "(CCA and MI with phones and words; add cca_mel), 'all', or names from: "
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
    parser.add_argument("--force", action="store_true",
                        help="write --out / --json even over a file that is not a results table "
                        "of sslvitals score (its content is lost)")


def run(args: argparse.Namespace) -> int:
    """Score the checkpoints; 0 when all succeeded, 1 when any failed."""
    _table, failures = score_checkpoints(
        args.checkpoints, args.probe, args.out, labels=args.labels, words=args.words,
        word_vectors=args.word_vectors, word_vocab_size=args.word_vocab_size, metrics=args.metrics,
        layers=args.layers, run_name=args.run, device=args.device, k=args.k,
        kmeans_iters=args.kmeans_iters, reservoir_size=args.reservoir_size,
        silhouette_sample=args.silhouette_sample, cca_frames=args.cca_frames,
        max_probe_seconds=args.max_probe_seconds, batch_seconds=args.batch_seconds,
        seed=args.seed, backend=args.backend, json_out=args.json, progress=not args.no_progress,
        force=args.force,
    )
    return 1 if failures else 0
