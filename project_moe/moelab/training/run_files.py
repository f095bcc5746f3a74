"""Files of a run directory: append-only CSV logs, atomic JSON and checkpoint writes.

Nothing here overwrites a finished file in place: JSON and checkpoints are written to a
temporary file and moved over the old one with ``os.replace`` (atomic on POSIX), and CSV
rows are only appended and flushed, so a crash leaves every file readable.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; give the usual ones
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse_to_replace(paths, overwrite: bool, alternative: str) -> str | None:
    """The one-line refusal to give when some of ``paths`` exist and ``overwrite`` is off
    (``alternative``: the other way out, e.g. "choose another --out"); None otherwise."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        return f"{', '.join(existing)} already exist(s); pass --overwrite to replace, or {alternative}"
    return None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(_finite(data), indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def _finite(value):
    """JSON has no NaN/inf: write them as null so every reader accepts the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class CSVLog:
    """An append-only CSV file with a fixed header; every ``write`` is flushed."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        if not self.path.exists() or self.path.stat().st_size == 0:
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def write(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in self.columns})
            handle.flush()

    def keep_through_step(self, step: int) -> None:
        """Drop rows logged after ``step`` (work a resumed run will redo), atomically."""
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [row for row in reader if row["step"] != "" and int(row["step"]) <= step]

        def write(handle):
            text = _rows_to_text(self.columns, rows)
            handle.write(text.encode())
        atomic_write_bytes(self.path, write)


class NullLog:
    """A CSVLog that writes nothing (the logs of a run's other processes)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = Path(path), columns

    def write(self, rows: list[dict[str, Any]]) -> None:
        pass

    def keep_through_step(self, step: int) -> None:
        pass


def _rows_to_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value
