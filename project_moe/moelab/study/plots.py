"""Figures of the study. Every function takes DataFrames (see logs.py) and returns a Figure;
the notebook and the report both call them, so a figure is drawn by one piece of code only."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .grids import split_lr_label

DATASET_ORDER = ["mnist", "fashion-mnist", "cifar10-jpeg"]
GATING_ORDER = ["soft", "hard", "top2", "noisy-top2", "gumbel-top1", "expert-choice", "expert-choice-2"]
# How figures and report tables name the routers of the gating grids (labels of grids.py)
ROUTER_NAMES = {"soft": "soft", "hard": "top-1 (Switch)", "top2": "top-2", "noisy-top2": "noisy top-2",
                "gumbel-top1": "Gumbel top-1", "expert-choice": "expert choice, 1/sample",
                "expert-choice-2": "expert choice, 2/sample"}
plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "font.size": 9, "axes.titlesize": 10,
                     "axes.spines.top": False, "axes.spines.right": False})


def no_runs(what: str) -> plt.Figure:
    """A small figure that says no completed run holds ``what`` (the notebook and report still show a figure)."""
    fig, ax = plt.subplots(figsize=(4, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"no completed runs for {what} in these results", ha="center", va="center")
    return fig


def ordered(labels, order):
    """The distinct ``labels`` in the order of ``order``, then the others sorted (figures and tables list them alike)."""
    return [x for x in order if x in set(labels)] + sorted(set(labels) - set(order))


def _final_rows(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = frame[frame.split == split]
    last = rows.groupby("run")["epoch"].transform("max")
    return rows[rows.epoch == last]


def _of_run(frame: pd.DataFrame, run: str, grid: str | None) -> pd.DataFrame:
    """The rows of one run; ``grid`` tells apart runs of the same name in several grids."""
    return frame[(frame.run == run) & ((frame.grid == grid) if grid is not None else True)]


def class_expert_heatmap(routing: pd.DataFrame, run: str, class_names=None, grid: str | None = None) -> plt.Figure:
    """Test samples of each class routed to each expert: counts, and P(expert | class)."""
    rows = _of_run(routing, run, grid)
    rows = rows[rows.split == "test"]
    counts = rows.pivot_table(index="expert", columns="class", values="top1", aggfunc="sum").fillna(0).astype(float)
    share = counts / counts.sum(axis=0).replace(0, np.nan)   # classes absent from the split stay blank
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
    for ax, table, title, fmt in ((axes[0], counts, "test samples (top-1 expert)", ".0f"),
                                  (axes[1], share, "P(expert | class)", ".2f")):
        # seaborn: cell annotations in a colour readable on their cell, blank (NaN) cells, one call.
        labels = [class_names[c] if class_names else c for c in table.columns]
        sns.heatmap(table.set_axis(labels, axis=1).set_axis([f"E{e}" for e in table.index]), ax=ax,
                    cmap="viridis", annot=table.size <= 160, fmt=fmt, annot_kws={"fontsize": 7},
                    cbar_kws={"fraction": 0.046})
        ax.tick_params(axis="x", labelrotation=45 if class_names else 0, labelsize=7)
        ax.tick_params(axis="y", labelrotation=0)
        ax.set_xlabel("class")
        ax.set_ylabel("expert")
        ax.set_title(title)
    fig.suptitle(f"Expert x class routing — {run}")
    fig.tight_layout()
    return fig


def balance_over_time(metrics: pd.DataFrame, grid: str = "gating", dataset: str = "mnist") -> plt.Figure:
    """Load CV and gate entropy on validation per epoch, mean +- std over seeds, per router."""
    rows = metrics[(metrics.grid == grid) & (metrics.dataset == dataset)]
    fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.9))
    for label in ordered(rows.label, GATING_ORDER):
        group = rows[rows.label == label].groupby("epoch")
        for ax, column in zip(axes, ("val_load_cv", "val_gate_entropy")):
            mean, std = group[column].mean(), group[column].std()
            ax.plot(mean.index, mean, "-o", ms=3, label=label)
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15)
    axes[0].set_ylabel("load CV (0 = balanced)")
    axes[1].set_ylabel("gate entropy (nats)")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7, frameon=False)
    fig.suptitle(f"Load balance over training ({dataset})")
    fig.tight_layout()
    return fig


def _errorbars(ax, table: pd.DataFrame, x, label: str, column: str = "test_acc"):
    ax.errorbar(x, table[f"{column}_mean"] * 100, yerr=table[f"{column}_std"].fillna(0) * 100, fmt="-o",
                ms=4, capsize=3, label=label)


def accuracy_vs_experts(summary: pd.DataFrame) -> plt.Figure:
    """Test accuracy against E at a fixed total budget and at a fixed expert size."""
    rows = summary[summary.grid == "experts"]
    if rows.empty:
        return no_runs("accuracy vs experts")
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for prefix, label in (("budget", "fixed total budget (E x hidden = 512)"),
                          ("per-expert", "fixed expert size (hidden 64)")):
        table = rows[rows.label.str.startswith(prefix)].sort_values("experts")
        _errorbars(ax, table, table.experts, label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of experts E (top-1 routing)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs number of experts (MNIST, mean ± std)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _accuracy_ylim(ax, table: pd.DataFrame) -> None:
    """Zoom on the bars' range: differences of a fraction of a point must stay visible."""
    spread = table.test_acc_std.fillna(0).max() * 100
    low, high = table.test_acc_mean.min() * 100, table.test_acc_mean.max() * 100
    ax.set_ylim(max(0.0, low - 2 * spread - 1.0), min(100.0, high + 2 * spread + 0.5))


