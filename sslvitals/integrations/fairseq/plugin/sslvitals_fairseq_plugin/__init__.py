"""The folder to pass as fairseq's ``common.user_dir`` (``sslvitals fairseq-user-dir`` prints it).

fairseq imports this package under its folder name, which must not clash with any other
top-level module (``fairseq`` would). The task wrappers themselves live in
:mod:`sslvitals.integrations.fairseq.tasks` and are registered once, under that canonical
module name, however often and under whatever name this package is imported.
"""
import sslvitals.integrations.fairseq.tasks  # noqa: F401  (registers the *_vitals tasks)

__all__: list[str] = []
