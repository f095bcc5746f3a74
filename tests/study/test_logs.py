"""moelab/study/logs.py: time to a target, the summary rows and the test-gates reader."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from moelab.study import logs
from moelab.training.run_files import RunFileError

from .synthetic_logs import lm_metrics_of, metrics_of


def test_time_to_accuracy_is_the_first_epoch_at_or_above_the_threshold():
    metrics = metrics_of({("moe", 0): [0.5, 0.7, 0.8, 0.75], ("moe", 1): [0.6, 0.8, 0.9, 0.9],
                          ("dense", 0): [0.4, 0.5, 0.6, 0.7]})
    table = logs.time_to_accuracy(metrics, 0.8).set_index(["label", "seed"])
    assert table.loc[("moe", 0), "epoch"] == 3 and table.loc[("moe", 0), "wall_time_s"] == 30.0
    assert table.loc[("moe", 1), "epoch"] == 2 and table.loc[("moe", 1), "wall_time_s"] == 21.0
    assert math.isnan(table.loc[("dense", 0), "epoch"]) and math.isnan(table.loc[("dense", 0), "wall_time_s"])


def test_time_to_bpb_is_the_first_evaluation_at_or_below_and_the_crossing_is_interpolated():
    metrics = lm_metrics_of({("lm-top2-e8", 0): [3.0, 2.0, 1.5, 1.4], ("lm-dense-active", 0): [3.0, 2.5, 2.0, 1.9],
                             ("lm-top1-e8", 0): [1.0, 0.9, 0.8, 0.7]})
    table = logs.time_to_bpb(metrics, 1.75).set_index("label")
    moe = table.loc["lm-top2-e8"]
    assert (moe.epoch, moe.step, moe.wall_time_s) == (3, 300, 21.0)
    assert moe.crossing_step == 250.0                                       # 2.0 at 200, 1.5 at 300: half way
    assert math.isnan(table.loc["lm-dense-active", "crossing_step"])        # never below 1.75
    assert table.loc["lm-top1-e8", "crossing_step"] == 100                  # below at its first evaluation


def test_summary_rows_carry_their_commit_and_confidence_interval(tmp_path):
    runs = pd.DataFrame({"grid": "g", "dataset": "mnist", "label": "a", "seed": [0, 1, 2], "fold": None,
                         "commit": ["abc", "abc", "abd+dirty"], "test_acc": [0.95, 0.96, 0.97]})
    for column in ("test_loss", "best_val_acc", "samples_per_s", "final_val_load_cv", "final_val_dropped",
                   "specialisation", "time_s", "test_bpb", "best_val_bpb", "test_rmse", "test_mae", "test_r2",
                   "best_val_r2", "step_time_vs_dense_active", "model", "gating", "experts", "epochs", "params_total", "params_active",
                   "flops_per_sample"):
        runs[column] = 1.0
    row = logs.aggregate(runs).iloc[0]
    assert row.commit == "abc abd+dirty"
    assert row.test_acc_ci95 == pytest.approx(4.302652729749464 * 0.01 / 3 ** 0.5)


# ----------------------------------------------------------------------------- the test-gates reader

def write_run(root, name: str, gates: dict, experts: int = 20):
    run_dir = root / "runs" / "gating" / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": {"dataset": "mnist", "seed": 0, "experts": experts}}))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))
    np.savez_compressed(run_dir / "test_gates.npz", **gates)
    return run_dir


def test_read_test_gates_scatters_the_top_weights_of_many_experts(tmp_path):
    n, experts = 3, 20
    top_experts = np.tile(np.arange(16, dtype=np.int16)[::-1], (n, 1))      # (N, 16), experts 15..0
    top_weights = np.full((n, 16), 1 / 16, dtype=np.float16)
    gates = {"group": np.arange(n, dtype=np.int16), "predicted": np.arange(n, dtype=np.int16),
             "experts_used": np.full(n, 16, dtype=np.int16), "gate_entropy": np.zeros(n, dtype=np.float16),
             "top_weights": top_weights, "top_experts": top_experts}
    write_run(tmp_path, "mnist-soft-s0", gates, experts)
    table = logs.read_test_gates(tmp_path, "gating", "mnist")
    assert len(table) == 1 and table.label.iloc[0] == "soft"
    weights = table.weights.iloc[0]
    assert weights.shape == (n, experts) and (weights[:, 16:] == 0).all()
    assert weights[:, :16] == pytest.approx(1 / 16)
    assert logs.read_test_gates(tmp_path, "other").empty


def test_read_test_gates_refuses_a_damaged_file(tmp_path):
    run_dir = write_run(tmp_path, "mnist-hard-s0", {"weights": np.eye(4, dtype=np.float16)}, 4)
    (run_dir / "test_gates.npz").write_bytes((run_dir / "test_gates.npz").read_bytes()[:40])
    with pytest.raises(RunFileError, match="npz"):
        logs.read_test_gates(tmp_path, "gating")