def _bars(ax, table: pd.DataFrame, labels, column: str, scale: float = 1.0):
    table = table.set_index("label").loc[labels]
    ax.bar(range(len(labels)), table[f"{column}_mean"] * scale, yerr=table[f"{column}_std"].fillna(0) * scale,
           capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")


def gating_comparison(summary: pd.DataFrame) -> plt.Figure:
    """Test accuracy and throughput of every router, per dataset (mean ± std over seeds)."""
    rows = summary[summary.grid == "gating"]
    if rows.empty:
        return no_runs("gating comparison")
    datasets = ordered(rows.dataset, DATASET_ORDER)
    fig, axes = plt.subplots(1, len(datasets) + 1, figsize=(3.0 * (len(datasets) + 1), 3.0))
    for ax, dataset in zip(axes, datasets):
        table = rows[rows.dataset == dataset]
        labels = ordered(table.label, GATING_ORDER)
        _bars(ax, table, labels, "test_acc", 100)
        _accuracy_ylim(ax, table)
        ax.set_title(f"{dataset}: test accuracy (%)")
    table = rows[rows.dataset == datasets[0]]
    _bars(axes[-1], table, ordered(table.label, GATING_ORDER), "samples_per_s")
    # Grid runs share the machine with other work: their throughput is labelled, not a benchmark.
    axes[-1].set_title(f"{datasets[0]}: samples/s as scheduled\n(not a benchmark: docs/benchmarks.md)", fontsize=9)
    fig.tight_layout()
    return fig


def regularisation_effect(summary: pd.DataFrame) -> plt.Figure:
    """Accuracy and final load imbalance for each regulariser (hard routing, MNIST)."""
    rows = summary[summary.grid == "regularisation"]
    if rows.empty:
        return no_runs("regularisation effect")
    labels = list(rows.label)
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.9))
    _bars(axes[0], rows, labels, "test_acc", 100)
    _accuracy_ylim(axes[0], rows)
    axes[0].set_title("test accuracy (%)")
    _bars(axes[1], rows, labels, "final_val_load_cv")
    axes[1].set_title("load CV at the end (0 = balanced)")
    fig.suptitle("Regularisation of a top-1 MoE (MNIST, mean ± std over seeds)")
    fig.tight_layout()
    return fig


