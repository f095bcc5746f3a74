"""moelab/study/sweep.py: the sweep runner (skip, resume, failures, shards, aggregation, compact runs)."""
import json

import pandas as pd
import pytest
from runs import half_tiny_data, tiny  # noqa: F401

from moelab.paths import REPO_ROOT
from moelab.study import grids, logs, sweep
from moelab.training import launch
from moelab.training.provenance import CodeState


@pytest.mark.slow
def test_sweep_skips_finished_runs_records_failures_and_aggregates(tmp_path, tiny_data, monkeypatch, capsys):
    good = [tiny(r) for r in grids.runs("regularisation", 1) if r.label in ("none", "balance")]
    bad = grids.RunSpec("regularisation", "broken", dict(good[0].flags, top_k=0, gating="topk"))
    monkeypatch.setattr(sweep, "quick_grid", lambda: good + [bad])
    args = ["--quick", "--seeds", "2", "--results", str(tmp_path / "results"), "--data-dir", str(tiny_data)]
    assert sweep.main(args) == 1                                   # a failure is reported at the end...
    out = capsys.readouterr().out
    assert "failed runs:" in out and "broken" in out and "--top-k" in out
    results = tmp_path / "results"
    runs = logs.run_table(results)
    assert len(runs) == 4                                          # ...after every other run finished
    assert not list(results.glob("runs/*/*/*.pt"))                 # no weights kept
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary.label) == {"none", "balance"} and (summary.seeds == 2).all()
    none = runs[runs.label == "none"].test_acc
    row = summary[summary.label == "none"].iloc[0]
    assert row.test_acc_mean == pytest.approx(none.mean()) and row.test_acc_std == pytest.approx(none.std())

    monkeypatch.setattr(sweep, "quick_grid", lambda: good)
    before = {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/metrics.csv")}
    assert sweep.main(args) == 0
    assert "4 of 4 runs finished (4 already done)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in results.glob("runs/*/*/metrics.csv")} == before


def test_sweep_resumes_an_interrupted_run(tmp_path, tiny_data):
    run = tiny(grids.runs("regularisation", 1)[0])
    run = grids.RunSpec(run.grid, run.label, dict(run.flags, epochs=2), 0, run.dataset)
    out = tmp_path / "results" / "runs" / run.grid
    argv = [*run.argv(str(tiny_data)), "--data-dir", str(tiny_data), "--out", str(out), "--run-name", run.name,
            "--epochs", "1"]
    assert launch.main(argv) == 0                                  # as if stopped after epoch 1 of 2
    config_path = out / run.name / "config.json"
    config = json.loads(config_path.read_text())
    config["config"]["epochs"] = 2
    config_path.write_text(json.dumps(config))
    summary = json.loads((out / run.name / "summary.json").read_text())
    (out / run.name / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    outcome = sweep.execute(run, tmp_path / "results", str(tiny_data), "cpu", 1)
    assert outcome.status == "done", outcome.detail
    metrics = pd.read_csv(out / run.name / "metrics.csv")
    assert list(metrics.epoch) == [1, 2]


def test_shards_split_a_grid_into_disjoint_slices_that_cover_it(capsys):
    def listed(*extra):
        assert sweep.main(["--grid", "capacity", "--list", *extra]) == 0
        return capsys.readouterr().out.splitlines()

    whole = listed()
    first, second = listed("--shard", "1/2"), listed("--shard", "2/2")
    assert sorted(first + second) == sorted(whole) and not set(first) & set(second)
    assert len(first) - len(second) in (0, 1)
    for bad in ("0/2", "3/2", "two"):
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(["--grid", "capacity", "--list", "--shard", bad])
        assert exit_info.value.code == 2
    assert "--shard" in capsys.readouterr().err


def test_dataset_option_keeps_only_the_runs_on_those_datasets(capsys):
    assert {r.dataset_tag for r in grids.full_grid()} == set(grids.DATASET_TAGS)
    assert sweep.main(["--grid", "vit_convergence", "--list", "--dataset", "cifar10-jpeg"]) == 0
    cifar = capsys.readouterr().out.splitlines()
    assert sweep.main(["--grid", "vit_convergence", "--list"]) == 0
    whole = capsys.readouterr().out.splitlines()
    assert cifar and set(cifar) < set(whole)
    assert all(line.startswith("vit_convergence/cifar10-jpeg-") and "--dataset folder:" in line for line in cifar)
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--grid", "vit_convergence", "--list", "--dataset", "cifar100"])
    assert exit_info.value.code == 2


def test_aggregating_a_folder_without_completed_runs_exits_2_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "runs" / "gating").mkdir(parents=True)
    assert sweep.main(["--aggregate", "--results", str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: no completed run under") and "\n" not in message
    assert not (tmp_path / "summary.csv").exists()


def test_the_sweep_refuses_to_train_into_the_repository_from_uncommitted_code(repo, tmp_path, monkeypatch, capsys):
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 2\n")
    inside = repo / "project_moe" / "results"
    message = sweep.dirty_refusal(inside, allow_dirty=False, repo=repo)
    assert "uncommitted changes (project_moe/moelab/layer.py)" in message and "--allow-dirty" in message
    assert sweep.dirty_refusal(inside, allow_dirty=True, repo=repo) is None
    assert sweep.dirty_refusal(tmp_path / "mine", allow_dirty=False, repo=repo) is None
    # the command line: one line, exit 2, nothing written
    monkeypatch.setattr(sweep, "code_state", lambda repo: CodeState("0" * 40, True, "f" * 64, ("moelab/x.py",)))
    target = REPO_ROOT / "project_moe" / "results-never-written"
    assert sweep.main(["--grid", "balancing", "--results", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the code has uncommitted changes (moelab/x.py)")
    assert not target.exists()


def test_a_compact_run_keeps_config_summary_and_metrics(tmp_path):
    from moelab.study import grids, sweep

    run = next(r for r in grids.runs("tabular", 1, datasets=("iris",)) if r.label == "e2-top1" and r.fold == 1)
    assert not grids.keeps_every_log(run)
    assert sweep.execute(run, tmp_path, None, "cpu", 1).status == "done"
    kept = sorted(p.name for p in (tmp_path / "runs" / "tabular" / run.name).iterdir())
    assert kept == ["config.json", "metrics.csv", "summary.json", "tuning.csv"]
    shown = next(r for r in grids.runs("tabular", 1, datasets=("iris",)) if r.label == "e4-top2" and r.fold == 0)
    assert grids.keeps_every_log(shown)
