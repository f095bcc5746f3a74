"""The ViT convergence study: its grids, the time-to-accuracy statistic and its figure."""
import math

import pandas as pd

import logs
import plots
import sweep


def test_the_convergence_grids_compare_moe_with_both_dense_vits_at_depth_6_and_12():
    for depth, grid in ((6, "vit_convergence"), (12, "vit_convergence_deep")):
        runs = sweep.grid_vit_convergence(15, depth=depth, grid=grid)
        assert {r.dataset for r in runs} == {sweep.CIFAR, sweep.FASHION}
        labels = {r.label for r in runs}
        assert labels == {f"d{depth}-moe-expert-choice", f"d{depth}-moe-top2", f"d{depth}-dense-active",
                          f"d{depth}-dense-params"}
        for run in runs:
            assert run.grid == grid and run.flags["vit_depth"] == depth and run.flags["moe_every"] == 2
            assert run.flags["epochs"] >= 15
    assert {"vit_convergence", "vit_convergence_deep"} <= set(sweep.GRIDS)


def metrics_of(curves: dict) -> pd.DataFrame:
    rows = []
    for (label, seed), accs in curves.items():
        for epoch, acc in enumerate(accs, start=1):
            rows.append({"grid": "g", "dataset": "d", "label": label, "seed": seed, "epoch": epoch, "val_acc": acc,
                         "wall_time_s": 10.0 * epoch + seed})
    return pd.DataFrame(rows)


def test_time_to_accuracy_is_the_first_epoch_at_or_above_the_threshold():
    metrics = metrics_of({("moe", 0): [0.5, 0.7, 0.8, 0.75], ("moe", 1): [0.6, 0.8, 0.9, 0.9],
                          ("dense", 0): [0.4, 0.5, 0.6, 0.7]})
    table = logs.time_to_accuracy(metrics, 0.8).set_index(["label", "seed"])
    assert table.loc[("moe", 0), "epoch"] == 3 and table.loc[("moe", 0), "wall_time_s"] == 30.0
    assert table.loc[("moe", 1), "epoch"] == 2 and table.loc[("moe", 1), "wall_time_s"] == 21.0
    assert math.isnan(table.loc[("dense", 0), "epoch"]) and math.isnan(table.loc[("dense", 0), "wall_time_s"])


def test_convergence_figure_has_an_epoch_and_a_time_axis():
    metrics = metrics_of({("moe", 0): [0.5, 0.7], ("moe", 1): [0.6, 0.8], ("dense", 0): [0.4, 0.5]})
    figure = plots.convergence(metrics, "g", "d")
    epoch_axis, time_axis = figure.axes
    assert epoch_axis.get_xlabel() == "epoch" and "wall" in time_axis.get_xlabel()
    assert len(epoch_axis.lines) == 2 and len(time_axis.lines) == 3          # mean per model; every seed
    empty = plots.convergence(metrics, "other", "d")
    assert "no completed runs" in empty.axes[0].texts[0].get_text()
