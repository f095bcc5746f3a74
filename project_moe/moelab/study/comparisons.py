"""The study's headline comparisons, paired over seeds (and folds): the difference of two
configurations of one grid, its 95 % confidence interval and the paired t-test
(statistics.paired_difference). ``sweep.py --aggregate`` writes them to results/comparisons.csv;
the report and docs quote them from there.

Each grid compares its configurations with its references (REFERENCES): the dense networks, the
top-1 router, the configuration without the mechanism studied. Runs pair by (seed, fold): the
same initialisation seed, validation split and batch order, or the same test fold.
"""
from __future__ import annotations

import re

import pandas as pd

from .grids import LR_GRIDS, split_lr_label
from .statistics import paired_difference

# grid -> the labels every other configuration of the grid is compared with (a pattern may hold
# {E}: the same number of experts as the compared label, as in the tabular grid's e4-...).
REFERENCES: dict[str, tuple[str, ...]] = {
    "moe_vs_dense": ("dense-params", "dense-active", "dense-active-top2"),
    "cifar_trunk": ("dense-params", "dense-active"),
    "cnn_experts": ("dense-params-cnn",),
    "gating": ("hard",),
    "regularisation": ("none", "balance"),
    "regularisation_balanced": ("balance",),
    "cosine": ("hard-linear", "top2-linear"),
    "balancing": ("switch-loss",),
    "balancing_vit": ("switch-loss",),
    "capacity": ("top1-dropless", "top2-dropless"),
    "capacity_vit": ("top1-dropless", "top2-dropless"),
    "vit": ("vit-dense-active",),
    "vit_routers": ("topk-linear",),
    "cifar_heads": ("dense",),
    "vit_convergence": ("d6-dense-active", "d6-dense-params"),
    "vit_convergence_deep": ("d12-dense-active", "d12-dense-params"),
    "lm": ("lm-dense-active", "lm-dense-params", "lm-dense-params-top1"),
    "tabular": ("e{E}-dense-params", "e{E}-dense-active", "ref-logistic", "ref-ridge"),
    "reviews": ("dense-params", "dense-active", "dense-active-top2", "ref-logistic"),
    "reviews_bytes": ("dense-params", "dense-active"),
    "graphs": ("e{E}-dense-params", "dense-active", "dense-active-top2"),
    "molecules": ("e{E}-dense-params", "dense-active", "dense-active-top2"),
}
# Grids whose references hold per router: a label is compared with the reference of its own
# router, the part of the label before the first "-" (top1-cf1-position with top1-dropless).
PER_ROUTER = {"capacity", "capacity_vit", "cosine"}
# The paired pairs a reference list cannot say: each shape against itself with a shared expert.
EXTRA_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "shared": tuple((f"{shape}-shared", shape) for shape in ("e8-k1-h128", "e32-k4-h32", "e64-k8-h16")),
}
# The score a grid's runs are compared on, and whether larger is better.
METRICS = {"lm": ("test_bpb", False), "lr_lm": ("test_bpb", False)}
COLUMNS = ["grid", "dataset", "model", "reference", "metric", "n", "diff_mean", "diff_low", "diff_high", "p_value",
           "verdict"]


def metric_of(grid: str, runs: pd.DataFrame) -> tuple[str, bool]:
    """The score of ``runs`` (one grid and dataset): R^2 for a regression table, bits per byte for
    the language model (smaller is better), else test accuracy."""
    if grid in METRICS:
        return METRICS[grid]
    if runs.test_acc.isna().all() and "test_r2" in runs and runs.test_r2.notna().any():
        return "test_r2", True
    return "test_acc", True


def pairs_of(grid: str, labels: list[str]) -> list[tuple[str, str]]:
    """(model, reference) pairs of ``grid`` among ``labels``, in the order of the labels."""
    pairs = []
    for reference_pattern in REFERENCES.get(grid, ()):
        for label in labels:
            experts = re.match(r"e(\d+)-", label)
            reference = reference_pattern.format(E=experts.group(1) if experts else "")
            both_references = label.startswith("ref-") and reference.startswith("ref-")
            other_router = grid in PER_ROUTER and label.split("-")[0] != reference.split("-")[0]
            if reference in labels and label != reference and not both_references and not other_router \
                    and (reference, label) not in pairs:     # two references compared once
                pairs.append((label, reference))
    pairs += [pair for pair in EXTRA_PAIRS.get(grid, ()) if pair[0] in labels and pair[1] in labels]
    return pairs


def compare(runs: pd.DataFrame, grid: str, dataset: str, model: str, reference: str, metric: str,
            larger_is_better: bool) -> dict:
    """One row of comparisons.csv: ``model`` - ``reference`` on ``metric``, paired by (seed, fold)."""
    def scores(label):
        table = runs[runs.label == label]
        return table.set_index([table.seed, table.fold.fillna(-1)])[metric]
    a, b = scores(model), scores(reference)
    common = a.index.intersection(b.index)
    result = paired_difference(a.loc[common].to_numpy(), b.loc[common].to_numpy())
    if result.n < 2 or result.within_noise():
        verdict = "tie"
    else:
        verdict = "better" if (result.mean > 0) == larger_is_better else "worse"
    return {"grid": grid, "dataset": dataset, "model": model, "reference": reference, "metric": metric,
            "n": result.n, "diff_mean": result.mean, "diff_low": result.low, "diff_high": result.high,
            "p_value": result.p_value, "verdict": verdict}


def selection_metric(grid: str) -> tuple[str, bool]:
    """The validation score that picks a learning rate in ``grid``, and whether larger is better:
    the lowest validation bits per byte of a language model, else the best validation accuracy."""
    return ("best_val_bpb", False) if METRICS.get(grid, ("",))[0] == "test_bpb" else ("best_val_acc", True)


def best_learning_rates(runs: pd.DataFrame, grid: str = "lr") -> dict[str, str]:
    """For each model of the learning-rate grid ``grid`` (labels ``<model>-lr<rate>``): the label of
    the rate with the best mean validation score over its seeds (selection never sees the test set)."""
    table = runs[runs.grid == grid]
    table = table.assign(model=[split_lr_label(label)[0] for label in table.label])
    column, larger = selection_metric(grid)
    means = table.groupby(["model", "label"], sort=False)[column].mean().reset_index()
    return {model: group.sort_values(column, ascending=not larger, kind="stable").label.iloc[0]
            for model, group in means.groupby("model", sort=False)}


def comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    """Every headline comparison of the completed runs (logs.run_table), one row each; in a
    learning-rate grid, each MoE at its best rate against each dense network at its own."""
    rows = []
    for (grid, dataset), table in runs.groupby(["grid", "dataset"], sort=False):
        metric, larger = metric_of(grid, table)
        labels = list(dict.fromkeys(table.label))
        pairs = pairs_of(grid, labels)
        if grid in LR_GRIDS:
            best = best_learning_rates(table, grid)
            pairs = [(best[m], best[d]) for m in best if "dense" not in m for d in best if "dense" in d]
        rows += [compare(table, grid, dataset, model, reference, metric, larger) for model, reference in pairs]
    return pd.DataFrame(rows, columns=COLUMNS)
