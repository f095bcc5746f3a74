"""Bad input, interruption, divergence and resumption of training runs."""
import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from synthetic import write_mnist_layout

from moelab import distributed
from moelab.paths import REPO_ROOT
from moelab.training import launch, trainer
from moelab.training.step import train_step

REPO = REPO_ROOT
TIME_COLUMNS = ["samples_per_s", "epoch_time_s", "wall_time_s"]


def base_args(tmp_path, data_dir, name="run"):
    return ["--data-dir", str(data_dir), "--out", str(tmp_path / "runs"), "--run-name", name, "--epochs", "2",
            "--batch-size", "32", "--experts", "4", "--expert-hidden", "16", "--train-eval-size", "50",
            "--threads", "1"]


BAD_INPUTS = [
    (["--experts", "0"], "--experts"),
    (["--gating", "topk", "--top-k", "5", "--experts", "4"], "--top-k"),
    (["--gating", "topk", "--top-k", "0"], "--top-k"),
    (["--capacity-factor", "0"], "--capacity-factor"),
    (["--capacity-factor", "-1"], "--capacity-factor"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--dataset", "folder:/nonexistent/place"], "/nonexistent/place"),
    (["--trunk", "cnn", "--expert-type", "cnn"], "--trunk"),
    (["--val-fraction", "1.0"], "--val-fraction"),
    (["--run-name", "../escape"], "--run-name"),
]


@pytest.mark.parametrize("extra,named", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, tiny_data, capsys, extra, named):
    code = launch.main(base_args(tmp_path, tiny_data) + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and named in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra", [["--gating", "sparse"], ["--expert-type", "rnn"], ["--experts", "two"]])
def test_unknown_choice_exits_2_with_allowed_values(tmp_path, tiny_data, extra):
    proc = subprocess.run([sys.executable, "project_moe/train.py", *base_args(tmp_path, tiny_data), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert extra[0] in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unwritable_out_is_rejected(tmp_path, tiny_data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = base_args(tmp_path, tiny_data)
    args[args.index("--out") + 1] = str(blocker / "runs")
    assert launch.main(args) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not writable" in err
    assert blocker.read_text() == "not a directory"


def finished_run(tmp_path, data_dir, capsys):
    """A completed one-epoch run: its arguments, its directory and the bytes of every file."""
    args = base_args(tmp_path, data_dir) + ["--epochs", "1"]
    assert launch.main(args) == 0
    run_dir = tmp_path / "runs" / "run"
    capsys.readouterr()
    return args, run_dir, snapshot(run_dir)


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_existing_run_is_never_overwritten_without_flag(tmp_path, tiny_data, capsys):
    args, run_dir, before = finished_run(tmp_path, tiny_data, capsys)
    assert launch.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    assert launch.main(args + ["--overwrite", "--seed", "3"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["config"]["seed"] == 3


def test_resume_with_other_settings_names_the_mismatch(tmp_path, tiny_data, capsys):
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1", "--experts", "6", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--experts 4" in err and "--experts 6" in err


def test_checkpoint_loads_with_weights_only(tmp_path, tiny_data):
    assert launch.main(base_args(tmp_path, tiny_data) + ["--epochs", "1"]) == 0
    state = torch.load(tmp_path / "runs" / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0


def test_non_finite_loss_stops_and_keeps_logs(tmp_path, tiny_data, monkeypatch, capsys):
    original = train_step
    calls = {"n": 0}

    def poisoned(model, optimizer, x, y, *rest):
        calls["n"] += 1
        return original(model, optimizer, x * float("nan") if calls["n"] > 25 else x, y, *rest)

    monkeypatch.setattr(trainer, "train_step", poisoned)   # epoch 1 = 17 steps: fails in epoch 2
    code = launch.main(base_args(tmp_path, tiny_data))
    run_dir = tmp_path / "runs" / "run"
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "--lr" in err and "--z-coef" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 1                # epoch 1 kept
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_signal_arriving_while_the_ranks_agree_still_stops_the_run(tmp_path, tiny_data, monkeypatch):
    """A signal that lands inside the per-step agreement (in a distributed run: during the
    all-reduce) must not be lost to the answer computed before it came: the run stops one
    step later."""
    agree, calls = distributed.agreed_signal, {"n": 0}

    def signal_during_agreement(cluster, signum):
        answer = agree(cluster, signum)
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGTERM)      # the handler runs here, before the answer returns
        return answer

    monkeypatch.setattr(distributed, "agreed_signal", signal_during_agreement)
    assert launch.main(base_args(tmp_path, tiny_data)) == 128 + signal.SIGTERM
    state = torch.load(tmp_path / "runs" / "run" / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == 6 and calls["n"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_resumes_to_identical_logs(tmp_path, monkeypatch, sig):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    write_mnist_layout(data_dir, n_train=3000, n_test=100)
    args = [*base_args(tmp_path, data_dir), "--batch-size", "8", "--epochs", "3", "--gating", "noisy-topk",
            "--dropout", "0.1", "--log-every", "10"]
    steps_per_epoch = 338  # 2700 training samples / 8

    reference = tmp_path / "runs" / "reference"
    assert launch.main(_renamed(args, "reference")) == 0

    command = [sys.executable, "project_moe/train.py", *_renamed(args, "cut")]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cut = tmp_path / "runs" / "cut"
    _wait_for_step(cut / "experts.csv", steps_per_epoch + 40, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "--resume" in err and "Traceback" not in err
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < steps_per_epoch   # stopped mid-epoch
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.csv", "experts.csv", "routing.csv"):
        a, b = pd.read_csv(reference / name), pd.read_csv(cut / name)
        pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS, errors="ignore"),
                                      b.drop(columns=TIME_COLUMNS, errors="ignore"), check_exact=True)
    summary_a = json.loads((reference / "summary.json").read_text())
    summary_b = json.loads((cut / "summary.json").read_text())
    for key in ("status", "test_loss", "test_acc", "best_val_acc", "best_epoch", "steps", "params_total"):
        assert summary_a[key] == summary_b[key], key


def _renamed(args, name):
    args = list(args)
    args[args.index("--run-name") + 1] = name
    return args


def _wait_for_step(path, step, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if path.exists():
            steps = pd.read_csv(path)["step"] if path.stat().st_size else []
            if len(steps) and steps.max() >= step:
                return
        time.sleep(0.02)
    raise TimeoutError(f"no step {step} in {path}")


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


def test_resuming_a_completed_run_changes_nothing(tmp_path, tiny_data, capsys):
    args, run_dir, before = finished_run(tmp_path, tiny_data, capsys)
    assert launch.main(args + ["--resume"]) == 2
    assert "already completed" in capsys.readouterr().err
    assert snapshot(run_dir) == before
