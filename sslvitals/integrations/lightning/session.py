"""What the Lightning and Hugging Face callbacks share: options, start-up checks, measurement.

:class:`CallbackSession` turns the callbacks' keyword options into a
:class:`~sslvitals.config.VitalsConfig`, reads the probe, finds the encoder inside the module the
trainer trains, checks everything that can be checked before the first step (probe, layers,
forward pass, the metrics a checkpoint or early-stopping rule monitors), measures the probe with
:class:`~sslvitals.monitor.VitalsMonitor` (this rank's shard; the monitor makes every rank
agree) and appends the JSON-lines records without duplicating a step after a resume.

This module imports neither ``lightning`` nor ``transformers``: the callbacks in
:mod:`sslvitals.integrations.lightning.callback` and :mod:`sslvitals.integrations.hf.callback`
are thin adapters over it.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import re
import time
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from sslvitals.config import LABEL_METRICS, VitalsConfig
from sslvitals.errors import SSLVitalsError
from sslvitals.keys import PREFIX, TIME_KEY, metric_key, parse_key

__all__ = [
    "CallbackSession",
    "OPTION_NAMES",
    "EXTRA_OPTIONS",
    "options_signature",
    "resolve_encoder",
    "default_forward",
    "find_loss",
]

logger = logging.getLogger(__name__)

#: Options a callback takes besides the :class:`VitalsConfig` fields.
EXTRA_OPTIONS = ("model", "forward")
#: Every option name a callback accepts, in signature order.
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(VitalsConfig)) + EXTRA_OPTIONS

_LAYER_LIST_RE = re.compile(r"^\s*(all|-?\d+(\s*,\s*-?\d+)*)\s*$")
_LOSS_KEYS = ("val_loss", "val/loss", "valid_loss", "validation_loss", "loss/val")


def options_signature() -> inspect.Signature:
    """The keyword-only signature of the callbacks: every :class:`VitalsConfig` field with its
    default (``enabled`` defaults to True: a callback the user added is meant to run), then
    ``model`` and ``forward``.

    Used as ``__signature__`` of the callbacks' ``__init__`` so ``help()`` and editors show the
    real options, taken from the dataclass so they never drift.
    """
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in dataclasses.fields(VitalsConfig):
        default = True if f.name == "enabled" else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=f.type))
    params.append(inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation="str | Callable[[nn.Module], nn.Module] | None"))
    params.append(inspect.Parameter("forward", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation="Callable[[nn.Module, ProbeBatch], Any] | None"))
    return inspect.Signature(params)


def _field_types() -> dict[str, tuple[type, ...]]:
    out: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(VitalsConfig):
        d = f.default
        if isinstance(d, bool):
            out[f.name] = (bool,)
        elif isinstance(d, int):
            out[f.name] = (int,)
        elif isinstance(d, float):
            out[f.name] = (int, float)
        else:  # str or None (optional path)
            out[f.name] = (str, os.PathLike)
    return out


def _check_option_types(values: Mapping[str, Any]) -> None:
    """Reject option values of the wrong Python type, naming the option and an example."""
    types = _field_types()
    defaults = {f.name: f.default for f in dataclasses.fields(VitalsConfig)}
    for name, value in values.items():
        if name not in types or value is None:
            continue
        wanted = types[name]
        ok = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
        if not ok:
            example = defaults[name] if defaults[name] is not None else "path/to/file"
            raise SSLVitalsError(
                f"vitals option {name}={value!r} has type {type(value).__name__}; expected "
                f"{' or '.join(t.__name__ for t in wanted)}, e.g. {name}={example!r}")


def _normalise_layers(value: Any) -> tuple[str, str | None]:
    """Split a ``layers`` option into the config's layer list and a block-list path.

    Returns:
        ``(layers, blocks_path)``: ``("0,6,12", None)`` for indices, ``("all", "encoder.layers")``
        for the dotted path of an ``nn.ModuleList`` (all its layers are measured).
    """
    if isinstance(value, bool):
        raise SSLVitalsError(f"vitals option layers={value!r}: give 'all', indices or a ModuleList path")
    if isinstance(value, int):
        return str(value), None
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SSLVitalsError(f"vitals option layers={value!r}: a list must hold layer indices (ints)")
        return ",".join(str(v) for v in value), None
    if not isinstance(value, str):
        raise SSLVitalsError(f"vitals option layers={value!r}: give 'all', indices or a ModuleList path")
    if _LAYER_LIST_RE.match(value):
        return value.strip(), None
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", value.strip()):
        raise SSLVitalsError(
            f"vitals option layers={value!r} is neither 'all', comma-separated indices (e.g. "
            "'0,6,12') nor the dotted path of an nn.ModuleList of blocks (e.g. 'encoder.layers')")
    return "all", value.strip()


def resolve_encoder(root: nn.Module, spec: Any) -> nn.Module:
    """Find the module to measure inside the module a trainer trains.

    Args:
        root: The ``LightningModule`` or the ``transformers`` model the trainer holds.
        spec: None: the first submodule sslvitals recognises (e.g. ``wav2vec2`` inside a
            ``Wav2Vec2ForPreTraining``), or ``root`` itself when nothing is recognised; a
            dotted attribute path (``"model.encoder"``); or a callable ``root -> module``.

    Returns:
        The encoder module.

    Raises:
        SSLVitalsError: if the path does not exist or does not lead to an ``nn.Module``.
    """
    if spec is None:
        from sslvitals.hooks.architectures import detect

        try:
            path = detect(root).root_path
        except SSLVitalsError:
            return root
        return root.get_submodule(path) if path else root
    if isinstance(spec, str):
        obj: Any = root
        walked = []
        for part in spec.split("."):
            walked.append(part)
            if not hasattr(obj, part):
                children = ", ".join(n for n, _ in obj.named_children()) if isinstance(obj, nn.Module) else ""
                raise SSLVitalsError(
                    f"vitals option model={spec!r}: {type(obj).__name__} has no attribute "
                    f"{part!r} (at {'.'.join(walked)}); its submodules are: {children or 'none'}")
            obj = getattr(obj, part)
        module = obj
    elif callable(spec):
        module = spec(root)
    else:
        raise SSLVitalsError(
            f"vitals option model={spec!r}: give None, a dotted attribute path such as 'encoder', "
            "or a callable that takes the trained module and returns the encoder")
    if not isinstance(module, nn.Module):
        raise SSLVitalsError(
            f"vitals option model={spec!r} gives a {type(module).__name__}, not a torch.nn.Module")
    return module


def default_forward(encoder: nn.Module) -> Callable[[nn.Module, Any], Any]:
    """The forward function sslvitals uses when the callback is given none.

    transformers HuBERT / wav2vec 2.0 / WavLM: ``model(input_values, attention_mask=...)``
    (:func:`sslvitals.integrations.transformers.checkpoint.transformers_forward`); fairseq
    HuBERT / wav2vec 2.0 / MR-HuBERT: the unmasked feature pass of the fairseq integration.

    Raises:
        SSLVitalsError: for any other model (the message says to pass ``forward=``).
    """
    from sslvitals.hooks.architectures import detect

    try:
        plan = detect(encoder)
    except SSLVitalsError:
        plan = None
    family = plan.family if plan is not None else ""
    if family == "transformers":
        from sslvitals.integrations.transformers.checkpoint import transformers_forward

        return transformers_forward
    if family in ("fairseq-wav2vec2", "multires-hubert"):
        from sslvitals.integrations.fairseq.forward import make_forward_fn

        return make_forward_fn(False)
    what = plan.architecture if plan is not None else type(encoder).__name__
    raise SSLVitalsError(
        f"sslvitals has no default forward pass for {what}: pass forward=fn, where fn(model, "
        "batch) runs the encoder on batch.wav (B, T) float32 at 16 kHz with batch.lengths (B,) "
        "(e.g. NeMo: preprocessor, then encoder(audio_signal=feats, length=lens))")


class CallbackSession:
    """The toolkit-free state of one callback: options, probe, monitor, schedule, records.

    Args:
        toolkit: ``"lightning"`` or ``"hf"`` (written in the records and messages).
        options: The callback's keyword options (:data:`OPTION_NAMES`).

    Raises:
        SSLVitalsError: on an unknown option (listing the valid ones) or an invalid value.
    """

    def __init__(self, toolkit: str, options: Mapping[str, Any]) -> None:
        self.toolkit = toolkit
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise SSLVitalsError(
                f"unknown vitals option(s) {unknown} for the {toolkit} callback; valid options "
                f"are: {', '.join(OPTION_NAMES)}")
        values = {k: v for k, v in options.items() if k not in EXTRA_OPTIONS}
        values.setdefault("enabled", True)
        self.blocks_path: str | None = None
        if "layers" in values:
            values["layers"], self.blocks_path = _normalise_layers(values["layers"])
        if isinstance(values.get("metrics"), (list, tuple)):
            values["metrics"] = ",".join(str(m) for m in values["metrics"])
        for name in ("probe", "probe_labels", "jsonl"):
            if isinstance(values.get(name), os.PathLike):
                values[name] = os.fspath(values[name])
        _check_option_types(values)
        self.cfg = VitalsConfig.from_dict(values)
        self.model_spec = options.get("model")
        if self.model_spec is not None and not (isinstance(self.model_spec, str) or callable(self.model_spec)):
            raise SSLVitalsError(
                f"vitals option model={self.model_spec!r}: give a dotted attribute path such as "
                "'encoder', or a callable that takes the trained module and returns the encoder")
        self.user_forward = options.get("forward")
        if self.user_forward is not None and not callable(self.user_forward):
            raise SSLVitalsError(f"vitals option forward={self.user_forward!r} is not callable; "
                                 "give fn(model, batch)")
        from sslvitals.monitor import VitalsMonitor

        self.monitor = VitalsMonitor(self.cfg)
        self.probe: Any = None
        self.layers: list[int] | None = None
        self.jsonl: str | None = None
        self.run_name: str | None = None
        self.records: Any = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ start-up
    @property
    def enabled(self) -> bool:
        """Whether the callback measures anything."""
        return bool(self.cfg.enabled)

    def load_probe(self, *, default_dir: str | os.PathLike | None) -> None:
        """Read the probe and fix where the records go (first start-up step).

        Args:
            default_dir: Folder of ``vitals.jsonl`` when the ``jsonl`` option is not given (the
                trainer's log folder or output folder).

        Raises:
            SSLVitalsError: if the probe is ``'valid'`` (these trainers have no manifest to
                read), does not exist or cannot be read.
        """
        if not self.enabled:
            return
        from sslvitals.probe import ProbeSet

        probe = str(self.cfg.probe)
        if probe == "valid":
            raise SSLVitalsError(
                f"the {self.toolkit} vitals callback needs probe=<path>: a fairseq manifest (.tsv: "
                "root folder, then 'relative/path<TAB>num_samples' lines) or a Kaldi-style folder "
                "with wav.scp ('valid' only works in fairseq and ESPnet, which read such a manifest)")
        path = os.path.expanduser(probe)
        if not os.path.exists(path):
            raise SSLVitalsError(
                f"probe {path} (vitals option probe) does not exist; give a fairseq .tsv manifest "
                "or a Kaldi-style folder with wav.scp")
        if self.probe is None:
            self.probe = ProbeSet.from_path(path, labels=self.cfg.probe_labels,
                                            max_seconds=self.cfg.max_probe_seconds, seed=self.cfg.seed,
                                            words=self.cfg.probe_words)
        folder = os.fspath(default_dir) if default_dir is not None else os.getcwd()
        self.jsonl = self.cfg.jsonl or os.path.join(folder, "vitals.jsonl")
        self.run_name = os.path.basename(os.path.abspath(folder).rstrip(os.sep)) or None
        logger.info("sslvitals: probe %s: %d utterances, %.1f s, labels: %s; metrics %s; "
                    "records -> %s", path, len(self.probe), self.probe.total_seconds,
                    self.probe.has_labels, ",".join(self.monitor.metrics), self.jsonl)

    def check_monitored(self, monitored: Iterable[tuple[str, str]]) -> None:
        """Check every vitals key a checkpoint / early-stopping rule watches (start-up).

        Args:
            monitored: ``(who, key)`` pairs, e.g. ``("ModelCheckpoint", "vitals/rankme/L12")``;
                keys not starting with ``vitals/`` are ignored.

        Raises:
            SSLVitalsError: if the key is not logged at every validation, is not a vitals key,
                names a metric or layer that is not measured, or needs labels the probe lacks.
        """
        if not self.enabled:
            return
        for who, key in monitored:
            if not key or not str(key).startswith(PREFIX + "/"):
                continue
            if self.cfg.every_n_validations != 1:
                raise SSLVitalsError(
                    f"{who} watches {key}, which needs a value at every validation, but "
                    f"every_n_validations={self.cfg.every_n_validations}; set every_n_validations=1 "
                    "or watch another metric")
            if key == TIME_KEY:
                continue
            parsed = parse_key(str(key))
            if parsed is None:
                raise SSLVitalsError(
                    f"{who} watches {key}, which is not a vitals key; they read "
                    "vitals/<metric>/L<layer>, e.g. vitals/rankme/L12")
            if parsed.metric not in self.monitor.metrics:
                raise SSLVitalsError(
                    f"{who} watches {key}, but metric {parsed.metric!r} is not measured (the "
                    f"metrics option gives {', '.join(self.monitor.metrics)})")
            if parsed.metric in LABEL_METRICS and self.probe is not None and not self.probe.has_labels:
                raise SSLVitalsError(
                    f"{who} watches {key}, which needs phone labels, but the probe has none; put "
                    "<probe stem>.phn beside the probe or set probe_labels=...")
            if self.layers is not None and parsed.layer not in self.layers:
                raise SSLVitalsError(
                    f"{who} watches {key}, but layer {parsed.layer} is not measured (the layers "
                    f"option gives {self.layers})")

    def check_model(self, root: nn.Module, world_size: int = 1) -> list[int]:
        """Resolve the encoder, the layers and the forward pass, and run one probe utterance.

        The shortest probe utterance goes through the forward function under a
        :class:`~sslvitals.hooks.LayerTap` (eval mode, no gradients, the training mode restored),
        so an unknown model, a bad layer or a failing forward stops the run before its first step.

        Args:
            root: The module the trainer trains.
            world_size: Number of processes that will share the probe.

        Returns:
            The layer indices that will be measured.

        Raises:
            SSLVitalsError: naming the problem and the fix.
        """
        if not self.enabled:
            return []
        from sslvitals.hooks import LayerTap
        from sslvitals.probe import ProbeSet

        if self.probe is None:
            raise SSLVitalsError("internal: load_probe() must run before check_model()")
        if len(self.probe) < world_size:
            raise SSLVitalsError(
                f"the probe {self.probe.source} has {len(self.probe)} utterances for {world_size} "
                "processes; every process needs at least one: use a larger probe "
                "(probe, max_probe_seconds)")
        encoder = resolve_encoder(root, self.model_spec)
        try:
            tap = LayerTap(encoder, layers=self.blocks_path or self.cfg.layers)
        except SSLVitalsError as exc:
            raise SSLVitalsError(
                f"sslvitals cannot read the layers of {type(encoder).__name__}: {exc} (give "
                "model='<attribute path of the encoder>' and, for a model sslvitals does not "
                "know, layers='<path of its nn.ModuleList of blocks>')") from exc
        forward = self.forward_fn(encoder)
        shortest = min(self.probe.items, key=lambda it: it.num_samples)
        batch = next(ProbeSet([shortest], self.probe.source, self.probe.sample_rate).batches(
            self.cfg.batch_seconds))
        was_training = encoder.training
        try:
            encoder.eval()
            with torch.no_grad(), tap:
                forward(encoder, batch)
                captured = tap.utterances()
        except SSLVitalsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here is a set-up error
            raise SSLVitalsError(
                f"running probe utterance {shortest.uid} through {type(encoder).__name__} failed "
                f"before training: {type(exc).__name__}: {exc} (check the model and forward "
                "options)") from exc
        finally:
            encoder.train(was_training)
        layers = list(tap.layer_ids)
        missing = [layer for layer in layers if layer not in captured]
        empty = [layer for layer in layers if layer in captured and captured[layer][0].shape[0] == 0]
        if missing or empty:
            raise SSLVitalsError(
                f"probe utterance {shortest.uid} ({shortest.num_samples} samples) gives no frames "
                f"at layers {missing + empty}: check that forward runs the encoder, and remove "
                "utterances shorter than the front-end's receptive field from the probe")
        self.layers = layers
        logger.info("sslvitals: %s: measuring layers %s of %s (%s)", self.toolkit, layers,
                    type(encoder).__name__, tap.plan.architecture)
        return layers

    def forward_fn(self, encoder: nn.Module) -> Callable[[nn.Module, Any], Any]:
        """The user's ``forward`` option, or :func:`default_forward` for ``encoder``."""
        return self.user_forward if self.user_forward is not None else default_forward(encoder)

    # ------------------------------------------------------------------ each validation
    def due(self, index: int | None) -> bool:
        """Whether the validation with 0-based run-wide ``index`` is measured (None: always)."""
        if not self.enabled:
            return False
        return True if index is None else self.monitor.due(int(index))

    def expected_keys(self) -> list[str]:
        """Keys one measurement reports (metric x layer), without ``vitals/seconds``."""
        labels = self.probe is not None and self.probe.has_labels
        metrics = [m for m in self.monitor.metrics if labels or m not in LABEL_METRICS]
        return [metric_key(m, layer) for layer in (self.layers or []) for m in metrics]

    def measure(self, root: nn.Module, *, step: int | None = None) -> dict[str, float]:
        """Measure this rank's shard of the probe; every rank returns the same dict.

        ``vitals/seconds`` is the slowest rank's time, so that it too is equal everywhere. A
        failure of the whole measurement is logged once and reported as NaN for every key,
        unless ``strict``.

        Args:
            root: The module the trainer trains (the encoder is found in it again each time).
            step: The trainer's global step, for logs.

        Returns:
            ``{metric_key: value, "vitals/seconds": s}``.

        Raises:
            SSLVitalsError: only in strict mode.
        """
        from sslvitals import distributed as dist

        t0 = time.perf_counter()
        rank, world = dist.rank(), dist.world_size()
        try:
            encoder = resolve_encoder(root, self.model_spec)
            shard = self.probe.shard(rank, world)
            values = self.monitor.measure(encoder, self.forward_fn(encoder),
                                          shard.batches(self.cfg.batch_seconds), step=step,
                                          tap_layers=self.blocks_path)
        except Exception as exc:  # noqa: BLE001 - never stop the training unless strict
            if self.cfg.strict:
                if isinstance(exc, SSLVitalsError):
                    raise
                raise SSLVitalsError(f"the vitals measurement at step {step} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
            tag = type(exc).__name__
            if tag not in self._warned:
                self._warned.add(tag)
                logger.warning("sslvitals: the measurement at step %s failed (%s: %s); reporting "
                               "NaN and going on (set strict=True to stop instead)", step, tag, exc)
            values = {k: math.nan for k in self.expected_keys()}
            values[TIME_KEY] = time.perf_counter() - t0
        if dist.is_distributed() and world > 1:
            times = dist.all_gather_object(float(values.get(TIME_KEY, math.nan)))
            values[TIME_KEY] = max(times)
        return values

    # ------------------------------------------------------------------ records
    def restart(self, position: int) -> None:
        """Call on rank 0 when training starts or resumes at step ``position`` (0: fresh start).

        This run's records after ``position`` describe training the run is about to repeat;
        they move to ``vitals.jsonl.discarded`` and the steps kept are not recorded again
        (:class:`sslvitals.integrations.resume.RunRecords`, as in fairseq and ESPnet).
        """
        from sslvitals.integrations.resume import RunRecords

        if self.jsonl is None:
            return
        self.records = RunRecords(self.jsonl, self.run_name or "", key="update")
        try:
            self.records.restart_at(int(position))
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(f"cannot update {self.jsonl} for the restart at step "
                                     f"{position}: {exc}") from exc
            logger.warning("sslvitals: cannot update %s at the restart (%s)", self.jsonl, exc)
        if position > 0:
            logger.info("sslvitals: resumed at step %d; records after it moved out of %s",
                        position, self.jsonl)

    def record(self, values: Mapping[str, float], *, update: int | None, epoch: int | None,
               loss: float | None = None) -> dict[str, Any] | None:
        """Append the record of one measurement (call on rank 0 only).

        A step already recorded (by this process, or kept at the restart) is not written again,
        so a resumed run never holds two records for one step.

        Returns:
            The record written, or None when skipped.
        """
        from sslvitals.integrations.resume import RunRecords
        from sslvitals.records import append_record, make_record

        if self.jsonl is None:
            return None
        if self.records is None:  # no training start seen (e.g. a lone validate/evaluate call)
            self.records = RunRecords(self.jsonl, self.run_name or "", key="update")
        if self.records.recorded(update):
            logger.info("sslvitals: step %s is already in %s; no second record", update, self.jsonl)
            return None
        probe = dict(self.probe.describe())
        metrics = {k: float(v) for k, v in values.items() if k != TIME_KEY}
        if loss is not None and not math.isfinite(float(loss)):
            loss = None
        rec = make_record(toolkit=self.toolkit, metrics=metrics, run=self.run_name, update=update,
                          epoch=epoch, seconds=values.get(TIME_KEY), probe=probe, loss=loss,
                          settings=self.monitor.settings(probe))
        try:
            append_record(self.jsonl, rec)
        except OSError as exc:
            if self.cfg.strict:
                raise SSLVitalsError(f"cannot write {self.jsonl}: {exc}") from exc
            if "jsonl" not in self._warned:
                self._warned.add("jsonl")
                logger.warning("sslvitals: cannot write %s (%s); the values are still logged",
                               self.jsonl, exc)
            return None
        self.records.note(update)
        return rec


def find_loss(metrics: Mapping[str, Any], names: Iterable[str] = _LOSS_KEYS) -> float | None:
    """The first validation loss found in ``metrics`` under one of ``names`` (for records)."""
    for name in names:
        if name in metrics:
            try:
                return float(metrics[name])
            except (TypeError, ValueError):
                return None
    return None