def specialisation(summary: pd.DataFrame, grid: str = "gating") -> plt.Figure:
    """I(expert; class) / H(class) of the test routing (top-1 expert), per router and dataset."""
    rows = summary[summary.grid == grid]
    if rows.empty:
        return no_runs("specialisation")
    fig, ax = plt.subplots(figsize=(5.0, 2.9))
    datasets = ordered(rows.dataset, DATASET_ORDER)
    width = 0.8 / max(len(datasets), 1)
    labels = ordered(rows.label, GATING_ORDER)
    for i, dataset in enumerate(datasets):
        table = rows[rows.dataset == dataset].set_index("label").reindex(labels)
        ax.bar(np.arange(len(labels)) + i * width, table.specialisation_mean, width,
               yerr=table.specialisation_std.fillna(0), capsize=2, label=dataset)
    ax.set_xticks(np.arange(len(labels)) + width * (len(datasets) - 1) / 2, labels, rotation=35, ha="right")
    ax.set_ylabel("I(expert; class) / H(class)")
    ax.set_title("Routing specialisation (test, top-1 expert)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def routed_images(samples: pd.DataFrame, images: np.ndarray, per_expert: int = 10) -> plt.Figure:
    """Test images grouped by their top-1 expert: what does each expert see?

    samples: rows of one run's test_samples.csv; images: (N, H, W) or (N, H, W, C) uint8 in the
    order of the test split (row ``index`` of samples is the image index).
    """
    experts = sorted(samples.top1_expert.unique())
    fig, axes = plt.subplots(len(experts), per_expert, figsize=(per_expert * 0.55, len(experts) * 0.6))
    axes = np.atleast_2d(axes)
    for row, expert in zip(axes, experts):
        chosen = samples[samples.top1_expert == expert].head(per_expert)
        for ax in row:
            ax.axis("off")
        for ax, index in zip(row, chosen["index"]):
            ax.imshow(images[index], cmap="gray" if images.ndim == 3 else None)
        row[0].text(-0.3, 0.5, f"E{expert}", transform=row[0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("Test images by top-1 expert", fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.06)
    return fig


def moe_vs_dense(summary: pd.DataFrame, grids=("moe_vs_dense", "cifar_trunk")) -> plt.Figure:
    """Test accuracy of MoE and both dense baselines, per dataset."""
    return _accuracy_panels(summary[summary.grid.isin(grids)], "test accuracy (%)")


def _accuracy_panels(rows: pd.DataFrame, title: str) -> plt.Figure:
    """One bar panel per dataset: test accuracy (mean ± std over seeds) of each label."""
    if rows.empty:
        return no_runs(title)
    datasets = ordered(rows.dataset, DATASET_ORDER)
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.0 * len(datasets), 2.9), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        table = rows[rows.dataset == dataset]
        _bars(ax, table, list(table.label), "test_acc", 100)
        _accuracy_ylim(ax, table)
        ax.set_title(f"{dataset}: {title}", **({"fontsize": 8} if len(title) > 20 else {}))
    fig.tight_layout()
    return fig


def sharpness_curves(curves: pd.DataFrame, ax=None) -> plt.Figure:
    """Loss along the top Hessian eigenvector, L(theta + t v), one colour per run, train solid and
    test dashed (rows of analysis.py's sharpness_curves.csv). Draws on ``ax`` when given."""
    if curves.empty and ax is None:
        return no_runs("sharpness curves")
    fig, ax = plt.subplots(figsize=(4.6, 3.0)) if ax is None else (ax.figure, ax)
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    styles = {"train": "-", "test": "--"}
    several_grids = curves.grid.nunique() > 1   # run names repeat across grids
    for i, ((grid, run), rows) in enumerate(curves.groupby(["grid", "run"], sort=False)):
        name = f"{grid}/{run}" if several_grids else run
        for split, group in rows.groupby("split", sort=False):
            group = group.sort_values("t")
            ax.plot(group.t, group.loss, styles.get(split, ":"), color=colors[i % 10], label=f"{name} ({split})")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("t (step along the unit top eigenvector)")
    ax.set_ylabel("cross-entropy")
    ax.set_title("Loss along the sharpest direction")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def patch_routing(patches: pd.DataFrame, images: np.ndarray, run: str, n_images: int = 4,
                  class_names=None) -> plt.Figure:
    """Which expert each patch of a test image goes to, per MoE block of a ViT: the image, then
    one panel per block with every patch tinted by its top-1 expert (number in the patch).

    patches: test_patches.csv rows (of ``run`` among others); images: that run's
    test_patch_images.npy, (N, C, H, W) uint8, row ``index`` of patches is image ``index``;
    class_names: the dataset's class names by label (titles show the label number without them).
    """
    rows = patches[patches.run == run]
    if rows.empty:
        return no_runs(f"patch routing of {run}")
    layers = sorted(rows.layer.unique())
    shown = sorted(rows["index"].unique())[:n_images]
    experts = int(rows.top1_expert.max()) + 1
    colors = plt.cm.tab10(np.arange(max(experts, 1)) % 10)
    grid_rows, grid_cols = int(rows.row.max()) + 1, int(rows.col.max()) + 1
    fig, axes = plt.subplots(len(shown), 1 + len(layers), figsize=(1.5 * (1 + len(layers)), 1.6 * len(shown)),
                             squeeze=False)
    for image_axes, index in zip(axes, shown):
        picture = np.moveaxis(images[index], 0, -1)                            # (H, W, C)
        picture = picture[..., 0] if picture.shape[-1] == 1 else picture
        cmap = "gray" if picture.ndim == 2 else None
        label = rows[rows["index"] == index].iloc[0]
        image_axes[0].imshow(picture, cmap=cmap)
        name = class_names[label["class"]] if class_names is not None else f"class {label['class']}"
        image_axes[0].set_title(name, fontsize=8)
        for ax, layer in zip(image_axes[1:], layers):
            cells = rows[(rows["index"] == index) & (rows.layer == layer)]
            expert_map = np.zeros((grid_rows, grid_cols), dtype=int)
            expert_map[cells.row.to_numpy(), cells.col.to_numpy()] = cells.top1_expert.to_numpy()
            height, width = picture.shape[:2]
            ax.imshow(picture, cmap=cmap, alpha=0.55)
            ax.imshow(colors[expert_map][..., :3], alpha=0.45, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                      interpolation="nearest")
            for r, c, e in zip(cells.row, cells.col, cells.top1_expert):
                ax.text((c + 0.5) * width / grid_cols - 0.5, (r + 0.5) * height / grid_rows - 0.5, str(e),
                        ha="center", va="center", fontsize=7.5, color="black")
            ax.set_title(f"block {layer + 1}", fontsize=8)
        for ax in image_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Top-1 expert of every patch\n({run})", fontsize=8)
    fig.tight_layout()
    return fig


def grid_accuracy(summary: pd.DataFrame, grid: str, title: str) -> plt.Figure:
    """Test accuracy (mean ± std over seeds) of every configuration of one grid, per dataset."""
    return _accuracy_panels(summary[summary.grid == grid], title)


BALANCING_ORDER = ["none", "switch-loss", "loss-free", "both"]


def capacity_tradeoff(summary: pd.DataFrame, grid: str = "capacity", ax=None) -> plt.Figure:
    """Test accuracy against the share of assignments dropped (validation, last epoch), per
    router and drop policy, one point per capacity factor; dropless as a dashed line."""
    rows = summary[summary.grid == grid]
    if rows.empty:
        return no_runs(f"the {grid} grid")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.6, 2.9))
    colors = {"top1": "tab:blue", "top2": "tab:orange"}
    for router, color in colors.items():
        dropless = rows[rows.label == f"{router}-dropless"]
        if len(dropless):
            ax.axhline(dropless.test_acc_mean.iloc[0] * 100, color=color, ls="--", lw=0.8)
        for policy, marker in (("position", "o"), ("priority", "s")):
            points = rows[rows.label.str.startswith(f"{router}-cf") & rows.label.str.endswith(policy)]
            points = points.sort_values("final_val_dropped_mean")
            if len(points):
                ax.errorbar(points.final_val_dropped_mean * 100, points.test_acc_mean * 100,
                            yerr=points.test_acc_std.fillna(0) * 100, fmt=f"-{marker}", ms=4, capsize=2,
                            color=color, mfc="white" if policy == "priority" else color,
                            label=f"{router} {policy}")
    ax.set_xlabel("assignments dropped (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"capacity ({rows.dataset.iloc[0]}; dashed: dropless)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return fig


def balancing_over_time(metrics: pd.DataFrame, grid: str = "balancing", ax=None) -> plt.Figure:
    """Validation load CV per epoch (mean ± std over seeds) of each balancing method."""
    rows = metrics[metrics.grid == grid]
    if rows.empty:
        return no_runs(f"the {grid} grid")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.4, 2.9))
    for label in ordered(rows.label, BALANCING_ORDER):
        group = rows[rows.label == label].groupby("epoch").val_load_cv
        mean, std = group.mean(), group.std()
        ax.plot(mean.index, mean, "-o", ms=3, label=label)
        ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("load CV (0 = balanced)")
    ax.set_title(f"balancing, top-1 ({rows.dataset.iloc[0]})", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return fig


def convergence(metrics: pd.DataFrame, grid: str | tuple[str, ...], dataset: str,
                height: float = 3.0) -> plt.Figure:
    """Validation accuracy against epochs (left) and against training wall seconds (right),
    mean over seeds with the spread shaded (left) or every seed drawn (right); ``grid`` may name
    several grids whose labels differ (the 6- and 12-block convergence grids)."""
    grids = (grid,) if isinstance(grid, str) else tuple(grid)
    rows = metrics[metrics.grid.isin(grids) & (metrics.dataset == dataset)]
    if rows.empty:
        return no_runs(f"the {' and '.join(grids)} grid on {dataset}")
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(8.0, height), sharey=True)
    for label, color in zip(sorted(rows.label.unique()), plt.cm.tab10.colors):
        runs = rows[rows.label == label]
        curve = runs.groupby("epoch").val_acc
        mean, std = curve.mean() * 100, curve.std().fillna(0) * 100
        by_epoch.plot(mean.index, mean, "-o", ms=2.5, color=color, label=label)
        by_epoch.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.15)
        for _, run in runs.groupby("seed"):
            by_time.plot(run.wall_time_s, run.val_acc * 100, "-", lw=0.9, color=color, alpha=0.8)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("validation accuracy (%)")
    by_time.set_xlabel("training wall time (s)")
    by_epoch.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{' and '.join(grids)} ({dataset})", fontsize=9)
    fig.tight_layout()
    return fig


