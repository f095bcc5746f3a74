"""Tabular datasets: the UCI tables scikit-learn ships, or any CSV file, as standardised float
feature matrices with class labels (classification) or real targets (regression).

Legend: N rows, F features after one-hot encoding, K classes (or target bins), B batch.

Protocol for small data (every split is fixed by ``seed`` and ``fold`` only):
  - the rows are cut into ``folds`` folds (stratified by class for classification, at random for
    regression); fold ``fold`` is the test split, the others train;
  - a share ``val_fraction`` of the training folds (stratified too) is held out for validation,
    which chooses the epoch whose weights are tested (early stopping);
  - every statistic of the preprocessing comes from the training rows alone: the mean and
    standard deviation of each numeric column, the categories of each string column (one-hot;
    a category first seen in val or test gets all zeros), the medians and most frequent
    values of ``--impute median``, the target's mean and standard deviation (regression
    targets are trained standardised) and the quantile bins of the target, which take the
    place of classes in the routing tables of a regression.

Sources:
  iris, wine, breast-cancer (classification), diabetes (regression): the copies bundled inside
      scikit-learn (``sklearn.datasets.load_*``), read with no network.
  csv:PATH with --target COLUMN: any CSV file with a header row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .folds import assign_folds, check_fold_flags, fold_rows  # noqa: F401 (tables.assign_folds)
from .types import DataError

BUILTIN_TABLES = {     # name: (scikit-learn loader, task)
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "breast-cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}
TASK_CHOICES = ("auto", "classification", "regression")
IMPUTE_CHOICES = ("none", "median")
MAX_INTEGER_CLASSES = 20   # an integer target with at most this many values is a class label


def is_table_dataset(name: str) -> bool:
    """A table of features: the bundled tables, csv:PATH, and the TF-IDF table of labelled texts
    (tfidf:..., text_features.py)."""
    return name in BUILTIN_TABLES or name.startswith(("csv:", "tfidf:"))


@dataclass(frozen=True)
class TableOptions:
    """The flags that choose how a table becomes a dataset."""

    target: str | None = None     # csv: the target column
    task: str = "auto"
    folds: int = 5
    fold: int = 0
    impute: str = "none"
    target_bins: int = 5


@dataclass(frozen=True)
class TableSplit:
    features: torch.Tensor   # (N, F) float32, standardised with the training statistics
    targets: torch.Tensor    # (N,) int64 classes, or float32 standardised regression targets
    rows: torch.Tensor       # (N,) int64: each row's index in the source table

    def __post_init__(self):
        if self.features.dtype != torch.float32 or self.features.dim() != 2:
            raise ValueError(f"TableSplit.features must be float32 (N, F), got {self.features.dtype} "
                             f"{tuple(self.features.shape)}")
        if self.targets.shape != self.features.shape[:1] or self.rows.shape != self.features.shape[:1]:
            raise ValueError("TableSplit.targets and rows must have one entry per row of features")

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class TableDataset:
    name: str
    train: TableSplit
    val: TableSplit
    test: TableSplit
    task: str                        # classification | regression
    classes: list[str]               # class names, or the target bins of a regression
    feature_names: list[str]         # after one-hot encoding ("colour=red")
    source: str
    folds: int
    fold: int
    target_name: str
    target_mean: float = 0.0         # regression: y = target_mean + target_std * standardised y
    target_std: float = 1.0
    bin_edges: list[float] = field(default_factory=list)   # regression: inner bin edges, standardised units
    pca_mean: np.ndarray | None = None         # (F,) of the training features
    pca_components: np.ndarray | None = None   # (2, F) their two principal directions
    raw_targets: np.ndarray | None = None      # regression: (rows of the table,) targets as read, float64
    augment: bool = False

    @property
    def in_shape(self) -> tuple[int]:
        return (self.train.features.shape[1],)

    @property
    def num_classes(self) -> int:
        """Groups of the routing tables: classes, or target bins of a regression."""
        return len(self.classes)

    def to_original(self, y: np.ndarray) -> np.ndarray:
        """Standardised regression targets (or predictions) back in the units of the table."""
        return self.target_mean + self.target_std * np.asarray(y)


# ----------------------------------------------------------------------------- reading a table

def check_table_spec(name: str) -> None:
    if name in BUILTIN_TABLES:
        return
    if name.startswith("tfidf:"):
        from .text_features import check_text_features_spec   # it builds on this module's TableDataset
        return check_text_features_spec(name)
    path = name[len("csv:"):]
    if not path:
        raise DataError("--dataset csv: needs a path, e.g. --dataset csv:/data/winequality-red.csv --target quality")
    if not Path(path).expanduser().is_file():
        raise DataError(f"--dataset {name}: no such file")


def read_table(name: str, target: str | None) -> tuple[pd.DataFrame, str, str | None, str]:
    """(frame, target column, task the source fixes or None, source line)."""
    if name in BUILTIN_TABLES:
        if target is not None:
            raise DataError(f"--target names the column of a CSV file; --dataset {name} has its own target: "
                            "drop --target")
        loader_name, task = BUILTIN_TABLES[name]
        try:
            import sklearn
            from sklearn import datasets
        except ImportError as err:
            raise DataError(f"--dataset {name} reads the copy bundled with scikit-learn, which is not installed: "
                            "pip install scikit-learn") from err
        options = {"scaled": False} if name == "diabetes" else {}
        bunch = getattr(datasets, loader_name)(as_frame=True, **options)
        frame = bunch.frame
        target_column = bunch.target.name if hasattr(bunch.target, "name") else "target"
        if task == "classification":   # class names instead of 0..K-1
            frame[target_column] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        source = f"scikit-learn {sklearn.__version__} bundled copy, sklearn.datasets.{loader_name}"
        return frame, target_column, task, source
    path = Path(name[len("csv:"):]).expanduser()
    if target is None:
        raise DataError(f"--dataset {name} needs --target COLUMN, the column to predict")
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read it as CSV ({' '.join(str(err).split())[:160]}); check the file") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if target not in frame.columns:
        raise DataError(f"--target {target}: {path.name} has no such column (its columns: "
                        f"{', '.join(frame.columns[:12])}{', ...' if len(frame.columns) > 12 else ''})")
    return frame, target, None, f"CSV file {path.absolute()}"


def infer_task(values: pd.Series) -> str:
    """Classification for strings, booleans and integers with few distinct values; regression
    for other numbers."""
    if not _numeric(values):
        return "classification"
    numbers = values.to_numpy(dtype=float)
    whole = np.all(np.mod(numbers, 1) == 0)
    return "classification" if whole and len(np.unique(numbers)) <= MAX_INTEGER_CLASSES else "regression"


# ----------------------------------------------------------------------------- preprocessing

@dataclass
class Preprocessing:
    """What is learnt from the training rows: imputation values, scaling, categories."""

    numeric: list[str]
    categorical: list[str]
    fill: dict[str, object]
    mean: dict[str, float]
    std: dict[str, float]
    categories: dict[str, list[str]]

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{c}={v}" for c in self.categorical for v in self.categories[c]]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, F) float32: numeric columns standardised, categories one-hot."""
        parts = []
        for column in self.numeric:
            values = frame[column].fillna(self.fill[column]) if column in self.fill else frame[column]
            parts.append(((values.to_numpy(dtype=np.float64) - self.mean[column]) / self.std[column])[:, None])
        for column in self.categorical:
            values = frame[column].fillna(self.fill[column]) if column in self.fill else frame[column]
            text = values.astype(str).to_numpy()
            parts.append((text[:, None] == np.asarray(self.categories[column])[None, :]).astype(np.float64))
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(frame), 0), np.float32)


