"""The measurement engine shared by every integration and the offline scorer.

:class:`VitalsMonitor` runs the model over the probe batches with a :class:`~sslvitals.hooks.LayerTap`,
streams each layer's frames into bounded accumulators, synchronises them across
``torch.distributed`` ranks, and computes every configured metric per layer::

    probe batch --forward_fn--> model --LayerTap--> {layer: [(T_i, D)]}
        --> GramAccumulator (all frames, float64)      -> rank measures
        --> GramAccumulator (one sum per utterance)     -> RankMe-t
        --> ReservoirSampler (seeded frame keys, even-indexed utterances only)
                                                        -> k-means -> inertia, DB, CH, silhouettes
                                      (+ phone labels)  -> CCA with phones
        --> sync across ranks --> compute on rank 0 --> broadcast values and centroids
    second pass (only with labels and a purity/PNMI metric configured):
    odd-indexed utterances --model--> frames --nearest centroid--> ContingencyAccumulator
        --> sync (sum) --> phone purity, cluster purity, PNMI of held-out frames
                     (+ word alignments: word x cluster counts -> MI-word, NMI-word)
    word alignments: one mean-pooled vector per word token of every utterance, next to its
        word representation --> GramAccumulator of [mean, word vector] -> CCA-word
        --> {"vitals/<metric>/L<layer>": value}, the same on every rank

Any failure of one metric is logged once and reported as NaN, unless ``cfg.strict``.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from sslvitals.config import LABEL_METRICS, WORD_METRICS, VitalsConfig, parse_layers, parse_metrics
from sslvitals.errors import SSLVitalsError
from sslvitals.keys import TIME_KEY, metric_key

__all__ = ["VitalsMonitor", "LayerState", "align_labels", "is_heldout"]

logger = logging.getLogger(__name__)

_CLUSTER_METRICS = ("inertia", "davies_bouldin", "calinski_harabasz", "silhouette",
                    "simplified_silhouette", "phone_purity", "cluster_purity", "pnmi", "mi_phone",
                    "mi_word", "nmi_word")
_GRAM_METRICS = ("rankme", "effective_rank", "alpha_req", "stable_rank", "nesum", "numerical_rank")
_RESERVOIR_METRICS = _CLUSTER_METRICS + ("cca_phone",)
#: Phone-label metrics counted on held-out frames in a second pass (not on the k-means sample).
_PHONE_HELDOUT = ("phone_purity", "cluster_purity", "pnmi", "mi_phone")
#: Word-level metrics counted in the same pass, on the held-out frames inside words.
_WORD_HELDOUT = ("mi_word", "nmi_word")
_HELDOUT_METRICS = _PHONE_HELDOUT + _WORD_HELDOUT
LABEL_RATE = 50.0


def is_heldout(utt_index: int) -> bool:
    """Whether a probe utterance is held out from the k-means fit.

    Utterances with an even probe index feed the k-means reservoir (and so every cluster
    score); every frame of the odd-indexed ones is assigned to the fitted centroids and counted
    for phone purity, cluster purity and PNMI. The split depends only on the stable utterance
    index, so it is the same for any batching, sharding, seed or toolkit, and halves a
    contiguous manifest exactly.

    Example:
        >>> [is_heldout(i) for i in range(4)]
        [False, True, False, True]
    """
    return int(utt_index) % 2 == 1


def _is_setup_error(exc: BaseException) -> bool:
    """Errors of the integration's wiring (not of the model or the data): always raised."""
    text = str(exc)
    return isinstance(exc, SSLVitalsError) and ("was not captured" in text
                                                 or "no utterance indices" in text)


def _key_order(layers: list[int]) -> Callable[[str], tuple[int, int]]:
    """Sort key putting metric keys in the one-process order: by layer, then metric table."""
    from sslvitals.keys import parse_key
    from sslvitals.metric_table import METRICS

    rank_of = {m.name: i for i, m in enumerate(METRICS)}
    pos = {layer: i for i, layer in enumerate(layers)}

    def key(k: str) -> tuple[int, int]:
        parsed = parse_key(k)
        if parsed is None:
            return (len(pos), 0)
        return (pos.get(parsed.layer, len(pos)), rank_of.get(parsed.metric, len(rank_of)))

    return key


def _with_index(batches: Iterable[Any]) -> Iterator[Any]:
    """Pass batches through, checking each has its utterance indices (see :func:`_check_index`)."""
    for batch in batches:
        _check_index(batch)
        yield batch


