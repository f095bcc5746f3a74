"""The ViT convergence study: its grids, the time-to-accuracy statistic and its figure."""
import math

import pandas as pd
import pytest

from moelab.study import grids, logs, plots


def test_the_convergence_grids_compare_moe_with_both_dense_vits_at_depth_6_and_12():
    assert grids.CONVERGENCE_GRIDS == ("vit_convergence", "vit_convergence_deep")
    for depth, grid in ((6, "vit_convergence"), (12, "vit_convergence_deep")):
        runs = grids.runs(grid)
        assert {r.dataset for r in runs} == {grids.CIFAR, grids.FASHION}
        labels = {r.label for r in runs}
        assert labels == {f"d{depth}-moe-expert-choice", f"d{depth}-moe-top2", f"d{depth}-dense-active",
                          f"d{depth}-dense-params"}
        for run in runs:
            assert run.grid == grid and run.flags["vit_depth"] == depth and run.flags["moe_every"] == 2
            assert run.flags["epochs"] >= 15
    assert {"vit_convergence", "vit_convergence_deep"} <= set(grids.GRIDS)


def metrics_of(curves: dict) -> pd.DataFrame:
    rows = []
    for (label, seed), accs in curves.items():
        for epoch, acc in enumerate(accs, start=1):
            rows.append({"grid": "g", "dataset": "d", "label": label, "seed": seed, "epoch": epoch, "val_acc": acc,
                         "wall_time_s": 10.0 * epoch + seed})
    return pd.DataFrame(rows)


def test_time_to_accuracy_is_the_first_epoch_at_or_above_the_threshold():
    metrics = metrics_of({("moe", 0): [0.5, 0.7, 0.8, 0.75], ("moe", 1): [0.6, 0.8, 0.9, 0.9],
                          ("dense", 0): [0.4, 0.5, 0.6, 0.7]})
    table = logs.time_to_accuracy(metrics, 0.8).set_index(["label", "seed"])
    assert table.loc[("moe", 0), "epoch"] == 3 and table.loc[("moe", 0), "wall_time_s"] == 30.0
    assert table.loc[("moe", 1), "epoch"] == 2 and table.loc[("moe", 1), "wall_time_s"] == 21.0
    assert math.isnan(table.loc[("dense", 0), "epoch"]) and math.isnan(table.loc[("dense", 0), "wall_time_s"])


def test_convergence_figure_has_an_epoch_and_a_time_axis():
    metrics = metrics_of({("moe", 0): [0.5, 0.7], ("moe", 1): [0.6, 0.8], ("dense", 0): [0.4, 0.5]})
    figure = plots.convergence(metrics, "g", "d")
    epoch_axis, time_axis = figure.axes
    assert epoch_axis.get_xlabel() == "epoch" and "wall" in time_axis.get_xlabel()
    assert len(epoch_axis.lines) == 2 and len(time_axis.lines) == 3          # mean per model; every seed
    empty = plots.convergence(metrics, "other", "d")
    assert "no completed runs" in empty.axes[0].texts[0].get_text()
    deeper = metrics_of({("deep", 0): [0.3, 0.4]}).assign(grid="g_deep")
    both = plots.convergence(pd.concat([metrics, deeper]), ("g", "g_deep"), "d")
    assert len(both.axes[0].lines) == 3 and len(both.axes[1].lines) == 4


def test_report_table_gives_epochs_and_minutes_to_the_target_over_the_seeds_that_reach_it():
    from moelab.study import report_tables

    target = grids.CONVERGENCE_TARGETS["cifar10-jpeg"]
    below, above = target - 0.1, target + 0.05
    curves = {("d6-moe-top2", 0): [below, above, above], ("d6-moe-top2", 1): [below, below, above],
              ("d6-dense-active", 0): [below, below, below], ("d6-dense-active", 1): [below, below, above]}
    metrics = metrics_of(curves).assign(grid="vit_convergence", dataset="cifar10-jpeg")
    summary = pd.DataFrame([{"grid": "vit_convergence", "dataset": "cifar10-jpeg", "label": label, "seeds": 2,
                             "test_acc_mean": 0.6, "test_acc_std": 0.01, "time_s_mean": 600.0,
                             "flops_per_sample": 2e7, "params_total": 1000}
                            for label in ("d6-moe-top2", "d6-dense-active")])
    step_time = {(6, "moe-top2"): 1.5, (6, "dense-active"): 1.0, (12, "moe-top2"): 9.0}
    convergence = report_tables.convergence_rows(summary, metrics, step_time)
    rows = {row["model"]: row for row in convergence if row["depth"] == "6"}
    # top-2: epochs 2 and 3; minutes 20 s / 60 and 31 s / 60; its steps take 1.5 dense-active steps
    assert list(rows["moe-top2"]["epochs"]) == [2, 3] and rows["moe-top2"]["step_time"] == 1.5
    assert list(rows["moe-top2"]["minutes"] * 60) == pytest.approx([20, 31])
    assert report_tables._reach(rows["moe-top2"]["epochs"] * 1.5, 1) == "3.8 $\\pm$ 1.1"   # 3 and 4.5 dense epochs
    assert report_tables._reach(rows["dense-active"]["epochs"], 1) == "3.0 (1/2)"       # one seed never got there
    macros = report_tables.numbers(summary.assign(test_loss_mean=0, specialisation_mean=0, specialisation_std=0,
                                                 final_val_load_cv_mean=0, final_val_load_cv_std=0,
                                                 final_val_dropped_mean=float("nan")),
                                  pd.Series(dtype=float), None, {}, convergence=convergence)
    assert "reachepochs:vit_convergence:cifar10-jpeg:d6-moe-top2\\endcsname{2.5}" in macros
    assert "reachepochs:vit_convergence:cifar10-jpeg:d6-dense-active\\endcsname{--}" in macros
    assert "reachtime:vit_convergence:cifar10-jpeg:d6-moe-top2\\endcsname{3.8}" in macros
    assert "vitstep:6:moe-top2\\endcsname{1.50}" in macros


