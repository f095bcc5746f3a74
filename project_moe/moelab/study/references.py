"""Reference models that a tabular practitioner tries first, from scikit-learn, fitted on the same
folds, rows and features as the mixtures of the tabular grid (not MoE: marked as ``reference``).

  logistic  LogisticRegression (L2, C = 1), classification
  ridge     Ridge (alpha = 1), regression
  hgb       HistGradientBoostingClassifier / Regressor with scikit-learn's defaults

Each is fitted on the training rows of a fold (the validation rows are left out, as the
mixtures train without them) and scored on its test rows. With ``tune``, as train.py --tune
does for the networks, each candidate of TUNE_GRID is fitted on those training rows and the one
with the best validation score (ties: the lower validation loss) is scored on the test rows;
the validation rows are the same fixed inner split. The run directory it writes has the
config.json, summary.json and metrics.csv of a train.py run, so that the sweep's tables read it
like any other run.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import time
from pathlib import Path

import numpy as np

from .. import data
from ..data.tables import TableDataset, TableOptions
from ..training.config import Config, config_record
from ..training.provenance import code_state, cpu_model
from ..training.run_files import CSVLog, write_json
from ..training.run_logs import METRICS_COLUMNS
from ..training.tuning import best_candidate

REFERENCE_MODELS = ("logistic", "ridge", "hgb")


# The candidates of a tuned reference: the regularisation strength over four decades; for gradient
# boosting, the learning rate and the size of its trees.
TUNE_GRID: dict[str, list[dict]] = {
    "logistic": [{"C": c} for c in (0.01, 0.1, 1.0, 10.0, 100.0)],
    "ridge": [{"alpha": a} for a in (0.01, 0.1, 1.0, 10.0, 100.0)],
    "hgb": [{"learning_rate": lr, "max_leaf_nodes": leaves} for lr in (0.03, 0.1, 0.3) for leaves in (7, 15, 31)],
}


def make_model(name: str, task: str, seed: int, **params):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    if name == "hgb":
        return (HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor)(
            random_state=seed, **params)
    if name == "logistic" and task == "classification":
        return LogisticRegression(max_iter=5000, **params)
    if name == "ridge" and task == "regression":
        return Ridge(**{"alpha": 1.0, **params})
    raise ValueError(f"reference model {name} does not fit a {task}")


def regression_scores(target: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R^2 (against the split's own mean), as train.py reports them."""
    error = predicted - target
    spread = float(((target - target.mean()) ** 2).sum())
    return {"rmse": math.sqrt(float((error ** 2).mean())), "mae": float(np.abs(error).mean()),
            "r2": 1 - float((error ** 2).sum()) / spread if spread > 0 else math.nan}


def fit_and_score(name: str, dataset: TableDataset, seed: int, **params) -> dict[str, float]:
    """Validation and test scores of one reference model on one fold, and its validation loss
    (log-loss of a classification, squared error of a regression) to break ties when tuning."""
    model = make_model(name, dataset.task, seed, **params)
    x = {split: getattr(dataset, split).features.numpy() for split in ("train", "val", "test")}
    if dataset.task == "classification":
        y = {split: getattr(dataset, split).targets.numpy() for split in x}
        model.fit(x["train"], y["train"])
        proba = model.predict_proba(x["val"])
        picked = proba[np.arange(len(y["val"])), np.searchsorted(model.classes_, y["val"])] \
            if np.isin(y["val"], model.classes_).all() else np.zeros(len(y["val"]))
        return {**{f"{split}_acc": float((model.predict(x[split]) == y[split]).mean()) for split in ("val", "test")},
                "val_loss": float(-np.log(np.clip(picked, 1e-12, 1)).mean())}
    y = {split: dataset.raw_targets[getattr(dataset, split).rows.numpy()] for split in x}
    model.fit(x["train"], y["train"])
    scores = {f"{split}_{metric}": value for split in ("val", "test")
              for metric, value in regression_scores(y[split], model.predict(x[split])).items()}
    return {**scores, "val_loss": scores["val_rmse"] ** 2}


def tuned_fit(name: str, dataset: TableDataset, seed: int) -> tuple[dict[str, float], dict]:
    """The scores of the candidate of TUNE_GRID[name] with the best validation score (accuracy or
    R^2; ties: the lower validation loss, then the order of the grid), and its parameters."""
    key = "val_acc" if dataset.task == "classification" else "val_r2"
    fits = [(fit_and_score(name, dataset, seed, **params), params) for params in TUNE_GRID[name]]
    best = best_candidate([scores[key] for scores, _ in fits], [scores["val_loss"] for scores, _ in fits])
    return fits[best]


def write_reference_run(run_dir: Path, name: str, dataset_name: str, seed: int, fold: int, folds: int,
                        val_fraction: float, tune: bool = False) -> None:
    """Fit reference ``name`` on one fold (``tune``: its parameters chosen on the validation
    rows) and write its run directory."""
    import sklearn

    begin = time.perf_counter()
    dataset = data.load_dataset(dataset_name, Path("."), val_fraction=val_fraction, seed=seed,
                                table=TableOptions(folds=folds, fold=fold))
    scores, params = tuned_fit(name, dataset, seed) if tune else (fit_and_score(name, dataset, seed), {})
    seconds = time.perf_counter() - begin
    regression = dataset.task == "regression"
    config = dataclasses.replace(Config(), dataset=dataset_name, seed=seed, fold=fold, folds=folds,
                                 val_fraction=val_fraction, model="reference", gating=name, experts=0, epochs=0,
                                 tune=tune)
    run_dir.mkdir(parents=True, exist_ok=True)
    estimator = type(make_model(name, dataset.task, seed)).__name__
    write_json(run_dir / "config.json", {"config": config_record(config),
                                         "dataset": {"source": dataset.source, "task": dataset.task,
                                                     "features": dataset.feature_names},
                                         "reference": f"scikit-learn {estimator}",
                                         # the code that fitted it, as a trained run records it (logs.run_commit)
                                         "environment": {"python": platform.python_version(),
                                                         "sklearn": sklearn.__version__, "cpu_model": cpu_model(),
                                                         **code_state().as_record()},
                                         **({"tuned": {"chosen": params, "candidates": TUNE_GRID[name]}}
                                            if tune else {})})
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