def lm_convergence(metrics: pd.DataFrame, step_time: dict[str, float], grid: str = "lm",
                   height: float = 3.0, width: float = 8.0) -> plt.Figure:
    """Validation bits per byte of the language models against training steps (left: mean over
    seeds, spread shaded) and against time in steps of the dense model of equal active FLOPs
    (right: steps times ``step_time``, label -> step time over that model from ``bench.py train
    --family lm``, measured side by side in one run so that runs trained on different machines
    compare; a label without a ratio is left out on the right)."""
    rows = metrics[metrics.grid == grid]
    if rows.empty:
        return no_runs(f"the {grid} grid")
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(width, height), sharey=True)
    tops = []
    moe_colors = iter(plt.cm.tab10.colors[2:])
    for label in ordered(rows.label.unique(), ["lm-dense-active", "lm-dense-params"]):
        curve = rows[rows.label == label].groupby("step").val_bpb
        mean, std = curve.mean(), curve.std().fillna(0)
        dense = label.startswith("lm-dense")
        style = dict(color="black" if label == "lm-dense-active" else "0.5" if dense else next(moe_colors),
                     ls="--" if dense else "-", lw=1.3 if dense else 1.0, label=label.removeprefix("lm-"))
        by_step.plot(mean.index, mean, marker="o", ms=2, **style)
        by_step.fill_between(mean.index, mean - std, mean + std, color=style["color"], alpha=0.12)
        if label in step_time:
            by_time.plot(mean.index * step_time[label], mean, **style)
        tops.append(mean.iloc[min(2, len(mean) - 1)])                   # the early steps would flatten the rest
    by_step.set_ylim(rows.groupby(["label", "step"]).val_bpb.mean().min() - 0.03, max(tops))
    by_step.set_xlabel("training step")
    by_step.set_ylabel("validation bits per byte")
    by_time.set_xlabel("steps x step time over dense-active")
    by_step.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def kind_expert_heatmap(kinds: pd.DataFrame, run: str, kind_names, split: str = "test",
                        blocks: int | None = None) -> plt.Figure:
    """P(top-1 expert | byte kind) in each MoE block of a language model (kinds.csv rows of
    ``run``, last logged epoch of ``split``; the first ``blocks`` MoE blocks, or all); kinds that
    never occur in the split are left out."""
    rows = _final_rows(kinds[kinds.run == run], split)
    if rows.empty:
        return no_runs(f"kinds.csv of {run}")
    layers = sorted(rows.layer.unique())[:blocks]
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        table = rows[rows.layer == layer].pivot_table(index="expert", columns="kind", values="top1", aggfunc="sum")
        table = table.loc[:, table.sum(axis=0) > 0].astype(float)
        share = table / table.sum(axis=0)
        sns.heatmap(share.set_axis([kind_names[k] for k in share.columns], axis=1)
                    .set_axis([f"E{e}" for e in share.index]), ax=ax, cmap="viridis", vmin=0,
                    annot=share.size <= 160, fmt=".2f", annot_kws={"fontsize": 7}, cbar=layer == layers[-1],
                    cbar_kws={"fraction": 0.046})
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelrotation=0)
        ax.set_xlabel("byte kind")
        ax.set_ylabel("expert")
        ax.set_title(f"block {layer + 1}: P(expert | kind)")
    if len(layers) > 1:
        fig.suptitle(f"Expert x byte-kind routing ({split}) — {run}", fontsize=8)
    fig.tight_layout()
    return fig


