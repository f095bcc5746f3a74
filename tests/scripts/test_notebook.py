"""experiments.ipynb: executed headless on a tiny results folder, and the committed copy as executed."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from runs import half_tiny_data, tiny  # noqa: F401

from moelab.paths import REPO_ROOT
from moelab.study import comparisons, grids, logs, references, sharpness
from moelab.training import launch

NOTEBOOK = REPO_ROOT / "project_moe" / "experiments.ipynb"


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
