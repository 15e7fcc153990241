"""Fixtures of the ESPnet integration tests: one tiny seeded experiment per test session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import espnet_tinydata as tinydata  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus (8 train, 6 valid utterances) with its ESPnet files."""
    return tinydata.make_experiment(tmp_path_factory.mktemp("espnet_tiny"), n_train=8, n_valid=6)
