"""Figures of MoE routing on graphs: which expert takes each node of a few test graphs (from a run's
test_nodes.csv and test_graphs.npz), and each expert's share of every kind of node (kinds.csv)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from .plots import no_runs

# Okabe-Ito, then greys: distinguishable with every common colour-vision deficiency up to 8 experts.
EXPERT_COLOURS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]


def node_positions(graphs, graph: int) -> np.ndarray:
    """(n, 2) drawing positions (x, y) of the nodes of graph ``graph`` of a test_graphs.npz: the
    superpixel centroids (column, row) where the features have them, else a circle."""
    start, end = int(graphs["offsets"][graph]), int(graphs["offsets"][graph + 1])
    names = list(graphs["feature_names"])
    if "centroid row" in names and "centroid column" in names:
        nodes = graphs["nodes"][start:end]
        return np.stack([nodes[:, names.index("centroid column")], nodes[:, names.index("centroid row")]], 1)
    angle = 2 * np.pi * np.arange(end - start) / max(end - start, 1)
    return np.stack([np.cos(angle), np.sin(angle)], 1)


def routed_graphs(nodes: pd.DataFrame, graphs, layer: int | None = None, count: int = 8,
                  title: str = "", class_names: list[str] | None = None) -> plt.Figure:
    """The first ``count`` test graphs of one run, each node coloured by its top-1 expert in MoE block
    ``layer`` (default: the last), edges in grey; superpixel graphs drawn at their centroids, as the
    image they come from (row 0 at the top). ``class_names``: the dataset's (config.json), for the
    titles' true and predicted class (their indices without them)."""
    if nodes.empty:
        return no_runs("the routed test graphs (test_nodes.csv)")
    layer = int(nodes.layer.max()) if layer is None else layer
    experts = max(int(nodes.top1_expert.max()) + 1, 1)        # every block's: the same colours in each
    nodes = nodes[nodes.layer == layer]
    colours = ListedColormap((EXPERT_COLOURS + ["0.5"] * experts)[:experts])
    shown = sorted(nodes["index"].unique())[:count]
    columns = min(len(shown), 4)
    rows = int(np.ceil(len(shown) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.7 * columns + 0.8, 1.8 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, graph in zip(axes.flat, shown):
        position = node_positions(graphs, graph)
        start, end = int(graphs["edge_offsets"][graph]), int(graphs["edge_offsets"][graph + 1])
        first = int(graphs["offsets"][graph])
        for source, target in (graphs["edges"][:, start:end] - first).T:
            ax.plot(*position[[source, target]].T, color="0.8", lw=0.4, zorder=1)
        mine = nodes[nodes["index"] == graph].sort_values("node")
        ax.scatter(*position[mine.node.to_numpy()].T, c=mine.top1_expert.to_numpy(), cmap=colours, vmin=-0.5,
                   vmax=experts - 0.5, s=14, edgecolors="0.2", linewidths=0.3, zorder=2)
        true, predicted = (int(mine[column].iloc[0]) for column in ("class", "predicted"))
        name = (lambda index: class_names[index]) if class_names else str
        ax.set_title(f"class {name(true)}, predicted {name(predicted)}", fontsize=7)
        ax.set_aspect("equal")
        ax.invert_yaxis()
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours(e), markeredgecolor="0.2", label=f"expert {e}")
               for e in range(experts)]
    fig.legend(handles=handles, loc="lower center", ncol=min(experts, 8), fontsize=7, frameon=False)
    fig.suptitle(title or f"Top-1 expert of every node, MoE block {layer + 1}", fontsize=8.5)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def kind_shares(kinds: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """P(top-1 expert | node kind) per MoE block at the last epoch of ``split``, over the rows given
    (one run, or several seeds summed): columns layer, kind, expert, share."""
    rows = kinds[kinds.split == split]
    rows = rows[rows.epoch == rows.epoch.max()]
    table = rows.groupby(["layer", "kind", "expert"], as_index=False).top1.sum()
    table["share"] = table.top1 / table.groupby(["layer", "kind"]).top1.transform("sum").clip(lower=1)
    return table


def kind_routing(kinds: pd.DataFrame, kind_names: list[str], split: str = "test", title: str = "") -> plt.Figure:
    """Heatmaps, one per MoE block: the share of each kind of node that each expert takes as top-1."""
    if kinds.empty:
        return no_runs("the expert x node-kind tables (kinds.csv)")
    table = kind_shares(kinds, split)
    layers = sorted(table.layer.unique())
    experts = int(table.expert.max()) + 1
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 0.6, 0.35 * len(kind_names) + 1.5),
                             squeeze=False, layout="constrained")
    for ax, layer in zip(axes[0], layers):
        grid = np.zeros((len(kind_names), experts))
        part = table[table.layer == layer]
        grid[part.kind.to_numpy(), part.expert.to_numpy()] = part.share.to_numpy()
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(experts), range(experts), fontsize=7)
        ax.set_yticks(range(len(kind_names)), kind_names, fontsize=7)
        ax.set_xlabel("top-1 expert", fontsize=7.5)
        ax.set_title(f"MoE block {layer + 1}", fontsize=8)
        for (k, e), share in np.ndenumerate(grid):
            ax.text(e, k, f"{share:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if share < 0.5 else "black")
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
    # The test split is evaluated once, with the weights of the best validation epoch.
    when = "weights of the best epoch" if split == "test" else "last epoch"
    fig.suptitle(title or f"P(top-1 expert | node kind), {split} split, {when}", fontsize=8.5)
    return fig
