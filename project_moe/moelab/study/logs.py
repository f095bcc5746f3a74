"""Read the run directories of a results folder into pandas DataFrames.

Layout: <results>/runs/<grid>/<run-name>/{config.json, summary.json, metrics.csv, experts.csv,
routing.csv, test_samples.csv}. Every frame gets the columns grid, dataset, label, seed and
run, so that runs can be grouped by configuration (label) across seeds.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import stats
from ..training.evaluation import NODE_COLUMNS, PATCH_COLUMNS, SAMPLES_COLUMNS
from ..training.run_files import RunFileError, read_config, read_json, read_log
from ..training.run_logs import LOG_COLUMNS
from . import statistics

# Damaged run files are refused (RunFileError): aggregating without them would change the results.
SET_ASIDE = "restore it from a copy, or move its run directory out of the results folder"
KNOWN_COLUMNS = {**LOG_COLUMNS, "test_samples.csv": SAMPLES_COLUMNS, "test_patches.csv": PATCH_COLUMNS,
                 "test_nodes.csv": NODE_COLUMNS}


def dataset_tag(dataset: str) -> str:
    """A short name, fit for a run directory: the folder copy of CIFAR-10 is reported as such, not
    as CIFAR-10; tfidf:rotten-tomatoes becomes tfidf-rotten-tomatoes, superpixels:mnist
    superpixels-mnist."""
    if dataset.startswith("superpixels:"):
        return "superpixels-" + dataset_tag(dataset[len("superpixels:"):])
    return "cifar10-jpeg" if "cifar10-jpeg" in dataset else dataset.replace(":", "-")


def completed_runs(results: Path) -> list[Path]:
    dirs = []
    for summary in sorted(Path(results).glob("runs/*/*/summary.json")):
        if read_json(summary, SET_ASIDE).get("status") == "completed":
            dirs.append(summary.parent)
    return dirs


def run_identity(run_dir: Path) -> dict:
    config = read_config(run_dir / "config.json", SET_ASIDE)
    tag = dataset_tag(config["dataset"])
    label = run_dir.name.removeprefix(tag + "-").rsplit("-s", 1)[0]
    fold = None
    if re.search(r"-f\d+$", label) and "fold" in config:     # a table's fold (sweep run names)
        label, fold = label.rsplit("-f", 1)[0], config["fold"]
    return {"grid": run_dir.parent.name, "dataset": tag, "label": label, "seed": config["seed"], "fold": fold,
            "run": run_dir.name}


def run_table(results: Path) -> pd.DataFrame:
    """One row per completed run: identity, final numbers, parameters and cost."""
    rows = []
    for run_dir in completed_runs(results):
        summary = read_json(run_dir / "summary.json", SET_ASIDE)
        config = read_config(run_dir / "config.json", SET_ASIDE)
        metrics = read_csv(run_dir / "metrics.csv")
        regression = summary.get("task") == "regression"
        rows.append({**run_identity(run_dir), "commit": run_commit(run_dir),
                     "model": config["model"], "gating": config["gating"],
                     "experts": config["experts"], "epochs": config["epochs"],
                     "test_acc": _number(summary.get("test_acc")), "test_loss": _number(summary.get("test_loss")),
                     "best_val_acc": _number(summary.get("best_val_acc")),
                     # a regression's errors, in the units of its table (NaN for the other runs)
                     **{f"test_{m}": _number(summary.get(f"test_{m}")) for m in ("rmse", "mae", "r2")},
                     "best_val_r2": _number(summary.get("best_val_r2")) if regression else float("nan"),
                     "params_total": _number(summary["params_total"]),
                     # bits per byte of a language model (NaN for the other runs)
                     "test_bpb": _number(summary.get("test_bpb")), "best_val_bpb": _lowest(metrics, "val_bpb"),
                     "params_active": _number(summary["params_active"]),
                     "flops_per_sample": _number(summary["flops_per_sample"]),
                     "samples_per_s": metrics["samples_per_s"].median(),
                     "final_val_load_cv": metrics["val_load_cv"].iloc[-1],
                     "final_val_dropped": metrics["val_dropped"].iloc[-1] if "val_dropped" in metrics else float("nan"),
                     "specialisation": test_specialisation(run_dir),
                     "time_s": summary.get("total_time_s", float("nan")),
                     # --step-time-rounds: its training step over the dense network of its active width,
                     # measured side by side on the machine that trained it (NaN when not measured)
                     "step_time_vs_dense_active": _number(summary.get("step_time_vs_dense_active"))})
    return pd.DataFrame(rows)


def run_commit(run_dir: Path) -> str:
    """The commit that trained a run (12 hex digits), "+dirty" when its code had uncommitted
    changes, "unknown" when it recorded none."""
    env = read_json(run_dir / "config.json", SET_ASIDE).get("environment", {})
    commit = (env.get("git_commit") or "unknown")[:12]
    return commit + ("+dirty" if env.get("git_dirty") else "")


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _lowest(metrics: pd.DataFrame, column: str) -> float:
    return float(metrics[column].min()) if column in metrics and metrics[column].notna().any() else float("nan")


def read_all(results: Path, filename: str) -> pd.DataFrame:
    """One CSV log of every completed run, stacked, with the identity columns in front."""
    frames = []
    for run_dir in completed_runs(results):
        path = run_dir / filename
        if path.exists() and path.stat().st_size:
            frame = read_csv(path)
            for key, value in reversed(run_identity(run_dir).items()):
                frame.insert(0, key, value)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


IDENTITY = ("grid", "dataset", "label", "seed", "fold", "run")    # run_identity's keys
GATE_ARRAYS = ("group", "predicted", "experts_used", "gate_entropy", "weights")


def read_test_gates(results: Path, grid: str, dataset: str | None = None) -> pd.DataFrame:
    """The test_gates.npz of every completed run of ``grid`` (of ``dataset`` only, when given): one
    row per run, the identity columns then one array per cell: ``group``, ``predicted``,
    ``experts_used`` (N,), ``gate_entropy`` (N,; nats) and ``weights`` (N, E) float32. A run of
    more than 16 experts stored each sample's 16 largest weights only: its other weights read 0.
    Runs without the file (dense, or made before it existed) are left out."""
    rows = []
    for run_dir in completed_runs(results):
        path = run_dir / "test_gates.npz"
        if run_dir.parent.name != grid or not path.exists():
            continue
        identity = run_identity(run_dir)
        if dataset is not None and identity["dataset"] != dataset:
            continue
        arrays = _read_npz(path)
        experts = read_config(run_dir / "config.json", SET_ASIDE)["experts"]
        rows.append({**identity, **{name: arrays[name] for name in GATE_ARRAYS[:-1]},
                     "weights": _dense_weights(arrays, experts)})
    return pd.DataFrame(rows, columns=[*IDENTITY, *GATE_ARRAYS])   # the columns even when no run has the file


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file; RunFileError if it is damaged (a cut-off copy is not a zip)."""
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise RunFileError(path, f"not a readable .npz ({type(error).__name__})", SET_ASIDE) from None


