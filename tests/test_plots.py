"""moelab/study/plots.py and the report's generated tables: figures drawn from the logs' tables."""
import pandas as pd
import pytest

from moelab.study import plots, report_tables


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
    empty = plots.where_moe_pays(rows.iloc[0:0])
    assert "no completed runs" in empty.axes[0].texts[0].get_text()


def test_the_hyperparameter_table_reads_the_grids_settings():
    rows = {row["grid"]: row for row in report_tables.hyperparameter_rows()}
    assert rows["moe_vs_dense"]["lr"] == "0.002" and rows["moe_vs_dense"]["batch"] == 128
    assert rows["lm"]["budget"] == "8 x 250 steps" and rows["lm"]["k"] == 2
    assert rows["tabular"]["lr"] == "tuned" and rows["tabular"]["batch"] == 16 and rows["tabular"]["budget"] == "50 epochs"
    assert rows["cifar_heads"]["optimizer"] == "sgd" and rows["cifar_heads"]["balance"] == 0.2   # its CV^2 loss
    table = report_tables.table_hyperparameters()
    assert table.count("\\\\\n") == len(rows) + 1 and "\\texttt{moe\\_vs\\_dense}" in table