def test_vit_step_times_are_read_from_the_benchmark_tables(tmp_path):
    from moelab.study import report

    (tmp_path / "bench").mkdir()
    pd.DataFrame({"model": ["moe_top2", "dense_active"], "vs_dense_active": [0.5, 1.0]}).to_csv(
        tmp_path / "bench" / "bench_vit_d6_b128.csv", index=False)
    pd.DataFrame({"model": ["dense_active"], "vs_dense_active": [1.0]}).to_csv(
        tmp_path / "bench" / "bench_vit_d6_b64.csv", index=False)        # not the grids' batch: ignored
    assert report.load_vit_step_time(tmp_path) == {(6, "moe-top2"): 2.0, (6, "dense-active"): 1.0}


def test_res_macro_of_a_single_seed_run_is_its_accuracy_alone():
    from moelab.study import report_tables

    summary = pd.DataFrame([{"grid": "vit_convergence_deep", "dataset": "cifar10-jpeg", "label": label, "seeds": seeds,
                             "test_acc_mean": 0.642, "test_acc_std": std, "time_s_mean": 600.0,
                             "flops_per_sample": 2e7, "params_total": 1000, "test_loss_mean": 0,
                             "specialisation_mean": 0, "specialisation_std": 0, "final_val_load_cv_mean": 0,
                             "final_val_load_cv_std": 0, "final_val_dropped_mean": float("nan")}
                            for label, seeds, std in (("d12-moe-top2", 1, float("nan")), ("d12-dense-active", 2, 0.001))])
    macros = report_tables.numbers(summary, pd.Series(dtype=float), None, {})
    assert "res:vit_convergence_deep:cifar10-jpeg:d12-moe-top2\\endcsname{64.20}" in macros
    assert "res:vit_convergence_deep:cifar10-jpeg:d12-dense-active\\endcsname{64.20 $\\pm$ 0.10}" in macros


def lm_metrics_of(curves: dict) -> pd.DataFrame:
    rows = []
    for (label, seed), bpbs in curves.items():
        for epoch, bpb in enumerate(bpbs, start=1):
            rows.append({"grid": "lm", "dataset": "python-stdlib", "label": label, "seed": seed, "epoch": epoch,
                         "step": 100 * epoch, "val_bpb": bpb, "val_acc": 0.5, "wall_time_s": 7.0 * epoch})
    return pd.DataFrame(rows)


def test_time_to_bpb_is_the_first_evaluation_at_or_below_and_the_crossing_is_interpolated():
    metrics = lm_metrics_of({("lm-top2-e8", 0): [3.0, 2.0, 1.5, 1.4], ("lm-dense-active", 0): [3.0, 2.5, 2.0, 1.9],
                             ("lm-top1-e8", 0): [1.0, 0.9, 0.8, 0.7]})
    table = logs.time_to_bpb(metrics, 1.75).set_index("label")
    moe = table.loc["lm-top2-e8"]
    assert (moe.epoch, moe.step, moe.wall_time_s) == (3, 300, 21.0)
    assert moe.crossing_step == 250.0                                       # 2.0 at 200, 1.5 at 300: half way
    assert math.isnan(table.loc["lm-dense-active", "crossing_step"])        # never below 1.75
    assert table.loc["lm-top1-e8", "crossing_step"] == 100                  # below at its first evaluation