def fit_preprocessing(train: pd.DataFrame, impute: str) -> Preprocessing:
    """Learn the preprocessing from the training rows only."""
    numeric = [c for c in train.columns if _numeric(train[c])]
    categorical = [c for c in train.columns if c not in numeric]
    fill = {}
    if impute == "median":
        fill = {c: float(train[c].median()) for c in numeric}
        fill.update({c: train[c].mode(dropna=True).iloc[0] if train[c].notna().any() else "missing"
                     for c in categorical})
    mean, std = {}, {}
    for column in numeric:
        values = train[column].fillna(fill[column]) if column in fill else train[column]
        values = values.to_numpy(dtype=np.float64)
        mean[column] = float(values.mean())
        spread = float(values.std())
        std[column] = spread if spread > 0 else 1.0      # constant in the training rows: only centred
    categories = {}
    for column in categorical:
        values = train[column].fillna(fill[column]) if column in fill else train[column]
        categories[column] = sorted(values.astype(str).unique())
    return Preprocessing(numeric, categorical, fill, mean, std, categories)


def _check_missing(frame: pd.DataFrame, target: str, impute: str) -> None:
    missing_target = int(frame[target].isna().sum())
    if missing_target:
        raise DataError(f"--target {target}: {missing_target} rows have no target value; remove them from the file "
                        "(a target is never imputed)")
    if impute != "none":
        return
    counts = frame.drop(columns=[target]).isna().sum()
    if counts.any():
        column = counts[counts > 0].index[0]
        raise DataError(f"column {column!r} has {int(counts[column])} missing values; fill them in the file, or pass "
                        "--impute median (training medians, and the most frequent category of string columns)")


