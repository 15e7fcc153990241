"""Toolkit integrations: the only place where sslvitals imports fairseq, ESPnet, s3prl or transformers.

Each sub-package (``fairseq``, ``espnet``, ...) is imported only when the user asks for it, so
the core package works without any toolkit installed.
"""

__all__: list[str] = []
