"""JSON-lines records: one line per measured validation (written by the integrations).

A record is a JSON object with these fields (missing values are ``null``)::

    {"toolkit": "fairseq", "run": "hubert_tiny", "update": 400, "epoch": 2,
     "checkpoint": null, "wall_time": "2026-11-27T13:02:11+00:00", "seconds": 3.2,
     "probe": {"path": "probe.tsv", "utterances": 120, "seconds": 600.0},
     "loss": 5.71, "metrics": {"vitals/rankme/L2": 41.3, ...},
     "settings": {"k": 1024, "kmeans_iters": 20, "reservoir_size": 40000,
                  "silhouette_sample": 10000, "seed": 0, "backend": "auto",
                  "max_probe_seconds": 3600.0, "probe": "<probe fingerprint>",
                  "label_frames": "held-out", "version": "0.2.0", "device": "cpu"}}

``settings`` are the values every number of the record depends on besides the model
(:func:`sslvitals.metric_table.measurement_settings`).

NaN values are written as ``NaN`` (Python's json dialect), which pandas and ``json`` read back.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from sslvitals.errors import SSLVitalsError

__all__ = ["make_record", "append_record", "read_records"]

logger = logging.getLogger(__name__)

_FIELDS = ("toolkit", "run", "update", "epoch", "checkpoint", "wall_time", "seconds", "probe",
           "loss", "metrics", "settings")


def make_record(*, toolkit: str, metrics: Mapping[str, float], run: str | None = None,
                update: int | None = None, epoch: int | None = None,
                checkpoint: str | None = None, seconds: float | None = None,
                probe: Mapping[str, Any] | None = None, loss: float | None = None,
                settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build a record dict with every field present.

    Args:
        toolkit: ``"fairseq"``, ``"espnet"`` or ``"offline"``.
        metrics: ``{metric_key: value}`` as returned by :meth:`VitalsMonitor.measure`.
        run: Run name (default: the directory the record file lives in).
        update: Number of optimizer updates at measurement time.
        epoch: Epoch number.
        checkpoint: Checkpoint path, for offline scores.
        seconds: Wall time the measurement took.
        probe: Description of the probe set.
        loss: Validation loss at the same validation, if known.
        settings: The measurement settings (:meth:`sslvitals.monitor.VitalsMonitor.settings`).

    Returns:
        The record.
    """
    return {
        "toolkit": toolkit,
        "run": run,
        "update": None if update is None else int(update),
        "epoch": None if epoch is None else int(epoch),
        "checkpoint": checkpoint,
        "wall_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": None if seconds is None else float(seconds),
        "probe": dict(probe) if probe else None,
        "loss": None if loss is None else float(loss),
        "metrics": {str(k): float(v) for k, v in metrics.items()},
        "settings": dict(settings) if settings else None,
    }


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one record as a line to a JSON-lines file (created with its folder if needed).

    The line is written with a single ``write`` call followed by ``flush`` and ``fsync``, so a
    crash leaves at most one incomplete last line, which :func:`read_records` skips.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(record), allow_nan=True, sort_keys=False) + "\n"
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read records from one or more JSON-lines files.

    Records without a ``run`` get the name of the folder that holds their file.

    Raises:
        SSLVitalsError: if a file does not exist.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[dict[str, Any]] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise SSLVitalsError(f"records file {p} does not exist")
        with open(p, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d is not valid JSON (interrupted write?); skipped", p, lineno)
                    continue
                if not isinstance(rec, dict) or "metrics" not in rec:
                    logger.warning("%s:%d is not a vitals record; skipped", p, lineno)
                    continue
                for f in _FIELDS:
                    rec.setdefault(f, None)
                if not rec.get("run"):
                    rec["run"] = p.parent.name
                rec["source"] = str(p)
                out.append(rec)
    return out
