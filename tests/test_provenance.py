"""Where a run came from (commit, uncommitted changes, CPU, portable paths), one run per
configuration across grids, the sweep's refusal to fill results/ from a dirty tree, and
sweep.py --verify on a tiny grid."""
import json
import subprocess

import pandas as pd
import pytest

from moelab.paths import REPO_ROOT
from moelab.study import grids, logs, sweep, verify
from moelab.training import provenance
from moelab.training.provenance import DATA_DIR_TOKEN, CodeState, PortablePaths


def test_paths_are_recorded_relative_to_the_project_and_the_data_directory_named(tmp_path):
    repo, data = tmp_path / "repo", tmp_path / "datasets"
    (repo / "project_moe").mkdir(parents=True)
    paths = PortablePaths(data, project=repo / "project_moe", repo=repo)
    assert paths.portable(str(data)) == DATA_DIR_TOKEN
    assert paths.portable(f"folder:{data}/cifar10-jpeg") == f"folder:{DATA_DIR_TOKEN}/cifar10-jpeg"
    assert paths.portable(str(repo / "project_moe" / "results" / "runs" / "gating")) == "results/runs/gating"
    assert paths.portable(str(repo / "project_moe" / "train.py")) == "train.py"
    assert paths.portable("/somewhere/else/runs") == "/somewhere/else/runs"     # a path of one's own: as given
    assert paths.portable("8") == "8" and paths.portable("mnist") == "mnist" and paths.portable(None) is None
    assert paths.portable_sentence(f"MNIST IDX files in {data}/MNIST/raw") == f"MNIST IDX files in {DATA_DIR_TOKEN}/MNIST/raw"
    here = PortablePaths(tmp_path / "mine")
    assert here.local(f"folder:{DATA_DIR_TOKEN}/cifar10-jpeg") == f"folder:{tmp_path / 'mine'}/cifar10-jpeg"
    with pytest.raises(ValueError, match="--data-dir"):
        PortablePaths(None).local(DATA_DIR_TOKEN)
    # only a run inside the repository (whose logs may be committed) records portable paths
    inside = PortablePaths.for_run(repo / "project_moe" / "results" / "runs" / "g" / "r", data,
                                   project=repo / "project_moe", repo=repo)
    outside = PortablePaths.for_run(tmp_path / "mine" / "r", data, project=repo / "project_moe", repo=repo)
    assert inside.portable(str(data / "MNIST")) == f"{DATA_DIR_TOKEN}/MNIST"
    assert outside.portable(str(data / "MNIST")) == str(data / "MNIST")
    assert outside.portable_sentence(f"files in {data}") == f"files in {data}"


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo)})


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "project_moe" / "moelab").mkdir(parents=True)
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 1\n")
    (repo / "project_moe" / "results").mkdir()
    (repo / "project_moe" / "results" / "summary.csv").write_text("a\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def test_code_state_tells_a_clean_tree_from_uncommitted_code_and_hashes_the_change(repo):
    clean = provenance.code_state(repo)
    assert len(clean.commit) == 40 and not clean.dirty and clean.diff_sha256 is None
    (repo / "project_moe" / "results" / "summary.csv").write_text("b\n")   # results are not code
    assert not provenance.code_state(repo).dirty
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 2\n")
    one = provenance.code_state(repo)
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 3\n")
    other = provenance.code_state(repo)
    assert one.dirty and other.dirty and one.commit == clean.commit
    assert one.diff_sha256 != other.diff_sha256 and one.changed == ("project_moe/moelab/layer.py",)
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 1\n")
    (repo / "project_moe" / "moelab" / "new.py").write_text("y = 1\n")    # an untracked module is code too
    assert provenance.code_state(repo).dirty
    assert provenance.cpu_family("AMD EPYC 7B13") == "amd" and provenance.cpu_family("Intel(R) Xeon(R)") == "intel"
    assert provenance.cpu_family(None) is None


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


def test_a_configuration_listed_by_several_grids_is_one_run():
    every = grids.with_seeds(grids.full_grid(), (0, 1))
    shared = grids.owners(every)
    by_name = {f"{r.grid}/{r.name}": r for r in every}
    hard = by_name["moe_vs_dense/mnist-moe-hard-s0"]
    for alias in ("gating/mnist-hard-s0", "capacity/mnist-top1-dropless-s0", "balancing/mnist-switch-loss-s0",
                  "sharpness/mnist-hard-s0", "lr/mnist-moe-hard-lr0.002-s0"):
        assert shared[by_name[alias].key] is hard, alias
    # a default spelled out (linear router scores) is the same configuration; a seed is not
    assert by_name["vit_routers/fashion-mnist-topk-linear-s0"].key == by_name["vit/fashion-mnist-vit-moe-top2-s0"].key
    # the learning-rate grids' runs at the study's rate are the runs of the grids they sweep
    assert shared[by_name["lr_vit/fashion-mnist-vit-moe-top2-lr0.001-s0"].key] is by_name["vit/fashion-mnist-vit-moe-top2-s0"]
    assert shared[by_name["lr_lm/python-stdlib-lm-top2-e8-lr0.002-s1"].key] is by_name["lm/python-stdlib-lm-top2-e8-s1"]
    assert shared[by_name["lr_lm/python-stdlib-lm-top2-e8-lr0.001-s1"].key].grid == "lr_lm"
    assert by_name["gating/mnist-hard-s1"].key != hard.key
    assert by_name["gating/mnist-soft-s0"].key != hard.key
    # every key of the study is trained once, in the first grid that lists it
    assert len(shared) == len({r.key for r in every}) < len(every)


def _tiny_grid(grid, epochs, labels=("soft", "dense")):
    flags = dict(expert_hidden=8, folds=5, val_fraction=0.15, log_every=0, experts=2, threads=1)
    configs = {"soft": dict(flags, gating="soft"), "dense": dict(flags, model="dense"),
               "top1": dict(flags, gating="hard")}
    return [grids.RunSpec(grid, label, dict(configs[label], epochs=epochs), dataset="iris", fold=0)
            for label in labels]


@pytest.mark.slow
def test_verify_reruns_a_tiny_grid_and_finds_a_changed_number(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(grids.GRIDS, "tiny_a", grids.Grid(_tiny_grid, 3))
    monkeypatch.setitem(grids.GRIDS, "tiny_b", grids.Grid(lambda g, e: _tiny_grid(g, e, ("soft", "top1")), 3,
                                                          verify_epochs=2))
    monkeypatch.setattr(sweep, "full_grid", lambda: grids.runs("tiny_a") + grids.runs("tiny_b"))
    monkeypatch.setattr(verify, "shared_runs", lambda seeds: grids.owners(grids.runs("tiny_a") + grids.runs("tiny_b")))
    results = tmp_path / "results"
    assert sweep.main(["--grid", "tiny_a", "tiny_b", "--seeds", "1", "--results", str(results)]) == 0
    link = results / "runs" / "tiny_b" / "iris-soft-f0-s0"     # tiny_b's soft mixture is tiny_a's run
    assert link.is_symlink() and link.resolve() == (results / "runs" / "tiny_a" / "iris-soft-f0-s0").resolve()
    summary = pd.read_csv(results / "summary.csv")
    soft = summary[summary.label == "soft"]
    assert set(soft.grid) == {"tiny_a", "tiny_b"} and soft.test_acc_mean.nunique() == 1
    assert summary.commit.str.fullmatch(r"[0-9a-f]{12}(\+dirty)?").all()
    config = json.loads((results / "runs" / "tiny_a" / "iris-soft-f0-s0" / "config.json").read_text())
    env = config["environment"]
    assert env["cpu_model"] and "git_dirty" in env and env["argv"][0].endswith("train.py")
    capsys.readouterr()

    monkeypatch.setattr(verify, "code_state", lambda: CodeState("0" * 40, False, None))
    assert verify.verify_grids(["tiny_a", "tiny_b"], results, None) == 0
    out = capsys.readouterr().out
    assert "tiny_a: reproduces (2 runs, whole runs: 2 equal to the last digit)" in out
    assert "tiny_b: reproduces (2 runs, first 2 epoch(s): 2 equal to the last digit)" in out

    metrics = results / "runs" / "tiny_a" / "iris-dense-f0-s0" / "metrics.csv"
    frame = pd.read_csv(metrics)
    frame.loc[0, "val_loss"] *= 1.01
    frame.to_csv(metrics, index=False)
    assert verify.verify_grids(["tiny_a"], results, None) == 1
    assert "tiny_a: differs in 1 of 2 runs (whole runs); tiny_a/iris-dense-f0-s0: epoch 1 val_loss" in capsys.readouterr().out
    # on a CPU of another family than the one that ran them, a 1 % change is within the tolerance
    recorded = config["environment"]["cpu_model"]
    monkeypatch.setattr(verify, "cpu_model", lambda: "ARM Neoverse" if "arm" not in recorded.lower() else "AMD EPYC")
    assert verify.verify_grids(["tiny_a"], results, None) == 0
    assert (f"tiny_a: reproduces (2 runs, whole runs: 1 equal to the last digit, 1 within the tolerance "
            f"(committed on {recorded}))") in capsys.readouterr().out


def test_compare_values_is_exact_on_one_cpu_family_and_tolerant_across_families():
    old = {"epoch": "1", "val_loss": "0.2030", "val_acc": "0.9600", "samples_per_s": "1000"}
    assert verify.compare_values(old, dict(old, samples_per_s="5"), exact=True, where="e") == []   # timings aside
    close = dict(old, val_loss="0.2040", val_acc="0.9620")
    assert len(verify.compare_values(old, close, exact=True, where="e")) == 2
    assert verify.compare_values(old, close, exact=False, where="e") == []
    far = dict(old, val_loss="0.2210")                                         # +8.9 %: beyond the tolerance
    assert verify.compare_values(old, far, exact=False, where="e") == ["e val_loss 0.203 vs 0.221 (+8.87%)"]


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
