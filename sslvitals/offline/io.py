"""Read and write the offline long-format results table.

One row per number: ``run, checkpoint, step, layer, metric, value`` plus the optional
``toolkit`` and ``loss`` columns. The same table is built from

* the CSV / JSON files written by ``sslvitals score`` (``.csv``, ``.json``), and
* the JSON-lines files written during training by the fairseq and ESPnet integrations
  (``.jsonl``; one record per validation, see ``sslvitals.records``),

so numbers measured online and offline end up in one :class:`pandas.DataFrame`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from sslvitals.errors import SSLVitalsError
from sslvitals.keys import parse_key

__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "load_results",
    "read_score_file",
    "records_to_frame",
    "write_results",
    "check_duplicates",
    "normalise",
    "SETTING_COLUMNS",
    "settings_columns",
    "check_complete_csv",
]

logger = logging.getLogger(__name__)

#: Column order of the long format (``toolkit`` and ``loss`` may be empty).
COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "layer", "metric", "value", "toolkit", "loss")
#: Columns that identify one number; a table never holds two rows with the same key.
KEY_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "step", "layer", "metric")

#: Columns that record the settings a value was measured with (one per setting of
#: :func:`sslvitals.metric_table.measurement_settings`, the probe as its fingerprint).
SETTING_COLUMNS: tuple[str, ...] = ("k", "kmeans_iters", "reservoir_size", "silhouette_sample",
                                    "seed", "backend", "max_probe_seconds", "probe_fingerprint",
                                    "label_frames", "version", "device")

_TEXT_SETTINGS = ("backend", "probe_fingerprint", "label_frames", "version", "device")

_JSONL_SUFFIXES = (".jsonl", ".ndjson")


def settings_columns(settings: dict | None) -> dict:
    """Map a record's ``settings`` dict to the :data:`SETTING_COLUMNS` of a row.

    Args:
        settings: :func:`sslvitals.metric_table.measurement_settings` output, or None (a
            record written before settings were recorded: every column is empty).

    Returns:
        ``{column: value}`` for every setting column.
    """
    settings = settings or {}
    out = {c: settings.get(c) for c in SETTING_COLUMNS}
    out["probe_fingerprint"] = settings.get("probe")
    return out


def _empty_frame() -> pd.DataFrame:
    return normalise(pd.DataFrame({c: [] for c in COLUMNS}))


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Give ``frame`` the canonical columns and dtypes (extra columns are kept at the end).

    Missing optional columns (``run``, ``step``, ``toolkit``, ``loss``) are added empty.

    Raises:
        SSLVitalsError: if ``checkpoint``, ``layer``, ``metric`` or ``value`` is missing.
    """
    missing = [c for c in ("checkpoint", "layer", "metric", "value") if c not in frame.columns]
    if missing:
        raise SSLVitalsError(
            f"results table lacks column(s) {missing}; a results file needs the columns "
            f"{', '.join(COLUMNS[:6])} (write it with 'sslvitals score')"
        )
    frame = frame.copy()
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.NA
    frame["run"] = frame["run"].fillna("").astype(str)
    frame["checkpoint"] = frame["checkpoint"].fillna("").astype(str)
    frame["toolkit"] = frame["toolkit"].fillna("").astype(str)
    frame["metric"] = frame["metric"].astype(str)
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce").astype("Int64")
    frame["layer"] = pd.to_numeric(frame["layer"], errors="coerce").astype("Int64")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["loss"] = pd.to_numeric(frame["loss"], errors="coerce").astype(float)
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[list(COLUMNS) + extra].reset_index(drop=True)


