"""Command lines of tiny runs and readers of what they write, for the tests that train through train.py."""
import csv
from pathlib import Path

import pytest
from synthetic import write_mnist_layout

from moelab.study import grids
from moelab.training import launch

PROJECT = Path(__file__).resolve().parents[1] / "project_moe"


def base_args(tmp_path, data_dir, name="run"):
    return ["--data-dir", str(data_dir), "--out", str(tmp_path / "runs"), "--run-name", name, "--epochs", "2",
            "--batch-size", "32", "--experts", "4", "--expert-hidden", "16", "--train-eval-size", "50",
            "--threads", "1"]


def cli(tmp_path, *args):
    return launch.main(["--out", str(tmp_path / "runs"), "--run-name", "r", "--threads", "1", *args])


# ----------------------------------------------------------------------------- the language model

TINY = ["--experts", "4", "--expert-hidden", "16", "--vit-dim", "32", "--vit-heads", "2", "--vit-depth", "2",
        "--batch-size", "8", "--threads", "1"]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- sweeps of tiny runs

@pytest.fixture(name="tiny_data")
def half_tiny_data(tmp_path, monkeypatch):
    """conftest.py's tiny_data at half its size, in the modules that import this fixture."""
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data", n_train=300, n_test=100)
    return tmp_path / "data"


def tiny(run: grids.RunSpec) -> grids.RunSpec:
    flags = dict(run.flags, epochs=1, batch_size=50, expert_hidden=8, train_eval_size=50, threads=1)
    return grids.RunSpec(run.grid, run.label, flags, run.seed, run.dataset)