def _check_index(batch: Any) -> None:
    """Raise unless ``batch`` carries one stable utterance index per utterance."""
    index = getattr(batch, "index", None)
    lengths = getattr(batch, "lengths", None)
    n = None if lengths is None else int(len(lengths))
    if index is None or (n is not None and len(index) != n):
        raise SSLVitalsError(
            "a probe batch has no utterance indices (batch.index): sslvitals keys each frame by "
            "(utterance index, frame) so that sampling does not depend on batching; give every "
            "batch 'index', one stable integer per utterance (ProbeSet.batches() does this)"
        )


def align_labels(labels: np.ndarray, num_frames: int, layer_rate: float,
                 label_rate: float = LABEL_RATE) -> np.ndarray:
    """Return one label per layer frame.

    Args:
        labels: ``(T_label,)`` int labels at ``label_rate`` frames per second.
        num_frames: Number of frames the layer produced for this utterance.
        layer_rate: The layer's frames per second.
        label_rate: The labels' frames per second (50 for HuBERT's convolutional framing).

    Returns:
        ``(num_frames,)`` int64 labels; at equal rates the labels are trimmed or padded with
        their last value (the front-end may differ by a frame); otherwise each layer frame takes
        the label frame nearest to its centre.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if labels.size == 0:
        raise SSLVitalsError("an utterance has frames but no labels")
    if abs(layer_rate - label_rate) < 1e-6:
        if labels.size >= num_frames:
            return labels[:num_frames]
        return np.concatenate([labels, np.full(num_frames - labels.size, labels[-1])])
    try:
        from sslvitals.hooks.framing import resample_labels

        return np.asarray(resample_labels(labels, label_rate, layer_rate, num_frames), dtype=np.int64)
    except ImportError:  # pragma: no cover - hooks always present in a full install
        centres = (np.arange(num_frames) + 0.5) / layer_rate
        src = np.clip(np.floor(centres * label_rate).astype(np.int64), 0, labels.size - 1)
        return labels[src]


class LayerState:
    """The accumulators of one layer (created on the first batch, when D is known).

    Only the accumulators the configured metrics need are kept: the Gram matrix of all frames
    for the rank measures, the utterance-sum Gram matrix for RankMe-t, the reservoir for
    k-means, the cluster scores and the label measures.
    """

    def __init__(self, dim: int, cfg: VitalsConfig, metrics: tuple[str, ...], device: torch.device):
        from sslvitals.streaming import GramAccumulator, ReservoirSampler

        self.dim = dim
        self.gram = (GramAccumulator(dim, device=device)
                     if any(m in _GRAM_METRICS for m in metrics) else None)
        self.utt_gram = GramAccumulator(dim, device=device) if "rankme_t" in metrics else None
        self.reservoir = (ReservoirSampler(cfg.reservoir_size, dim, seed=cfg.seed)
                          if any(m in _RESERVOIR_METRICS for m in metrics) else None)
        #: ``[word-token mean (dim), word representation]`` rows for cca_word; built when the
        #: first word token arrives (its width depends on the word representation).
        self.word_gram: Any = None
        self.frames = 0
        self.utterances = 0
        self._device = device

    def ensure_word_gram(self, word_dim: int) -> Any:
        """The cca_word accumulator (rows ``[token mean, word vector]``), created on first use.

        Raises:
            SSLVitalsError: if it exists with another word-representation width.
        """
        from sslvitals.streaming import GramAccumulator

        if self.word_gram is None:
            self.word_gram = GramAccumulator(self.dim + int(word_dim), device=self._device)
        elif self.word_gram.dim != self.dim + int(word_dim):
            raise SSLVitalsError("the word representation changed width during a measurement")
        return self.word_gram

    def sync(self, owner: int | None = None) -> None:
        """Synchronise every accumulator across ranks (no-op without torch.distributed).

        Args:
            owner: The rank that computes this layer's cluster metrics: only it receives the
                reservoir union (None: every rank does). The Gram matrices, O(D^2), are summed
                on every rank.
        """
        for acc in (self.gram, self.utt_gram, self.word_gram):
            if acc is not None:
                acc.sync()
        if self.reservoir is not None:
            self.reservoir.sync(dst=owner)


class VitalsMonitor:
    """Measure the configured metrics on every selected layer of a model.

    Args:
        cfg: The configuration (validated here).

    Example:
        >>> monitor = VitalsMonitor(VitalsConfig(enabled=True, k=8, reservoir_size=512))  # doctest: +SKIP
        >>> values = monitor.measure(model, forward_fn, probe.batches(), step=1000)  # doctest: +SKIP
        >>> values["vitals/rankme/L12"]  # doctest: +SKIP
        211.4
    """

    def __init__(self, cfg: VitalsConfig):
        cfg.validate()
        self.cfg = cfg
        self.metrics = parse_metrics(cfg.metrics)
        self._validations = 0
        self._warned: set[str] = set()
        #: Give each layer an owner rank that alone gathers its reservoir and computes it
        #: (False: rank 0 computes every layer, every rank holds every reservoir; kept for the
        #: benchmark that compares the two).
        self.spread_layers = True
        self.last_seconds: float | None = None
        self.last_layers: list[int] = []
        self._word_tables: dict[tuple[Any, ...], np.ndarray] = {}

    # ------------------------------------------------------------------ scheduling
    def due(self, index: int | None = None) -> bool:
        """Say whether a validation is measured: every N-th of the run, the first included.

        Args:
            index: The validation's 0-based index in the whole run, when the caller knows it
                (a resumed run continues its schedule: the integrations derive the index from
                the run's validation history or epoch, never from this process's count). Without
                it, the validations this monitor was asked about are counted.

        Returns:
            True when ``index % every_n_validations == 0``.
        """
        if index is None:
            index = self._validations
        index = int(index)
        self._validations = index + 1
        return index % self.cfg.every_n_validations == 0

    def device(self) -> torch.device:
        """The device the metric maths run on."""
        if self.cfg.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise SSLVitalsError("vitals.device is cuda but no CUDA device is visible; use 'auto' or 'cpu'")
        return torch.device(self.cfg.device)

    def check_layers(self, num_layers: int) -> list[int]:
        """Resolve ``cfg.layers`` against a model with ``num_layers`` blocks (raises if out of range)."""
        return parse_layers(self.cfg.layers, num_layers) or []

    # ------------------------------------------------------------------ the measurement
    def settings(self, probe: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The settings that travel with every value this monitor reports.

        Args:
            probe: The probe's :meth:`~sslvitals.probe.ProbeSet.describe` dict (for its
                fingerprint).

        Returns:
            See :func:`sslvitals.metric_table.measurement_settings`.
        """
        from sslvitals.metric_table import measurement_settings

        try:
            device = self.device().type
        except SSLVitalsError:
            device = None
        return measurement_settings(self.cfg, probe=probe, device=device)

    def _wants_heldout(self) -> bool:
        return any(m in _HELDOUT_METRICS for m in self.metrics)

    def measure(self, model: torch.nn.Module, forward_fn: Callable[[torch.nn.Module, Any], Any],
                batches: Iterable[Any] | Callable[[], Iterable[Any]], *, step: int | None = None,
                tap_layers: Any = None) -> dict[str, float]:
        """Run the probe through ``model`` and return ``{metric_key: value}`` plus ``vitals/seconds``.

        The label metrics (phone purity, cluster purity, PNMI) are counted on held-out frames:
        k-means is fitted on the reservoir of the even-indexed probe utterances, and every frame
        of the odd-indexed ones is assigned to those centroids in a second pass over the probe
        (see :func:`is_heldout`). The second pass runs only when those metrics are configured
        and the probe has labels. ``batches`` may be a zero-argument callable that returns a
        fresh iterable (then the probe is read twice); a one-shot iterator is read once and
        the batches the second pass needs (audio only) are kept in memory meanwhile.

        Args:
            model: The model (any module that :class:`~sslvitals.hooks.LayerTap` understands).
            forward_fn: ``forward_fn(model, batch)`` runs one forward pass on a
                :class:`~sslvitals.probe.ProbeBatch`; its return value is ignored.
            batches: This rank's probe batches, or a callable returning them anew.
            step: Update number, for log messages.
            tap_layers: Override of the LayerTap ``layers`` argument (a ModuleList path for
                models LayerTap does not know).

        Returns:
            The same dict on every rank.
        """
        from sslvitals import distributed as dist

        t0 = time.perf_counter()
        device = self.device()
        distributed = dist.is_distributed() and dist.world_size() > 1
        factory = batches if callable(batches) else None
        source = factory() if factory is not None else batches
        keep: list[Any] | None = [] if (factory is None and self._wants_heldout()) else None
        states: dict[int, LayerState] = {}
        flags: dict[str, bool | None] = {"words": None}
        layers, saw_labels, n_batches, error = self._pass(
            model, forward_fn, source, tap_layers, device,
            lambda batch, utts, rates, lyrs: self._first_pass_batch(states, batch, utts, rates, lyrs, device, keep,
                                                                    flags))
        self.last_layers = layers
        saw_words = flags["words"]

        # Every rank must take part in the same collectives in the same order, even a rank
        # whose shard was empty or whose forward failed: agree first on what each rank holds.
        if distributed:
            info = {"error": None if error is None else f"{type(error).__name__}: {error}",
                    "dims": {layer: st.dim for layer, st in states.items()},
                    "labels": saw_labels, "words": saw_words,
                    "word_dims": {layer: st.word_gram.dim - st.dim for layer, st in states.items()
                                  if st.word_gram is not None}}
            everyone = dist.all_gather_object(info)
            errors = [f"rank {r}: {i['error']}" for r, i in enumerate(everyone) if i["error"]]
            if errors:
                exc = error or SSLVitalsError("; ".join(errors))
                if self.cfg.strict or any("no utterance indices" in e for e in errors):
                    raise SSLVitalsError(f"sslvitals measurement failed ({'; '.join(errors)})") from exc
                return self._all_failed(layers, exc, t0)
            dims = {}
            for i in everyone:
                dims.update(i["dims"])
            for layer in layers:
                if layer not in states and layer in dims:
                    states[layer] = LayerState(dims[layer], self.cfg, self.metrics, device)
            seen = [i["labels"] for i in everyone if i["labels"] is not None]
            saw_labels = bool(seen) and all(seen)
            seen_w = [i["words"] for i in everyone if i["words"] is not None]
            saw_words = bool(seen_w) and all(seen_w)
            for i in everyone:  # every rank must hold the same accumulators to sum them
                for layer, wdim in i["word_dims"].items():
                    if layer in states:
                        states[layer].ensure_word_gram(wdim)
            owners = self.layer_owners(layers, dist.world_size())
            for layer in sorted(layer for layer in layers if layer in states):
                states[layer].sync(owner=owners[layer] if self.spread_layers else None)
        elif error is not None:
            if self.cfg.strict or _is_setup_error(error):
                raise error
            return self._all_failed(layers, error, t0)
        have_labels = bool(saw_labels)
        have_words = bool(saw_words)
        if distributed:
            # each rank computes the layers it owns; whatever happens there (strict-mode errors
            # included) reaches every rank, so no rank is left waiting in a collective
            me = dist.rank()
            owned = {layer for layer, r in owners.items() if r == me}
            try:
                payload: Any = self._compute_all(states, layers, have_labels, owned=owned)
            except Exception as exc:  # noqa: BLE001
                payload = SSLVitalsError(f"{type(exc).__name__}: {exc}")
            parts = dist.all_gather_object(payload)
            failed = [p for p in parts if isinstance(p, BaseException)]
            if failed:
                raise failed[0]
            results, centroids = {}, {}
            for values, cents in parts:
                results.update(values)
                centroids.update(cents)
        else:
            results, centroids = self._compute_all(states, layers, have_labels)
        phone_heldout = [m for m in self.metrics if m in _PHONE_HELDOUT] if have_labels else []
        word_heldout = [m for m in self.metrics if m in _WORD_HELDOUT] if have_words else []
        if phone_heldout or word_heldout:
            second = factory() if factory is not None else (keep or [])
            results.update(self._heldout_pass(model, forward_fn, second, tap_layers, device,
                                              layers, centroids, phone_heldout, distributed,
                                              word_wanted=word_heldout))
        if not have_words and any(m in WORD_METRICS for m in self.metrics):
            missing = SSLVitalsError(
                "the probe has no word alignments; put '<probe stem>.words.tsv' (utt start end "
                "word), '<probe stem>.ctm' or a TextGrid folder beside it, or set "
                "vitals.probe_words")
            for layer in layers:
                for m in self.metrics:
                    if m in WORD_METRICS:
                        results[metric_key(m, layer)] = self._fail(m, layer, missing)
        results = {k: results[k] for k in sorted(results, key=_key_order(layers))}
        self.last_seconds = time.perf_counter() - t0
        results[TIME_KEY] = self.last_seconds
        logger.info("sslvitals: measured %d layers on %d batches in %.1f s%s", len(layers), n_batches,
                    self.last_seconds, "" if step is None else f" (update {step})")
        return results

    def _pass(self, model: torch.nn.Module, forward_fn: Callable[[torch.nn.Module, Any], Any],
              batches: Iterable[Any], tap_layers: Any, device: torch.device,
              on_batch: Callable[[Any, dict[int, list[torch.Tensor]], dict[int, float], list[int]], None],
              ) -> tuple[list[int], bool | None, int, BaseException | None]:
        """One pass over ``batches`` with the layers tapped; ``on_batch`` gets each batch's frames.

        Returns:
            ``(layers, saw_labels, n_batches, error)``: the tapped layer ids, whether every batch
            had labels (None when there was no batch), the number of batches, and the exception
            that stopped the pass (None when it completed).
        """
        from sslvitals.batching import apply_policy
        from sslvitals.hooks import LayerTap

        was_training = model.training
        saw_labels: bool | None = None
        n_batches = 0
        layers: list[int] = []
        error: BaseException | None = None
        try:
            model.eval()
            spec = self.cfg.layers if tap_layers is None else tap_layers
            with torch.no_grad(), LayerTap(model, layers=spec) as tap:
                layers = list(tap.layer_ids)
                rates = tap.frame_rates()
                try:
                    for batch in apply_policy(model, forward_fn, _with_index(batches)):
                        tap.clear()
                        lengths = getattr(batch, "lengths", None)
                        if lengths is not None:
                            # the model's own padding rule can keep an extra frame or two; the
                            # tap trims every utterance to what its unpadded audio gives
                            tap.set_input_lengths(lengths)
                        forward_fn(model, batch)
                        utts = tap.utterances()
                        labels = getattr(batch, "labels", None)
                        saw_labels = (labels is not None) if saw_labels is None else (saw_labels and labels is not None)
                        for layer in layers:
                            if layer not in utts:
                                raise SSLVitalsError(f"layer {layer} was not captured; captured: {sorted(utts)}")
                        on_batch(batch, utts, rates, layers)
                        n_batches += 1
                except Exception as exc:  # noqa: BLE001 - decided by the caller, with the other ranks
                    error = exc
                tap.clear()
        finally:
            model.train(was_training)
        return layers, saw_labels, n_batches, error

    def _first_pass_batch(self, states: dict[int, LayerState], batch: Any,
                          utts: dict[int, list[torch.Tensor]], rates: dict[int, float],
                          layers: list[int], device: torch.device, keep: list[Any] | None,
                          flags: dict[str, bool | None] | None = None) -> None:
        labels = getattr(batch, "labels", None)
        words = getattr(batch, "words", None)
        if flags is not None:
            has = words is not None and getattr(batch, "word_vocab", None) is not None
            flags["words"] = has if flags["words"] is None else (flags["words"] and has)
        for layer in layers:
            self._update_layer(states, layer, utts[layer], batch, labels,
                               rates.get(layer, LABEL_RATE), device)
        if (keep is not None and (labels is not None or words is not None)
                and any(is_heldout(i) for i in batch.index)):
            keep.append(batch)

    def word_table(self, vocab: tuple[str, ...]) -> np.ndarray:
        """The word representation of the probe's words (one row per word id; see
        :func:`sslvitals.words.word_table`), read once per vocabulary."""
        from sslvitals.words import word_table

        key = (tuple(vocab), self.cfg.word_vocab_size, self.cfg.word_vectors)
        if key not in self._word_tables:
            self._word_tables[key] = word_table(vocab, self.cfg.word_vocab_size,
                                                self.cfg.word_vectors)
        return self._word_tables[key]

    def _update_word_means(self, st: LayerState, keep: list[tuple[int, torch.Tensor]], batch: Any,
                           rate: float, device: torch.device) -> None:
        """Add one row ``[mean of the token's frames, its word's representation]`` per word
        token (of the represented words) of every utterance to ``st.word_gram``."""
        table = self.word_table(batch.word_vocab)
        rows = []
        for i, u in keep:
            tok50 = np.asarray(batch.word_tokens[i], dtype=np.int64)
            ids50 = np.asarray(batch.words[i], dtype=np.int64)
            inside = tok50 >= 0
            if not inside.any():
                continue
            word_of = np.full(int(tok50.max()) + 1, -1, dtype=np.int64)
            word_of[tok50[inside]] = ids50[inside]
            tok = align_labels(tok50, u.shape[0], rate)
            sel = np.nonzero(tok >= 0)[0]
            if sel.size == 0:
                continue
            uniq, inv = np.unique(tok[sel], return_inverse=True)
            wid = word_of[uniq]
            ok = (wid >= 0) & (wid < table.shape[0])
            ok[ok] = np.isfinite(table[wid[ok]]).all(axis=1)
            if not ok.any():
                continue
            x = u[torch.from_numpy(sel).to(u.device)].to(device=device, dtype=torch.float64)
            sums = torch.zeros(len(uniq), x.shape[1], dtype=torch.float64, device=device)
            sums.index_add_(0, torch.from_numpy(inv.astype(np.int64)).to(device), x)
            counts = torch.from_numpy(np.bincount(inv, minlength=len(uniq)).astype(np.float64))
            means = sums / counts.to(device)[:, None]
            keep_rows = torch.from_numpy(np.nonzero(ok)[0]).to(device)
            reps = torch.from_numpy(table[wid[ok]]).to(device=device, dtype=torch.float64)
            rows.append(torch.cat([means[keep_rows], reps], dim=1))
        if rows:
            st.ensure_word_gram(table.shape[1]).update(torch.cat(rows))

    def _heldout_pass(self, model: torch.nn.Module, forward_fn: Callable[[torch.nn.Module, Any], Any],
                      batches: Iterable[Any], tap_layers: Any, device: torch.device,
                      layers: list[int], centroids: dict[int, torch.Tensor | None],
                      wanted: list[str], distributed: bool, *,
                      word_wanted: list[str] | None = None) -> dict[str, float]:
        """Second pass: count (phone, cluster) pairs of every held-out frame, and (word,
        cluster) pairs of its frames inside the ``word_vocab_size`` most frequent words;
        the label metrics of ``wanted`` and the word metrics of ``word_wanted``."""
        from sslvitals import distributed as dist
        from sslvitals import metrics as M
        from sslvitals.streaming import ContingencyAccumulator

        word_wanted = list(word_wanted or [])
        counts = {layer: ContingencyAccumulator() for layer in layers}
        word_counts = {layer: ContingencyAccumulator() for layer in layers}
        vocab_size = int(self.cfg.word_vocab_size)

        def on_batch(batch: Any, utts: dict[int, list[torch.Tensor]], rates: dict[int, float],
                     lyrs: list[int]) -> None:
            rows = [r for r, i in enumerate(batch.index) if is_heldout(i)]
            for layer in lyrs:
                cent = centroids.get(layer)
                if cent is None:
                    continue
                for r in rows:
                    u = utts[layer][r]
                    if u.shape[0] == 0:
                        continue
                    assigned, _ = M.assign(u.to(device=device, dtype=torch.float32), cent.to(device))
                    rate = rates.get(layer, LABEL_RATE)
                    if wanted and batch.labels is not None:
                        phones = align_labels(batch.labels[r], u.shape[0], rate)
                        counts[layer].update(torch.from_numpy(phones), assigned.cpu())
                    if word_wanted and getattr(batch, "words", None) is not None:
                        ids = align_labels(batch.words[r], u.shape[0], rate)
                        inside = torch.from_numpy((ids >= 0) & (ids < vocab_size))
                        word_counts[layer].update(torch.from_numpy(ids)[inside],
                                                  assigned.cpu()[inside])

        def wanted_rows(source: Iterable[Any]) -> Iterable[Any]:
            for batch in source:
                if any(is_heldout(i) for i in batch.index):
                    yield batch

        _, _, _, error = self._pass(model, forward_fn, wanted_rows(batches), tap_layers, device, on_batch)
        if distributed:
            everyone = dist.all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
            errors = [f"rank {r}: {e}" for r, e in enumerate(everyone) if e]
            if errors:
                error = error or SSLVitalsError("; ".join(errors))
            else:
                for layer in layers:
                    counts[layer].sync()
                    word_counts[layer].sync()
        out: dict[str, float] = {}
        for layer in layers:
            if error is not None:
                for m in wanted + word_wanted:
                    out[metric_key(m, layer)] = self._fail(m, layer, error)
                continue
            if centroids.get(layer) is None:
                for m in wanted + word_wanted:
                    out.setdefault(metric_key(m, layer), float("nan"))
                continue
            if word_wanted:
                cw = np.asarray(word_counts[layer].counts())
                if cw.sum() == 0:
                    exc = SSLVitalsError(
                        "no held-out frame inside a word: the word metrics are counted on the "
                        "odd-indexed probe utterances' frames inside the word_vocab_size most "
                        "frequent words; use a probe of at least two utterances with words")
                    for m in word_wanted:
                        out[metric_key(m, layer)] = self._fail(m, layer, exc)
                else:
                    for m in word_wanted:
                        if m == "mi_word":
                            self._safe(out, m, layer, lambda: M.mi_from_counts(cw))
                        elif m == "nmi_word":
                            self._safe(out, m, layer, lambda: M.label_nmi_from_counts(cw, "word"))
            if not wanted:
                continue
            c = np.asarray(counts[layer].counts())
            if c.sum() == 0:
                exc = SSLVitalsError(
                    "no held-out frame: the label metrics are counted on the odd-indexed probe "
                    "utterances, and this probe has none with frames; use a probe of at least two "
                    "utterances")
                for m in wanted:
                    out[metric_key(m, layer)] = self._fail(m, layer, exc)
                continue
            purities: tuple[float, float] | None = None
            for m in wanted:
                if m in ("phone_purity", "cluster_purity"):
                    if purities is None:
                        try:
                            purities = M.purities_from_counts(c)
                        except Exception as exc:  # noqa: BLE001
                            out[metric_key(m, layer)] = self._fail(m, layer, exc)
                            continue
                    value = purities[0] if m == "phone_purity" else purities[1]
                    self._safe(out, m, layer, lambda v=value: v)
                elif m == "pnmi":
                    self._safe(out, m, layer, lambda: M.pnmi_from_counts(c))
                elif m == "mi_phone":
                    self._safe(out, m, layer, lambda: M.mi_from_counts(c))
        return out

    def _update_layer(self, states: dict[int, LayerState], layer: int, utts: list[torch.Tensor],
                      batch: Any, labels: list[np.ndarray] | None, rate: float,
                      device: torch.device) -> None:
        from sslvitals.streaming import frame_keys

        keep = [(i, u) for i, u in enumerate(utts) if u.shape[0] > 0]
        if not keep:
            return
        dim = keep[0][1].shape[1]
        st = states.get(layer)
        if st is None:
            st = states[layer] = LayerState(dim, self.cfg, self.metrics, device)
        x_native = torch.cat([u for _, u in keep]).to(device=device)
        if st.gram is not None:
            st.gram.update(x_native)  # in the model's dtype: fp16/bf16 set the rank threshold
        x = x_native.to(dtype=torch.float32)
        if st.utt_gram is not None:
            st.utt_gram.update(torch.stack([u.to(device=device, dtype=torch.float64).sum(0) for _, u in keep]))
        st.frames += x.shape[0]
        offsets = np.concatenate([[0], np.cumsum([u.shape[0] for _, u in keep])]).tolist()
        st.utterances += len(keep)
        if ("cca_word" in self.metrics and getattr(batch, "words", None) is not None
                and getattr(batch, "word_vocab", None) is not None):
            self._update_word_means(st, keep, batch, rate, device)
        if st.reservoir is not None:
            index = list(batch.index)
            fit = [(j, i, u) for j, (i, u) in enumerate(keep) if not is_heldout(index[i])]
            if not fit:
                return
            rows = torch.cat([x[offsets[j]:offsets[j] + u.shape[0]] for j, _, u in fit])
            keys = torch.cat([torch.as_tensor(frame_keys(index[i], u.shape[0], self.cfg.seed))
                              for _, i, u in fit])
            lab = None
            if labels is not None:
                lab = torch.from_numpy(np.concatenate(
                    [align_labels(labels[i], u.shape[0], rate) for _, i, u in fit]))
            st.reservoir.update(rows.cpu(), keys=keys, labels=lab)

    # ------------------------------------------------------------------ compute
    def layer_owners(self, layers: list[int], world: int) -> dict[int, int]:
        """The rank that computes each layer: layers dealt round-robin over the ranks (all on
        rank 0 when :attr:`spread_layers` is off)."""
        if not self.spread_layers:
            return {layer: 0 for layer in layers}
        return {layer: i % max(1, world) for i, layer in enumerate(sorted(layers))}

    def _compute_all(self, states: dict[int, LayerState], layers: list[int], have_labels: bool,
                     owned: set[int] | None = None,
                     ) -> tuple[dict[str, float], dict[int, torch.Tensor | None]]:
        """Everything but the held-out label metrics, for the ``owned`` layers (None: all);
        also the fitted centroids.

        Returns:
            ``(values, centroids)``: centroids per layer (CPU float32 ``(k, D)``, None where
            k-means failed), for the held-out pass.
        """
        out: dict[str, float] = {}
        centroids: dict[int, torch.Tensor | None] = {}
        wanted = [m for m in self.metrics if have_labels or m not in LABEL_METRICS]
        if not have_labels and any(m in LABEL_METRICS for m in self.metrics) and "nolabels" not in self._warned:
            self._warned.add("nolabels")
            logger.info("sslvitals: the probe has no frame labels; skipping %s",
                        ", ".join(m for m in self.metrics if m in LABEL_METRICS))
        for layer in layers:
            if owned is not None and layer not in owned:
                continue
            st = states.get(layer)
            if st is None:
                for m in wanted:
                    out[metric_key(m, layer)] = self._fail(m, layer, SSLVitalsError("no frames were captured"))
                centroids[layer] = None
                continue
            values, centroids[layer] = self._compute_layer(st, layer, wanted)
            out.update(values)
        return out, centroids

    def _all_failed(self, layers: list[int], exc: BaseException, t0: float) -> dict[str, float]:
        """Report every metric of every layer as NaN after a failed probe pass (one warning)."""
        if "forward" not in self._warned:
            self._warned.add("forward")
            logger.warning("sslvitals: the probe pass failed (%s: %s); reporting NaN for every metric "
                           "and going on (set vitals.strict=true to stop instead)", type(exc).__name__, exc)
        out = {metric_key(m, layer): float("nan") for layer in layers for m in self.metrics
               if m not in LABEL_METRICS}
        self.last_seconds = time.perf_counter() - t0
        out[TIME_KEY] = self.last_seconds
        return out

    def _fail(self, metric: str, layer: int, exc: BaseException) -> float:
        if self.cfg.strict:
            raise SSLVitalsError(f"metric {metric} failed on layer {layer}: {exc}") from exc
        tag = f"{metric}/{layer}/{type(exc).__name__}"
        if tag not in self._warned:
            self._warned.add(tag)
            logger.warning("sslvitals: %s on layer %d failed (%s: %s); reporting NaN and going on "
                           "(set vitals.strict=true to stop instead)", metric, layer,
                           type(exc).__name__, exc)
        return float("nan")

    def _safe(self, out: dict[str, float], metric: str, layer: int, fn: Callable[[], float]) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                value = float(fn())
            if not math.isfinite(value):
                tag = f"{metric}/{layer}/nonfinite"
                if tag not in self._warned:
                    self._warned.add(tag)
                    logger.warning("sslvitals: %s on layer %d is undefined for this data (NaN)", metric, layer)
        except Exception as exc:  # noqa: BLE001 - the monitor must never stop training
            value = self._fail(metric, layer, exc)
        out[metric_key(metric, layer)] = value

    def _compute_layer(self, st: LayerState, layer: int,
                       wanted: list[str]) -> tuple[dict[str, float], torch.Tensor | None]:
        from sslvitals import metrics as M

        cfg = self.cfg
        out: dict[str, float] = {}
        gram_wanted = [m for m in wanted if m in _GRAM_METRICS]
        if gram_wanted:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    values = st.gram.compute(measures=gram_wanted)
                for m in gram_wanted:
                    self._safe(out, m, layer, lambda m=m: values[m])
            except Exception as exc:  # noqa: BLE001
                for m in gram_wanted:
                    out[metric_key(m, layer)] = self._fail(m, layer, exc)
        if "rankme_t" in wanted:
            self._safe(out, "rankme_t", layer, lambda: st.utt_gram.compute(measures=["rankme"])["rankme"])
        if "cca_word" in wanted and st.word_gram is not None:
            wg = st.word_gram
            self._safe(out, "cca_word", layer,
                       lambda: M.cca_similarity_from_gram(wg.gram, wg.col_sum, wg.count, st.dim,
                                                          method="pwcca"))
        res_wanted = [m for m in wanted if m in _RESERVOIR_METRICS]
        if not res_wanted or st.reservoir is None:
            return out, None
        x, y = st.reservoir.sample()
        x = torch.as_tensor(x).to(self.device(), dtype=torch.float32)
        km_wanted = [m for m in res_wanted if m != "cca_phone"]
        fit_needed = bool(km_wanted)
        km_wanted = [m for m in km_wanted if m not in _HELDOUT_METRICS]
        assigned = None
        centroids: torch.Tensor | None = None
        if fit_needed:
            try:
                if x.shape[0] < cfg.k:
                    raise SSLVitalsError(
                        f"only {x.shape[0]} frames for k={cfg.k} clusters; lower vitals.k or use a larger probe"
                    )
                km = M.kmeans(x, cfg.k, niter=cfg.kmeans_iters, seed=cfg.seed, backend=cfg.backend)
                # km.labels / km.inertia are the assignment to the final centroids
                assigned = torch.as_tensor(km.labels).to(x.device)
                inertia_sum = float(km.inertia)
                centroids = torch.as_tensor(km.centroids).detach().to("cpu", torch.float32)
            except Exception as exc:  # noqa: BLE001
                for m in km_wanted:
                    out[metric_key(m, layer)] = self._fail(m, layer, exc)
                for m in res_wanted:
                    if m in _HELDOUT_METRICS:
                        out[metric_key(m, layer)] = self._fail(m, layer, exc)
                km_wanted = []
        for m in km_wanted:
            if m == "inertia":
                self._safe(out, m, layer, lambda: inertia_sum / max(1, x.shape[0]))
            elif m == "davies_bouldin":
                self._safe(out, m, layer, lambda: M.davies_bouldin_score(x, assigned))
            elif m == "calinski_harabasz":
                self._safe(out, m, layer, lambda: M.calinski_harabasz_score(x, assigned))
            elif m == "silhouette":
                n = cfg.silhouette_sample or None
                self._safe(out, m, layer, lambda: M.silhouette_score(x, assigned, sample_size=n, seed=cfg.seed))
            elif m == "simplified_silhouette":
                self._safe(out, m, layer, lambda: M.simplified_silhouette_score(x, assigned))
        if "cca_phone" in res_wanted and y is not None:
            yy = torch.as_tensor(y).cpu()
            self._safe(out, "cca_phone", layer,
                       lambda: M.cca_similarity(x.cpu().double(), M.one_hot(yy).double(), method="pwcca"))
        return out, centroids