def _principal_plane(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and the two leading principal directions (2, F) of the training features."""
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    components = np.zeros((2, features.shape[1]), dtype=np.float64)
    components[:min(2, len(vt))] = vt[:2]
    return mean, components


# ----------------------------------------------------------------------------- the dataset

def load_table_dataset(name: str, options: TableOptions, val_fraction: float, seed: int) -> TableDataset:
    check_table_spec(name)
    frame, target, fixed_task, source = read_table(name, options.target)
    task = options.task if options.task != "auto" else (fixed_task or infer_task(frame[target].dropna()))
    check_fold_flags(len(frame), options.folds, options.fold, name)
    _check_missing(frame, target, options.impute)
    features = frame.drop(columns=[target])
    if not any(_numeric(features[c]) for c in features.columns):
        raise DataError(f"{name} has no numeric feature column besides --target {target}; a table needs at least one")
    values = frame[target]
    if task == "classification":
        classes = _class_names(values)
        if len(classes) < 2:
            raise DataError(f"--target {target} has one value ({classes[0]}) in all rows; a classifier needs two "
                            "classes or more")
        labels = np.searchsorted(np.asarray(classes), values.astype(str).to_numpy()) if not _numeric(values) else \
            np.searchsorted(np.unique(values.to_numpy()), values.to_numpy())
    else:
        if not _numeric(values):
            raise DataError(f"--target {target} is not numeric (e.g. {values.iloc[0]!r}); a regression needs numbers: "
                            "use --task classification, or another column")
        labels = None
    train_rows, val_rows, test_rows = fold_rows(len(frame), options.folds, options.fold, val_fraction, seed, labels,
                                                name)
    prep = fit_preprocessing(features.iloc[train_rows], options.impute)
    matrix = prep.transform(features)                                           # (N, F)
    if task == "classification":
        y = torch.as_tensor(labels, dtype=torch.int64)
        mean, std, edges, groups = 0.0, 1.0, [], classes
    else:
        raw = values.to_numpy(dtype=np.float64)
        mean, std, edges, groups = target_scaling(raw[train_rows], raw, options.target_bins)
        y = torch.as_tensor((raw - mean) / std, dtype=torch.float32)

    def split(rows: np.ndarray) -> TableSplit:
        index = torch.as_tensor(rows, dtype=torch.int64)
        return TableSplit(torch.from_numpy(matrix[rows]), y[index], index)

    pca_mean, pca_components = _principal_plane(matrix[train_rows].astype(np.float64))
    return TableDataset(name=name, train=split(train_rows), val=split(val_rows), test=split(test_rows), task=task,
                        classes=groups, feature_names=prep.feature_names, source=source, folds=options.folds,
                        fold=options.fold, target_name=target, target_mean=mean, target_std=std, bin_edges=edges,
                        pca_mean=pca_mean, pca_components=pca_components,
                        raw_targets=raw if task == "regression" else None)


def target_scaling(train: np.ndarray, every: np.ndarray, bins: int) -> tuple[float, float, list[float], list[str]]:
    """A regression target's standardisation and routing-table groups, from its training values
    ``train`` (every value, ``every``, only bounds the first and last group): the mean and
    deviation (1 when the values are constant), the inner edges of ``bins`` quantile bins of the
    training values in standardised units, and each bin's name in the target's units."""
    mean, std = float(train.mean()), float(train.std()) or 1.0
    cuts = np.unique(np.quantile(train, np.linspace(0, 1, bins + 1)[1:-1]))
    bounds = [every.min(), *cuts, every.max()]
    groups = [f"[{lo:.4g}, {hi:.4g})" for lo, hi in zip(bounds[:-1], bounds[1:])]
    return mean, std, ((cuts - mean) / std).tolist(), groups


def _numeric(values: pd.Series) -> bool:
    """A column of numbers (booleans are categories)."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _class_names(values: pd.Series) -> list[str]:
    """Sorted class names: numerically for numbers, as text otherwise."""
    if _numeric(values):
        return [f"{v:g}" if isinstance(v, float) else str(v) for v in np.unique(values.to_numpy())]
    return sorted(values.astype(str).unique())


def target_bins(y: torch.Tensor, edges: list[float]) -> torch.Tensor:
    """(N,) int64 bin of every standardised target, 0..len(edges)."""
    return torch.bucketize(y, torch.as_tensor(edges, dtype=y.dtype, device=y.device), right=True)

