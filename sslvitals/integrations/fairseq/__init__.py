"""sslvitals inside fairseq: label-free layer metrics at every validation of a pretraining run.

The plugin is a fairseq ``common.user_dir`` (print its path with ``sslvitals fairseq-user-dir``)
that registers task wrappers around the stock pretraining tasks:

* ``hubert_pretraining_vitals`` (HuBERT),
* ``audio_pretraining_vitals`` (wav2vec 2.0),
* ``multires_hubert_pretraining_vitals`` (MR-HuBERT; only when the installed fairseq has
  ``multires_hubert_pretraining``).

Each wrapper adds a ``task.vitals`` node (the fields of :class:`sslvitals.config.VitalsConfig`)
and, at every validation, runs the fixed probe set through the model without masking, logs
``vitals/<metric>/L<layer>`` next to fairseq's own validation stats and appends a record to a
JSON-lines file. Modules:

* :mod:`~sslvitals.integrations.fairseq.config`: the fairseq mirror of ``VitalsConfig``;
* :mod:`~sslvitals.integrations.fairseq.forward`: the probe forward pass for fairseq models;
* :mod:`~sslvitals.integrations.fairseq.runner`: measurement, logging and records, task-free;
* :mod:`~sslvitals.integrations.fairseq.tasks`: the task wrappers (imports fairseq);
* :mod:`~sslvitals.integrations.fairseq.cli`: the ``fairseq-user-dir`` sub-command.
* :mod:`~sslvitals.integrations.fairseq.safe_load`: the classes fairseq checkpoints hold,
  allow-listed for torch's safe unpickler (resuming, fine-tuning, offline scoring).

Importing this package imports neither fairseq nor torch.
"""

__all__: list[str] = []
