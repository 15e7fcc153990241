"""Every docstring example of the metric and framing modules runs and prints what it shows."""
from __future__ import annotations

import doctest
import importlib
import io

import pytest

#: Modules whose docstring examples are part of the documentation users copy from.
MODULES = (
    "sslvitals.metrics.cluster",
    "sslvitals.metrics.labels",
    "sslvitals.metrics.cca",
    "sslvitals.metrics.rank",
    "sslvitals.hooks.framing",
    "sslvitals.streaming",
    "sslvitals.words",
)

pytestmark = pytest.mark.usefixtures("one_thread_blas")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)  # an import error fails the test
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    examples = sum(len(t.examples) for t in tests)
    assert examples > 0, f"{name} has no docstring examples any more; drop it from MODULES"
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    for test in tests:
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.attempted == examples
    assert result.failed == 0, f"{result.failed} of {examples} examples failed:\n{report.getvalue()}"