def text_routing(routed: pd.DataFrame, run: str, lines: int = 10, width: int = 56) -> plt.Figure:
    """The first ``lines`` lines of a language model's held-out text (test_text.csv rows of
    ``run``; lines cut at ``width`` bytes), each byte on a cell tinted by its top-1 expert, one
    panel per MoE block, with the colour of each expert in a legend. Bytes outside printable
    ASCII are drawn as a middle dot."""
    rows = routed[routed.run == run]
    if rows.empty:
        return no_runs(f"test_text.csv of {run}")
    layers = sorted(rows.layer.unique())
    experts = int(rows.top1_expert.max()) + 1
    colors = plt.cm.tab10(np.arange(experts) % 10) if experts <= 10 else plt.cm.tab20(np.arange(experts) % 20)
    first = rows[rows.layer == layers[0]].sort_values("index")
    cells, line, col = [], 0, 0                                            # (position in text, row, column)
    for position, byte in enumerate(first.byte):
        if line >= lines:
            break
        if byte == 10:
            line, col = line + 1, 0
            continue
        if col < width:
            cells.append((position, line, col))
        col += 1
    # A cell of 0.125 x 0.2 inch holds a 7.5-pt monospace character with room around it.
    fig, axes = plt.subplots(len(layers), 1, figsize=(0.125 * width + 0.3, 0.2 * lines * len(layers) + 1.1),
                             squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        of_layer = rows[rows.layer == layer].sort_values("index")
        expert, byte = of_layer.top1_expert.to_numpy(), of_layer.byte.to_numpy()
        tint = np.ones((lines, width, 3))
        for position, r, c in cells:
            tint[r, c] = colors[expert[position]][:3]
        ax.imshow(tint, alpha=0.55, aspect="auto", interpolation="nearest")
        for position, r, c in cells:
            char = chr(byte[position]) if 32 <= byte[position] < 127 else "\u00b7"
            ax.text(c, r, char, ha="center", va="center", fontsize=7.5, family="monospace")
        ax.set_axis_off()
        ax.set_title(f"block {layer + 1}: top-1 expert of every byte (colour)", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[e][:3], alpha=0.55) for e in range(experts)]
    fig.legend(handles, [f"E{e}" for e in range(experts)], loc="lower center", ncol=min(experts, 10),
               fontsize=7.5, frameon=False, handlelength=1.2, columnspacing=1.0)
    fig.suptitle(f"Held-out text routed by {run}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


LR_TITLES = {"lr": "Learning rate of the MNIST mixture and its dense baselines (5 epochs)",
             "lr_vit": "Learning rate of the Fashion-MNIST ViT, top-2 MoE blocks and dense (3 epochs)",
             "lr_lm": "Learning rate of the byte-level language model, top-2 of 8 and dense (2,000 steps)"}


def learning_rate_sweep(summary: pd.DataFrame, grid: str = "lr") -> plt.Figure:
    """The validation score that selects the rate and the test score against the learning rate,
    one line per model of the learning-rate grid ``grid`` (mean ± std over seeds): accuracy in %,
    or bits per byte for the language model (lower is better)."""
    rows = summary[summary.grid == grid]
    if rows.empty:
        return no_runs(f"learning-rate sweep ({grid})")
    model_rate = [split_lr_label(label) for label in rows.label]
    rows = rows.assign(model=[model for model, _ in model_rate], lr=[float(rate) for _, rate in model_rate])
    bits = rows.test_acc_mean.isna().all() or rows.test_bpb_mean.notna().any()
    panels = ((("best_val_bpb", "lowest validation bits per byte"), ("test_bpb", "test bits per byte")) if bits else
              (("best_val_acc", "best validation accuracy (%)"), ("test_acc", "test accuracy (%)")))
    scale = 1.0 if bits else 100.0
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), sharey=True)
    for ax, (column, title) in zip(axes, panels):
        for model, table in rows.groupby("model", sort=False):
            table = table.sort_values("lr")
            ax.errorbar(table.lr, scale * table[f"{column}_mean"], yerr=scale * table[f"{column}_std"].fillna(0),
                        marker="o", capsize=3, label=model)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(LR_TITLES.get(grid, f"Learning rate ({grid})"))
    fig.tight_layout()
    return fig


