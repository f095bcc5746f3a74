"""moelab/study/references.py: the scikit-learn references on the folds of the mixtures."""
import json
import math

import numpy as np
import pytest

from moelab import data
from moelab.data import tables


def test_references_score_the_same_folds_as_the_mixtures_and_aggregate_over_folds(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from moelab.study import grids, logs, references, sweep

    runs = [r for r in grids.with_seeds(grids.runs("tabular", datasets=("iris",)), (0, 1))
            if r.label == "ref-logistic" and r.fold in (0, 1)]
    for run in runs:
        assert sweep.execute(run, tmp_path, None, "cpu", 1).status == "done"
    fold = data.load_dataset("iris", "/nonexistent", val_fraction=0.15, seed=1, table=tables.TableOptions(fold=1))
    x = {split: getattr(fold, split).features.numpy() for split in ("train", "val", "test")}
    y = {split: getattr(fold, split).targets.numpy() for split in x}
    # tuned on the validation rows: the C of the best validation accuracy, ties to the lower log-loss
    fits = {c["C"]: LogisticRegression(max_iter=5000, C=c["C"]).fit(x["train"], y["train"])
            for c in references.TUNE_GRID["logistic"]}
    val = {c: ((m.predict(x["val"]) == y["val"]).mean(),
               -np.log(m.predict_proba(x["val"])[np.arange(len(y["val"])), y["val"]]).mean()) for c, m in fits.items()}
    best = min(val, key=lambda c: (-val[c][0], val[c][1]))
    recorded = json.loads((tmp_path / "runs" / "tabular" / runs[-1].name / "config.json").read_text())
    assert recorded["tuned"]["chosen"] == {"C": best} and recorded["config"]["tune"] is True
    from moelab.training.provenance import code_state
    assert recorded["environment"]["git_commit"] == code_state().commit          # provenance, as a trained run
    commit = (code_state().commit or "unknown")[:12]
    assert logs.run_commit(tmp_path / "runs" / "tabular" / runs[-1].name).startswith(commit)
    accuracy = (fits[best].predict(x["test"]) == y["test"]).mean()
    table = logs.run_table(tmp_path)
    row = table[(table.seed == 1) & (table.fold == 1)].iloc[0]
    assert row.test_acc == pytest.approx(accuracy) and row.model == "reference" and row.label == "ref-logistic"
    summary = logs.aggregate(table)
    assert summary.iloc[0].seeds == 2 and summary.iloc[0].folds == 2
    assert summary.iloc[0].test_acc_mean == pytest.approx(table.test_acc.mean())
    scores = references.regression_scores(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 3.0]))
    assert scores["rmse"] == pytest.approx(math.sqrt(2 / 3)) and scores["r2"] == pytest.approx(1 - 2 / (14 / 3))
