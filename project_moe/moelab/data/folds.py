"""How a dataset without a given test split is cut, from its seed alone: stratified K-fold, one
fold tested, a stratified share of the others held out for validation (numpy only; the tables
and the review snippets use it)."""
from __future__ import annotations

import numpy as np

from .types import DataError


def assign_folds(n: int, folds: int, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """(n,) fold of every row. With ``labels`` each class is dealt round the folds in a random
    order, so that every fold holds its share of every class (stratified K-fold)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    offset = 0
    for rows in groups:
        shuffled = rng.permutation(rows)
        # Each class continues where the last one stopped, so that fold sizes differ by at most one.
        fold_of[shuffled] = (offset + np.arange(len(rows))) % folds
        offset += len(rows)
    return fold_of


def holdout(rows: np.ndarray, fraction: float, seed: int,
            labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) of ``rows``: ``fraction`` of them held out, per class with ``labels``."""
    rng = np.random.default_rng(seed)
    groups = [rows] if labels is None else [rows[labels[rows] == c] for c in np.unique(labels[rows])]
    held = [g[rng.permutation(len(g))[:round(fraction * len(g))]] for g in groups]
    held_out = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    return np.setdiff1d(rows, held_out), held_out


def check_fold_flags(n: int, folds: int, fold: int, name: str = "the dataset") -> None:
    """Raise DataError (one line) unless fold ``fold`` of ``folds`` can cut ``n`` rows."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2 (got {folds}): one fold is the test split")
    if not 0 <= fold < folds:
        raise DataError(f"--fold must be in 0..{folds - 1} for --folds {folds} (got {fold})")
    if n < folds:
        raise DataError(f"{name} has {n} rows, fewer than --folds {folds}; lower --folds")


def fold_rows(n: int, folds: int, fold: int, val_fraction: float, seed: int, labels: np.ndarray | None = None,
              name: str = "the dataset") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row indices of fold ``fold`` of ``folds``: the folds are drawn from
    ``seed`` (stratified by ``labels`` when given), the validation rows from ``seed + 1``."""
    check_fold_flags(n, folds, fold, name)
    fold_of = assign_folds(n, folds, seed, labels)
    test_rows = np.flatnonzero(fold_of == fold)
    train_rows, val_rows = holdout(np.flatnonzero(fold_of != fold), val_fraction, seed + 1, labels)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise DataError(f"--val-fraction {val_fraction} leaves {len(train_rows)} training and {len(val_rows)} "
                        f"validation rows of {name}; choose a value that keeps both")
    return train_rows, val_rows, test_rows
