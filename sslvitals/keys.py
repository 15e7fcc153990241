"""The one naming scheme for metric keys, shared by every log sink and plot.

A key is ``vitals/<metric>/L<layer>`` (layer-wise metrics) or ``vitals/<name>`` (run-level
values such as the time the metrics took). The same string is used in fairseq's valid log
line and JSON log, ESPnet's reporter, TensorBoard, the JSON-lines file and the offline CSV,
and can be given to ``checkpoint.best_checkpoint_metric`` (fairseq) or
``--best_model_criterion`` (ESPnet).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from sslvitals.errors import SSLVitalsError

__all__ = ["PREFIX", "metric_key", "parse_key", "ParsedKey", "TIME_KEY"]

PREFIX = "vitals"
TIME_KEY = f"{PREFIX}/seconds"
_KEY_RE = re.compile(rf"^{PREFIX}/(?P<metric>[a-z0-9_]+)/L(?P<layer>\d+)$")


class ParsedKey(NamedTuple):
    """A decoded metric key."""

    metric: str
    layer: int


def metric_key(metric: str, layer: int) -> str:
    """Return the log key of ``metric`` at ``layer``.

    Args:
        metric: Metric name, e.g. ``"rankme"``.
        layer: Layer index (0 = input of the first transformer block).

    Returns:
        The key, e.g. ``"vitals/rankme/L12"``.

    Example:
        >>> metric_key("pnmi", 6)
        'vitals/pnmi/L6'
    """
    if not re.fullmatch(r"[a-z0-9_]+", metric):
        raise SSLVitalsError(f"metric name {metric!r} must be lower-case letters, digits and '_'")
    return f"{PREFIX}/{metric}/L{int(layer)}"


def parse_key(key: str) -> ParsedKey | None:
    """Decode a layer-wise key, or return None for any other string.

    Example:
        >>> parse_key("vitals/davies_bouldin/L3")
        ParsedKey(metric='davies_bouldin', layer=3)
        >>> parse_key("loss") is None
        True
    """
    m = _KEY_RE.match(key)
    if m is None:
        return None
    return ParsedKey(m.group("metric"), int(m.group("layer")))
