"""Figures of what the experts do: how each router activates them, how each expert's loss evolves
over training, and which classes each one processes, with how alike the seeds' divisions of the
classes are. Every function takes DataFrames of logs.py (read_test_gates, read_all) and returns
a Figure; the numbers under them are the pure functions of specialisation.py."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from . import specialisation as spec
from .plots import GATING_ORDER, ROUTER_NAMES, no_runs, ordered

CORE_ROUTERS = ("soft", "hard", "top2", "expert-choice")
# Okabe-Ito: distinguishable with every common colour-vision deficiency.
BAR_COLOUR, MASS_COLOUR, CHANCE_COLOUR = "#0072B2", "#D55E00", "#777777"
GATE_BINS = np.linspace(0.0, 1.0, 21)         # combine weights, 0.05 wide
FIGURE_WIDTH = 6.7                             # inches: A4's text width with 2 cm margins, so print size is 100 %
ENTROPY_BINS = 20


def _name(label: str) -> str:
    return ROUTER_NAMES.get(label, label)


def _chosen(frame: pd.DataFrame, grid: str, dataset: str, labels) -> tuple[pd.DataFrame, list[str]]:
    """The rows of one grid and dataset, and the routers of ``labels`` (all, in GATING_ORDER,
    when None) that have rows there."""
    rows = frame[(frame.grid == grid) & (frame.dataset == dataset)] if not frame.empty else frame
    present = set(rows.label) if not rows.empty else set()
    wanted = ordered(present, GATING_ORDER) if labels is None else [x for x in labels if x in present]
    return rows, wanted


def _seed_bars(ax, x, per_seed: np.ndarray, width: float, colour: str, label: str | None = None) -> None:
    """Bars at the mean over seeds, whiskers from the lowest to the highest seed."""
    table = spec.over_seeds(per_seed)
    ax.bar(x, table["mean"], width, color=colour, label=label)
    ax.errorbar(x, table["mean"], yerr=[table["mean"] - table["min"], table["max"] - table["mean"]],
                fmt="none", ecolor="black", elinewidth=0.6, capsize=1.5)


# ----------------------------------------------------------------------------- 1. activations

def activation_distributions(gates: pd.DataFrame, grid: str = "gating", dataset: str = "mnist",
                             labels=CORE_ROUTERS) -> plt.Figure:
    """One row per router, from every test sample of every seed (logs.read_test_gates): the gate
    weight of each expert that processed a sample; the number of experts per sample; the gate
    entropy per sample; each expert's share of the assignments (bars) and of the gate mass
    (dots), experts of every seed sorted by load (specialisation.load_order) against the
    balanced 1/E. Bars are the mean over seeds of each seed's shares, whiskers min to max."""
    rows, labels = _chosen(gates, grid, dataset, labels)
    if not labels:
        return no_runs(f"test gates of {grid} on {dataset}")
    n_experts = rows.weights.iloc[0].shape[1]
    entropy_bins = np.linspace(0.0, np.log(n_experts), ENTROPY_BINS + 1)
    fig, axes = plt.subplots(len(labels), 4, figsize=(FIGURE_WIDTH, 1.05 * len(labels) + 1.1), squeeze=False)
    for row_axes, label in zip(axes, labels):
        runs = rows[rows.label == label]
        _gate_panel(row_axes[0], runs)
        _experts_used_panel(row_axes[1], runs, n_experts)
        _entropy_panel(row_axes[2], runs, entropy_bins)
        _load_panel(row_axes[3], runs, n_experts)
    titles = ("combine weight of each\nprocessed (sample, expert)", "experts per sample",
              "gate entropy per sample", "share of the work\nper expert")
    ylabels = ("share of pairs", "share of samples", "share of samples", "share of all")
    xlabels = ("combine weight", "experts processing it", "entropy (nats)", "expert rank by load")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    for row_axes in axes:
        for ax, ylabel in zip(row_axes, ylabels):
            ax.set_ylabel(ylabel, fontsize=7, labelpad=1)
    for ax, xlabel in zip(axes[-1], xlabels):
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
    seeds = rows[rows.label.isin(labels)].groupby("label").seed.nunique()
    handles = [*axes[0, 3].get_legend_handles_labels()[0], *axes[0, 2].get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle(f"Expert activations on the test set ({dataset}, {grid} grid)\nbars: mean over "
                 f"{_seed_count(seeds)} seeds of each seed's shares, whiskers: min to max over seeds", fontsize=9)
    fig.tight_layout(rect=(0.035, 0.035, 1.0, 1.0))
    for row_axes, label in zip(axes, labels):     # the router of each row, left of its y labels
        box = row_axes[0].get_position()
        fig.text(0.012, box.y0 + box.height / 2, _name(label).replace(", ", ",\n").replace(" top", "\ntop"),
                 rotation=90, ha="center", va="center", fontsize=8, fontweight="bold", linespacing=0.9)
    return fig


def _seed_count(seeds: pd.Series) -> str:
    """'5', or '3-5' when the routers have different numbers of seeds."""
    return f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"


def _gate_panel(ax, runs: pd.DataFrame) -> None:
    per_seed = np.stack([spec.histogram_shares(spec.processed_gate_values(w, used), GATE_BINS)
                         for w, used in zip(runs.weights, runs.experts_used)])          # (S, B)
    _seed_bars(ax, (GATE_BINS[:-1] + GATE_BINS[1:]) / 2, per_seed, np.diff(GATE_BINS)[0] * 0.9, BAR_COLOUR)
    ax.set_xlim(0, 1)


def _experts_used_panel(ax, runs: pd.DataFrame, n_experts: int) -> None:
    per_seed = np.stack([spec.experts_per_sample_shares(used, n_experts) for used in runs.experts_used])  # (S, E+1)
    _seed_bars(ax, np.arange(n_experts + 1), per_seed, 0.8, BAR_COLOUR)
    ax.set_xticks(range(0, n_experts + 1, max(1, n_experts // 4)))
    ax.set_ylim(0, 1.05)


def _entropy_panel(ax, runs: pd.DataFrame, bins: np.ndarray) -> None:
    per_seed = np.stack([spec.histogram_shares(entropy.astype(np.float64), bins)
                         for entropy in runs.gate_entropy])                                # (S, B)
    _seed_bars(ax, (bins[:-1] + bins[1:]) / 2, per_seed, np.diff(bins)[0] * 0.9, BAR_COLOUR)
    ax.axvline(bins[-1], color=CHANCE_COLOUR, ls=":", lw=1, label="uniform gate: log E")
    ax.set_xlim(0, bins[-1] * 1.04)


def _load_panel(ax, runs: pd.DataFrame, n_experts: int) -> None:
    assignments, masses = [], []
    for weights, used in zip(runs.weights, runs.experts_used):
        share, mass = spec.assignment_shares(weights, used), spec.gate_mass_shares(weights)
        order = spec.load_order(share, mass)
        assignments.append(share[order])
        masses.append(mass[order])
    ranks = np.arange(1, n_experts + 1)
    _seed_bars(ax, ranks, np.stack(assignments), 0.75, BAR_COLOUR, label="share of the assignments")
    ax.plot(ranks, spec.over_seeds(np.stack(masses))["mean"], "o", ms=3, color=MASS_COLOUR,
            label="share of the gate mass (mean)")
    ax.axhline(1.0 / n_experts, color="black", ls="--", lw=0.8, label="balanced: 1/E")
    ax.set_xticks(ranks[:: max(1, n_experts // 8)])


# ----------------------------------------------------------------------------- 2. loss over training

def expert_loss_curves(experts: pd.DataFrame, grid: str = "gating", dataset: str = "mnist", labels=None,
                       window: int = 5) -> plt.Figure:
    """Each expert's cross-entropy on the training rows routed to it (experts.csv train_batch,
    every 40 steps), one panel per router. Experts are not the same from one seed to the next,
    so each seed's experts are numbered by their final test load (specialisation.loss_by_load_rank):
    line = mean over seeds of the expert of that rank, band = min to max over seeds, after a
    rolling mean over ``window`` consecutive logs of each expert (one batch gives it few rows)."""
    rows, labels = _chosen(experts, grid, dataset, labels)
    if not labels:
        return no_runs(f"expert losses of {grid} on {dataset}")
    table = spec.loss_by_load_rank(rows[rows.label.isin(labels)], window=window)
    n_ranks = int(table["rank"].max())
    colours = ListedColormap(plt.cm.viridis(np.linspace(0.0, 0.85, n_ranks)))   # ordered; no pale yellow
    columns = len(labels) + 1 if len(labels) <= 4 else 4           # one cell more: the key
    n_rows = -(-(len(labels) + 1) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(FIGURE_WIDTH, 1.6 * n_rows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    for ax, label in zip(axes.flat, labels):
        for rank, curve in table[table.label == label].groupby("rank"):
            ax.fill_between(curve.step, curve["min"], curve["max"], color=colours(rank - 1), alpha=0.1, lw=0)
            ax.plot(curve.step, curve["mean"], color=colours(rank - 1), lw=1.0)
        ax.set_title(_name(label), fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    if table["mean"].notna().any():
        # The axis follows the mean curves; a band may leave it (a seed whose expert got 3 rows at once).
        axes[0, 0].set_ylim(max(table["mean"].min() / 2, 1e-4), table["max"].max() * 1.5)
    for ax in axes[:, 0]:
        ax.set_ylabel("cross-entropy on its\nrouted rows (nats)", fontsize=8)
    for i, ax in enumerate(axes.flat[:len(labels)]):
        if i + columns >= len(labels):           # no panel below it
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("training step", fontsize=8)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    _rank_key(axes.flat[-1], colours, n_ranks, rows[rows.label.isin(labels)], window)
    fig.suptitle(f"Each expert's loss on its own training rows ({dataset}, {grid} grid)", fontsize=9)
    fig.tight_layout()
    return fig


def _rank_key(ax, colours, n_ranks: int, rows: pd.DataFrame, window: int) -> None:
    """The colour key of the load ranks and what the lines and bands are, in a spare cell."""
    key = ax.inset_axes([0.05, 0.72, 0.9, 0.1])
    narrow = ax.get_position().width < 0.2          # a fifth of the figure: every rank's tick would touch
    ticks = [1, (n_ranks + 1) // 2, n_ranks] if narrow else list(range(1, n_ranks + 1))
    bar = plt.colorbar(plt.cm.ScalarMappable(plt.Normalize(0.5, n_ranks + 0.5), colours), cax=key,
                       orientation="horizontal", ticks=ticks)
    bar.ax.tick_params(labelsize=7)
    bar.ax.set_title("expert's load rank at the end\n(1 = most loaded on the test set)", fontsize=7)
    seeds = _seed_count(rows.groupby("label").seed.nunique())
    ax.text(0.0, 0.5, f"line: mean over {seeds} seeds\nband: min to max over seeds\n"
            f"rolling mean over {window} logs\na gap: no rows routed to it", transform=ax.transAxes, va="top",
            fontsize=7)


# ----------------------------------------------------------------------------- 3. data per expert

def class_routing(routing: pd.DataFrame, grid: str = "gating", dataset: str = "mnist", labels=CORE_ROUTERS,
                  seed: int = 0, value: str = "top1", class_names=None,
                  agreement: pd.DataFrame | None = None) -> plt.Figure:
    """P(expert | class) on the test set for one seed of each router (experts reordered along
    the diagonal, specialisation.diagonal_order; E3 is the run's expert 3), and below, for every
    router of the grid, how alike its seeds' specialisations are (specialisation.seed_agreement:
    matched overlap and its chance level, mean +- std over seed pairs; the chance-corrected
    agreement in each heatmap's title). ``agreement``: seed_agreement's table, computed when None."""
    rows, labels = _chosen(routing, grid, dataset, labels)
    if not labels:
        return no_runs(f"class routing of {grid} on {dataset}")
    rows = rows[rows.split == "test"]
    table = agreement if agreement is not None else spec.seed_agreement(rows, value=value)
    table = table[(table.grid == grid) & (table.dataset == dataset)].set_index("label")
    fig = plt.figure(figsize=(FIGURE_WIDTH, 3.9 if class_names is None else 4.5), layout="constrained")
    top, bottom = fig.add_gridspec(2, 1, height_ratios=[1.4, 1.0])
    heat_axes = top.subgridspec(1, len(labels) + 1, width_ratios=[1] * len(labels) + [0.06]).subplots()
    image = None
    for ax, label in zip(heat_axes, labels):
        run = rows[(rows.label == label) & (rows.seed == seed)]
        if run.empty:
            ax.axis("off")
            ax.set_title(f"{_name(label)}: no seed {seed}", fontsize=8)
            continue
        image = _profile_heatmap(ax, spec.class_profiles(run, value), class_names)
        kappa = table.agreement_mean.get(label, np.nan)
        ax.set_title(f"{_name(label)}\nagreement {kappa:.2f}" if np.isfinite(kappa) else _name(label), fontsize=8)
    heat_axes[0].set_ylabel(f"expert (seed {seed})", fontsize=8)
    if image is not None:
        bar = fig.colorbar(image, cax=heat_axes[-1])
        bar.set_label("P(expert | class)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    _agreement_panel(fig.add_subplot(bottom), table)
    what = {"top1": "top-1 expert", "count": "experts processing it", "gate_mass": "gate mass"}.get(value, value)
    fig.suptitle(f"Which classes each expert processes ({dataset} test set, share of each class by {what})",
                 fontsize=9)
    return fig


def _profile_heatmap(ax, profiles: np.ndarray, class_names):
    order = spec.diagonal_order(profiles)
    image = ax.imshow(profiles[order], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    n_classes = profiles.shape[1]
    names = class_names if class_names is not None else [str(c) for c in range(n_classes)]
    ax.set_xticks(range(n_classes), names, fontsize=7, rotation=90 if class_names is not None else 0)
    ax.set_yticks(range(len(order)), [f"E{e}" for e in order], fontsize=7)
    if class_names is None:                      # names speak for themselves; digits need the word
        ax.set_xlabel("class", fontsize=8)
    ax.tick_params(length=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image


def _agreement_panel(ax, table: pd.DataFrame) -> None:
    labels = ordered(table.index, GATING_ORDER)
    table = table.loc[labels]
    x = np.arange(len(labels))
    ax.errorbar(x - 0.1, table.overlap_mean, yerr=table.overlap_std.fillna(0), fmt="o", ms=4, capsize=2,
                color=BAR_COLOUR, label="matched overlap of two seeds")
    ax.errorbar(x + 0.1, table.chance_mean, yerr=table.chance_std.fillna(0), fmt="s", ms=4, capsize=2,
                color=CHANCE_COLOUR, mfc="white", label="chance: one seed's classes shuffled")
    for xi, (kappa, spread) in enumerate(zip(table.agreement_mean, table.agreement_std.fillna(0))):
        ax.annotate(f"{kappa:.2f}±{spread:.2f}", (xi, 1.01), ha="center", va="bottom", fontsize=7,
                    xycoords=("data", "axes fraction"))
    ax.set_xticks(x, [_name(label) for label in labels], fontsize=7, rotation=20, ha="right")
    # Points, not bars: the axis starts near the lowest point, so that overlap and chance part visibly.
    lows = np.concatenate([table.overlap_mean - table.overlap_std.fillna(0),
                           table.chance_mean - table.chance_std.fillna(0)])
    lowest = lows[np.isfinite(lows)].min() if np.isfinite(lows).any() else 0.0
    bottom = max(0.0, np.floor(lowest * 10 - 1) / 10)
    ax.set_ylim(bottom, 1.12)                    # the legend sits above 1, where no overlap can be
    ax.set_yticks(np.arange(bottom, 1.001, 0.1 if bottom >= 0.3 else 0.2))
    ax.set_ylabel("overlap of the two\nP(expert | class)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    pairs = int(table.pairs.max()) if len(table) else 0
    ax.set_title(f"Across seeds: experts matched by the Hungarian algorithm, mean ± std over {pairs} seed pairs;\n"
                 "above each router: agreement = (overlap - chance) / (1 - chance), 1 = same specialisation",
                 fontsize=8, pad=14)
    ax.legend(fontsize=7, frameon=False, loc="upper left", ncol=2)
