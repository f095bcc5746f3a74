"""Figures of the tabular grid (docs/tables.md): scores against the number of experts beside the
dense and scikit-learn references, how the gate partitions the input space, and each expert's
predictions of a regression. Every function takes DataFrames of logs.py and returns a Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap

from .plots import no_runs

TABLE_ORDER = ["iris", "wine", "breast-cancer", "diabetes"]
MIXTURES = {"soft": "soft", "top1": "top-1", "top2": "top-2"}
DENSE = {"dense-params": "dense, equal total", "dense-active": "dense, equal active"}
KIND_COLOURS = {"dense-active": "C0", "dense-params": "C1", "soft": "C2", "top1": "C3", "top2": "C4"}
REFERENCES = {"ref-logistic": "logistic regression", "ref-ridge": "ridge regression",
              "ref-hgb": "gradient boosting (HGB)"}


def score_column(dataset: str) -> str:
    return "test_r2" if dataset == "diabetes" else "test_acc"


def split_label(label: str) -> tuple[int | None, str]:
    """'e4-top2-mix' -> (4, 'top2-mix'); a reference -> (None, label)."""
    head, _, rest = label.partition("-")
    return (int(head[1:]), rest) if head.startswith("e") and head[1:].isdigit() else (None, label)


def scores_vs_experts(summary: pd.DataFrame, grid: str = "tabular") -> plt.Figure:
    """Test accuracy (R^2 for diabetes) against E for every router and dense baseline, mean +- std
    over folds x seeds, with the scikit-learn references as horizontal lines."""
    rows = summary[summary.grid == grid]
    if rows.empty:
        return no_runs(f"the {grid} grid")
    datasets = [d for d in TABLE_ORDER if d in set(rows.dataset)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.1 * len(datasets), 2.9), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        column = score_column(dataset)
        of = rows[rows.dataset == dataset].assign(experts_n=lambda f: [split_label(x)[0] for x in f.label],
                                                 kind=lambda f: [split_label(x)[1] for x in f.label])
        kinds = [k for k in of.kind.unique() if not k.startswith("ref-")]
        for kind in kinds:
            line = of[of.kind == kind].sort_values("experts_n")
            base = kind if kind.startswith("dense") else kind.split("-")[0]
            name = {**MIXTURES, **DENSE}.get(base, base) + (" (squared error)" if kind.endswith("-mse") else
                                                           " (mixture lik.)" if kind.endswith("-mix") else "")
            style = "--" if kind.startswith("dense") else "-." if kind.endswith("-mix") else "-"
            ax.errorbar(line.experts_n, line[f"{column}_mean"], yerr=line[f"{column}_std"],
                        fmt=("s" if kind.endswith("-mix") else "o") + style, color=KIND_COLOURS.get(base), ms=3,
                        capsize=2, lw=1, label=name)
        for label, name in REFERENCES.items():
            ref = of[of.label == label]
            if len(ref):
                ax.axhline(ref[f"{column}_mean"].iloc[0], color="C9" if label == "ref-hgb" else "0.3", ls=":", lw=1.2,
                           label=f"{name} (not MoE)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(of.experts_n.dropna().unique()))
        ax.set_xticklabels([f"{int(e)}" for e in sorted(of.experts_n.dropna().unique())])
        ax.set_xlabel("experts E")
        ax.set_ylabel("test R$^2$" if column == "test_r2" else "test accuracy")
        ax.set_title(dataset)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=4, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))   # below the axes and their labels
    return fig


def _run_rows(frame: pd.DataFrame, run: str) -> pd.DataFrame:
    return frame[frame.run == run]


def gate_partition(predictions: pd.DataFrame, gate_grid: pd.DataFrame, run: str, class_names=None,
                   title: str | None = None) -> plt.Figure:
    """The test rows in the plane of the two principal directions of the training features,
    coloured by their top-1 expert (marker: class, or the target's quantile for a regression),
    over the gate's decision regions (its most probable expert on a grid of that plane)."""
    rows, grid = _run_rows(predictions, run), _run_rows(gate_grid, run)
    if rows.empty or grid.empty:
        return no_runs(f"the test tables of {run}")
    experts = int(max(rows.top1_expert.max(), grid.top1_expert.max())) + 1
    colours = ListedColormap([f"C{e}" for e in range(experts)])
    norm = BoundaryNorm(np.arange(experts + 1) - 0.5, experts)
    u, v = np.sort(grid.pc1.unique()), np.sort(grid.pc2.unique())
    regions = grid.pivot_table(index="pc2", columns="pc1", values="top1_expert").reindex(index=v, columns=u)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.pcolormesh(u, v, regions.to_numpy(), cmap=colours, norm=norm, alpha=0.25, shading="nearest")
    classification = class_names is not None
    groups = rows.target.astype(int) if classification else pd.qcut(rows.target, 3, labels=False)
    markers = ["o", "s", "^", "D", "v", "P"]
    for g in sorted(groups.unique()):
        part = rows[groups == g]
        name = class_names[g] if classification else ["low", "middle", "high"][g] + " target"
        ax.scatter(part.pc1, part.pc2, c=part.top1_expert, cmap=colours, norm=norm, s=16, marker=markers[g % 6],
                   edgecolors="k", linewidths=0.3, label=name)
    for e in range(experts):
        ax.scatter([], [], color=f"C{e}", s=16, label=f"expert {e}")
    if title:
        fig.set_size_inches(3.6, 2.5)
    if title:    # the report's small figure: the legend beside the axes
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    else:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.set_xlabel("first principal direction")
    ax.set_ylabel("second principal direction")
    ax.set_title(title or f"Gate regions and test rows by top-1 expert\n{run}", fontsize=8)
    fig.tight_layout()
    return fig


def expert_predictions(predictions: pd.DataFrame, run: str, target_name: str = "target") -> plt.Figure:
    """Each expert's own prediction against the target on every test row (grey), the rows the
    gate sends to it (top-1) highlighted, and the mixture's prediction."""
    rows = _run_rows(predictions, run)
    if rows.empty or "expert_0" not in rows:
        return no_runs(f"the expert predictions of {run}")
    rows = rows.assign(top1_expert=rows.top1_expert.astype(int))   # stacked with dense runs' rows: float
    experts = sorted(int(c.split("_")[1]) for c in rows.columns if c.startswith("expert_") and rows[c].notna().any())
    fig, axes = plt.subplots(1, len(experts) + 1, figsize=(2.3 * (len(experts) + 1), 2.5), sharex=True, sharey=True)
    low, high = rows.target.min(), rows.target.max()
    for ax, e in zip(axes, experts):
        routed = rows.top1_expert == e
        ax.scatter(rows.target[~routed], rows[f"expert_{e}"][~routed], s=5, color="0.75", label="other rows")
        ax.scatter(rows.target[routed], rows[f"expert_{e}"][routed], s=9, color=f"C{e}", label="its top-1 rows")
        error = np.sqrt(((rows[f"expert_{e}"][routed] - rows.target[routed]) ** 2).mean()) if routed.any() else np.nan
        ax.set_title(f"expert {e}: {routed.sum()} rows\nRMSE on them {error:.1f}", fontsize=7.5)
    axes[-1].scatter(rows.target, rows.prediction, s=6, c=[f"C{e}" for e in rows.top1_expert])
    axes[-1].set_title("mixture (colour: top-1 expert)", fontsize=7.5)
    for ax in axes:
        ax.plot([low, high], [low, high], color="k", lw=0.6)
        ax.set_xlabel(target_name)
    axes[0].set_ylabel("prediction")
    axes[0].legend(fontsize=7)
    fig.suptitle(run, fontsize=8)
    fig.tight_layout()
    return fig
