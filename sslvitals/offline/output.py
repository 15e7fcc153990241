"""Writing the outputs of the offline commands without ever losing a user's file.

Every file ``sslvitals score``, ``correlate``, ``table`` and ``plot`` write goes through this
module, in two steps:

1. :func:`check_output`, before any work: the destination must be writable, must not be an
   input of the same command, and, when it exists, must be an output of the same kind that
   sslvitals wrote (recognised by its content, see :func:`recognise`), unless the user passed
   ``--force``. A read-only file is never replaced.
2. :func:`write_atomic`: the content goes to a temporary file in the same folder, which then
   replaces the destination in one rename, so a crash leaves either the old or the new file,
   never half of one. The new file keeps the mode of the file it replaces, or gets the
   process's umask when it is new (a bare temporary file would be private, 0600).

Kinds of output (:data:`KINDS`):

* ``"results"``: a ``sslvitals score`` table (``.csv`` whose header holds the long-format
  columns, or ``.json`` holding a list of row objects);
* ``"correlations"``: the ``correlate`` CSV (its header starts with
  :data:`CORRELATION_COLUMNS`);
* ``"correlate-md"`` / ``"table-md"``: markdown whose first line is the command's marker
  comment (:func:`markdown_marker`), invisible when rendered;
* ``"figure"``: a PNG or PDF whose metadata names ``sslvitals plot`` (:data:`FIGURE_TAG`).
"""
from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Sequence

from sslvitals.errors import SSLVitalsError

__all__ = [
    "KINDS",
    "CORRELATION_COLUMNS",
    "FIGURE_TAG",
    "markdown_marker",
    "recognise",
    "check_output",
    "write_atomic",
    "default_mode",
    "inputs_of",
]

logger = logging.getLogger(__name__)

#: What each kind of output is called in messages.
KINDS: dict[str, str] = {
    "results": "a results table of sslvitals score",
    "correlations": "a correlation table of sslvitals correlate",
    "correlate-md": "a markdown report of sslvitals correlate",
    "table-md": "a markdown table of sslvitals table",
    "figure": "a figure of sslvitals plot",
}

#: Leading columns of the ``correlate`` CSV (its own output is recognised by them).
CORRELATION_COLUMNS: tuple[str, ...] = (
    "task", "direction", "metric", "layer", "n", "metric_better", "spearman", "spearman_lo",
    "spearman_hi", "spearman_p", "kendall", "kendall_lo", "kendall_hi", "kendall_p",
)

#: Text written into the metadata of every figure (PNG ``Source``, PDF ``Creator``).
FIGURE_TAG = "sslvitals plot"

_RESULT_COLUMNS = ("checkpoint", "layer", "metric", "value")
_MARKER_HEAD = "<!-- written by sslvitals "
#: First words of the correlate report written before the marker existed (earlier versions).
_LEGACY_CORRELATE_MD = "Sign convention: rho > 0 means a higher metric value goes with a better"
#: Figures are searched for :data:`FIGURE_TAG` in at most this many bytes.
_MAX_FIGURE_BYTES = 64 * 1024 * 1024


def markdown_marker(command: str) -> str:
    """The first line of a markdown file written by ``sslvitals <command>``.

    Example:
        >>> markdown_marker("table")
        '<!-- written by sslvitals table: replaced when the command runs again -->\\n'
    """
    return f"{_MARKER_HEAD}{command}: replaced when the command runs again -->\n"


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        return fh.readline(65536)


