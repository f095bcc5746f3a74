"""moelab/training/run_files.py: every command refuses a damaged run file in one line and changes nothing."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pandas as pd
import pytest
from synthetic import write_mnist_layout

from moelab.paths import REPO_ROOT
from moelab.study import grids, report, sharpness, sweep
from moelab.training import launch

FLAGS = dict(epochs=1, batch_size=32, experts=4, expert_hidden=16, train_eval_size=50, threads=1)


def train_args(data_dir, out, name="run", *extra):
    return ["--data-dir", str(data_dir), "--out", str(out), "--run-name", name, "--epochs", "1", "--batch-size", "32",
            "--experts", "4", "--expert-hidden", "16", "--train-eval-size", "50", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished one-epoch run, marked interrupted so that --resume continues it, and its data."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOE_CACHE_DIR", str(root / "cache"))
        write_mnist_layout(root / "data")
        assert launch.main(train_args(root / "data", root / "runs")) == 0
        summary = root / "runs" / "run" / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "status": "interrupted"}))
        yield root


@pytest.fixture
def run_dir(trained, tmp_path, capsys):
    """A copy of the trained run in this test's tmp_path/runs/run."""
    copy = tmp_path / "runs" / "run"
    shutil.copytree(trained / "runs" / "run", copy)
    capsys.readouterr()
    return copy


