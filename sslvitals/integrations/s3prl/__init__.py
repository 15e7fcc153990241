"""Loaders built on s3prl's fairseq-free model ports (imported only when used)."""

__all__: list[str] = []