def regularisers_on_balanced(summary: pd.DataFrame, grid: str = "regularisation_balanced") -> plt.Figure:
    """Test accuracy against the coefficient of each regulariser added to the balanced top-1 MoE
    (mean ± std over seeds), the balanced MoE alone as a band; points, not bars, so that the axis
    need not start at 0."""
    rows = summary[summary.grid == grid]
    if rows.empty:
        return no_runs("regularisers on a balanced MoE")
    base = rows[rows.label == "balance"].iloc[0]
    families = {"dropout": ("dropout", "dropout rate"), "entropy": ("entropy", "gate-entropy coefficient"),
                "z": ("z", "router z-loss coefficient")}
    fig, axes = plt.subplots(1, len(families), figsize=(9.0, 2.8), sharey=True)
    for ax, (prefix, (name, xlabel)) in zip(axes, families.items()):
        table = rows[rows.label.str.match(rf"{prefix}[-+0-9]")]
        coefs = table.label.str.removeprefix(prefix).astype(float)
        ax.axhspan(100 * (base.test_acc_mean - base.test_acc_std), 100 * (base.test_acc_mean + base.test_acc_std),
                   color="0.85", label="Switch loss alone (± std)")
        ax.axhline(100 * base.test_acc_mean, color="0.4", lw=1)
        ax.errorbar(coefs, 100 * table.test_acc_mean, yerr=100 * table.test_acc_std.fillna(0), fmt="o", capsize=3,
                    color="tab:blue", label="+ the regulariser")
        if prefix == "z":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle("Regularisers on a top-1 MoE balanced by the Switch loss (MNIST, mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


# The study's question, one row per MoE: (row text, grid, dataset, MoE label, dense reference of equal
# total parameters, dense reference of equal active parameters); None where the grid has no such model.
WHERE_MOE_PAYS = (
    ("MNIST, top-1 of 8 MLPs", "moe_vs_dense", "mnist", "moe-hard", "dense-params", "dense-active"),
    ("MNIST, top-2 of 8 MLPs", "moe_vs_dense", "mnist", "moe-top2", "dense-params", "dense-active-top2"),
    ("Fashion-MNIST, top-1", "moe_vs_dense", "fashion-mnist", "moe-hard", "dense-params", "dense-active"),
    ("Fashion-MNIST, top-2", "moe_vs_dense", "fashion-mnist", "moe-top2", "dense-params", "dense-active-top2"),
    ("MNIST, top-1 of 8 CNNs", "cnn_experts", "mnist", "moe-hard-cnn", "dense-params-cnn", None),
    ("CIFAR-10 conv trunk, top-1 head", "cifar_trunk", "cifar10-jpeg", "moe-hard", "dense-params", "dense-active"),
    ("CIFAR-10 conv trunk, top-2 head", "cifar_trunk", "cifar10-jpeg", "moe-top2", "dense-params", None),
    ("Fashion-MNIST ViT, top-2 blocks", "vit", "fashion-mnist", "vit-moe-top2", None, "vit-dense-active"),
    ("CIFAR-10 ViT, top-2 blocks (15 ep.)", "vit_convergence", "cifar10-jpeg", "d6-moe-top2", "d6-dense-params",
     "d6-dense-active"),
    ("iris, top-1 of 4", "tabular", "iris", "e4-top1", "e4-dense-params", "e4-dense-active"),
    ("wine, top-1 of 4", "tabular", "wine", "e4-top1", "e4-dense-params", "e4-dense-active"),
    ("breast cancer, top-1 of 4", "tabular", "breast-cancer", "e4-top1", "e4-dense-params", "e4-dense-active"),
    ("reviews, TF-IDF, top-1 of 4", "reviews", "tfidf-rotten-tomatoes", "top1", "dense-params", "dense-active"),
    ("reviews, TF-IDF, top-2 of 4", "reviews", "tfidf-rotten-tomatoes", "top2", "dense-params", "dense-active-top2"),
    ("reviews, bytes, top-2 blocks", "reviews_bytes", "rotten-tomatoes", "top2-e8", "dense-params", "dense-active"),
    ("MNIST superpixels, top-1 of 8", "graphs", "superpixels-mnist", "e8-top1", "e8-dense-params", "dense-active"),
    ("MNIST superpixels, top-2 of 8", "graphs", "superpixels-mnist", "e8-top2", "e8-dense-params",
     "dense-active-top2"),
    ("molecules, top-1 of 8", "molecules", "solubility", "e8-top1", "e8-dense-params", "dense-active"),
    ("molecules, top-2 of 8", "molecules", "solubility", "e8-top2", "e8-dense-params", "dense-active-top2"),
)
WHERE_MOE_PAYS_TEXT = (
    ("top-2 of 8", "lm", "python-stdlib", "lm-top2-e8", "lm-dense-params", "lm-dense-active"),
    ("top-1 of 8", "lm", "python-stdlib", "lm-top1-e8", "lm-dense-params-top1", "lm-dense-active"),
    ("top-8 of 32", "lm", "python-stdlib", "lm-top8-e32", "lm-dense-params", "lm-dense-active"),
    ("top-4 of 32", "lm", "python-stdlib", "lm-top4-e32", "lm-dense-params-top1", "lm-dense-active"),
)
# Okabe-Ito: distinguishable with every common colour-vision deficiency.
TOTAL_COLOUR, ACTIVE_COLOUR = "#0072B2", "#D55E00"


def _paired(comparisons: pd.DataFrame, grid: str, dataset: str, model: str, reference: str | None):
    """(mean, low, high, n) of model - reference from comparisons.csv, or None when absent."""
    if reference is None:
        return None
    row = comparisons[(comparisons.grid == grid) & (comparisons.dataset == dataset) & (comparisons.model == model)
                      & (comparisons.reference == reference)]
    return None if row.empty else row.iloc[0]


def where_moe_pays(comparisons: pd.DataFrame) -> plt.Figure:
    """Each MoE of the study against the dense network of its total parameters (blue dots) and of
    its active parameters (orange squares): the paired difference over seeds (and folds) with its
    95 % interval. Left: test accuracy in points (right of 0: the MoE is better); right: the
    language models' test bits per byte saved (right of 0: the MoE predicts better)."""
    panels = [(WHERE_MOE_PAYS, 100.0, "test accuracy: MoE - dense (points)", "images, tables, reviews and graphs"),
              (WHERE_MOE_PAYS_TEXT, -1.0, "test bits/byte: dense - MoE", "byte-level language model")]
    # The rows whose grid has run (a grid not yet in comparisons.csv leaves no empty line).
    panels = [([row for row in rows if _paired(comparisons, *row[1:5]) is not None
                or _paired(comparisons, *row[1:4], row[5]) is not None], scale, label, title)
              for rows, scale, label, title in panels]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        return no_runs("the MoE-against-dense comparisons")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.7, 0.18 * max(len(rows) for rows, *_ in panels) + 1.1),
                             gridspec_kw={"width_ratios": [1.35, 1][:len(panels)]}, squeeze=False)
    for ax, (rows, scale, label, title) in zip(axes[0], panels):
        ax.set_title(title, fontsize=8, loc="left")
        for y, (text, grid, dataset, model, total, active) in enumerate(rows):
            for offset, reference, colour, marker, name in ((-0.14, total, TOTAL_COLOUR, "o", "equal total parameters"),
                                                            (0.14, active, ACTIVE_COLOUR, "s", "equal active parameters")):
                row = _paired(comparisons, grid, dataset, model, reference)
                if row is None:
                    continue
                low, high = sorted((scale * row.diff_low, scale * row.diff_high))
                ax.errorbar(scale * row.diff_mean, y + offset, xerr=[[scale * row.diff_mean - low],
                                                                     [high - scale * row.diff_mean]],
                            fmt=marker, color=colour, mfc=colour if marker == "o" else "white", ms=4, capsize=2,
                            lw=1, label=f"vs dense of {name}")
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=7.5)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=7.5, loc="lower center", ncol=2, frameon=False)
    fig.suptitle("Where MoE pays: paired difference over seeds (tables: seeds x folds), 95 % interval", fontsize=8.5)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def save_png(fig: plt.Figure, path, dpi: float = 110, colours: int = 256) -> None:
    """Write ``fig`` to ``path`` as a PNG of at most ``colours`` colours (a palette image): for the
    line, bar and heatmap figures of the study a third of the bytes of full colour and no visible
    change, so that a notebook that embeds its figures stays small."""
    import io

    from PIL import Image  # Pillow comes with matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, format="png",
                                                                                      optimize=True)
