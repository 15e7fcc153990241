"""The one table of metrics: every name sslvitals can report, and what it needs.

Everything that has to know about metrics reads this table: config validation
(:func:`sslvitals.config.parse_metrics`), the monitor (which accumulator feeds which
metric, which need labels), ``sslvitals score`` (the extra offline metrics), ``correlate`` and
``plot`` (which direction of a metric reads as better cluster quality or rank), and the README's
metric tables (a test compares them with :func:`markdown_table`).

The settings a metric depends on are the :class:`~sslvitals.config.VitalsConfig` fields named
in :attr:`MetricInfo.settings`; their defaults exist once, in that dataclass.
:func:`measurement_settings` returns the values that go with every logged number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "MetricInfo",
    "METRICS",
    "metric_info",
    "names",
    "LABEL_FREE_METRICS",
    "LABEL_METRICS",
    "WORD_METRICS",
    "DEFAULT_METRICS",
    "ONLINE_METRICS",
    "ALL_METRICS",
    "OFFLINE_ONLY_METRICS",
    "SETTING_FIELDS",
    "measurement_settings",
    "markdown_table",
    "better_of",
    "display_name",
]

#: The k-means settings: every metric computed from the fitted clusters depends on these.
_KMEANS = ("k", "kmeans_iters", "reservoir_size", "seed", "backend")


@dataclass(frozen=True)
class MetricInfo:
    """One row of the metric table.

    Attributes:
        name: The metric name used in keys (``vitals/<name>/L<layer>``) and option lists.
        family: ``"cluster"``, ``"rank"``, ``"label"`` or ``"cca"``.
        function: The functional implementation, as ``module:function`` under
            ``sslvitals.metrics`` (or ``sslvitals.offline``).
        needs_labels: True when the metric needs one phone label per frame.
        needs_words: True when the metric needs the probe's word alignments (the word-level
            measures of Pasad et al.); without them it reports NaN with one warning.
        better: ``"higher"`` or ``"lower"``: which direction reads as a better representation
            by the metric's own definition (cluster compactness, spread of the spectrum,
            agreement with phones); ``"none"`` when no direction is better by definition
            (alpha-ReQ: good representations sit near 1). Whether that direction predicts a
            better downstream score is what ``sslvitals correlate`` measures.
        frames: Which frames feed it: ``"all"`` (every probe frame, through a streaming sum),
            ``"utterance sums"``, ``"reservoir"`` (the seeded k-means sample),
            ``"held-out"`` (every probe frame of the utterances k-means did not see) or
            ``"word means"`` (one mean-pooled vector per word token of every utterance,
            through a streaming sum).
        settings: The :class:`~sslvitals.config.VitalsConfig` fields the value depends on
            (besides the model, the probe and ``max_probe_seconds``).
        online: False for metrics only ``sslvitals score`` computes (a second pass).
        summary: One line for tables and help texts.
        in_default: Whether ``metrics="default"`` includes it (the word-level measures and
            ``mi_phone`` are asked for by name, or with ``"all"`` / ``"layerwise"``).
    """

    name: str
    family: str
    function: str
    needs_labels: bool
    better: str
    frames: str
    settings: tuple[str, ...]
    summary: str
    online: bool = True
    needs_words: bool = False
    in_default: bool = True


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("inertia", "cluster", "cluster:inertia", False, "lower", "reservoir", _KMEANS,
               "mean squared distance of a frame to its k-means centroid"),
    MetricInfo("davies_bouldin", "cluster", "cluster:davies_bouldin_score", False, "lower",
               "reservoir", _KMEANS, "Davies-Bouldin index of the k-means clusters"),
    MetricInfo("calinski_harabasz", "cluster", "cluster:calinski_harabasz_score", False, "higher",
               "reservoir", _KMEANS, "Calinski-Harabasz index (between / within dispersion)"),
    MetricInfo("silhouette", "cluster", "cluster:silhouette_score", False, "higher", "reservoir",
               _KMEANS + ("silhouette_sample",),
               "mean silhouette on a seeded sample of the reservoir (exact when sample 0)"),
    MetricInfo("simplified_silhouette", "cluster", "cluster:simplified_silhouette_score", False,
               "higher", "reservoir", _KMEANS, "silhouette with centroid distances"),
    MetricInfo("rankme", "rank", "rank:rankme", False, "higher", "all", (),
               "RankMe: exp entropy of the normalised singular values of all frames"),
    MetricInfo("effective_rank", "rank", "rank:effective_rank", False, "higher", "all", (),
               "effective rank of the centred frames' covariance spectrum"),
    MetricInfo("rankme_t", "rank", "rank:rankme_t", False, "higher", "utterance sums", (),
               "RankMe of one summed vector per utterance"),
    MetricInfo("alpha_req", "rank", "rank:alpha_req", False, "none", "all", (),
               "alpha-ReQ: power-law decay of the covariance eigenvalues (near 1 is good)"),
    MetricInfo("stable_rank", "rank", "rank:stable_rank", False, "higher", "all", (),
               "sum of squared singular values over the largest one squared"),
    MetricInfo("nesum", "rank", "rank:nesum", False, "higher", "all", (),
               "NESum: covariance eigenvalues summed relative to the largest"),
    MetricInfo("numerical_rank", "rank", "rank:numerical_rank", False, "higher", "all", (),
               "singular values above the zero threshold"),
    MetricInfo("phone_purity", "label", "labels:purities_from_counts", True, "higher", "held-out",
               _KMEANS, "share of held-out frames whose cluster's majority phone is theirs"),
    MetricInfo("cluster_purity", "label", "labels:purities_from_counts", True, "higher",
               "held-out", _KMEANS, "share of held-out frames in their phone's majority cluster"),
    MetricInfo("pnmi", "label", "labels:pnmi_from_counts", True, "higher", "held-out", _KMEANS,
               "I(phone; cluster) / H(phone) on held-out frames"),
    MetricInfo("mi_phone", "label", "labels:mi_from_counts", True, "higher", "held-out", _KMEANS,
               "I(phone; cluster) in nats on held-out frames", in_default=False),
    MetricInfo("mi_word", "label", "labels:mi_from_counts", False, "higher", "held-out",
               _KMEANS + ("word_vocab_size",),
               "I(word; cluster) in nats on held-out frames inside the most frequent words",
               needs_words=True, in_default=False),
    MetricInfo("nmi_word", "label", "labels:label_nmi_from_counts", False, "higher", "held-out",
               _KMEANS + ("word_vocab_size",), "I(word; cluster) / H(word) on the same frames",
               needs_words=True, in_default=False),
    MetricInfo("cca_phone", "cca", "cca:cca_similarity", True, "higher", "reservoir",
               ("reservoir_size", "seed"), "PWCCA between the frames and one-hot phones"),
    MetricInfo("cca_word", "cca", "cca:cca_similarity_from_gram", False, "higher", "word means",
               ("word_vocab_size", "word_vectors"),
               "PWCCA between mean-pooled word segments and word vectors (default one-hot)",
               needs_words=True, in_default=False),
    MetricInfo("cca_mel", "cca", "offline.melcca:cca_mel_scores", False, "higher", "reservoir",
               ("seed",), "PWCCA between the frames and 80-band log-mel features", online=False),
)

_BY_NAME: dict[str, MetricInfo] = {m.name: m for m in METRICS}

#: Metrics the online monitor computes that need only the frames.
LABEL_FREE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.online
                                            and not m.needs_labels and not m.needs_words)
#: Metrics the online monitor computes that need frame labels.
LABEL_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.online and m.needs_labels)
#: Metrics the online monitor computes that need the probe's word alignments.
WORD_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.online and m.needs_words)
#: Every metric the online monitor can compute, in canonical order (the opt-in ones included).
ONLINE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.online)
#: What ``metrics="default"`` means (the label metrics only when the probe has labels): every
#: online metric but the opt-in ones (``in_default=False``), in canonical order.
DEFAULT_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.online and m.in_default)
#: The default set (kept under its historical name: every integration's default keys).
ALL_METRICS: tuple[str, ...] = DEFAULT_METRICS
#: Metrics only ``sslvitals score`` computes.
OFFLINE_ONLY_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if not m.online)

#: The config fields recorded with every value (those any metric depends on, plus the probe
#: selection); ``device`` is recorded but not compared when resuming.
SETTING_FIELDS: tuple[str, ...] = ("k", "kmeans_iters", "reservoir_size", "silhouette_sample",
                                   "seed", "backend", "max_probe_seconds")


def metric_info(name: str) -> MetricInfo:
    """Return the table row of ``name``.

    Raises:
        SSLVitalsError: on an unknown name, listing the known ones.

    Example:
        >>> metric_info("pnmi").needs_labels
        True
    """
    from sslvitals.errors import SSLVitalsError

    try:
        return _BY_NAME[name]
    except KeyError:
        raise SSLVitalsError(
            f"unknown metric {name!r}; known metrics: {', '.join(_BY_NAME)}"
        ) from None


def names(*, labels: bool | None = None, online: bool | None = True) -> tuple[str, ...]:
    """Metric names filtered by label need and online availability, in table order."""
    return tuple(m.name for m in METRICS
                 if (labels is None or m.needs_labels == labels)
                 and (online is None or m.online == online))


def better_of(name: str) -> str:
    """``"higher"``, ``"lower"`` or ``"none"`` for a known metric, ``""`` for any other name
    (e.g. the validation loss or a user's column)."""
    info = _BY_NAME.get(name)
    return "" if info is None else info.better


def display_name(name: str) -> str:
    """A metric's name for figure titles and axes, with an arrow giving its better direction.

    Example:
        >>> display_name("davies_bouldin"), display_name("rankme"), display_name("loss")
        ('davies bouldin \u2193', 'rankme \u2191', 'loss')
    """
    arrow = {"higher": " \u2191", "lower": " \u2193"}.get(better_of(name), "")
    return name.replace("_", " ") + arrow


def measurement_settings(cfg: Any, *, probe: Mapping[str, Any] | None = None,
                         device: str | None = None) -> dict[str, Any]:
    """The settings that travel with every value measured under ``cfg``.

    Args:
        cfg: A :class:`~sslvitals.config.VitalsConfig` (or any object with its fields).
        probe: The probe's description (:meth:`sslvitals.probe.ProbeSet.describe`); its
            ``fingerprint`` is recorded as ``probe``.
        device: The device type the metric maths ran on (``"cpu"`` / ``"cuda"``).

    Returns:
        ``{k, kmeans_iters, reservoir_size, silhouette_sample, seed, backend,
        max_probe_seconds, probe, label_frames, version, device}``.
    """
    from sslvitals._version import __version__

    out: dict[str, Any] = {f: getattr(cfg, f) for f in SETTING_FIELDS}
    out["max_probe_seconds"] = float(out["max_probe_seconds"])
    out["probe"] = None if probe is None else probe.get("fingerprint")
    out["label_frames"] = "held-out"
    out["version"] = __version__
    out["device"] = device
    return out


def markdown_table() -> str:
    """The metric table as markdown (the README's table is this text).

    Returns:
        A markdown table with one row per metric.
    """
    from sslvitals.config import VitalsConfig

    defaults = VitalsConfig()
    lines = [
        "| metric | family | function | labels | better | frames | settings (defaults) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        settings = ", ".join(f"{s}={getattr(defaults, s)}" for s in m.settings) or "-"
        where = "" if m.online else " (score only)"
        where += "" if m.in_default or not m.online else " (by name)"
        needs = "phones" if m.needs_labels else "words" if m.needs_words else "no"
        lines.append(
            f"| `{m.name}`{where} | {m.family} | `{m.function}` | {needs} "
            f"| {m.better} | {m.frames} | {settings} |"
        )
    return "\n".join(lines)
