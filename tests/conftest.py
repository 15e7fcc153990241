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


@pytest.fixture(scope="module")
def one_thread_blas():
    """Single-threaded BLAS and torch for a module (``pytestmark = usefixtures(...)``): on a
    shared 2-core machine oversubscribed BLAS threads make small SVDs 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
    else:
        with threadpool_limits(limits=1):
            yield
    torch.set_num_threads(threads)