def check_duplicates(frame: pd.DataFrame, *, source: str = "results") -> None:
    """Raise if two rows share ``(run, checkpoint, step, layer, metric)``.

    Args:
        frame: Long-format table.
        source: What to call the table in the message.

    Raises:
        SSLVitalsError: listing up to five duplicated keys.
    """
    dup = frame.duplicated(list(KEY_COLUMNS), keep=False)
    if bool(dup.any()):
        keys = frame.loc[dup, list(KEY_COLUMNS)].drop_duplicates().head(5)
        listing = "; ".join(
            f"run={r.run!r} checkpoint={r.checkpoint!r} step={r.step} layer={r.layer} "
            f"metric={r.metric}"
            for r in keys.itertuples()
        )
        raise SSLVitalsError(
            f"{source} holds {int(dup.sum())} rows with a duplicated (run, checkpoint, step, "
            f"layer, metric) key, e.g. {listing}. The same checkpoint was scored twice into "
            "different files, or two runs share a name: pass each file once, or give the runs "
            "distinct names (sslvitals score --run NAME)"
        )


def check_complete_csv(path: str | os.PathLike[str], text: str | None = None, *,
                       delimiter: str = ",", require_newline: bool = True) -> str:
    """Check that a CSV file was written to its end: a final newline and full rows.

    A file cut while being written (a crash, a full disk, a partial copy) ends in the middle
    of a row; read as it is, the cut row would give a wrong number (``0.`` for ``0.8125``)
    and empty columns. Every row must have as many fields as the header.

    Args:
        path: The CSV file (for messages, and read when ``text`` is None).
        text: Its content, if already read.
        delimiter: Field separator (``"\\t"`` for TSV).
        require_newline: Also require the final newline every program-written CSV has (off
            for tables people type, whose editor may leave it out).

    Returns:
        The file's text.

    Raises:
        SSLVitalsError: naming the first incomplete line and how to recover.
    """
    p = Path(path)
    if text is None:
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise SSLVitalsError(f"cannot read {p}: {exc}") from exc
    if not text:
        return text
    fix = ("the file was cut while being written (a crash or a full disk). Delete that line to "
           "keep the rows before it, or re-create the file")
    if require_newline and not text.endswith("\n"):
        last = text.rsplit("\n", 1)[-1]
        raise SSLVitalsError(
            f"{p}: the last line ends without a newline ({last[:60]!r}): {fix}"
        )
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(rows)
        for row in rows:
            if row and len(row) != len(header):
                raise SSLVitalsError(
                    f"{p}, line {rows.line_num}: {len(row)} fields where the header has "
                    f"{len(header)} ({delimiter.join(row)[:60]!r}): {fix}"
                )
    except csv.Error as exc:
        raise SSLVitalsError(f"{p}: not a readable CSV file ({exc}): {fix}") from exc
    return text


