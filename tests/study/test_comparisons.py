"""moelab/study/comparisons.py: the paired comparisons of runs against their grids' references."""
import numpy as np
import pandas as pd
import pytest

from moelab.study import comparisons, statistics


def _runs(grid, dataset, scores, metric="test_acc"):
    rows = []
    for label, values in scores.items():
        for seed, value in enumerate(values):
            rows.append({"grid": grid, "dataset": dataset, "label": label, "seed": seed, "fold": None,
                         "test_acc": value if metric == "test_acc" else float("nan"),
                         "test_r2": value if metric == "test_r2" else float("nan"),
                         "test_bpb": value if metric == "test_bpb" else float("nan")})
    return pd.DataFrame(rows)


def test_comparisons_pair_runs_by_seed_against_each_grids_references():
    runs = pd.concat([
        _runs("moe_vs_dense", "mnist", {"moe-hard": [0.965, 0.962, 0.968], "dense-params": [0.975, 0.973, 0.978],
                                        "dense-active": [0.966, 0.960, 0.969]}),
        _runs("lm", "python-stdlib", {"lm-top2-e8": [1.70, 1.71, 1.69], "lm-dense-active": [1.75, 1.76, 1.74]},
              "test_bpb"),
        _runs("gating", "mnist", {"hard": [0.96, 0.97], "soft": [0.97]}),     # seed 1 of soft missing
    ])
    table = comparisons.comparisons(runs)
    row = table[(table.model == "moe-hard") & (table.reference == "dense-params")].iloc[0]
    expected = statistics.paired_difference([0.965, 0.962, 0.968], [0.975, 0.973, 0.978])
    assert (row.n, row.diff_mean, row.diff_low, row.p_value) == (3, pytest.approx(expected.mean),
                                                                 pytest.approx(expected.low), pytest.approx(expected.p_value))
    assert row.verdict == "worse" and row.metric == "test_acc"
    tie = table[(table.model == "moe-hard") & (table.reference == "dense-active")].iloc[0]
    assert tie.verdict == "tie"
    lm = table[table.grid == "lm"].iloc[0]       # fewer bits per byte is better
    assert lm.metric == "test_bpb" and lm.diff_mean == pytest.approx(-0.05) and lm.verdict == "better"
    soft = table[table.grid == "gating"].iloc[0]  # paired on the seeds both have: one pair, no interval
    assert soft.n == 1 and soft.verdict == "tie" and np.isnan(soft.diff_low)


def test_tabular_comparisons_pair_the_same_number_of_experts():
    pairs = comparisons.pairs_of("tabular", ["e2-soft", "e2-dense-params", "e4-soft", "e4-dense-params",
                                             "ref-logistic", "ref-hgb"])
    assert ("e2-soft", "e2-dense-params") in pairs and ("e4-soft", "e4-dense-params") in pairs
    assert ("e4-soft", "e2-dense-params") not in pairs and ("ref-hgb", "ref-logistic") not in pairs
    assert ("e4-soft", "ref-logistic") in pairs


def test_the_lr_grid_compares_each_model_at_the_rate_it_does_best_on_validation():
    rows = []
    for label, val, test in [("moe-hard-lr0.001", 0.950, 0.951), ("moe-hard-lr0.003", 0.960, 0.958),
                             ("dense-params-lr0.001", 0.970, 0.972), ("dense-params-lr0.003", 0.965, 0.990)]:
        rows += [{"grid": "lr", "dataset": "mnist", "label": label, "seed": seed, "fold": None,
                  "best_val_acc": val + 0.001 * seed, "test_acc": test + 0.002 * seed} for seed in range(3)]
    runs = pd.DataFrame(rows)
    assert comparisons.best_learning_rates(runs) == {"moe-hard": "moe-hard-lr0.003",
                                                      "dense-params": "dense-params-lr0.001"}
    (row,) = comparisons.comparisons(runs).itertuples()
    assert (row.model, row.reference) == ("moe-hard-lr0.003", "dense-params-lr0.001")   # not the best test rate
    assert row.diff_mean == pytest.approx(0.958 - 0.972)


def test_the_language_model_rate_is_the_one_of_lowest_validation_bits_per_byte():
    rows = []
    for label, val, test in [("lm-top2-e8-lr0.001", 1.60, 1.58), ("lm-top2-e8-lr0.002", 1.50, 1.52),
                             ("lm-dense-active-lr0.002", 1.70, 1.66), ("lm-dense-active-lr0.01", 1.65, 1.64)]:
        rows += [{"grid": "lr_lm", "dataset": "python-stdlib", "label": label, "seed": seed, "fold": None,
                  "best_val_bpb": val + 0.001 * seed, "test_bpb": test - 0.002 * seed, "test_acc": 0.5}
                 for seed in range(3)]
    runs = pd.DataFrame(rows)
    assert comparisons.best_learning_rates(runs, "lr_lm") == {"lm-top2-e8": "lm-top2-e8-lr0.002",
                                                               "lm-dense-active": "lm-dense-active-lr0.01"}
    (row,) = comparisons.comparisons(runs).itertuples()
    assert (row.model, row.reference, row.metric) == ("lm-top2-e8-lr0.002", "lm-dense-active-lr0.01", "test_bpb")
    assert row.diff_mean == pytest.approx(1.52 - 1.64) and row.verdict == "better"   # fewer bits per byte


def test_two_references_of_a_grid_are_compared_once():
    pairs = comparisons.pairs_of("moe_vs_dense", ["moe-hard", "dense-params", "dense-active"])
    assert pairs == [("moe-hard", "dense-params"), ("dense-active", "dense-params"), ("moe-hard", "dense-active")]


def test_capacity_variants_are_compared_with_the_dropless_model_of_their_router():
    pairs = comparisons.pairs_of("capacity", ["top1-dropless", "top1-cf1-position", "top2-dropless",
                                              "top2-cf1-position"])
    assert pairs == [("top1-cf1-position", "top1-dropless"), ("top2-cf1-position", "top2-dropless")]
