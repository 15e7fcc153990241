"""Toolkit-independent configuration of the validation-time measurements.

The fairseq and ESPnet integrations both build a :class:`VitalsConfig`; they expose the same
fields with the same defaults so that runs from either toolkit are comparable.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sslvitals.errors import SSLVitalsError
from sslvitals.metric_table import (
    ALL_METRICS,
    DEFAULT_METRICS,
    LABEL_FREE_METRICS,
    ONLINE_METRICS,
    LABEL_METRICS,
    WORD_METRICS,
)

__all__ = [
    "VitalsConfig",
    "LABEL_FREE_METRICS",
    "LABEL_METRICS",
    "WORD_METRICS",
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "LAYERWISE_METRICS",
    "ONLINE_METRICS",
    "parse_layers",
    "parse_metrics",
]

#: The measures of the layer-wise analyses (Pasad et al.; Clark et al. on MR-HuBERT), what
#: ``metrics="layerwise"`` means: CCA and MI with phones and words (``cca_mel`` is added by
#: ``sslvitals score``).
LAYERWISE_METRICS: tuple[str, ...] = ("mi_phone", "mi_word", "nmi_word", "cca_phone", "cca_word")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class VitalsConfig:
    """What to measure at validation time, on which audio, and how.

    Every field carries help text; the fairseq integration turns these into Hydra fields
    (``+task.vitals.<name>=...``) and the ESPnet integration into a ``vitals:`` YAML block.
    """

    enabled: bool = field(default=False, metadata=_help("turn the measurements on"))
    probe: str = field(
        default="valid",
        metadata=_help(
            "probe audio: 'valid' to use the validation subset the toolkit already loads, or a "
            "path to a fairseq manifest (.tsv: root line, then 'relative/path<TAB>num_samples') "
            "or a Kaldi-style data directory with wav.scp"
        ),
    )
    probe_labels: str | None = field(
        default=None,
        metadata=_help(
            "optional frame-level phone labels for the probe: a file with one line per manifest "
            "entry, space-separated phone ids at 50 Hz (HuBERT '.km' format) or a '.tsv' of "
            "alignments 'utt start end phone'; default: '<probe stem>.phn' if it exists"
        ),
    )
    max_probe_seconds: float = field(
        default=3600.0, metadata=_help("take at most this much probe audio (seeded choice)")
    )
    layers: str = field(
        default="all",
        metadata=_help(
            "layers to measure: 'all', or comma-separated indices (0 = input of the first "
            "transformer block, i = output of block i), e.g. '0,6,12'; negative counts from the end"
        ),
    )
    metrics: str = field(
        default="default",
        metadata=_help(
            "comma-separated metric names, 'default', 'label_free', 'layerwise' or 'all'; "
            "valid names: " + ", ".join(ONLINE_METRICS)
        ),
    )
    k: int = field(default=1024, metadata=_help("number of k-means clusters (1024 in the paper)"))
    kmeans_iters: int = field(default=20, metadata=_help("k-means iterations"))
    reservoir_size: int = field(
        default=40000,
        metadata=_help(
            "frames kept per layer (uniform seeded sample of the even-indexed probe utterances) "
            "for k-means and the cluster scores; "
            "memory is reservoir_size x dim x 4 bytes per layer"
        ),
    )
    silhouette_sample: int = field(
        default=10000, metadata=_help("frames used for the silhouette score (exact when 0)")
    )
    every_n_validations: int = field(
        default=1, metadata=_help("measure at every N-th validation only")
    )
    seed: int = field(default=0, metadata=_help("seed of the probe choice, reservoir and k-means"))
    strict: bool = field(
        default=False,
        metadata=_help("raise on a metric failure instead of logging a warning and reporting NaN"),
    )
    backend: str = field(
        default="auto", metadata=_help("k-means backend: 'auto', 'faiss' or 'torch'")
    )
    device: str = field(
        default="auto", metadata=_help("device for the metric maths: 'auto', 'cpu' or 'cuda'")
    )
    jsonl: str | None = field(
        default=None,
        metadata=_help(
            "JSON-lines file to append one record per validation to; default "
            "'<save_dir>/vitals.jsonl'"
        ),
    )
    probe_words: str | None = field(
        default=None,
        metadata=_help(
            "optional word alignments of the probe for mi_word, nmi_word and cca_word: "
            "'utt start end word' TSV, Kaldi CTM (.ctm) or a folder of <utt>.TextGrid; default: "
            "'<probe stem>.words.tsv' / '.ctm' / '.textgrid' if it exists"
        ),
    )
    word_vectors: str | None = field(
        default=None,
        metadata=_help(
            "word-vector text file ('word v1 v2 ...' per line, e.g. GloVe) that cca_word compares "
            "mean-pooled word segments with; default: one-hot identity of the most frequent words"
        ),
    )
    word_vocab_size: int = field(
        default=500,
        metadata=_help(
            "the word-level measures count the tokens of the probe's word_vocab_size most "
            "frequent words (counted over the probe's word alignments)"
        ),
    )
    batch_seconds: float = field(
        default=60.0, metadata=_help(
            "seconds of probe audio per forward batch where padded batches are exact (the "
            "values never depend on it; see sslvitals.batching)"
        )
    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "VitalsConfig":
        """Build a config from a mapping, rejecting unknown keys.

        Raises:
            SSLVitalsError: on an unknown key (the message lists the valid ones).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise SSLVitalsError(
                f"unknown vitals option(s) {unknown}; valid options are: {', '.join(names)}"
            )
        cfg = cls(**dict(values))
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check every field that can be checked without the model.

        Raises:
            SSLVitalsError: naming the field and how to fix it.
        """
        parse_metrics(self.metrics)
        if self.layers != "all":
            parse_layers(self.layers, num_layers=None)
        if self.k < 2:
            raise SSLVitalsError(f"vitals.k must be >= 2, got {self.k}")
        if self.kmeans_iters < 1:
            raise SSLVitalsError(f"vitals.kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.reservoir_size < self.k:
            raise SSLVitalsError(
                f"vitals.reservoir_size ({self.reservoir_size}) must be at least vitals.k ({self.k}); "
                f"use reservoir_size >= {39 * self.k} for stable k-means"
            )
        if self.silhouette_sample < 0:
            raise SSLVitalsError("vitals.silhouette_sample must be >= 0 (0 = exact)")
        if self.every_n_validations < 1:
            raise SSLVitalsError("vitals.every_n_validations must be >= 1")
        if self.max_probe_seconds <= 0:
            raise SSLVitalsError("vitals.max_probe_seconds must be > 0")
        if self.backend not in ("auto", "faiss", "torch"):
            raise SSLVitalsError(f"vitals.backend must be auto, faiss or torch, got {self.backend!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise SSLVitalsError(f"vitals.device must be auto, cpu or cuda, got {self.device!r}")
        if self.batch_seconds <= 0:
            raise SSLVitalsError("vitals.batch_seconds must be > 0")
        if self.word_vectors is not None and not os.path.isfile(self.word_vectors):
            raise SSLVitalsError(
                f"vitals.word_vectors={self.word_vectors} is not a file; give a 'word v1 v2 ...' "
                "text file (e.g. GloVe) or leave it unset for one-hot word identity"
            )
        if self.word_vocab_size < 2:
            raise SSLVitalsError(
                f"vitals.word_vocab_size must be >= 2 (words to tell apart), got {self.word_vocab_size}"
            )


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Expand a metric specification into metric names.

    Args:
        spec: ``"default"``, ``"label_free"``, ``"layerwise"`` (:data:`LAYERWISE_METRICS`),
            ``"all"`` or comma-separated names (or a list).

    Returns:
        Tuple of metric names in canonical order.

    Raises:
        SSLVitalsError: on an unknown name (the message lists the valid ones).
    """
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [str(s).strip() for s in spec]
    out: list[str] = []
    for item in items:
        if item in ("default", "all"):
            out.extend(DEFAULT_METRICS if item == "default" else ONLINE_METRICS)
        elif item == "label_free":
            out.extend(LABEL_FREE_METRICS)
        elif item == "layerwise":
            out.extend(LAYERWISE_METRICS)
        elif item in ONLINE_METRICS:
            out.append(item)
        else:
            raise SSLVitalsError(
                f"unknown metric {item!r}; valid metrics are: {', '.join(ONLINE_METRICS)} "
                "(or 'default', 'label_free', 'layerwise', 'all')"
            )
    if not out:
        raise SSLVitalsError("vitals.metrics is empty; use 'default' or list metric names")
    return tuple(m for m in ONLINE_METRICS if m in set(out))


