"""Shared test configuration."""
import os

import pytest
import torch

# Keep the two cores of a CI machine predictable.
torch.set_num_threads(int(os.environ.get("SSLVITALS_TEST_THREADS", "1")))


@pytest.fixture
def rng():
    """A seeded numpy generator."""
    import numpy as np

    return np.random.default_rng(0)
