"""Checkpoints of a run: the whole training state (every rank takes part, rank 0 writes), the
weights of the best and of the last epoch, and what --resume reads back before anything is written."""
from __future__ import annotations

import sys

from .. import distributed
from . import rng_state
from .exits import EXIT_BAD_INPUT, first_line
from .run_files import RunFileError, load_checkpoint, save_checkpoint
from .run_logs import check_logs


class Checkpointing:
    """The checkpoints of a Trainer (its model, optimiser, scheduler, counters, epoch sums,
    precision, run directory and processes)."""

    def state(self) -> dict:
        return {"model": distributed.model_state(self.model, self.cluster),
                "optimizer": distributed.optimizer_state(self.optimizer, self.model, self.cluster),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "best_val_r2": self.best_val_r2,
                "accum": self.accum.state_dict(), "elapsed": self.elapsed(), "rng": rng_state.capture(),
                "precision": self.precision.state_dict()}

    def load_state(self, state: dict) -> None:
        distributed.load_model_state(self.model, state["model"], self.cluster)
        distributed.load_optimizer_state(self.optimizer, self.model, state["optimizer"], self.cluster)
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.best_val_r2 = state.get("best_val_r2", float("nan"))     # checkpoints from before regression
        self.accum.load_state_dict(state["accum"])
        self.elapsed_before = state["elapsed"]
        rng_state.restore(state["rng"])
        self.precision.load_state_dict(state.get("precision", {}))

    def save(self) -> None:
        state = self.state()
        if self.cluster.is_writer:
            save_checkpoint(self.run_dir / "checkpoint.pt", state)

    def save_weights(self, name: str, extra: dict | None = None) -> None:
        weights = distributed.model_state(self.model, self.cluster)
        if self.cluster.is_writer:
            save_checkpoint(self.run_dir / name, {"model": weights, **extra} if extra is not None else weights)

    def load_best(self) -> None:
        """The weights of the best validation epoch, back into the model (for the test)."""
        best = self._read_on_writer("best.pt")
        distributed.load_model_state(self.model, best["model"], self.cluster)

    def resume(self) -> int | None:
        """Load checkpoint.pt and check, before any file is written, what --resume continues;
        the exit code when the run cannot be resumed."""
        path = self.run_dir / "checkpoint.pt"
        try:
            self.load_state(self._read_on_writer("checkpoint.pt"))
            distributed.on_writer(self.cluster, self._check_files_to_resume, (RunFileError,))
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

    def _read_on_writer(self, name: str) -> dict:
        """A checkpoint of the run directory, read by rank 0 and sent to every rank (RunFileError
        on rank 0, RefusedElsewhere on the others, when it is damaged)."""
        return distributed.load_on_writer(self.cluster, self.run_dir / name, self.device, load_checkpoint,
                                          (RunFileError,))

    def _check_files_to_resume(self) -> None:
        """Rank 0, before any file of the run is written: the logs cut back to the checkpoint's
        step, and the best weights, which the test reads at the end, must be readable."""
        check_logs(self.run_dir, self.global_step, layers=bool(self.moe_blocks), kinds=bool(self.token_kinds))
        if self.best_epoch > 0:
            load_checkpoint(self.run_dir / "best.pt")
