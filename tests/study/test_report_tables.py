"""moelab/study/report_tables.py: the report's generated tables and macros."""
import pandas as pd
import pytest

from moelab.study import grids, report_tables

from .synthetic_logs import lm_metrics_of, metrics_of


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


def test_the_hyperparameter_table_reads_the_grids_settings():
    rows = {row["grid"]: row for row in report_tables.hyperparameter_rows()}
    assert rows["moe_vs_dense"]["lr"] == "0.002" and rows["moe_vs_dense"]["batch"] == 128
    assert rows["lm"]["budget"] == "8 x 250 steps" and rows["lm"]["k"] == 2
    assert rows["tabular"]["lr"] == "tuned" and rows["tabular"]["batch"] == 16 and rows["tabular"]["budget"] == "50 epochs"
    assert rows["cifar_heads"]["optimizer"] == "sgd" and rows["cifar_heads"]["balance"] == 0.2   # its CV^2 loss
    table = report_tables.table_hyperparameters()
    assert table.count("\\\\\n") == len(rows) + 1 and "\\texttt{moe\\_vs\\_dense}" in table


def test_tuning_macros_give_the_share_of_runs_that_chose_each_candidate():
    rows = []
    choices = [("tabular", 0.01, 0.0), ("tabular", 0.01, 0.1), ("tabular", 0.003, 0.0), ("tabular", 0.01, 0.0),
               ("reviews", 0.001, 0.1)]           # the report counts the tabular grid's runs only
    for run, (grid, lr, wd) in enumerate(choices):
        for candidate_lr in (0.001, 0.003, 0.01):
            for candidate_wd in (0.0, 0.1):
                rows.append({"grid": grid, "run": f"r{run}", "lr": candidate_lr, "weight_decay": candidate_wd,
                             "chosen": int((candidate_lr, candidate_wd) == (lr, wd))})
    lines = report_tables.tuning_macros(pd.DataFrame(rows))
    assert "\\newcommand{\\tunedruns}{4}" in lines
    assert "\\expandafter\\def\\csname tunedlr:0.01\\endcsname{75}" in lines
    assert "\\expandafter\\def\\csname tunedlr:0.003\\endcsname{25}" in lines
    assert "\\expandafter\\def\\csname tunedwd:0\\endcsname{75}" in lines
    assert "\\expandafter\\def\\csname tunedwd:0.1\\endcsname{25}" in lines
    assert not any("tunedlr:0.001" in line for line in lines)          # chosen by no run
    assert report_tables.tuning_macros(None)[-1] == "\\newcommand{\\tunedruns}{0}"
