"""The report's tables and the numbers its text quotes, as LaTeX, from the aggregated results
(functions of DataFrames that write nothing; report.py reads the results and writes the files)."""
from __future__ import annotations

import math

import pandas as pd

from ..models.builder import build_model
from ..training.config import Config
from . import grids, logs, plots, published
from .grids import (
    CONVERGENCE_GRIDS,
    CONVERGENCE_TARGETS,
    LM_TARGET_BPB,
    LM_VARIANTS,
    LR_GRIDS,
    VIT,
    split_convergence_label,
    split_lr_label,
)


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    std_text = "--" if pd.isna(std) else f"{scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f} $\\pm$ {std_text}"


def thousands(value: float) -> str:
    return f"{value:,.0f}".replace(",", "\\,")


def escape(text: str) -> str:
    return str(text).replace("_", "\\_").replace("%", "\\%").replace("#", "\\#")


def tabular(header: list[str] | list[list[str]], rows: list[list[str]], align: str) -> str:
    """A booktabs table; ``header`` is one row of column names, or several rows (a grouping row first)."""
    header_rows = header if header and isinstance(header[0], list) else [header]
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", *(" & ".join(row) + " \\\\" for row in header_rows),
             "\\midrule"]
    lines += [" & ".join(row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def _difference(comparisons: pd.DataFrame | None, grid: str, dataset: str, model: str, reference: str) -> str:
    """A paired difference in accuracy points, ``mean [low, high]``, or -- when not compared."""
    if comparisons is None:
        return "--"
    row = comparisons[(comparisons.grid == grid) & (comparisons.dataset == dataset) & (comparisons.model == model)
                      & (comparisons.reference == reference)]
    if row.empty:
        return "--"
    r = row.iloc[0]
    return f"${100 * r.diff_mean:+.2f}$ [${100 * r.diff_low:+.2f}$, ${100 * r.diff_high:+.2f}$]"


def table_gating(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None,
                 agreement: pd.DataFrame | None = None) -> str:
    """The routers at E = 8: MNIST test accuracy and its paired difference with top-1 (Switch),
    Fashion-MNIST accuracy, I/H, the agreement of specialisation across seeds
    (specialisation.seed_agreement), final validation load CV and seeds."""
    rows = summary[summary.grid == "gating"]
    datasets = plots.ordered(rows.dataset, plots.DATASET_ORDER)
    first = datasets[0]
    body = []
    for label in plots.ordered(rows.label, plots.GATING_ORDER):
        cells = [plots.ROUTER_NAMES.get(label, escape(label))]
        for dataset in datasets:
            match = rows[(rows.dataset == dataset) & (rows.label == label)]
            cells.append(pm(match.test_acc_mean.iloc[0], match.test_acc_std.iloc[0]) if len(match) else "--")
            if dataset == first:
                cells.append("" if label == "hard" else _difference(comparisons, "gating", first, label, "hard"))
        reference = rows[(rows.dataset == first) & (rows.label == label)]
        agree = (agreement[(agreement.dataset == first) & (agreement.label == label)]
                 if agreement is not None and len(agreement) else pd.DataFrame())
        if len(reference):
            r = reference.iloc[0]
            # no samples/s: grid runs share the machine with other work (speed: the benchmarks)
            cells += [f"{r.specialisation_mean:.2f}",
                      f"{agree.agreement_mean.iloc[0]:.2f}" if len(agree) else "--",
                      f"{r.final_val_load_cv_mean:.2f}", str(r.seeds)]
        else:
            cells += ["--"] * 4
        body.append(cells)
    header = ["router", f"{escape(first)} (\\%)", "vs top-1 (points)", *[f"{escape(d)} (\\%)" for d in datasets[1:]],
              "I/H", "agreement", "load CV", "seeds"]
    return tabular(header, body, "l" + "r" * (len(header) - 1))


def keyed_macro(name: str, arity: int, prefix: str | None = None) -> str:
    """``\\newcommand{\\name}[arity]{...}``: a macro whose arguments, joined by colons, name the
    value that keyed_value defined (``prefix:#1:#2...``; the prefix is the macro's name unless given)."""
    key = ":".join(f"#{i + 1}" for i in range(arity))
    return f"\\newcommand{{\\{name}}}[{arity}]{{\\csname {prefix or name}:{key}\\endcsname}}"


def keyed_value(key: str, value: str) -> str:
    """The value a keyed_macro finds under ``key`` (``prefix:arg1:arg2...``)."""
    return f"\\expandafter\\def\\csname {key}\\endcsname{{{value}}}"


def agreement_macros(summary: pd.DataFrame, agreement: pd.DataFrame | None) -> list[str]:
    """\\agree{dataset}{label}: mean agreement of specialisation across seeds (gating grid), and
    \\specrange{dataset}: the lowest and highest I/H of the gating grid's routers, named."""
    lines = [keyed_macro("agree", 2),
             keyed_macro("specrange", 1)]
    for r in (agreement.itertuples() if agreement is not None else []):
        if r.grid == "gating":
            lines.append(keyed_value(f"agree:{r.dataset}:{r.label}", f"{r.agreement_mean:.2f}"))
    rows = summary[(summary.grid == "gating") & summary.specialisation_mean.notna()]
    for dataset, table in rows.groupby("dataset", sort=False):
        low, high = table.loc[table.specialisation_mean.idxmin()], table.loc[table.specialisation_mean.idxmax()]
        text = (f"{low.specialisation_mean:.2f} ({plots.ROUTER_NAMES.get(low.label, low.label)}) to "
                f"{high.specialisation_mean:.2f} ({plots.ROUTER_NAMES.get(high.label, high.label)})")
        lines.append(keyed_value(f"specrange:{dataset}", text))
    return lines


def _mean_spread(mean: float, std: float, digits: int) -> str:
    """``mean`` alone when there is no spread (one seed), else mean \\pm std."""
    return f"{mean:.{digits}f}" if pd.isna(std) else pm(mean, std, 1.0, digits)


def convergence_rows(summary: pd.DataFrame, metrics: pd.DataFrame,
                     step_time: dict[tuple[int, str], float] | None = None) -> list[dict]:
    """Per configuration of the ViT convergence grids: its summary row, the target validation
    accuracy, the epochs and training minutes each seed took to first reach it
    (grids.CONVERGENCE_TARGETS; NaN for a seed that never did), and its training step's time over
    the dense ViT of equal FLOPs from ``step_time`` ((depth, model) -> ratio, CIFAR-10; NaN where
    not measured). The grids' runs may span machines; that ratio, measured in one benchmark run,
    turns epochs into comparable time."""

    rows = []
    for grid in CONVERGENCE_GRIDS:
        for dataset, target in CONVERGENCE_TARGETS.items():
            runs = metrics[(metrics.grid == grid) & (metrics.dataset == dataset)] if len(metrics) else metrics
            if not len(runs):
                continue
            reached = logs.time_to_accuracy(runs, target)
            for r in summary[(summary.grid == grid) & (summary.dataset == dataset)].itertuples():
                seeds = reached[reached.label == r.label]
                depth, model = split_convergence_label(r.label)
                measured = (step_time or {}) if dataset == "cifar10-jpeg" else {}   # timed on CIFAR-10 only
                ratio = measured.get((depth, model), float("nan"))
                rows.append({"summary": r, "depth": str(depth), "model": model, "target": target,
                             "epochs": seeds.epoch, "minutes": seeds.wall_time_s / 60, "step_time": ratio})
    return rows


def _mean_if_all(values: pd.Series, digits: int) -> str:
    """The mean over seeds of a time to target, or -- unless every seed reached it (NaN: never)."""
    hit = values.dropna()
    return f"{hit.mean():.{digits}f}" if len(hit) == len(values) else "--"


def _mean_reached(values: pd.Series, digits: int) -> str:
    """The mean over the seeds that reached a target, with how many did when not all (text macros)."""
    hit = values.dropna()
    if hit.empty:
        return "never"
    return f"{hit.mean():.{digits}f}" + ("" if len(hit) == len(values) else f" ({len(hit)}/{len(values)} seeds)")


def lm_time_lead(rows: list[dict]) -> float:
    """How far ahead in time to target the fastest MoE of the lm grid is of the dense model of equal
    active FLOPs, in % of that model's time; both times are means over the seeds that reached the
    target, so a dense model that some seeds never bring there makes this a lower bound. NaN when
    either never reaches it or a step time is missing."""
    times = {row["name"]: (row["steps"] * row["step_time"]).dropna().mean() for row in rows}
    dense = times.get("dense-active", float("nan"))
    moe = [t for name, t in times.items() if not name.startswith("dense") and math.isfinite(t)]
    return 100 * (1 - min(moe) / dense) if moe and math.isfinite(dense) else float("nan")


def _reach(values: pd.Series, digits: int) -> str:
    """Mean \\pm std over the seeds that reached the target, and how many did when not all."""
    hit = values.dropna()
    if hit.empty:
        return "never"
    text = _mean_spread(hit.mean(), hit.std() if len(hit) > 1 else float("nan"), digits)
    return text if len(hit) == len(values) else f"{text} ({len(hit)}/{len(values)})"


def lm_rows(summary: pd.DataFrame, metrics: pd.DataFrame, step_time: dict[str, float] | None = None) -> list[dict]:
    """Per configuration of the lm grid, in grids.LM_VARIANTS order: its summary row, the test bits
    per byte gained over the dense model of equal active FLOPs (difference of the means), the steps
    each seed took to cross grids.LM_TARGET_BPB (interpolated between evaluations), and its step
    time over that dense model from ``step_time`` (label -> ratio, bench.py train --family lm), which
    turns steps into time comparable across machines."""
    lm = summary[summary.grid == "lm"].set_index("label")
    runs = metrics[metrics.grid == "lm"] if len(metrics) else metrics
    if lm.empty or not len(runs):
        return []
    reached = logs.time_to_bpb(runs, LM_TARGET_BPB)
    reference = lm.at["lm-dense-active", "test_bpb_mean"] if "lm-dense-active" in lm.index else float("nan")
    rows = []
    for name in LM_VARIANTS:
        label = f"lm-{name}"
        if label not in lm.index:
            continue
        r = lm.loc[label]
        rows.append({"label": label, "name": name, "summary": r, "gain": reference - r.test_bpb_mean,
                     "steps": reached[reached.label == label].crossing_step,
                     "step_time": (step_time or {}).get(label, float("nan"))})
    return rows


def table_lm(rows: list[dict]) -> str:
    """The byte-level language models: test bits per byte, gain over the dense model of equal active
    FLOPs, steps to the target validation bits per byte, step time, steps times step time (time to
    target in steps of that dense model) and total parameters; ``rows`` from lm_rows."""
    body = []
    for row in rows:
        r, ratio = row["summary"], row["step_time"]
        body.append([escape(row["name"]), _mean_spread(r.test_bpb_mean, r.test_bpb_std, 3), f"{row['gain']:+.3f}",
                     _reach(row["steps"], 0), "--" if math.isnan(ratio) else f"{ratio:.2f}",
                     "--" if math.isnan(ratio) else _reach(row["steps"] * ratio, 0),
                     thousands(r.params_total), str(r.seeds)])
    return tabular(["model", "test bits/byte", "gain", f"steps to {LM_TARGET_BPB:.2f}", "step time",
                    "time to target", "params", "seeds"], body, "lrrrrrrr")


TABLE_REPORT_E = 4     # the number of experts of the report's tabular table
TABLE_COLUMNS = (("dense-active", "dense, = active"), ("dense-params", "dense, = total"), ("soft", "soft"),
                 ("top1", "top-1"), ("top2", "top-2"))
TABLE_ROWS = (("iris", "", "iris"), ("wine", "", "wine"), ("breast-cancer", "", "breast cancer"),
              ("diabetes", "-mse", "diabetes, sq.\\ error"), ("diabetes", "-mix", "diabetes, mixture lik."))


def _table_cell(rows: pd.DataFrame, dataset: str, label: str) -> str:
    """Test accuracy (%) or R^2 (diabetes), mean +- std over folds x seeds; -- when absent."""
    match = rows[(rows.dataset == dataset) & (rows.label == label)]
    if match.empty:
        return "--"
    r = match.iloc[0]
    if dataset == "diabetes":
        return _mean_spread(r.test_r2_mean, r.test_r2_std, 3)
    return _mean_spread(100 * r.test_acc_mean, 100 * r.test_acc_std, 1)


def table_tabular(summary: pd.DataFrame) -> str:
    """The tabular grid at E = TABLE_REPORT_E: dense baselines, the three mixtures and the two
    scikit-learn references, test accuracy in % (R^2 for diabetes) over folds x seeds."""
    rows = summary[summary.grid == "tabular"]
    body = []
    for dataset, loss, name in TABLE_ROWS:
        if dataset not in set(rows.dataset):
            continue
        linear = "ref-ridge" if dataset == "diabetes" else "ref-logistic"
        first = loss != "-mix"             # dense and references belong to neither loss: shown once
        cells = [name]
        for label, _ in TABLE_COLUMNS:
            dense = label.startswith("dense")
            full = f"e{TABLE_REPORT_E}-{label}" + ("" if dense else loss)
            cells.append(_table_cell(rows, dataset, full) if first or not dense else "")
        cells += [_table_cell(rows, dataset, ref) if first else "" for ref in (linear, "ref-hgb")]
        body.append(cells)
    return tabular(["table", *(text for _, text in TABLE_COLUMNS), "linear", "HGB"], body, "lrrrrrrr")


def numbers(summary: pd.DataFrame, unpicked: pd.Series, bench: pd.DataFrame | None,
            train_bench: dict[int, pd.DataFrame], sharpness: pd.DataFrame | None = None,
            coherence: pd.DataFrame | None = None, bench_repeat: pd.DataFrame | None = None,
            cifar_sharpness: pd.DataFrame | None = None, convergence: list[dict] | None = None,
            lm: list[dict] | None = None, comparisons: pd.DataFrame | None = None) -> str:
    """LaTeX macros for the numbers quoted in the text: \\res (test accuracy, %, mean ± std),
    \\spec (I(expert; class) / H(class)), \\loadcv (final validation load CV), per
    {grid}{dataset}{label}, \\dropped (% of assignments dropped for capacity, validation, last epoch),
    \\minutes (wall minutes per run, mean over seeds), \\params (total parameters);
    \\unpicked{label}: % of test samples no expert took (expert choice); \\curvature{results folder}
    {label}{split}{top_eigenvalue|trace|loss}: the Hessian estimates of analysis.py; \\reachepochs and
    \\reachminutes{grid}{dataset}{label}: mean epochs and training minutes to the convergence target,
    \\reachtime the epochs times the step time over the dense ViT of equal FLOPs (-- unless every
    seed reached it), \\vitstep{blocks}{model} that step time (CIFAR-10); \\lmbpb, \\lmgain,
    \\lmsteps, \\lmstep and \\lmtime{variant}: the lm grid's test bits per byte, its gain over
    dense-active, the steps to grids.LM_TARGET_BPB, the step time and their product (see lm_rows;
    steps and time are means over the seeds that reached it), \\lmtarget that target, \\lmlead the
    fastest MoE's lead in time over dense-active in % (lm_time_lead); \\tab{dataset}{label}: the
    tabular grid's test accuracy (%) or R^2 (diabetes), mean ± std over folds x seeds;
    \\cmp and \\verdict{grid}{dataset}{model}{reference}: a paired comparison of comparisons.csv
    (comparison_macros)."""
    lines = []
    for macro in ("res", "spec", "loadcv", "dropped", "minutes", "params", "unpicked"):
        lines.append(keyed_macro(macro, 1 if macro == "unpicked" else 3))
    for r in summary.itertuples():
        key = f"{r.grid}:{r.dataset}:{r.label}"
        values = {"res": _mean_spread(100 * r.test_acc_mean, 100 * r.test_acc_std, 2),   # one seed: the mean
                  "spec": pm(r.specialisation_mean, r.specialisation_std, scale=1.0),
                  "loadcv": pm(r.final_val_load_cv_mean, r.final_val_load_cv_std, scale=1.0),
                  "dropped": f"{100 * r.final_val_dropped_mean:.1f}" if not pd.isna(r.final_val_dropped_mean) else "--",
                  "minutes": f"{r.time_s_mean / 60:.1f}" if not pd.isna(r.time_s_mean) else "--",
                  "params": thousands(r.params_total)}
        for macro, value in values.items():
            lines.append(keyed_value(f"{macro}:{key}", value))
    for label, share in unpicked.items():
        lines.append(keyed_value(f"unpicked:{label}", f"{100 * share:.1f}"))
    if bench is not None:
        lines.append(keyed_macro("bench", 3))
        lines.append(keyed_macro("benchsoft", 2))
        for r in bench[bench.impl == "moe"].itertuples():
            lines.append(keyed_value(f"bench:{r.E}:{r.k}:{r.mode}", f"{r.vs_dense:.2f}"))
            if r.mode == "fwd+bwd":
                lines.append(keyed_value(f"benchsoft:{r.E}:{r.k}", f"{1 / r.vs_soft:.1f}"))
    lines.append(keyed_macro("benchrepeat", 3))
    for r in (bench_repeat[bench_repeat.impl == "moe"].itertuples() if bench_repeat is not None else []):
        lines.append(keyed_value(f"benchrepeat:{r.E}:{r.k}:{r.mode}", f"{r.vs_dense:.2f}"))
    lines.append(keyed_macro("trainratio", 2, prefix="train"))
    lines.append(keyed_macro("trainopt", 2))
    lines.append(keyed_macro("trainops", 2))
    for batch, table in train_bench.items():
        for r in table.itertuples():
            lines.append(keyed_value(f"train:{batch}:{r.model}", f"{r.vs_dense_active:.2f}"))
            if math.isfinite(r.optimizer_vs_dense_active):
                lines.append(keyed_value(f"trainopt:{batch}:{r.model}",
                             f"{r.optimizer_vs_dense_active:.1f}"))
            if math.isfinite(getattr(r, "ops_per_step", math.nan)):
                lines.append(keyed_value(f"trainops:{batch}:{r.model}",
                             f"{r.ops_per_step:.0f}"))
    lines.append(keyed_macro("curvature", 4))
    for name, table in (("sharpness", sharpness), ("sharpness_cifar", cifar_sharpness)):
        for r in (table.itertuples() if table is not None else []):
            for metric in ("top_eigenvalue", "trace", "loss"):
                lines.append(keyed_value(f"curvature:{name}:{r.label}:{r.split}:{metric}",
                             f"{getattr(r, metric + '_mean'):.2f}"))
    lines.append(keyed_macro("reachepochs", 3))
    lines.append(keyed_macro("reachminutes", 3))
    lines.append(keyed_macro("reachtime", 3))
    lines.append(keyed_macro("vitstep", 2))
    for row in convergence or []:
        r = row["summary"]
        if math.isfinite(row["step_time"]):
            lines.append(keyed_value(f"vitstep:{row['depth']}:{row['model']}",
                         f"{row['step_time']:.2f}"))
        for macro, values in (("epochs", row["epochs"]), ("minutes", row["minutes"]),
                              ("time", row["epochs"] * row["step_time"])):
            lines.append(keyed_value(f"reach{macro}:{r.grid}:{r.dataset}:{r.label}",
                         f"{_mean_if_all(values, 1)}"))
    for macro in ("lmbpb", "lmgain", "lmsteps", "lmstep", "lmtime"):
        lines.append(keyed_macro(macro, 1))
    lines.append(f"\\newcommand{{\\lmtarget}}{{{LM_TARGET_BPB:.2f}}}")
    lead = lm_time_lead(lm or [])
    lines.append(f"\\newcommand{{\\lmlead}}{{{'--' if math.isnan(lead) else f'{lead:.0f}'}}}")
    for row in lm or []:
        r, ratio = row["summary"], row["step_time"]
        values = {"lmbpb": _mean_spread(r.test_bpb_mean, r.test_bpb_std, 3), "lmgain": f"{row['gain']:.3f}",
                  "lmsteps": _mean_reached(row["steps"], 0), "lmstep": "--" if math.isnan(ratio) else f"{ratio:.2f}",
                  "lmtime": _mean_reached(row["steps"] * ratio, 0)}
        for macro, value in values.items():
            lines.append(keyed_value(f"{macro}:{row['name']}", value))
    lines.append(keyed_macro("coherence", 3))
    for r in (coherence.itertuples() if coherence is not None else []):
        key = f"{r.dataset}:{r.label}:{r.layer + 1}"   # blocks numbered from 1 in the text
        lines.append(keyed_value(f"coherence:{key}", f"{100 * r.share_mean:.0f}"))
    lines.append(keyed_macro("tab", 2))
    for r in summary[summary.grid == "tabular"].itertuples():
        lines.append(keyed_value(f"tab:{r.dataset}:{r.label}",
                     f"{_table_cell(summary[summary.grid == 'tabular'], r.dataset, r.label)}"))
    lines += comparison_macros(comparisons)
    trained = summary[summary.model != "reference"] if "model" in summary else summary
    # A configuration several grids list is one run (a linked directory): its rows are equal to the
    # last digit, so one of each counts.
    trained = trained.drop_duplicates([c for c in ("dataset", "seeds", "folds", "commit", "test_acc_mean",
                                                   "test_acc_std", "test_loss_mean", "time_s_mean",
                                                   "params_total") if c in trained])
    folds = trained.folds.clip(lower=1) if "folds" in trained else 1
    runs = int((trained.seeds * folds).sum())   # a table's runs: seeds x folds
    lines.append(f"\\newcommand{{\\numruns}}{{{runs}}}")
    lines.append(f"\\newcommand{{\\numconfigs}}{{{len(trained)}}}")   # the scikit-learn references are not runs
    if "commit" in summary:    # the commit that trained most configurations, and how many others have
        commits = summary.commit.str.split(" ").explode().value_counts()
        lines.append(f"\\newcommand{{\\reportcommit}}{{{commits.index[0][:7]}}}")
        lines.append(f"\\newcommand{{\\othercommits}}{{{len(commits) - 1}}}")
    return "\n".join(lines) + "\n"


VERDICT_WORDS = {"better": "beats", "tie": "ties with", "worse": "loses to"}


def comparison_text(row) -> str:
    """A paired difference as the text quotes it: mean [95 % interval], in points for an accuracy,
    in bits per byte or R^2 otherwise, and the number of pairs."""
    scale, unit, digits = (100.0, "\\,pt", 2) if row.metric == "test_acc" else (1.0, "", 3)
    low = "--" if pd.isna(row.diff_low) else f"{scale * row.diff_low:+.{digits}f}"
    high = "--" if pd.isna(row.diff_high) else f"{scale * row.diff_high:+.{digits}f}"
    return f"${scale * row.diff_mean:+.{digits}f}$ [${low}$, ${high}$]{unit}, $n={row.n}$"


def comparison_keys(row) -> list[str]:
    """The keys grid:dataset:model:reference under which the text may quote a comparison; in the
    learning-rate grid also without the rates (lr:mnist:moe-hard:dense-params), as the best rates
    may move."""
    keys = [f"{row.grid}:{row.dataset}:{row.model}:{row.reference}"]
    if row.grid in LR_GRIDS:
        keys.append(f"{row.grid}:{row.dataset}:{split_lr_label(row.model)[0]}:{split_lr_label(row.reference)[0]}")
    return keys


def comparison_macros(comparisons: pd.DataFrame | None) -> list[str]:
    """\\cmp{grid}{dataset}{model}{reference}: the paired difference model - reference with its 95 %
    interval (comparison_text); \\verdict: "beats", "ties with" (the interval holds 0) or "loses to",
    so that a sentence's verb is the data's."""
    lines = [keyed_macro("cmp", 4),
             keyed_macro("verdict", 4)]
    lines.append(keyed_macro("lrbest", 1))
    best = {}
    for row in (comparisons.itertuples() if comparisons is not None else []):
        if row.grid in LR_GRIDS:    # each model at its best rate, which the text names by \\lrbest{model}
            best |= dict(split_lr_label(label) for label in (row.model, row.reference))
        for key in comparison_keys(row):
            lines.append(keyed_value(f"cmp:{key}", comparison_text(row)))
            lines.append(keyed_value(f"verdict:{key}", VERDICT_WORDS[row.verdict]))
    for model, rate in best.items():
        mantissa, exponent = f"{float(rate):.0e}".split("e")
        latex = f"${mantissa}\\times 10^{{{int(exponent)}}}$"
        lines.append(keyed_value(f"lrbest:{model}", latex))
    return lines


def unpicked_share(samples: pd.DataFrame) -> pd.Series:
    """Share of the logged test samples that no expert processed, per gating-grid label (MNIST)."""
    rows = samples[(samples.grid == "gating") & (samples.dataset == "mnist")]
    return (rows.experts_used == 0).groupby(rows.label).mean()


def vit_router_sizes() -> str:
    """\\attnrouterparams and \\vitexpertparams: parameters of the attention router of one MoE
    block of the study's ViT (grids.VIT) and of one of its experts."""

    spec = Config(**dict(VIT, router_score="attention", vit_patch=7)).model_spec()
    layer = build_model(spec, (1, 28, 28), 10).blocks[1].ffn
    router = sum(p.numel() for p in layer.router.parameters())
    return (f"\\newcommand{{\\attnrouterparams}}{{{thousands(router)}}}\n"
            f"\\newcommand{{\\vitexpertparams}}{{{thousands(layer.experts.params_per_expert())}}}\n")


# The report's hyperparameter table: one representative configuration of each family of runs
# (row text, grid, label), its settings resolved as train.py resolves them.
HYPERPARAMETER_ROWS = (
    ("MNIST, F-MNIST: MLP experts", "moe_vs_dense", "moe-hard"),
    ("MNIST: CNN experts", "cnn_experts", "moe-hard-cnn"),
    ("CIFAR-10: conv trunk + head", "cifar_trunk", "moe-hard"),
    ("CIFAR-10: residual trunk + head", "cifar_heads", "noisy-top2"),
    ("ViT, 4 blocks (F-MNIST, CIFAR-10)", "vit", "vit-moe-top2"),
    ("ViT, 6 blocks (convergence)", "vit_convergence", "d6-moe-top2"),
    ("byte-level language model", "lm", "lm-top2-e8"),
    ("tables (MLP experts)", "tabular", "e4-top1"),
)


def hyperparameter_rows() -> list[dict]:
    """The resolved settings of HYPERPARAMETER_ROWS (grids.runs, parsed by train.py's parser)."""
    from ..training.config import parse_args
    from ..training.provenance import DATA_DIR_TOKEN

    rows = []
    for text, grid, label in HYPERPARAMETER_ROWS:
        run = next(r for r in grids.runs(grid) if r.label == label)
        cfg = parse_args(run.argv(DATA_DIR_TOKEN))
        steps = f"{cfg.epochs} x {cfg.steps_per_epoch} steps" if cfg.steps_per_epoch else f"{cfg.epochs} epochs"
        k = cfg.top_k if cfg.gating in ("topk", "noisy-topk", "expert-choice") else 1
        rows.append({"family": text, "grid": grid, "experts": cfg.experts, "k": k, "hidden": cfg.expert_hidden,
                     "optimizer": cfg.optimizer, "lr": "tuned" if cfg.tune else f"{cfg.lr:g}",
                     "schedule": cfg.lr_schedule, "batch": cfg.batch_size, "budget": steps,
                     "balance": cfg.balance_coef if cfg.balance_coef else (cfg.cv_coef or cfg.kl_uniform_coef)})
    return rows


def table_hyperparameters() -> str:
    """Every family's architecture and training settings, from the grids themselves."""
    body = [[row["family"], f"\\texttt{{{escape(row['grid'])}}}", str(row["experts"]), str(row["k"]),
             str(row["hidden"]), row["optimizer"], row["lr"], row["schedule"], str(row["batch"]), row["budget"],
             f"{row['balance']:g}"] for row in hyperparameter_rows()]
    return tabular(["runs", "grid", "$E$", "$k$", "$h$", "optimiser", "peak lr", "schedule", "batch", "budget",
                    "aux.\\ coef."], body, "llrrrlllrlr")


def tuning_macros(tuning: pd.DataFrame | None) -> list[str]:
    """``\\tunedlr{rate}`` and ``\\tunedwd{decay}``: the share (%) of the tuned network runs of the
    tabular grid (the tuning.csv rows of the candidate each run chose) whose choice has that peak
    learning rate or weight decay (values as ``:g`` writes them, e.g. 0.01); ``\\tunedruns`` counts
    those runs."""
    lines = [keyed_macro("tunedlr", 1),
             keyed_macro("tunedwd", 1)]
    chosen = (tuning[(tuning.chosen == 1) & (tuning.grid == "tabular")] if tuning is not None and not tuning.empty
              else pd.DataFrame(columns=["lr", "weight_decay"]))
    lines.append(f"\\newcommand{{\\tunedruns}}{{{len(chosen)}}}")
    for macro, column in (("tunedlr", "lr"), ("tunedwd", "weight_decay")):
        for value, share in chosen[column].value_counts(normalize=True).sort_index().items():
            lines.append(keyed_value(f"{macro}:{value:g}", f"{100 * share:.0f}"))
    return lines


def published_macros() -> list[str]:
    """``\\paperacc{key}``: a published test accuracy (%) of published.py, by its key (nbsvm-bigram,
    cnn-word2vec, gatedgcn, ...), as the paper gives it to one decimal."""
    lines = [keyed_macro("paperacc", 1)]
    for table in (published.SENTENCE_POLARITY, published.DWIVEDI_2020_MNIST_SUPERPIXELS):
        lines += [keyed_value(f"paperacc:{r.key}", f"{r.paper_test_acc:.1f}") for r in table.itertuples()]
    return lines


def build_tables(summary: pd.DataFrame, bench: pd.DataFrame | None, samples: pd.DataFrame,
                 train_bench: dict[int, pd.DataFrame], sharpness: pd.DataFrame | None,
                 patches: pd.DataFrame, bench_repeat: pd.DataFrame | None = None,
                 cifar_sharpness: pd.DataFrame | None = None, metrics: pd.DataFrame | None = None,
                 vit_step_time: dict[tuple[int, str], float] | None = None,
                 lm_step_time: dict[str, float] | None = None,
                 comparisons: pd.DataFrame | None = None, agreement: pd.DataFrame | None = None,
                 tuning: pd.DataFrame | None = None) -> dict[str, str]:
    metrics = metrics if metrics is not None else pd.DataFrame()
    convergence = convergence_rows(summary, metrics, vit_step_time)
    lm = lm_rows(summary, metrics, lm_step_time)
    tables = {"gating": table_gating(summary, comparisons, agreement),
              "numbers": numbers(summary, unpicked_share(samples), bench, train_bench, sharpness,
                                 logs.patch_coherence(patches) if not patches.empty else None,
                                 bench_repeat, cifar_sharpness, convergence, lm, comparisons) + vit_router_sizes()
              + "\n".join(agreement_macros(summary, agreement) + tuning_macros(tuning) + published_macros()) + "\n",
              "lm": table_lm(lm), "tabular": table_tabular(summary),
              "hyperparameters": table_hyperparameters()}
    return tables
