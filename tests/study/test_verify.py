"""moelab/study/verify.py: sweep.py --verify reruns a grid and compares numbers within a tolerance."""
import json

import pandas as pd
import pytest

from moelab.study import grids, sweep, verify
from moelab.training.provenance import CodeState


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
