"""``VitalsTrainerCallback``: sslvitals in a Hugging Face ``transformers.Trainer`` run.

::

    from sslvitals.integrations.hf import VitalsTrainerCallback

    args = TrainingArguments("out", eval_strategy="steps", eval_steps=1000, save_steps=1000,
                             metric_for_best_model="vitals/rankme/L12", greater_is_better=True,
                             load_best_model_at_end=True)
    trainer = Trainer(model=model, args=args, train_dataset=..., eval_dataset=...,
                      callbacks=[VitalsTrainerCallback(probe="probe.tsv", layers="0,6,12", k=100)])

At each evaluation the callback measures the probe and adds ``eval_vitals/<metric>/L<layer>``
to the evaluation's metrics (for several evaluation datasets, ``eval_<name>_vitals/...``, measured
once per step). Where this happens, for ``transformers`` 4.x and 5.x: ``Trainer.evaluate`` logs
its metrics dict (``Trainer.log`` -> ``on_log``) *before* it calls ``on_evaluate``, and returns
that same dict, which ``Trainer._determine_best_metric`` reads for ``metric_for_best_model``
(prefixing ``eval_`` when the name lacks it) and ``EarlyStoppingCallback`` reads in
``on_evaluate``. So the callback measures in ``on_log`` (when the logs are an evaluation's)
and writes the values into that dict and into the ``trainer.state.log_history`` entry just
appended; ``on_evaluate`` only fills in what ``on_log`` could not. Reporting callbacks that run
*before* it in ``on_log`` (``report_to`` integrations such as TensorBoard or W&B, which the
Trainer puts ahead of user callbacks) would miss the values: :meth:`VitalsTrainerCallback.attach`
puts the callback first so that they see them.

Start-up checks (unknown option at construction; missing probe, bad layer, failing forward,
``metric_for_best_model`` naming a key that is not measured, at ``Trainer(...)``
(``on_init_end``) or ``train()`` (``on_train_begin``)) stop the run before its first step. Rank 0
appends one record per measured step to ``<args.output_dir>/vitals.jsonl``; at
``train(resume_from_checkpoint=...)`` the records after the restored step move to
``vitals.jsonl.discarded`` (the resumed run repeats that training) and no step is written twice. The schedule
(``every_n_validations``) counts the evaluations in ``state.log_history``, which checkpoints keep,
so a resumed run keeps it.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from transformers import TrainerCallback

from sslvitals.batching import passes_padding
from sslvitals.integrations.lightning.session import CallbackSession, options_signature
from sslvitals.keys import PREFIX

__all__ = ["VitalsTrainerCallback", "normalized_transformers_forward"]

logger = logging.getLogger(__name__)

_RUNTIME = "_runtime"


@passes_padding
def normalized_transformers_forward(model: Any, batch: Any) -> Any:
    """``forward=`` for models trained on zero-mean unit-variance input (``do_normalize=True``).

    Normalises each probe utterance over its own samples, then runs
    ``model(input_values, attention_mask=...)``.
    """
    from sslvitals.integrations.transformers.checkpoint import transformers_forward

    return transformers_forward(model, batch, normalize=True)


def _eval_prefix(logs: Mapping[str, Any]) -> str | None:
    """``"eval"`` (or ``"eval_<name>"``) when ``logs`` are an evaluation's metrics, else None."""
    for key in logs:
        if key.startswith("eval") and key.endswith(_RUNTIME) and PREFIX + "/" not in key:
            return key[: -len(_RUNTIME)]
    return None