def test_lm_table_and_macros_take_steps_to_target_times_the_bench_step_time():
    from moelab.study import report_tables

    target = grids.LM_TARGET_BPB
    curves = {("lm-dense-active", s): [target + 1, target + 0.5, target - 0.1 * (s + 1)] for s in (0, 1)}
    curves |= {("lm-top2-e8", s): [target + 1, target - 0.5, target - 0.6 - 0.1 * s] for s in (0, 1)}
    metrics = lm_metrics_of(curves)
    summary = pd.DataFrame([{"grid": "lm", "dataset": "python-stdlib", "label": label, "seeds": 2,
                             "test_bpb_mean": bpb, "test_bpb_std": 0.01, "params_total": 2000, "params_active": 1000}
                            for label, bpb in (("lm-dense-active", 1.5), ("lm-top2-e8", 1.4))])
    rows = report_tables.lm_rows(summary, metrics, {"lm-dense-active": 1.0, "lm-top2-e8": 1.25})
    assert [r["name"] for r in rows] == ["dense-active", "top2-e8"]                # grids.LM_VARIANTS order
    moe = rows[1]
    assert moe["gain"] == pytest.approx(0.1)
    assert list(moe["steps"]) == pytest.approx([100 + 100 * 1 / 1.5] * 2)        # crossing between 100 and 200
    table = report_tables.table_lm(rows)
    assert "+0.100" in table and "167" in table and "208" in table               # 166.7 steps x 1.25
    macros = report_tables.numbers(summary.assign(test_acc_mean=0.5, test_acc_std=0.0, specialisation_mean=0.0,
                                                  specialisation_std=0.0, final_val_load_cv_mean=0.0,
                                                  final_val_load_cv_std=0.0, final_val_dropped_mean=float("nan"),
                                                  time_s_mean=60.0), pd.Series(dtype=float), None, {}, lm=rows)
    assert "\\csname lmtime:top2-e8\\endcsname{208}" in macros and "\\csname lmgain:top2-e8\\endcsname{0.100}" in macros
    assert "\\csname lmsteps:dense-active\\endcsname{" in macros


def test_every_lm_moe_has_a_dense_model_of_its_total_parameters_within_one_and_a_half_percent():
    from moelab.models.builder import build_model
    from moelab.training.config import Config

    def total(name):
        flags = {k: v for k, v in {**grids.LM_BASE, **grids.LM_VARIANTS[name]}.items() if k != "step_time_rounds"}
        model = build_model(Config(**flags).model_spec(), (flags["context"],), 256)
        return sum(p.numel() for p in model.parameters())
    dense = {name: total(name) for name in ("dense-params", "dense-params-top1")}
    for moe in ("top2-e8", "top1-e8", "top8-e32", "top4-e32", "lossfree-top2-e8"):
        assert min(abs(total(moe) / d - 1) for d in dense.values()) < 0.015, moe   # routers: 1 % at E = 32


def test_the_lm_step_time_is_what_the_runs_measured_beside_their_dense_model_where_they_did(tmp_path):
    from moelab.study import report

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_lm_b32.csv").write_text("model,vs_dense_active\ndense_active,1.0\ntop2_e8,0.8\n"
                                                         "top1_e8,0.9\n")
    assert report.load_lm_step_time(tmp_path) == {"lm-dense-active": 1.0, "lm-top2-e8": 1.25, "lm-top1-e8": 1 / 0.9}
    summary = pd.DataFrame({"grid": ["lm", "lm", "lm", "vit"], "label": ["lm-dense-active", "lm-top2-e8", "lm-top1-e8", "x"],
                            "step_time_vs_dense_active_mean": [0.98, 1.4, float("nan"), 2.0]})
    ratios = report.load_lm_step_time(tmp_path, summary)
    assert ratios == {"lm-dense-active": 1.0, "lm-top2-e8": 1.4, "lm-top1-e8": 1 / 0.9}   # the run's own, else the bench


def test_lm_macros_average_the_seeds_that_reach_and_say_how_many_and_the_lead_is_over_those():
    from moelab.study import report_tables

    target = grids.LM_TARGET_BPB
    curves = {("lm-dense-active", 0): [target + 1, target + 0.5, target - 0.5],    # crosses at step 250
              ("lm-dense-active", 1): [target + 1, target + 0.5, target + 0.2]}    # never reaches it
    curves |= {("lm-top2-e8", s): [target + 1, target - 0.5, target - 0.6] for s in (0, 1)}   # step 100 + 66.7
    summary = pd.DataFrame([{"grid": "lm", "dataset": "python-stdlib", "label": label, "seeds": 2,
                             "test_bpb_mean": 1.5, "test_bpb_std": 0.01, "params_total": 2000, "params_active": 1000,
                             "test_acc_mean": 0.5, "test_acc_std": 0.0, "specialisation_mean": 0.0,
                             "specialisation_std": 0.0, "final_val_load_cv_mean": 0.0, "final_val_load_cv_std": 0.0,
                             "final_val_dropped_mean": float("nan"), "time_s_mean": 60.0}
                            for label in ("lm-dense-active", "lm-top2-e8")])
    rows = report_tables.lm_rows(summary, lm_metrics_of(curves), {"lm-dense-active": 1.0, "lm-top2-e8": 0.75})
    macros = report_tables.numbers(summary, pd.Series(dtype=float), None, {}, lm=rows)
    assert "\\csname lmtime:dense-active\\endcsname{250 (1/2 seeds)}" in macros
    assert "\\csname lmtime:top2-e8\\endcsname{125}" in macros                       # 166.7 steps x 0.75
    assert report_tables.lm_time_lead(rows) == pytest.approx(100 * (1 - 125 / 250))
    assert "\\newcommand{\\lmlead}{50}" in macros
