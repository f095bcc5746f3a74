"""moelab/training/tuning.py: --tune picks the learning rate and weight decay on the validation rows."""
import json

import pandas as pd
import pytest
from runs import cli


def test_tune_chooses_the_learning_rate_and_weight_decay_on_the_validation_rows_and_trains_with_them(tmp_path):
    from moelab.training import tuning

    assert cli(tmp_path, "--dataset", "iris", "--experts", "2", "--gating", "topk", "--epochs", "4",
               "--expert-hidden", "8", "--tune") == 0
    run = tmp_path / "runs" / "r"
    tried = pd.read_csv(run / "tuning.csv")
    assert len(tried) == len(tuning.candidates()) == 8 and tried.chosen.sum() == 1
    chosen = tried[tried.chosen == 1].iloc[0]
    best = tried.sort_values(["best_val_score", "val_loss_at_best"], ascending=[False, True], kind="stable").iloc[0]
    assert (chosen.lr, chosen.weight_decay) == (best.lr, best.weight_decay)
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["lr"], config["weight_decay"], config["tune"]) == (chosen.lr, chosen.weight_decay, True)
    summary = json.loads((run / "summary.json").read_text())
    # the run is the chosen candidate trained again: same seed, same rows, same numbers
    assert summary["best_val_acc"] == pytest.approx(chosen.best_val_score, abs=1e-7)
    assert summary["best_epoch"] == chosen.best_epoch
    assert not (run / tuning.SCRATCH).exists()
    assert cli(tmp_path, "--dataset", "mnist", "--tune", "--run-name", "m") == 2
