"""The sweep runner (skip, resume, failures, aggregation) and the notebook on a tiny results folder."""
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from synthetic import write_mnist_layout

from moelab.paths import REPO_ROOT
from moelab.study import comparisons, grids, logs, references, sharpness, sweep
from moelab.training import launch

NOTEBOOK = REPO_ROOT / "project_moe" / "experiments.ipynb"


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data", n_train=300, n_test=100)
    return tmp_path / "data"


def tiny(run: grids.RunSpec) -> grids.RunSpec:
    flags = dict(run.flags, epochs=1, batch_size=50, expert_hidden=8, train_eval_size=50, threads=1)
    return grids.RunSpec(run.grid, run.label, flags, run.seed, run.dataset)


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


def fixture_results(root, data_dir):
    """A tiny but complete results folder: every grid the notebook draws, two seeds each, and the
    sharpness analysis of two runs."""
    wanted = {"moe_vs_dense": {"moe-hard", "dense-params"}, "gating": {"soft", "hard", "top2"},
              "experts": {"budget-e1", "budget-e2", "per-expert-e1", "per-expert-e2"},
              "regularisation": {"none", "balance"}, "cosine": {"hard-linear", "hard-cosine"},
              "sharpness": {"dense-active", "hard"}}
    grid = (grids.runs("moe_vs_dense", 1, datasets=("mnist",)) + grids.runs("gating", 1, datasets=("mnist",))
            + grids.runs("experts", 1, counts=(1, 2)) + grids.runs("regularisation", 1) + grids.runs("cosine", 1)
            + grids.runs("sharpness", 1))
    runs = [tiny(r) for r in grid if r.label in wanted.get(r.grid, ())]
    vit = dict(grids.VIT, vit_patch=7, vit_dim=16, vit_heads=2, vit_depth=2)
    runs += [tiny(grids.RunSpec("vit", "vit-moe-top2", vit)),
             tiny(grids.RunSpec("vit", "vit-dense-active", dict(vit, model="dense", dense_match="active")))]
    lm = dict(vit_dim=16, vit_heads=2, vit_depth=2, expert_hidden=8, context=16, batch_size=8, steps_per_epoch=5,
              epochs=2, threads=1)
    language = [grids.RunSpec(r.grid, r.label, dict(r.flags, **lm), r.seed, r.dataset) for r in grids.runs("lm", 1)
                if r.label in ("lm-dense-active", "lm-top2-e8")]
    tables = [grids.RunSpec(r.grid, r.label, dict(r.flags, epochs=2, threads=1), 0, r.dataset, r.fold)
              for r in grids.runs("tabular", 2, datasets=("iris", "diabetes"))
              if r.fold == 0 and r.label in ("e4-top2", "e4-dense-params", "e4-top1-mix", "e4-top1-mse")]
    for run in grids.runs("tabular", 1, datasets=("iris", "diabetes")):
        if run.reference and run.fold == 0:
            references.write_reference_run(root / "runs" / run.grid / run.name, run.reference, run.dataset, 0, 0,
                                           run.flags["folds"], run.flags["val_fraction"])
    for run in grids.with_seeds(runs, (0, 1)) + grids.with_seeds(language, (0,)) + tables:
        out = root / "runs" / run.grid
        assert launch.main([*run.argv(str(data_dir)), "--data-dir", str(data_dir), "--out", str(out),
                           "--run-name", run.name]) == 0
    sharp = sorted(str(d) for d in (root / "runs" / "sharpness").iterdir() if d.is_dir())[:2]
    assert sharpness.main(["sharpness", *sharp, "--data-dir", str(data_dir), "--samples", "50", "--iters", "5",
                          "--probes", "2", "--points", "5", "--threads", "1", "--out",
                          str(root / "sharpness")]) == 0
    finished = logs.run_table(root)
    logs.aggregate(finished).to_csv(root / "summary.csv", index=False)
    comparisons.comparisons(finished).to_csv(root / "comparisons.csv", index=False)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("jupyter") is None, reason="jupyter is not installed")