def _dense_weights(stored: dict[str, np.ndarray], experts: int) -> np.ndarray:
    """(N, E) float32 gate weights from test_gates.npz: ``weights`` as is, or ``top_weights``
    scattered back to the columns ``top_experts`` names (zeros elsewhere)."""
    if "weights" in stored:
        return stored["weights"].astype(np.float32)
    top, chosen = stored["top_weights"], stored["top_experts"].astype(np.int64)   # (N, 16) each
    weights = np.zeros((top.shape[0], experts), dtype=np.float32)                  # (N, E)
    np.put_along_axis(weights, chosen, top.astype(np.float32), axis=1)
    return weights


def read_csv(path: Path, fix: str = SET_ASIDE) -> pd.DataFrame:
    """A CSV file of a results folder as a DataFrame; a damaged one (see run_files.read_log;
    a log of a run may only have its known columns) is refused with RunFileError."""
    path = Path(path)
    read_log(path, KNOWN_COLUMNS.get(path.name), fix=fix)
    return pd.read_csv(path)


def test_specialisation(run_dir: Path) -> float:
    """I(expert; class) / H(class) on the test split, from the top-1 routing table (NaN for dense)."""
    path = run_dir / "routing.csv"
    if not path.exists() or path.stat().st_size == 0:
        return float("nan")
    routing = read_csv(path)
    test = routing[routing.split == "test"]
    if test.empty:
        return float("nan")
    table = torch.tensor(test.pivot_table(index="expert", columns="class", values="top1", aggfunc="sum")
                         .fillna(0).to_numpy(), dtype=torch.float64)
    class_p = table.sum(dim=0) / table.sum()
    class_entropy = stats.entropy(class_p).item()
    return stats.mutual_information(table).item() / class_entropy if class_entropy > 0 else float("nan")


