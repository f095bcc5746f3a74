"""moelab/training/launch.py: a run's directory (overwrite, resume) and the checks that need its dataset."""
import json

from runs import base_args, cli

from moelab.training import launch


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


def test_resuming_a_completed_run_changes_nothing(tmp_path, tiny_data, capsys):
    args, run_dir, before = finished_run(tmp_path, tiny_data, capsys)
    assert launch.main(args + ["--resume"]) == 2
    assert "already completed" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_tta_flip_on_data_trained_without_flips_is_refused_before_the_run_directory(tmp_path, tiny_data, capsys):
    """Digits and clothes are trained without flips (the mirror of a digit is not that digit)."""
    argv = ["--data-dir", str(tiny_data), "--out", str(tmp_path / "runs"), "--run-name", "r", "--epochs", "1",
            "--tta-flip", "--threads", "1"]
    assert launch.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tta-flip") and "\n" not in err and "drop --tta-flip" in err
    assert not (tmp_path / "runs").exists()


def test_table_flags_are_refused_elsewhere_and_tables_under_torchrun(tmp_path, capsys, monkeypatch):
    assert cli(tmp_path, "--dataset", "mnist", "--folds", "3") == 2
    assert "--folds cuts a dataset that has no test split" in capsys.readouterr().err
    assert cli(tmp_path, "--dataset", "iris", "--target-bins", "3") == 2
    assert "--target-bins bins a regression target" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli(tmp_path, "--dataset", "iris") == 2
    assert "run python train.py without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