class VitalsTrainerCallback(TrainerCallback):
    """Measure sslvitals' label-free metrics on a probe set at each ``Trainer`` evaluation.

    Keyword options: every field of :class:`sslvitals.config.VitalsConfig` with its name and
    default, except that ``enabled`` defaults to True, plus ``model`` (None: the model's
    recognised encoder, e.g. ``wav2vec2`` of a ``Wav2Vec2ForPreTraining``; a dotted attribute
    path; or a callable ``model -> nn.Module``) and ``forward`` (``fn(encoder, batch)``; default
    ``model(input_values, attention_mask=...)``, see
    :func:`sslvitals.integrations.transformers.checkpoint.transformers_forward`;
    :func:`normalized_transformers_forward` for ``do_normalize`` models). See
    :class:`sslvitals.integrations.lightning.VitalsCallback` for ``layers`` as a ModuleList path.

    Raises:
        SSLVitalsError: at construction for an unknown option (listing the valid ones) or an
            invalid value; before the first step for a missing probe, a bad layer or a
            ``metric_for_best_model`` that is not measured.
    """

    def __init__(self, **options: Any) -> None:
        self.session = CallbackSession("hf", options)
        self.cfg = self.session.cfg
        self._ready = False
        self._checked_model = False
        self._cache: tuple[int, dict[str, float]] | None = None
        self._skipped_step: int | None = None

    def attach(self, trainer: Any) -> "VitalsTrainerCallback":
        """Put this callback first in ``trainer``'s callbacks (adding it if needed).

        Then every reporting integration (TensorBoard, W&B, MLflow...) receives the vitals
        values in the evaluation logs. Returns the callback.
        """
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        self._setup(trainer.args, trainer.model)
        return self

    # ------------------------------------------------------------------ start-up
    def _monitored(self, args: Any) -> list[tuple[str, str]]:
        name = getattr(args, "metric_for_best_model", None)
        if not name:
            return []
        key = str(name)
        if key.startswith("eval_"):
            key = key[len("eval_"):]
        return [(f"metric_for_best_model={name!r}", key)]

    def _setup(self, args: Any, model: Any) -> None:
        if not self.session.enabled:
            return
        if not self._ready:
            from sslvitals import distributed as dist

            self.session.load_probe(default_dir=getattr(args, "output_dir", None))
            self.session.check_monitored(self._monitored(args))
            self._ready = True
            self._world = max(int(getattr(args, "world_size", 1) or 1), dist.world_size())
        if model is not None and not self._checked_model:
            self.session.check_model(model, self._world)
            self.session.check_monitored(self._monitored(args))
            self._checked_model = True

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Start-up checks when the ``Trainer`` is built."""
        self._setup(args, model)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Start-up checks again (for a callback added after construction); rank 0 makes the
        records consistent with the restored step (0 for a fresh start)."""
        self._setup(args, model)
        if self.session.enabled and getattr(state, "is_world_process_zero", True):
            self.session.restart(int(getattr(state, "global_step", 0) or 0))

    # ------------------------------------------------------------------ each evaluation
    @staticmethod
    def _index(state: Any) -> int:
        """0-based index, in the whole run, of the evaluation at ``state.global_step``: the
        number of earlier steps with an evaluation in ``state.log_history`` (kept in checkpoints)."""
        step = int(state.global_step)
        earlier = {int(e.get("step", -1)) for e in getattr(state, "log_history", [])
                   if _eval_prefix(e) is not None}
        return len({s for s in earlier if s < step})

    def _values(self, args: Any, state: Any, model: Any, prefix: str,
                logs: Mapping[str, Any]) -> dict[str, float] | None:
        """This step's measurement (measured once per step), or None when not due."""
        step = int(state.global_step)
        if self._cache is not None and self._cache[0] == step:
            return self._cache[1]
        if self._skipped_step == step:
            return None
        self._setup(args, model)
        if not self.session.due(self._index(state)):
            self._skipped_step = step
            return None
        values = self.session.measure(model, step=step)
        self._cache = (step, values)
        if getattr(state, "is_world_process_zero", True):
            loss = logs.get(f"{prefix}_loss")
            epoch = getattr(state, "epoch", None)
            # the epoch the evaluation belongs to, counted from 1 (state.epoch is fractional)
            self.session.record(values, update=step,
                                epoch=None if epoch is None else max(1, math.ceil(float(epoch))),
                                loss=None if loss is None else float(loss))
        return values

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               model: Any = None, **kwargs: Any) -> None:
        """Measure when ``logs`` are an evaluation's metrics; add ``eval_vitals/...`` to them."""
        if not self.session.enabled or logs is None or model is None:
            return
        prefix = _eval_prefix(logs)
        if prefix is None:
            return
        values = self._values(args, state, model, prefix, logs)
        if values is None:
            return
        added = {f"{prefix}_{key}": float(value) for key, value in values.items()}
        logs.update(added)
        history = getattr(state, "log_history", None)
        if history and int(history[-1].get("step", -1)) == int(state.global_step) \
                and f"{prefix}{_RUNTIME}" in history[-1]:
            history[-1].update(added)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    model: Any = None, **kwargs: Any) -> None:
        """Make sure the metrics the Trainer chooses the best model from hold the values."""
        if not self.session.enabled or metrics is None or model is None:
            return
        prefix = _eval_prefix(metrics)
        if prefix is None:
            return
        values = self._values(args, state, model, prefix, metrics)
        if values is None:
            return
        for key, value in values.items():
            metrics.setdefault(f"{prefix}_{key}", float(value))


VitalsTrainerCallback.__init__.__signature__ = options_signature()  # type: ignore[attr-defined]
