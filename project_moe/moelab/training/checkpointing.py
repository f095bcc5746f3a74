"""The checkpoints of a run directory: checkpoint.pt (the whole training state, for --resume),
best.pt (the weights of the best validation epoch, which the test reads) and model.pt (the last
weights); and what --resume checks before anything is written. Rank 0 writes; what rank 0 reads
reaches every rank."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .. import distributed
from ..distributed import Cluster
from .exits import EXIT_BAD_INPUT, first_line
from .run_files import RunFileError, load_checkpoint, save_checkpoint
from .run_logs import check_logs


class Checkpoints:
    def __init__(self, run_dir: Path, cluster: Cluster, device: torch.device):
        self.run_dir, self.cluster, self.device = run_dir, cluster, device

    def save(self, name: str, state: dict) -> None:
        """``state`` (gathered on every rank) into the run directory's ``name``, by rank 0."""
        if self.cluster.is_writer:
            save_checkpoint(self.run_dir / name, state)

    def read(self, name: str) -> dict:
        """A checkpoint of the run directory, read by rank 0 and sent to every rank (RunFileError
        on rank 0, RefusedElsewhere on the others, when it is damaged)."""
        return distributed.load_on_writer(self.cluster, self.run_dir / name, self.device, load_checkpoint,
                                          (RunFileError,))

    def resume(self, restore: Callable[[dict], tuple[int, int]], layers: bool, kinds: bool) -> int | None:
        """--resume: checkpoint.pt into ``restore`` (which returns the restored global step and best
        epoch), then, on rank 0 before any file of the run is written, the checks that the logs
        can be cut back to that step (``layers``, ``kinds``: the run's per-layer and per-kind
        logs) and that the best weights are readable. The exit code when the run cannot be resumed."""
        path = self.run_dir / "checkpoint.pt"
        try:
            step, best_epoch = restore(self.read("checkpoint.pt"))
            distributed.on_writer(self.cluster, lambda: self._check_files(step, best_epoch, layers, kinds),
                                  (RunFileError,))
        except RunFileError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except distributed.RefusedElsewhere:
            return EXIT_BAD_INPUT      # rank 0 said why
        except (RuntimeError, KeyError, ValueError) as error:
            print(f"error: --resume: {path} does not fit this run ({first_line(error)}); "
                  "resume with the settings it was trained with, or start a new --run-name", file=sys.stderr)
            return EXIT_BAD_INPUT
        return None

    def _check_files(self, step: int, best_epoch: int, layers: bool, kinds: bool) -> None:
        check_logs(self.run_dir, step, layers=layers, kinds=kinds)
        if best_epoch > 0:
            load_checkpoint(self.run_dir / "best.pt")
