"""moelab/training/step_timing.py: --step-time-rounds times a run's step beside its dense network."""
import json
import math
from pathlib import Path

import torch
from runs import TINY, read_rows
from synthetic import write_sources

from moelab import data
from moelab.models.builder import build_model
from moelab.study.grids import RunSpec
from moelab.study.verify import TIMING_COLUMNS, rerun_argv
from moelab.training import launch
from moelab.training.config import Config
from moelab.training.step_timing import dense_reference, step_time_ratio
from moelab.training.tasks import task_for


def test_a_run_records_its_step_time_beside_the_dense_network_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_sources(tmp_path / "src", 12)
    argv = ["--arch", "gpt", "--dataset", f"text:{tmp_path / 'src'}", "--gating", "topk", *TINY, "--context", "32",
            "--steps-per-epoch", "12", "--epochs", "1", "--out", str(tmp_path / "runs")]
    assert launch.main([*argv, "--run-name", "plain"]) == 0
    assert launch.main([*argv, "--run-name", "timed", "--step-time-rounds", "2"]) == 0
    plain, timed = (json.loads((tmp_path / "runs" / name / "summary.json").read_text()) for name in ("plain", "timed"))
    assert "step_time_vs_dense_active" not in plain
    ratio = timed["step_time_vs_dense_active"]
    assert math.isfinite(ratio) and ratio > 0
    assert timed["step_time_vs_dense_active_min"] <= timed["step_time_vs_dense_active_max"]
    assert (timed["step_time_steps"], timed["step_time_rounds"]) == (10, 2)
    # timed after the test, on a copy: the run's numbers are those of the run without timing
    assert timed["test_loss"] == plain["test_loss"] and timed["test_acc"] == plain["test_acc"]
    plain_rows, timed_rows = (read_rows(tmp_path / "runs" / name / "metrics.csv") for name in ("plain", "timed"))
    untimed = lambda row: {k: v for k, v in row.items() if k not in TIMING_COLUMNS}   # noqa: E731
    assert [untimed(r) for r in plain_rows] == [untimed(r) for r in timed_rows]


def test_the_timed_model_is_left_as_it_was_and_the_reference_is_the_dense_network_of_its_active_width(tiny_data):
    cfg = Config(dataset="mnist", data_dir=str(tiny_data), experts=4, expert_hidden=16, gating="topk", top_k=2,
                 batch_size=32)
    dataset = data.load_dataset("mnist", str(tiny_data), seed=0)
    task = task_for(dataset, cfg.combine, cfg.expert_variance)
    model = build_model(cfg.model_spec(), dataset.in_shape, task.out_width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = data.loader_for(dataset, dataset.train, cfg.batch_size, shuffle=True, seed=0, device=torch.device("cpu"))
    batches = list(loader.iter_epoch(0))[:4]
    timing = step_time_ratio(model, cfg, task, dataset.in_shape, batches, torch.device("cpu"), rounds=2, steps=3)
    assert timing["step_time_steps"] == 3 and timing["step_time_rounds"] == 2 and timing["step_time_vs_dense_active"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reference = dense_reference(cfg)
    assert (reference.model, reference.dense_match, reference.experts, reference.top_k) == ("dense", "active", 4, 2)


def test_step_time_rounds_must_not_be_negative(capsys):
    assert launch.main(["--step-time-rounds", "-1"]) == 2
    assert "--step-time-rounds must be >= 0" in capsys.readouterr().err


def test_the_timing_neither_changes_a_runs_key_nor_runs_again_under_verify():
    flags = dict(arch="gpt", vit_dim=32, vit_heads=2, gating="topk", top_k=2)
    plain = RunSpec("lm", "x", flags, dataset="python-stdlib")
    timed = RunSpec("lm", "x", dict(flags, step_time_rounds=5), dataset="python-stdlib")
    assert plain.key == timed.key
    assert timed.key != RunSpec("lm", "x", dict(flags, top_k=1), dataset="python-stdlib").key
    config = {"environment": {"argv": ["train.py", "--step-time-rounds", "5", "--seed", "0"], "device": "cpu"},
              "config": {}}
    argv = rerun_argv(config, Path("out"), Path("data"))
    assert "--step-time-rounds" not in argv and argv[:2] == ["--seed", "0"]
