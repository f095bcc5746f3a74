"""moelab/study/plots.py: figures drawn from the logs' tables."""
import pandas as pd
import pytest

from moelab.study import plots

from .synthetic_logs import metrics_of


def comparison(grid, dataset, model, reference, mean, low, high):
    return {"grid": grid, "dataset": dataset, "model": model, "reference": reference, "metric": "test_acc", "n": 5,
            "diff_mean": mean, "diff_low": low, "diff_high": high, "p_value": 0.01, "verdict": "worse"}


def test_where_moe_pays_draws_each_difference_where_the_moe_is_better_to_the_right():
    rows = pd.DataFrame([
        comparison("moe_vs_dense", "mnist", "moe-hard", "dense-params", -0.018, -0.021, -0.015),   # accuracy: MoE worse
        comparison("moe_vs_dense", "mnist", "moe-hard", "dense-active", 0.004, 0.001, 0.007),
        comparison("lm", "python-stdlib", "lm-top2-e8", "lm-dense-active", -0.06, -0.09, -0.03),  # bits: MoE better
    ])
    fig = plots.where_moe_pays(rows)
    images, text = fig.axes
    markers = [line for line in images.lines if line.get_marker() in ("o", "s")]
    assert sorted(float(m.get_xdata()[0]) for m in markers) == pytest.approx([-1.8, 0.4])       # points
    lm_marker = next(line for line in text.lines if line.get_marker() in ("o", "s"))
    assert float(lm_marker.get_xdata()[0]) == pytest.approx(0.06)                               # dense - MoE
    assert images.get_yticklabels()[0].get_text() == "MNIST, top-1 of 8 MLPs"
    assert len(images.get_yticks()) == 1 and len(text.get_yticks()) == 1   # only the rows whose grid has run
    empty = plots.where_moe_pays(rows.iloc[0:0])
    assert "no completed runs" in empty.axes[0].texts[0].get_text()


def test_convergence_figure_has_an_epoch_and_a_time_axis():
    metrics = metrics_of({("moe", 0): [0.5, 0.7], ("moe", 1): [0.6, 0.8], ("dense", 0): [0.4, 0.5]})
    figure = plots.convergence(metrics, "g", "d")
    epoch_axis, time_axis = figure.axes
    assert epoch_axis.get_xlabel() == "epoch" and "wall" in time_axis.get_xlabel()
    assert len(epoch_axis.lines) == 2 and len(time_axis.lines) == 3          # mean per model; every seed
    empty = plots.convergence(metrics, "other", "d")
    assert "no completed runs" in empty.axes[0].texts[0].get_text()
    deeper = metrics_of({("deep", 0): [0.3, 0.4]}).assign(grid="g_deep")
    both = plots.convergence(pd.concat([metrics, deeper]), ("g", "g_deep"), "d")
    assert len(both.axes[0].lines) == 3 and len(both.axes[1].lines) == 4
