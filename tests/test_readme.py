"""Every README code block marked ``<!-- runnable -->`` runs, and prints what the README shows."""
import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- runnable -->\n```python\n(.*?)```\n(?:\n```\n(.*?)```)?", re.S)


def _blocks():
    return [pytest.param(code, expected, id=f"block{i}")
            for i, (code, expected) in enumerate(_BLOCK.findall(README.read_text()))]


def test_readme_has_runnable_blocks():
    assert len(_blocks()) >= 4


@pytest.mark.parametrize("code,expected", _blocks())
def test_readme_block(code, expected):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    if expected:
        assert out.getvalue().strip() == expected.strip()


def test_readme_metric_table_is_the_code_table():
    """The README's metric table is exactly what sslvitals.metric_table prints."""
    from sslvitals.metric_table import markdown_table

    text = README.read_text()
    start = text.index("<!-- metric-table -->\n") + len("<!-- metric-table -->\n")
    end = text.index("\n<!-- /metric-table -->")
    assert text[start:end] == markdown_table()