def snapshot(directory):
    """Every file's bytes, and its inode and mtime: a file replaced or rewritten, even with the
    same bytes, shows."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_refused(code, capsys, name, directory, before):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    assert name in err, err
    assert snapshot(directory) == before


# ----------------------------------------------------------------------------- ways to damage a file

def truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def cut_mid_row(data: bytes) -> bytes:
    """Cut a few bytes into the row that holds the file's middle, or into the first row (never at
    a line end)."""
    start = data.rindex(b"\n", 0, max(len(data) // 2, data.index(b"\n") + 1)) + 1
    return data[:start + 3]


def renamed_step_column(data: bytes) -> bytes:
    return data.replace(b"epoch,step,", b"epoch,stp,", 1)


def no_header(data: bytes) -> bytes:
    return data.split(b"\n", 1)[1]


def word_for_step(data: bytes) -> bytes:
    header, first, rest = data.split(b"\n", 2)
    fields = first.split(b",")
    fields[1] = b"seventeen"
    return b"\n".join([header, b",".join(fields), rest])


def extra_field(data: bytes) -> bytes:
    header, first, rest = data.split(b"\n", 2)
    return b"\n".join([header, first.rstrip(b"\r") + b",0\r", rest])


def garbage(data: bytes) -> bytes:
    return bytes(range(256)) * 8


def empty(data: bytes) -> bytes:
    return b""


def json_list(data: bytes) -> bytes:
    return b"[1, 2]\n"


RESUME_DAMAGE = [
    ("config.json", truncated), ("config.json", empty), ("config.json", json_list),
    ("summary.json", truncated), ("summary.json", garbage),
    ("checkpoint.pt", truncated), ("checkpoint.pt", garbage), ("checkpoint.pt", empty),
    ("best.pt", truncated),
    ("metrics.csv", cut_mid_row), ("metrics.csv", renamed_step_column), ("metrics.csv", no_header),
    ("metrics.csv", word_for_step), ("metrics.csv", empty),
    ("experts.csv", cut_mid_row), ("experts.csv", renamed_step_column), ("experts.csv", extra_field),
    ("routing.csv", truncated), ("routing.csv", garbage),
]


def damage(path, how) -> None:
    path.write_bytes(how(path.read_bytes()))


@pytest.mark.parametrize("name,how", RESUME_DAMAGE, ids=[f"{n}-{h.__name__}" for n, h in RESUME_DAMAGE])
def test_resume_refuses_a_damaged_run_file_and_changes_nothing(trained, run_dir, capsys, name, how):
    damage(run_dir / name, how)
    before = snapshot(run_dir)
    code = launch.main(train_args(trained / "data", run_dir.parent, "run", "--resume"))
    assert_refused(code, capsys, name, run_dir, before)


def test_resume_refuses_a_missing_log(trained, run_dir, capsys):
    (run_dir / "experts.csv").unlink()
    before = snapshot(run_dir)
    code = launch.main(train_args(trained / "data", run_dir.parent, "run", "--resume"))
    assert_refused(code, capsys, "experts.csv", run_dir, before)


def test_an_intact_copy_resumes_and_a_row_cut_after_the_checkpoint_is_dropped(trained, run_dir, capsys):
    # A process killed while appending the rows of a later step leaves a cut-off last row: work
    # the resumed run does again, so it is dropped rather than refused.
    metrics = run_dir / "metrics.csv"
    metrics.write_bytes(metrics.read_bytes() + b"2,34,0.001,0.5")
    assert launch.main(train_args(trained / "data", run_dir.parent, "run", "--resume")) == 0
    logged = pd.read_csv(metrics)
    assert list(logged.step) == [17] and list(logged.epoch) == [1]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_overwrite_replaces_a_damaged_run(trained, run_dir, capsys):
    damage(run_dir / "config.json", truncated)
    damage(run_dir / "checkpoint.pt", garbage)
    assert launch.main(train_args(trained / "data", run_dir.parent, "run", "--overwrite")) == 0
    assert json.loads((run_dir / "config.json").read_text())["config"]["epochs"] == 1


def two_ranks(args, timeout: float = 120.0) -> list[subprocess.CompletedProcess]:
    """train.py on two processes of one gloo group, started with the environment torchrun gives
    its ranks, so that each one's exit code is seen."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO_ROOT / "project_moe", text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                                   "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)})
             for rank in (0, 1)]
    try:
        return [subprocess.CompletedProcess(p.args, p.wait(timeout), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            p.kill()


@pytest.mark.slow
@pytest.mark.parametrize("name,how", [("checkpoint.pt", garbage), ("metrics.csv", cut_mid_row)])
def test_every_rank_exits_2_on_a_damaged_file_under_torchrun(trained, run_dir, name, how):
    # checkpoint.pt: rank 0 reads it for every rank; metrics.csv: rank 0 checks the logs once
    # every rank has loaded the checkpoint. Either way the other rank must stop too, not wait.
    damage(run_dir / name, how)
    before = snapshot(run_dir)
    ranks = two_ranks(train_args(trained / "data", run_dir.parent, "run", "--resume"))
    for rank in ranks:
        # Each rank exits 2, or is aborted by gloo after it has said why ("terminate called without
        # an active exception", SIGABRT): a teardown race of the backend seen in about one run in
        # fifteen of this test, also with a store hosted outside the ranks, a store handshake or
        # os._exit at exit (an open fault, in docs/distributed.md). The refusal and the untouched
        # files are checked either way.
        aborted = rank.returncode == -signal.SIGABRT and "terminate called without an active exception" in rank.stderr
        assert rank.returncode == 2 or aborted, [r.stderr for r in ranks]
    errors = [line for line in ranks[0].stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and name in errors[0], ranks[0].stderr
    assert "Traceback" not in ranks[0].stderr + ranks[1].stderr
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------- the study's commands

SPEC = grids.RunSpec("tiny", "moe", FLAGS)


@pytest.fixture
def results(trained, tmp_path, capsys):
    """A results folder of two finished runs of SPEC (seeds 0 and 1) without their weights, as a
    sweep leaves it, and its summary.csv."""
    root = tmp_path / "results"
    for run in grids.with_seeds([SPEC], (0, 1)):
        args = [*run.argv(None), "--data-dir", str(trained / "data"), "--out", str(root / "runs" / run.grid),
                "--run-name", run.name]
        assert launch.main(args) == 0
        for weights in (root / "runs" / run.grid / run.name).glob("*.pt"):
            weights.unlink()
    assert sweep.main(["--aggregate", "--results", str(root)]) == 0
    capsys.readouterr()
    return root


def test_sweep_records_a_run_with_a_damaged_summary_as_failed_and_goes_on(trained, results, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "quick_grid", lambda: [SPEC])
    damaged_dir = results / "runs" / "tiny" / "mnist-moe-s0"
    damage(damaged_dir / "summary.json", truncated)
    before = snapshot(results)
    code = sweep.main(["--quick", "--seeds", "2", "--results", str(results), "--data-dir", str(trained / "data")])
    captured = capsys.readouterr()
    assert code == 2      # the run failed, and the aggregation refuses the damaged file
    assert "failed" in captured.out and "summary.json" in captured.out and "skipped" in captured.out
    assert "1 of 2 runs finished (1 already done)" in captured.out
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "summary.json" in err, err
    assert snapshot(results) == before


AGGREGATE_DAMAGE = [("summary.json", truncated), ("config.json", truncated), ("config.json", garbage),
                    ("metrics.csv", cut_mid_row), ("metrics.csv", no_header), ("metrics.csv", extra_field),
                    ("routing.csv", cut_mid_row)]


@pytest.mark.parametrize("name,how", AGGREGATE_DAMAGE, ids=[f"{n}-{h.__name__}" for n, h in AGGREGATE_DAMAGE])
def test_aggregate_refuses_a_damaged_run_file(results, capsys, name, how):
    damage(results / "runs" / "tiny" / "mnist-moe-s1" / name, how)
    before = snapshot(results)
    code = sweep.main(["--aggregate", "--results", str(results)])
    assert_refused(code, capsys, name, results, before)


@pytest.mark.parametrize("where", ["runs/tiny/mnist-moe-s0/summary.json", "summary.csv"])
def test_build_report_refuses_a_damaged_input(results, tmp_path, monkeypatch, capsys, where):
    monkeypatch.setattr(report, "REPORT", tmp_path / "report")
    damage(results / where, cut_mid_row if where.endswith(".csv") else truncated)
    before = snapshot(results)
    code = report.main(["--results", str(results), "--no-pdf"])
    assert_refused(code, capsys, where.rsplit("/", 1)[-1], results, before)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("name,how", [("config.json", truncated), ("model.pt", garbage), ("model.pt", truncated)])
def test_sharpness_refuses_a_damaged_run_file(trained, run_dir, tmp_path, capsys, name, how):
    damage(run_dir / name, how)
    before = snapshot(run_dir)
    code = sharpness.main(["sharpness", str(run_dir), "--data-dir", str(trained / "data"), "--samples", "50",
                           "--iters", "2", "--probes", "1", "--points", "3", "--threads", "1",
                           "--out", str(tmp_path / "sharpness")])
    assert_refused(code, capsys, name, run_dir, before)
    assert not (tmp_path / "sharpness").exists()
