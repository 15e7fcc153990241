"""fairseq ``common.user_dir`` for HuBERT CTC fine-tuning with fairseq 0.12.x.

fairseq 0.12's ``HubertEncoder`` reads ``cfg.autoregressive``, a field that only the
sequence-to-sequence config declares, so fine-tuning with the stock ``hubert_ctc`` model and
``examples/hubert/config/finetune/base_10h.yaml`` stops with
``Key 'autoregressive' not in 'HubertCtcConfig'`` (facebookresearch/fairseq issue #4916,
still present in fairseq-fixed 0.12.3.1). This package registers ``hubert_ctc_patched``: the
same model class with a config that carries ``autoregressive = False``. Use it with::

    common.user_dir=<checkout>/recipes/paper/full/fairseq_ctc_fix model._name=hubert_ctc_patched

for fine-tuning, and the same ``common.user_dir`` when decoding the fine-tuned checkpoint.

Importing it also allow-lists the classes fairseq checkpoints hold for torch's safe loader, so
that ``model.w2v_path`` (a HuBERT checkpoint with pickled label dictionaries) loads without
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""
from dataclasses import dataclass, field

from fairseq.models import register_model
from fairseq.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig

from sslvitals.integrations.fairseq.safe_load import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

__all__ = ["HubertCtcPatchedConfig", "HubertCtcPatched"]


@dataclass
class HubertCtcPatchedConfig(HubertCtcConfig):
    """``HubertCtcConfig`` plus the ``autoregressive`` flag that ``HubertEncoder`` reads."""

    autoregressive: bool = field(
        default=False, metadata={"help": "always false for CTC; read by fairseq 0.12's HubertEncoder"}
    )


@register_model("hubert_ctc_patched", dataclass=HubertCtcPatchedConfig)
class HubertCtcPatched(HubertCtc):
    """fairseq's ``HubertCtc`` under a config that fairseq 0.12 can build."""
