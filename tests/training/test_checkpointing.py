"""moelab/training/checkpointing.py: checkpoints load with weights only and must fit the run."""
import json

import torch
from runs import base_args

from moelab.training import launch


def test_checkpoint_loads_with_weights_only(tmp_path, tiny_data):
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1"]) == 0
    state = torch.load(tmp_path / "runs" / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0


def test_resume_from_a_checkpoint_of_another_model_is_refused(tmp_path, tiny_data, capsys):
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1", "--run-name", "four"]) == 0
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1", "--run-name", "six", "--experts", "6"]) == 0
    runs = tmp_path / "runs"
    (runs / "four" / "checkpoint.pt").write_bytes((runs / "six" / "checkpoint.pt").read_bytes())
    summary = runs / "four" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
    before = (runs / "four" / "metrics.csv").read_bytes()
    capsys.readouterr()
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1", "--run-name", "four", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this run" in err and "\n" not in err.strip()
    assert (runs / "four" / "metrics.csv").read_bytes() == before
