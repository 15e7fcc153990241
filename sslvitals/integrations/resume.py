"""Keep a run's records right when training restarts from a checkpoint (no toolkit import).

A pretraining run is stopped and restarted from its last checkpoint many times. The
integrations call :meth:`RunRecords.restart_at` once, when training (re)starts, with the
position the checkpoint restored (fairseq: the number of updates; ESPnet: the epoch; 0 for a
fresh start). From then on the JSON-lines file holds exactly one record per measured
validation of the training the checkpoints describe:

* records of this run *after* that position describe training that was lost (the process died
  after the measurement but before the checkpoint was written, or the run restarted from an
  older checkpoint or from scratch); the restarted run repeats that training and measures it
  again, so they are moved to ``<records>.discarded`` (kept, never deleted);
* an unterminated last line (a write cut short) is moved there too, so the next record starts
  on a line of its own;
* a validation at a position already recorded (a toolkit validating the checkpoint it resumed
  from once more) writes no second record: :meth:`RunRecords.recorded` says so.

:class:`ValidationHistory` keeps every validation of a fairseq run (measured or not) beside its
checkpoints, so that ``every_n_validations`` measures the same validations after a restart as
an uninterrupted run would (the N-th validation is the N-th of the run, not of the process).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunRecords", "ValidationHistory", "HistoryEntry", "DISCARDED_SUFFIX"]

logger = logging.getLogger(__name__)

#: Suffix of the file that receives records moved out at a restart.
DISCARDED_SUFFIX = ".discarded"


def _rewrite(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (a crash leaves the old or the new file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class RunRecords:
    """The records one run appends to a JSON-lines file, made consistent with its checkpoints.

    Args:
        path: The JSON-lines file (it may be shared with other runs; only records whose ``run``
            is ``run`` are touched).
        run: The run's name, as written in its records.
        key: The record field that orders the run: ``"update"`` (fairseq) or ``"epoch"``
            (ESPnet).
    """

    def __init__(self, path: str | os.PathLike[str], run: str, key: str) -> None:
        if key not in ("update", "epoch"):
            raise ValueError(f"key must be 'update' or 'epoch', not {key!r}")
        self.path = Path(path)
        self.run = run
        self.key = key
        self._recorded: set[int] = set()
        self.restarted_at: int | None = None

    @property
    def discarded_path(self) -> Path:
        """Where records moved out at a restart go."""
        return self.path.with_name(self.path.name + DISCARDED_SUFFIX)

    def _position(self, line: str) -> tuple[bool, int | None]:
        """(is a record of this run, its position) for one line; (False, None) otherwise."""
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            return False, None
        if not isinstance(rec, dict) or "metrics" not in rec:
            return False, None
        if rec.get("run") not in (self.run, None):
            return False, None
        value = rec.get(self.key)
        try:
            return True, None if value is None else int(value)
        except (TypeError, ValueError):
            return True, None

    def restart_at(self, position: int) -> int:
        """Make the file consistent with training that (re)starts at ``position``.

        Moves this run's records after ``position``, and an unterminated last line, to
        :attr:`discarded_path`, and remembers the positions of the records kept.

        Args:
            position: The restored number of updates (fairseq) or epoch (ESPnet); 0 for a run
                that starts from scratch.

        Returns:
            The number of lines moved out.
        """
        self.restarted_at = int(position)
        self._recorded = set()
        if not self.path.is_file():
            return 0
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        kept: list[str] = []
        moved: list[str] = []
        for i, line in enumerate(lines):
            if i == len(lines) - 1 and not line.endswith("\n"):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    moved.append(line + "\n")  # a write cut short
                    continue
                line += "\n"  # complete but for its newline
            ours, pos = self._position(line)
            if ours and pos is not None and pos > position:
                moved.append(line)
                continue
            if ours and pos is not None:
                self._recorded.add(pos)
            kept.append(line)
        if not text or (not moved and text.endswith("\n")):
            return 0
        if moved:
            _append(self.discarded_path, "".join(moved))
        _rewrite(self.path, "".join(kept))
        if moved:
            logger.warning(
                "sslvitals: run %s restarts at %s %d; %d line(s) of %s describe training after "
                "that point that the run repeats (or a write cut short) and were moved to %s",
                self.run, self.key, position, len(moved), self.path, self.discarded_path)
        return len(moved)

    def recorded(self, position: int | None) -> bool:
        """Whether this run already has a record at ``position`` (kept at the restart or noted
        since)."""
        return position is not None and int(position) in self._recorded

    def note(self, position: int | None) -> None:
        """Remember that a record at ``position`` was written."""
        if position is not None:
            self._recorded.add(int(position))


@dataclass
class HistoryEntry:
    """One validation of a run.

    Attributes:
        update: Number of updates at the validation.
        epoch: The epoch it happened in.
        stop: True for a validation that only happened because the run stopped there
            (``max_update`` reached off the validation grid): an uninterrupted longer run does
            not make it, so it does not count in the schedule.
    """

    update: int
    epoch: int | None
    stop: bool = False

    def line(self) -> str:
        """The entry as a line of the history file."""
        epoch = "-" if self.epoch is None else str(self.epoch)
        return f"{self.update} {epoch}{' stop' if self.stop else ''}\n"

    @classmethod
    def parse(cls, line: str) -> "HistoryEntry | None":
        """Read one line of the history file (None for comments and damaged lines)."""
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            return None
        try:
            update = int(parts[0])
            epoch = None if len(parts) < 2 or parts[1] == "-" else int(parts[1])
        except ValueError:
            return None
        return cls(update, epoch, len(parts) > 2 and parts[2] == "stop")


_HEADER = ("# sslvitals: every validation of this fairseq run (update epoch [stop]); read when "
           "the run resumes, so every_n_validations keeps its schedule\n")


class ValidationHistory:
    """Every validation of a run, measured or not, kept in a small text file.

    The index of a validation (0 for the first of the run) is the number of validations at
    earlier updates, whatever process made them; ``every_n_validations`` measures the
    validations whose index is a multiple of N.

    Args:
        path: The history file (beside the checkpoints), or None to keep it in memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self.entries: list[HistoryEntry] = []
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                entry = HistoryEntry.parse(line)
                if entry is not None:
                    self.entries.append(entry)

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _rewrite(self.path, _HEADER + "".join(e.line() for e in self.entries))

    def restart_at(self, update: int, epoch: int | None, validate_interval: int = 1) -> None:
        """Forget validations after ``update`` (training the run repeats) and settle the
        validation the run stopped at.

        A stop validation at ``update`` was also an end-of-epoch validation of an
        uninterrupted run when the checkpoint ended its epoch (the run resumes in a later
        epoch) and that epoch is validated (``epoch % validate_interval == 0``); it then counts.

        Args:
            update: The restored number of updates (0 for a fresh start).
            epoch: The epoch training resumes in.
            validate_interval: fairseq's ``dataset.validate_interval`` (epochs).
        """
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.update <= update]
        changed = len(self.entries) != before
        for e in self.entries:
            if (e.stop and e.update == update and epoch is not None and e.epoch is not None
                    and epoch > e.epoch and validate_interval > 0
                    and e.epoch % validate_interval == 0):
                e.stop = False
                changed = True
        if changed:
            self._save()

    def index(self, update: int) -> int:
        """0-based index of a validation at ``update``: counted validations at earlier updates."""
        return len({e.update for e in self.entries if e.update < update and not e.stop})

    def add(self, update: int, epoch: int | None, stop: bool = False) -> None:
        """Record a validation (a second one at the same update is not recorded again)."""
        if any(e.update == update for e in self.entries):
            return
        entry = HistoryEntry(int(update), None if epoch is None else int(epoch), bool(stop))
        self.entries.append(entry)
        if self.path is None:
            return
        if not self.path.is_file():
            self._save()
            return
        _append(self.path, entry.line())
