"""The folder to pass as fairseq's ``common.user_dir`` (``sslvitals fairseq-user-dir`` prints it).

fairseq imports this package under its folder name, which must not clash with any other
top-level module (``fairseq`` would). The task wrappers themselves live in
:mod:`sslvitals.integrations.fairseq.tasks` and are registered once, under that canonical
module name, however often and under whatever name this package is imported.

fairseq imports the user dir before it reads any checkpoint, so this is also where the classes
fairseq checkpoints hold are allow-listed for torch's safe unpickler
(:func:`~sslvitals.integrations.fairseq.safe_load.allow_fairseq_checkpoints`): resuming from
``checkpoint_last.pt`` then works without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
"""
import sslvitals.integrations.fairseq.tasks  # noqa: F401  (registers the *_vitals tasks)
from sslvitals.integrations.fairseq.safe_load import allow_fairseq_checkpoints

allow_fairseq_checkpoints()

__all__: list[str] = []