CI_COLUMNS = ("test_acc", "test_loss", "test_bpb", "test_r2")


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and number of seeds per (grid, dataset, label), over every fold of a
    table's cross-validation too (``folds``: how many; 0 for the other grids); the half-width
    of the 95 % confidence interval of the mean of CI_COLUMNS (Student t over the runs), and
    the commits that trained them."""
    numbers = ["test_acc", "test_loss", "best_val_acc", "samples_per_s", "final_val_load_cv", "final_val_dropped",
               "specialisation", "time_s", "test_bpb", "best_val_bpb", "test_rmse", "test_mae", "test_r2",
               "best_val_r2", "step_time_vs_dense_active"]
    constant = ["model", "gating", "experts", "epochs", "params_total", "params_active", "flops_per_sample"]
    grouped = runs.groupby(["grid", "dataset", "label"], sort=False)
    table = grouped[numbers].agg(["mean", "std"])
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    for name in CI_COLUMNS:   # 95 % confidence interval of the mean: mean +- this half-width
        table[f"{name}_ci95"] = grouped[name].agg(lambda values: statistics.ci_half_width(values.dropna().to_numpy()))
    table.insert(0, "seeds", grouped["seed"].nunique())
    table.insert(1, "folds", grouped["fold"].nunique())
    # The commits that trained the configuration's runs (one, for a study run from one commit).
    table.insert(2, "commit", grouped["commit"].agg(lambda commits: " ".join(sorted(set(commits)))))
    table[constant] = grouped[constant].first()
    return table.reset_index()


def sharpness_by_label(sharpness: pd.DataFrame, results: Path) -> pd.DataFrame:
    """Mean and std over seeds of the sharpness estimates, per (label, split)."""
    labels = [run_identity(results / "runs" / g / r)["label"] for g, r in zip(sharpness.grid, sharpness.run)]
    table = sharpness.assign(label=labels).groupby(["label", "split"], sort=False)
    out = table[["top_eigenvalue", "trace", "loss"]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["seeds"] = table["seed"].nunique()
    return out.reset_index()


def patch_coherence(patches: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, label, layer): mean and std over seeds of the mean share of an image's
    patches that go to its most frequent expert (see stats.majority_share), from the
    test_patches.csv rows of several runs."""
    rows = []
    for (dataset, label, seed, layer), group in patches.groupby(["dataset", "label", "seed", "layer"]):
        table = group.pivot(index="index", columns="patch", values="top1_expert")   # (images, T)
        ids = torch.tensor(table.to_numpy(), dtype=torch.long)
        share = stats.majority_share(ids, int(patches.top1_expert.max()) + 1).mean().item()
        rows.append({"dataset": dataset, "label": label, "seed": seed, "layer": layer, "share": share})
    frame = pd.DataFrame(rows)
    out = frame.groupby(["dataset", "label", "layer"])["share"].agg(["mean", "std"]).reset_index()
    return out.rename(columns={"mean": "share_mean", "std": "share_std"})


def time_to_accuracy(metrics: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """For every run of ``metrics`` (metrics.csv rows with the identity columns), the first epoch
    whose validation accuracy reaches ``threshold`` and the training run's wall seconds at that
    epoch; NaN for a run that never reaches it."""
    return _first_reaching(metrics, metrics.val_acc >= threshold, threshold)


def time_to_bpb(metrics: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """As time_to_accuracy, for a language model: the first evaluation whose validation bits per
    byte is at or below ``threshold`` (epoch, step and wall seconds), and ``crossing_step``, the
    step where the line between that evaluation and the one before it crosses ``threshold``
    (evaluations are a few hundred steps apart; the first one counts from step 0 only if it is
    already below)."""
    return _first_reaching(metrics, metrics.val_bpb <= threshold, threshold, interpolate="val_bpb")


def _first_reaching(metrics: pd.DataFrame, reached: pd.Series, threshold: float,
                    interpolate: str | None = None) -> pd.DataFrame:
    """Per run: the first row where ``reached`` holds; with ``interpolate``, also the step where
    that column, linear between the row before and that row, crosses ``threshold``."""
    rows = []
    metrics = metrics.assign(_reached=reached)
    for (grid, dataset, label, seed), run in metrics.groupby(["grid", "dataset", "label", "seed"], sort=True):
        run = run.sort_values("epoch")
        hit = int(run._reached.to_numpy().argmax()) if run._reached.any() else None
        first = run.iloc[hit] if hit is not None else None
        row = {"grid": grid, "dataset": dataset, "label": label, "seed": seed, "threshold": threshold,
               "epoch": first.epoch if first is not None else float("nan"),
               "step": first.get("step", float("nan")) if first is not None else float("nan"),
               "wall_time_s": first.wall_time_s if first is not None else float("nan")}
        if interpolate is not None:
            row["crossing_step"] = _crossing_step(run, hit, interpolate, threshold)
        rows.append(row)
    return pd.DataFrame(rows)


def _crossing_step(run: pd.DataFrame, hit: int | None, column: str, threshold: float) -> float:
    if hit is None:
        return float("nan")
    if hit == 0:
        return float(run.step.iloc[0])
    (s0, v0), (s1, v1) = ((run.step.iloc[i], run[column].iloc[i]) for i in (hit - 1, hit))
    return float(s0 + (s1 - s0) * (v0 - threshold) / (v0 - v1))