def parse_layers(spec: str | Sequence[int], num_layers: int | None) -> list[int] | None:
    """Parse a layer specification.

    Args:
        spec: ``"all"`` or comma-separated ints (negative counts from the end), or a list.
        num_layers: Number of transformer blocks L (valid indices are 0..L), or None when the
            model is not known yet (then only the syntax is checked).

    Returns:
        Sorted list of layer indices, or None for ``"all"`` when ``num_layers`` is None.

    Raises:
        SSLVitalsError: on bad syntax or an out-of-range layer.
    """
    if isinstance(spec, str) and spec.strip() == "all":
        return None if num_layers is None else list(range(num_layers + 1))
    if isinstance(spec, str):
        try:
            raw = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError as exc:
            raise SSLVitalsError(
                f"vitals.layers must be 'all' or comma-separated integers, got {spec!r}"
            ) from exc
    else:
        raw = [int(s) for s in spec]
    if not raw:
        raise SSLVitalsError("vitals.layers is empty; use 'all' or e.g. '0,6,12'")
    if num_layers is None:
        return sorted(set(raw))
    out = []
    for layer in raw:
        idx = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= num_layers:
            raise SSLVitalsError(
                f"layer {layer} is out of range: this model has {num_layers} transformer layers, "
                f"so valid layers are 0..{num_layers} (or -{num_layers + 1}..-1)"
            )
        out.append(idx)
    return sorted(set(out))
