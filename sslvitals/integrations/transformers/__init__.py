"""Loaders for Hugging Face transformers speech models (local directories only)."""

__all__: list[str] = []