def read_score_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one ``sslvitals score`` output (``.csv`` or ``.json``).

    Args:
        path: CSV with a header, or JSON holding a list of row objects (or
            ``{"rows": [...]}``).

    Returns:
        Long-format frame.

    Raises:
        SSLVitalsError: if the file is unreadable, incomplete (a CSV cut in the middle of a
            row, see :func:`check_complete_csv`) or lacks the required columns.
    """
    p = Path(path)
    try:
        if p.suffix.lower() == ".json":
            with open(p, encoding="utf-8") as fh:
                data = json.load(fh)
            rows = data.get("rows", []) if isinstance(data, dict) else data
            frame = pd.DataFrame(rows) if rows else _empty_frame()
        else:
            text = check_complete_csv(p)
            if not text.strip():
                return _empty_frame()
            frame = pd.read_csv(io.StringIO(text), keep_default_na=True,
                                dtype={c: str for c in _TEXT_SETTINGS})
    except (OSError, ValueError) as exc:
        raise SSLVitalsError(f"cannot read results file {p}: {exc}") from exc
    if frame.empty and len(frame.columns) == 0:
        return _empty_frame()
    try:
        return normalise(frame)
    except SSLVitalsError as exc:
        raise SSLVitalsError(f"{p}: {exc}") from exc


def records_to_frame(records: Iterable[dict], *, source: str = "records") -> pd.DataFrame:
    """Turn JSON-lines validation records into the long format.

    The step is the record's ``update`` (fairseq) or, when that is missing, its ``epoch``
    (ESPnet). Keys that are not layer-wise metric keys (e.g. ``vitals/seconds``) are dropped.

    Args:
        records: Dicts with ``toolkit, run, update, epoch, checkpoint, metrics, loss``.
        source: File name used in messages.

    Returns:
        Long-format frame (``loss`` filled from the record).
    """
    rows: list[dict] = []
    for i, rec in enumerate(records):
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict):
            raise SSLVitalsError(
                f"{source}: record {i} has no 'metrics' mapping; is this a vitals JSON-lines file?"
            )
        step = rec.get("update")
        if step is None:
            step = rec.get("epoch")
        loss = rec.get("loss")
        setting_values = settings_columns(rec.get("settings"))
        for key, value in metrics.items():
            parsed = parse_key(str(key))
            if parsed is None:
                continue
            rows.append(
                {
                    "run": rec.get("run") or "",
                    "checkpoint": rec.get("checkpoint") or "",
                    "step": step,
                    "layer": parsed.layer,
                    "metric": parsed.metric,
                    "value": math.nan if value is None else value,
                    "toolkit": rec.get("toolkit") or "",
                    "loss": math.nan if loss is None else loss,
                    **setting_values,
                }
            )
    return normalise(pd.DataFrame(rows)) if rows else _empty_frame()


def _read_jsonl(path: Path) -> pd.DataFrame:
    from sslvitals.records import read_records

    return records_to_frame(read_records([str(path)]), source=str(path))


def load_results(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Load score outputs and training JSON-lines files into one long-format table.

    Args:
        paths: One path or several: ``.csv`` / ``.json`` (``sslvitals score`` output) or
            ``.jsonl`` (records written during training). A directory stands for every
            such file inside it (not recursive).

    Returns:
        DataFrame with columns ``run, checkpoint, step, layer, metric, value, toolkit,
        loss`` (``step``/``layer`` nullable ints), sorted by run, step, metric, layer.

    Raises:
        SSLVitalsError: on a missing file, an unknown suffix, or duplicated keys across
            the inputs.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.suffix.lower() in (".csv", ".json") + _JSONL_SUFFIXES
            )
            if not found:
                raise SSLVitalsError(f"directory {p} holds no .csv, .json or .jsonl results")
            files.extend(found)
        elif not p.exists():
            raise SSLVitalsError(f"results file {p} does not exist")
        else:
            files.append(p)
    if not files:
        raise SSLVitalsError("no results files given")
    frames = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix in _JSONL_SUFFIXES:
            frames.append(_read_jsonl(f))
        elif suffix in (".csv", ".json", ".tsv"):
            frames.append(read_score_file(f))
        else:
            raise SSLVitalsError(
                f"unknown results file type {f} (expected .csv or .json from 'sslvitals score', "
                "or .jsonl written during training)"
            )
    frames = [f for f in frames if not f.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else _empty_frame()
    frame = normalise(frame)
    check_duplicates(frame, source=" + ".join(str(f) for f in files))
    return frame.sort_values(["run", "step", "checkpoint", "metric", "layer"], kind="stable").reset_index(
        drop=True
    )


def write_results(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a long-format table atomically (temporary file + rename, see
    :func:`sslvitals.offline.output.write_atomic`: the file keeps its mode, or gets the umask).

    Args:
        frame: Long-format table.
        path: ``.json`` writes a list of row objects; anything else writes CSV.
    """
    from sslvitals.offline.output import write_atomic

    p = Path(path)
    frame = normalise(frame)
    if p.suffix.lower() == ".json":
        rows = json.loads(frame.to_json(orient="records"))
        write_atomic(p, json.dumps(rows, indent=1) + "\n")
    else:
        write_atomic(p, lambda fh: frame.to_csv(fh, index=False))
