"""Files of a run directory: append-only CSV logs, atomic JSON and checkpoint writes.

Nothing here overwrites a finished file in place: JSON and checkpoints are written to a
temporary file and moved over the old one with ``os.replace`` (atomic on POSIX), and CSV
rows are only appended and flushed, so a crash leaves every file readable.

The readers refuse a file that is missing or damaged (truncated, edited, replaced) with
RunFileError, whose message is one line: the file, what is wrong, what to do.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

RESTORE_OR_RESTART = "restore it from a copy, or start the run again with --overwrite or another --run-name"


class RunFileError(ValueError):
    """A file of a run directory that cannot be read as what it should be."""

    def __init__(self, path, problem: str, fix: str = RESTORE_OR_RESTART):
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}; {fix}")


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


def read_json(path: Path, fix: str = RESTORE_OR_RESTART) -> dict[str, Any]:
    """A JSON object (config.json, summary.json); RunFileError if it is missing or damaged."""
    text = _read_text(path, fix)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if not text.strip():
            problem = "empty"
        elif error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
            problem = "truncated JSON (it ends inside the object)"
        else:
            problem = f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        raise RunFileError(path, problem, fix) from None
    if not isinstance(value, dict):
        raise RunFileError(path, f"not a JSON object (it holds a {type(value).__name__})", fix)
    return value


def read_config(path: Path, fix: str = RESTORE_OR_RESTART) -> dict[str, Any]:
    """The settings of a run: the "config" object of its config.json."""
    config = read_json(path, fix).get("config")
    if not isinstance(config, dict):
        raise RunFileError(path, 'no "config" object (not a config.json written by train.py)', fix)
    return config


def load_checkpoint(path: Path, map_location="cpu", fix: str = RESTORE_OR_RESTART) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of checkpoint.pt, best.pt or model.pt (a dict);
    RunFileError if it is missing or damaged."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunFileError(path, "missing", fix) from None
    except OSError as error:
        raise RunFileError(path, f"unreadable ({error.strerror or error})", fix) from None
    except torch.cuda.OutOfMemoryError:
        raise
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError, IndexError, TypeError,
            AttributeError) as error:
        problem = "empty" if path.stat().st_size == 0 else "truncated or damaged"
        raise RunFileError(path, f"not a readable checkpoint: {problem} ({type(error).__name__} in torch.load)",
                           fix) from None
    if not isinstance(state, dict):
        raise RunFileError(path, f"not a checkpoint (it holds a {type(state).__name__}, not a dict)", fix)
    return state


def read_log(path: Path, columns: list[str] | None = None, through_step: int | None = None,
             fix: str = RESTORE_OR_RESTART) -> list[dict[str, str]]:
    """The rows of a CSV log as dicts, or RunFileError if the file is missing or damaged: empty,
    a header with a column the log does not have (``columns``: those it may have; older runs
    have fewer) or, when it should have one, without a step column, a row whose fields do
    not match the header, a step that is not a whole number, a last row cut off (the file does
    not end with a line end). A cut-off last row is left out, not refused, when its step
    (followed by more fields, so read whole) is after ``through_step``: a process killed while
    appending it, the work a resumed run does again. Blank lines are skipped."""
    text = _read_text(path, fix)
    if not text.strip():
        raise RunFileError(path, "empty (no header row)", fix)
    cut = not text.endswith(("\n", "\r"))
    reader = csv.reader(io.StringIO(text, newline=""))
    records = [(reader.line_num, row) for row in reader]
    (_, header), body = records[0], records[1:]
    if cut and not body:
        raise RunFileError(path, "truncated inside its header row", fix)
    unknown = [c for c in header if columns is not None and c not in columns]
    if unknown or len(set(header)) < len(header):
        what = f"unknown column {unknown[0]!r}" if unknown else "a repeated column"
        raise RunFileError(path, f"its header has {what} (damaged, or the header of another file)", fix)
    needs_step = "step" in columns if columns is not None else False
    if needs_step and "step" not in header:
        raise RunFileError(path, "its header has no step column (damaged, or the header of another file)", fix)
    step_at = header.index("step") if "step" in header else None
    rows = []
    for i, (line, row) in enumerate(records[1:], 1):
        if not row:
            continue
        if cut and i == len(body):
            step = row[step_at] if step_at is not None and len(row) > step_at + 1 else None
            if through_step is not None and _whole(step) and int(step) > through_step:
                break
            raise RunFileError(path, f"truncated in the middle of line {line}", fix)
        if len(row) != len(header):
            raise RunFileError(path, f"line {line} has {len(row)} fields where the header has {len(header)}", fix)
        if step_at is not None and not _whole(row[step_at]):
            raise RunFileError(path, f"line {line}: step {row[step_at]!r} is not a whole number", fix)
        rows.append(dict(zip(header, row)))
    return rows


def _whole(text: str | None) -> bool:
    try:
        int(text)
    except (TypeError, ValueError):
        return False
    return True


def _read_text(path: Path, fix: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunFileError(path, "missing", fix) from None
    except UnicodeDecodeError:
        raise RunFileError(path, "not UTF-8 text (damaged)", fix) from None
    except OSError as error:
        raise RunFileError(path, f"unreadable ({error.strerror or error})", fix) from None


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
        """Drop rows logged after ``step`` (work a resumed run will redo), atomically; a damaged
        file is refused (RunFileError) and left as it is."""
        rows = [row for row in read_log(self.path, self.columns, step) if int(row["step"]) <= step]

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
