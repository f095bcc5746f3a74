"""moelab/training/table_routing.py: the test predictions and gate grid of a table run."""
import json

import pandas as pd
import pytest
from runs import cli
from synthetic import write_csv


def test_a_classification_table_trains_through_the_cli(tmp_path):
    path = tmp_path / "t.csv"
    write_csv(path, rows=200)
    assert cli(tmp_path, "--dataset", f"csv:{path}", "--target", "kind", "--experts", "4", "--gating", "topk",
               "--epochs", "8", "--expert-hidden", "16") == 0
    run = tmp_path / "runs" / "r"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["test_acc"] > 0.8
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["epochs"] == 8 and config["config"]["batch_size"] == 16   # the table default
    assert config["dataset"]["features"][-1] == "colour=red"
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert len(predictions) == 40 and {"pc1", "pc2", "top1_expert", "gate_3", "expert_3"} <= set(predictions.columns)
    assert (predictions.prediction == predictions.target).mean() == pytest.approx(summary["test_acc"])
    grid = pd.read_csv(run / "gate_grid.csv")
    assert len(grid) == 1600 and grid.top1_expert.between(0, 3).all()
