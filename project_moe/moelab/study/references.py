"""Reference models that a tabular practitioner tries first, from scikit-learn, fitted on the same
folds, rows and features as the mixtures of the tabular grid (not MoE: marked as ``reference``).

  logistic  LogisticRegression (L2, C = 1), classification
  ridge     Ridge (alpha = 1), regression
  hgb       HistGradientBoostingClassifier / Regressor with scikit-learn's defaults

Each is fitted on the training rows of a fold (the validation rows are left out, as the
mixtures train without them) and scored on its test rows. The run directory it writes has the
config.json, summary.json and metrics.csv of a train.py run, so that the sweep's tables read it
like any other run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from .. import data
from ..data.tables import TableDataset, TableOptions
from ..training.config import Config
from ..training.run_files import CSVLog, write_json
from ..training.run_logs import METRICS_COLUMNS

REFERENCE_MODELS = ("logistic", "ridge", "hgb")


def make_model(name: str, task: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    if name == "hgb":
        return (HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor)(
            random_state=seed)
    if name == "logistic" and task == "classification":
        return LogisticRegression(max_iter=5000)
    if name == "ridge" and task == "regression":
        return Ridge(alpha=1.0)
    raise ValueError(f"reference model {name} does not fit a {task}")


def regression_scores(target: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R^2 (against the split's own mean), as train.py reports them."""
    error = predicted - target
    spread = float(((target - target.mean()) ** 2).sum())
    return {"rmse": math.sqrt(float((error ** 2).mean())), "mae": float(np.abs(error).mean()),
            "r2": 1 - float((error ** 2).sum()) / spread if spread > 0 else math.nan}


def fit_and_score(name: str, dataset: TableDataset, seed: int) -> dict[str, float]:
    """Validation and test scores of one reference model on one fold."""
    model = make_model(name, dataset.task, seed)
    x = {split: getattr(dataset, split).features.numpy() for split in ("train", "val", "test")}
    if dataset.task == "classification":
        y = {split: getattr(dataset, split).targets.numpy() for split in x}
        model.fit(x["train"], y["train"])
        return {f"{split}_acc": float((model.predict(x[split]) == y[split]).mean()) for split in ("val", "test")}
    y = {split: dataset.raw_targets[getattr(dataset, split).rows.numpy()] for split in x}
    model.fit(x["train"], y["train"])
    return {f"{split}_{metric}": value for split in ("val", "test")
            for metric, value in regression_scores(y[split], model.predict(x[split])).items()}


def write_reference_run(run_dir: Path, name: str, dataset_name: str, seed: int, fold: int, folds: int,
                        val_fraction: float) -> None:
    """Fit reference ``name`` on one fold and write its run directory."""
    begin = time.perf_counter()
    dataset = data.load_dataset(dataset_name, Path("."), val_fraction=val_fraction, seed=seed,
                                table=TableOptions(folds=folds, fold=fold))
    scores = fit_and_score(name, dataset, seed)
    seconds = time.perf_counter() - begin
    regression = dataset.task == "regression"
    config = dataclasses.replace(Config(), dataset=dataset_name, seed=seed, fold=fold, folds=folds,
                                 val_fraction=val_fraction, model="reference", gating=name, experts=0, epochs=0)
    run_dir.mkdir(parents=True, exist_ok=True)
    estimator = type(make_model(name, dataset.task, seed)).__name__
    write_json(run_dir / "config.json", {"config": dataclasses.asdict(config),
                                         "dataset": {"source": dataset.source, "task": dataset.task,
                                                     "features": dataset.feature_names},
                                         "reference": f"scikit-learn {estimator}"})
    nan = math.nan
    row = {column: nan for column in METRICS_COLUMNS}
    row.update({"epoch": 1, "step": 0, "val_acc": scores.get("val_acc", nan), "val_rmse": scores.get("val_rmse", nan),
                "val_mae": scores.get("val_mae", nan), "val_r2": scores.get("val_r2", nan), "wall_time_s": seconds})
    CSVLog(run_dir / "metrics.csv", METRICS_COLUMNS).write([row])
    summary = {"status": "completed", "task": dataset.task, "test_loss": None,
               "test_acc": None if regression else scores["test_acc"],
               "best_val_acc": None if regression else scores["val_acc"],
               "params_total": None, "params_active": None, "flops_per_sample": None, "total_time_s": seconds}
    if regression:
        summary.update({"best_val_r2": scores["val_r2"],
                        **{f"test_{m}": scores[f"test_{m}"] for m in ("rmse", "mae", "r2")}})
    write_json(run_dir / "summary.json", summary)