def recognise(path: str | os.PathLike[str]) -> str | None:
    """Which kind of sslvitals output ``path`` holds, judged by its content.

    Args:
        path: An existing file.

    Returns:
        One of :data:`KINDS`, ``"empty"`` for a file of zero bytes, or None when the content
        is not an sslvitals output.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size == 0:
            return "empty"
        suffix = p.suffix.lower()
        if suffix in (".png", ".pdf"):
            if size > _MAX_FIGURE_BYTES:
                return None
            return "figure" if FIGURE_TAG.encode("ascii") in p.read_bytes() else None
        if suffix == ".json":
            with open(p, encoding="utf-8") as fh:
                data = json.load(fh)
            rows = data.get("rows") if isinstance(data, dict) else data
            if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) and (
                    not rows or all(c in rows[0] for c in _RESULT_COLUMNS)):
                return "results"
            return None
        head = _first_line(p)
    except (OSError, ValueError):
        return None
    if head.startswith(_MARKER_HEAD):
        command = head[len(_MARKER_HEAD):].split(":", 1)[0].strip()
        return f"{command}-md" if f"{command}-md" in KINDS else None
    if suffix == ".md" and head.startswith(_LEGACY_CORRELATE_MD):
        return "correlate-md"
    import csv

    try:
        fields = next(csv.reader([head.rstrip("\r\n")]))
    except (csv.Error, StopIteration):
        return None
    if tuple(fields[: len(CORRELATION_COLUMNS)]) == CORRELATION_COLUMNS:
        return "correlations"
    if all(c in fields for c in _RESULT_COLUMNS):
        return "results"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def default_mode() -> int:
    """Permission bits of a new file under this process's umask (``0o666 & ~umask``)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def check_output(path: str | os.PathLike[str], *, kind: str, command: str, flag: str = "--out",
                 inputs: Iterable[str | os.PathLike[str]] = (), force: bool = False) -> Path:
    """Check, before any work, that ``path`` may be written by ``sslvitals <command>``.

    Args:
        path: The destination file.
        kind: What the command writes there (a key of :data:`KINDS`).
        command: The sub-command, for messages (``"score"``, ``"table"``...).
        flag: The option that named the file, as the user typed it.
        inputs: Files the command reads; none of them may be the destination.
        force: Replace an existing file even when it is not the command's own output (never a
            read-only file).

    Returns:
        ``path`` as a :class:`~pathlib.Path` (its folder created when missing).

    Raises:
        SSLVitalsError: naming the file, the reason and the fix: an input of the command, a
            folder, a read-only file, a file that is not this command's output (without
            ``force``), or a folder where no file can be created.
    """
    if kind not in KINDS:
        raise SSLVitalsError(f"unknown output kind {kind!r}; known: {', '.join(KINDS)}")
    p = Path(path)
    for given in inputs:
        if not _same_file(p, Path(given)):
            continue
        if not force:
            raise SSLVitalsError(
                f"{flag} {p} is also an input of this command ({given}): writing it would replace "
                f"that input. Choose another {flag} (or pass --force to replace the input)"
            )
        logger.warning("%s %s is an input of this command; replacing it (--force)", flag, p)
    if p.is_dir():
        raise SSLVitalsError(f"{flag} {p} is a folder; give a file name")
    if p.exists():
        mode = p.stat().st_mode
        if not mode & stat.S_IWUSR:
            raise SSLVitalsError(
                f"{flag} {p} is read-only (mode {stat.S_IMODE(mode):o}), so sslvitals {command} "
                f"will not replace it: make it writable (chmod u+w {p}) or choose another {flag}"
            )
        found = recognise(p)
        if found not in (kind, "empty") and not force:
            what = "another sslvitals output: " + KINDS[found] if found in KINDS else "not " + KINDS[kind]
            raise SSLVitalsError(
                f"{flag} {p} already exists and is {what}; sslvitals {command} replaces only its "
                f"own outputs. Choose another {flag}, or pass --force to replace the file (its "
                "content is lost)"
            )
        if found not in (kind, "empty"):
            logger.warning("%s exists and is not %s; replacing it (--force)", p, KINDS[kind])
    folder = p.parent if str(p.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".check", dir=str(folder))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SSLVitalsError(
            f"{flag} {p}: cannot create files in {folder} ({exc.strerror or exc}); choose a "
            f"writable folder for {flag}"
        ) from None
    return p


def write_atomic(path: str | os.PathLike[str], content: str | bytes | Callable[[IO], None], *,
                 binary: bool = False) -> None:
    """Write ``path`` in one step: temporary file in the same folder, then rename.

    The file keeps the permission bits of the file it replaces, or gets ``0o666 & ~umask``
    when it is new.

    Args:
        path: Destination.
        content: Text, bytes, or a function that writes into the open file object.
        binary: Open the temporary file in binary mode (implied by ``bytes`` content).

    Raises:
        OSError: when the folder cannot be written (the destination is left as it was).
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    binary = binary or isinstance(content, bytes)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except FileNotFoundError:
        mode = default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else
                                                      {"encoding": "utf-8", "newline": ""})) as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def inputs_of(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files among ``paths`` (folders stand for the files directly inside them)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(f for f in p.iterdir() if f.is_file())
        elif p.exists():
            out.append(p)
    return out
