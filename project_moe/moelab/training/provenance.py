"""Where a run came from: the code (commit, uncommitted changes), the CPU, and paths that mean
the same on another machine.

config.json records the commit of the checkout, whether its code had uncommitted changes (and a
hash of them, so two dirty runs can be told apart), and the CPU model, because the same code
rounds differently on another CPU. Paths are written so that a log committed to results/ reads
the same on every machine: in a run directory inside the repository (results/, which is
committed), the data directory becomes the name ``<data-dir>`` (give yours with ``--data-dir`` to
run the command again), a path inside the repository becomes relative to the project folder, and
any other path stays as given; a run elsewhere records its paths as given.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..paths import PROJECT_DIR, REPO_ROOT

DATA_DIR_TOKEN = "<data-dir>"
# Set by ``sweep.py --allow-dirty`` for the runs it starts: config.json records that the run was
# asked for from a tree with uncommitted code changes.
ALLOW_DIRTY_ENV = "MOELAB_ALLOW_DIRTY"
PATH_PREFIXES = ("folder:", "tfidf:csv-text:", "csv-text:", "csv:", "text:")   # dataset specs that hold a path

# The code of the repository: a change elsewhere (results/, figures/, the report, docs) does not
# change what a run computes.
CODE_PATHS = ("project_moe/moelab", "project_moe/train.py", "project_moe/sweep.py", "requirements.txt",
              "pyproject.toml")


@dataclass(frozen=True)
class CodeState:
    commit: str | None         # None outside a git checkout
    dirty: bool                # uncommitted changes to CODE_PATHS (tracked or untracked)
    diff_sha256: str | None    # hash of those changes; None for a clean tree
    changed: tuple[str, ...] = ()

    def changed_files(self, shown: int = 3) -> str:
        """The changed files for a one-line message: the first ``shown``, then how many more."""
        more = len(self.changed) - shown
        return ", ".join(self.changed[:shown]) + (f" and {more} more" if more > 0 else "")

    def as_record(self) -> dict:
        return {"git_commit": self.commit, "git_dirty": self.dirty, "git_diff_sha256": self.diff_sha256}


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(repo: Path = REPO_ROOT, paths=CODE_PATHS) -> CodeState:
    """The commit of ``repo`` and the uncommitted changes of its code (``paths``)."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return CodeState(None, False, None)
    status = _git(repo, "status", "--porcelain", "--untracked-files=all", "--", *paths) or ""
    changed = tuple(line[3:] for line in status.splitlines() if line.strip())
    if not changed:
        return CodeState(commit.strip(), False, None)
    digest = hashlib.sha256((_git(repo, "diff", "HEAD", "--binary", "--", *paths) or "").encode())
    for line in status.splitlines():
        if line.startswith("??"):        # untracked files are not in the diff: hash their contents
            path = Path(repo) / line[3:]
            digest.update(line[3:].encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return CodeState(commit.strip(), True, digest.hexdigest(), changed)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_family(model: str | None) -> str | None:
    """The vendor family of a CPU model name ("AMD EPYC 7B13" -> "amd"), which decides whether a
    run can be reproduced to the last digit; None when unknown (runs that did not record it)."""
    if not model:
        return None
    lower = model.lower()
    for family in ("amd", "intel", "apple", "arm"):
        if family in lower:
            return family
    return lower


class PortablePaths:
    """Rewrites the paths of a run's records (``portable``) and back (``local``); with ``enabled``
    off, ``portable`` keeps every path as given."""

    def __init__(self, data_dir: str | os.PathLike | None, project: Path = PROJECT_DIR, repo: Path = REPO_ROOT,
                 enabled: bool = True):
        self.data_dir = str(Path(data_dir).resolve()) if data_dir else None
        self.project, self.repo = Path(project).resolve(), Path(repo).resolve()
        self.enabled = enabled

    @classmethod
    def for_run(cls, run_dir: Path, data_dir, project: Path = PROJECT_DIR, repo: Path = REPO_ROOT) -> "PortablePaths":
        """Portable paths for a run directory inside the repository (whose logs may be committed,
        as results/ are); a run elsewhere keeps its paths as given, so that its own commands
        (analysis.py, sample.py) find its data without --data-dir."""
        inside = Path(repo).resolve() in Path(run_dir).resolve().parents
        return cls(data_dir, project, repo, enabled=inside)

    def portable(self, text):
        """``text`` with the data directory named and repository paths relative to the project;
        a dataset spec (folder:PATH, csv:PATH, ...) keeps its kind."""
        if not isinstance(text, str) or not self.enabled:
            return text
        for prefix in PATH_PREFIXES:
            if text.startswith(prefix):
                return prefix + self._path(text[len(prefix):])
        return self._path(text)

    def _path(self, text: str) -> str:
        if not (text.startswith(os.sep) or os.sep in text or text.startswith(".")):
            return text                     # a plain value (a number, a name), not a path
        path = Path(text).resolve()
        if self.data_dir:
            data = Path(self.data_dir)
            if path == data or data in path.parents:
                return DATA_DIR_TOKEN + ("/" + path.relative_to(data).as_posix() if path != data else "")
        if not text.startswith(os.sep):
            return text
        if path != self.repo and self.repo not in path.parents:
            return text                     # outside the repository: as given
        return os.path.relpath(path, self.project)

    def portable_sentence(self, text: str) -> str:
        """A free text (the dataset's source) with the data directory named."""
        if self.enabled and self.data_dir and isinstance(text, str):
            return text.replace(self.data_dir, DATA_DIR_TOKEN)
        return text

    def local(self, text):
        """A recorded value made usable here: ``<data-dir>`` becomes this machine's data directory."""
        if isinstance(text, str) and DATA_DIR_TOKEN in text:
            if self.data_dir is None:
                raise ValueError(f"{text!r} names the data directory of the machine that ran it: give --data-dir")
            return text.replace(DATA_DIR_TOKEN, self.data_dir)
        return text
