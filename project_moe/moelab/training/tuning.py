"""``--tune`` on a table: the learning rate and weight decay chosen on the validation rows.

The table's folds give the test split; the validation rows (``--val-fraction`` of the other
folds) are a fixed inner split. Every candidate of TUNE_GRID trains on the remaining training
rows exactly as the run would (same seed, batches and epochs), in a scratch directory of the run,
and is scored on the validation rows at its best epoch (so the number of epochs is chosen on them
too, as in every run). The best candidate's settings are then the run's: it trains again with
them in the run directory, and tuning.csv keeps every candidate's validation score. The test
fold is never seen before the choice is made.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import shutil
from pathlib import Path

import torch

from .config import Config
from .run_files import CSVLog, read_json, read_log
from .run_logs import METRICS_COLUMNS

# 4 x 2 candidates: 1.5 decades of peak learning rates around the default 2e-3, and decoupled weight
# decay off or at AdamW's strong end. Of 636 tabular runs tuned over (1e-3, 3e-3, 1e-2) x (0, 1e-2,
# 1e-1), 77 % chose the largest rate and 6 % the middle decay (docs/notes.md): the rates reach 3e-2
# and the decay keeps its two ends, so that the grid costs less than it did.
TUNE_GRID = {"lr": (1e-3, 3e-3, 1e-2, 3e-2), "weight_decay": (0.0, 1e-1)}
TUNING_COLUMNS = ["lr", "weight_decay", "best_val_score", "best_epoch", "val_loss_at_best", "chosen"]
SCRATCH = "tuning"


def best_candidate(scores: list[float], losses: list[float]) -> int:
    """The index of the best validation score (accuracy or R^2), ties broken by the lower
    validation loss, then by the order of the candidates: the rule of every tuned model."""
    return min(range(len(scores)), key=lambda i: (-scores[i], losses[i], i))


def candidates() -> list[dict[str, float]]:
    return [{"lr": lr, "weight_decay": wd} for lr in TUNE_GRID["lr"] for wd in TUNE_GRID["weight_decay"]]


def _score(run_dir: Path) -> tuple[float, int, float]:
    """(best validation score: accuracy or R^2, its epoch, the validation loss there) of a finished candidate."""
    summary = read_json(run_dir / "summary.json")
    score = summary["best_val_r2"] if summary.get("task") == "regression" else summary["best_val_acc"]
    epoch = summary["best_epoch"]
    rows = {int(row["epoch"]): float(row["val_loss"]) for row in read_log(run_dir / "metrics.csv", METRICS_COLUMNS)}
    return (float("-inf") if score is None else float(score)), epoch, rows.get(epoch, math.inf)


def choose(cfg: Config, run_dir: Path, dataset, device: torch.device, train) -> dict[str, float]:
    """Train every candidate (``train(cfg, run_dir, dataset, device)`` runs one and returns its exit
    code), write tuning.csv, and return the chosen settings: the best validation score, ties broken
    by the lower validation loss at the best epoch, then by the order of TUNE_GRID."""
    scratch = run_dir / SCRATCH
    rows = []
    for settings in candidates():
        candidate_dir = scratch / f"lr{settings['lr']:g}-wd{settings['weight_decay']:g}"
        candidate = dataclasses.replace(cfg, **settings, tune=False, log_every=0, step_time_rounds=0,
                                        resume=False, overwrite=False)
        candidate_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):       # one line per candidate is enough
            code = train(candidate, candidate_dir, dataset, device)
        if code != 0:
            raise RuntimeError(f"tuning candidate {candidate_dir.name} stopped with exit code {code}")
        score, epoch, val_loss = _score(candidate_dir)
        rows.append({**settings, "best_val_score": score, "best_epoch": epoch, "val_loss_at_best": val_loss})
        shutil.rmtree(candidate_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    best = best_candidate([row["best_val_score"] for row in rows], [row["val_loss_at_best"] for row in rows])
    for i, row in enumerate(rows):
        row["chosen"] = int(i == best)
    CSVLog(run_dir / "tuning.csv", TUNING_COLUMNS).write(rows)
    return {name: rows[best][name] for name in TUNE_GRID}


def chosen_before(run_dir: Path) -> dict[str, float] | None:
    """The settings a resumed run chose when it started (tuning.csv), or None."""
    path = run_dir / "tuning.csv"
    if not path.exists():
        return None
    for row in read_log(path, TUNING_COLUMNS):
        if int(row["chosen"]):
            return {name: float(row[name]) for name in TUNE_GRID}
    return None