def test_notebook_runs_headless_on_a_tiny_results_folder(tmp_path, tiny_data):
    results, figures = tmp_path / "results", tmp_path / "figures"
    fixture_results(results, tiny_data)
    executed = tmp_path / "executed.ipynb"
    env = {**os.environ, "MOE_RESULTS": str(results), "MOE_FIGURES": str(figures),
           "MOE_DATA_DIR": str(tiny_data), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           "--output", str(executed), str(NOTEBOOK)], cwd=NOTEBOOK.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.stem for p in figures.glob("*.png")}
    assert names >= {"where_moe_pays", "moe_vs_dense", "gating_comparison", "activations_mnist", "balance_over_time",
                     "class_routing_mnist", "specialisation", "accuracy_vs_experts",
                     "regularisation", "routed_images", "vit_accuracy", "cosine_router", "sharpness_curves",
                     "patch_routing_mnist-vit-moe-top2-s0", "lm_convergence", "lm_kind_expert_heatmap",
                     "lm_text_routing", "tabular_scores", "gate_partition_iris", "gate_partition_diabetes",
                     "expert_predictions_e4-top1-mix", "target_expert_heatmap_e4-top1-mse"}


def _output_text(output: dict) -> str:
    """The text of a notebook cell's output: a stream, an error, or the text/* parts of a display."""
    if output["output_type"] == "stream":
        return "".join(output["text"])
    if output["output_type"] == "error":
        return f"{output['ename']}: {output['evalue']}"
    return "".join("".join(value) for kind, value in output.get("data", {}).items() if kind.startswith("text/"))


def test_the_committed_notebook_shows_every_figure_it_draws_without_warnings():
    """The executed experiments.ipynb as committed: every cell that draws shows its image (unless it
    says its grid has no runs), no output on stderr, no warning, no placeholder figure, no error, and
    no seed count typed into the prose (the readings count seeds from the data)."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    problems = []
    for number, cell in enumerate(cells):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            problems += [f"cell {number}: typed seed count {m!r}" for m in re.findall(r"\b\d+ seeds\b", source)]
            continue
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        texts = [_output_text(output) for output in outputs]
        draws = source.count("save(") > source.count("def save(") or "display(fig" in source
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        if draws and not images and not any("no runs in these results" in text for text in texts):
            problems.append(f"cell {number}: draws but shows no image")
        problems += [f"cell {number}: output on stderr" for o in outputs
                     if o["output_type"] == "stream" and o["name"] == "stderr"]
        problems += [f"cell {number}: {o['output_type']}" for o in outputs if o["output_type"] == "error"]
        problems += [f"cell {number}: a warning in the output" for text in texts if "Warning" in text]
        problems += [f"cell {number}: a placeholder figure" for text in texts if "no completed runs" in text]
    assert any("image/png" in o.get("data", {}) for cell in cells for o in cell.get("outputs", [])), \
        "the notebook is not executed"
    assert not problems, "\n".join(problems)


def test_the_requirements_give_a_notebook_server_and_seaborn():
    # what a new user runs after `pip install -r requirements.txt`: jupyter notebook / jupyter lab
    for module in ("notebook", "jupyterlab"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip(), (module, done.stderr)
    import seaborn  # noqa: F401  (the heatmaps of plots.py)
    requirements = (REPO_ROOT / "requirements.txt").read_text().split()
    assert any(line.startswith("jupyter") for line in requirements)
    assert any(line.startswith("seaborn") for line in requirements)


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


def test_every_run_of_a_grid_carries_the_name_it_is_registered_under():
    for name in grids.GRIDS:
        runs = grids.runs(name)
        assert runs and {run.grid for run in runs} == {name}
    assert grids.KEEP_WEIGHTS == {"sharpness", "cifar_heads"}


def test_aggregating_a_folder_without_completed_runs_exits_2_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "runs" / "gating").mkdir(parents=True)
    assert sweep.main(["--aggregate", "--results", str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: no completed run under") and "\n" not in message
    assert not (tmp_path / "summary.csv").exists()
