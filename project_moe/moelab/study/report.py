"""Rebuild report.pdf from the committed results: figures, tables, numbers, then LaTeX.

    python build_report.py            # figures + tables + report.pdf (needs pdflatex)
    python build_report.py --no-pdf   # only regenerate figures and tables

Every number of the report comes from results/ through this script: tables are written to
report/tables/*.tex, numbers used in the text to report/tables/numbers.tex (``\\res{grid}{dataset}
{label}`` is "mean \\pm std" of the test accuracy in %), figures to report/figures/*.pdf.
pdflatex comes from TeX Live (Debian: texlive-latex-base texlive-latex-recommended
texlive-fonts-recommended).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from ..paths import PROJECT_DIR  # noqa: E402
from ..training.exits import EXIT_BAD_INPUT  # noqa: E402
from ..training.run_files import RunFileError  # noqa: E402
from . import comparisons, logs, plots, routing_figures, specialisation  # noqa: E402
from .report_tables import build_tables  # noqa: E402

REPORT = PROJECT_DIR / "report"
RESULTS = PROJECT_DIR / "results"
REWRITE = "restore it from git, or write it again with the command that made it"   # a damaged table of results/


def load_vit_step_time(results: Path) -> dict[tuple[int, str], float]:
    """(depth, model) -> training step time over the dense ViT of equal FLOPs, from the tables of
    ``bench.py train --family vit`` (results/bench/bench_vit_d<depth>_b128.csv, the grids' batch)."""
    ratios = {}
    for path in sorted((results / "bench").glob("bench_vit_d*_b128.csv")):
        depth = int(path.stem.split("_")[2].lstrip("d"))
        for r in logs.read_csv(path, REWRITE).itertuples():
            ratios[(depth, r.model.replace("_", "-"))] = 1.0 / r.vs_dense_active
    return ratios


def load_lm_step_time(results: Path, summary: pd.DataFrame | None = None, batch: int = 32) -> dict[str, float]:
    """lm-grid label -> training step time over the dense language model of equal active FLOPs:
    the mean over seeds of what each run measured beside that model on the machine that trained
    it (--step-time-rounds, summary.csv's step_time_vs_dense_active_mean) where the runs recorded
    it, else from the table of ``bench.py train --family lm`` (results/bench/bench_lm_b<batch>.csv,
    the grid's batch); empty when neither exists."""
    path = results / "bench" / f"bench_lm_b{batch}.csv"
    ratios = {} if not path.exists() else {
        "lm-" + r.model.replace("_", "-"): 1.0 / r.vs_dense_active for r in logs.read_csv(path, REWRITE).itertuples()}
    if summary is not None and "step_time_vs_dense_active_mean" in summary:
        lm = summary[(summary.grid == "lm") & summary.step_time_vs_dense_active_mean.notna()]
        ratios.update(zip(lm.label, lm.step_time_vs_dense_active_mean))
        if len(lm) and "lm-dense-active" in ratios:
            ratios["lm-dense-active"] = 1.0   # the reference by definition (its own measure is the noise floor)
    return ratios


def load_train_bench(results: Path) -> dict[int, pd.DataFrame]:
    """bench_train_b<batch>.csv files: samples/s ratios of training epochs, per batch size."""
    return {int(p.stem.rsplit("_b", 1)[1]): logs.read_csv(p, REWRITE)
            for p in sorted((results / "bench").glob("bench_train_b*.csv"))}


def load_bench(results: Path, name: str) -> pd.DataFrame | None:
    """A layer-benchmark table of results/bench/, or None when it was not run."""
    path = results / "bench" / name
    return logs.read_csv(path, REWRITE) if path.exists() else None


def load_sharpness(results: Path, name: str = "sharpness") -> pd.DataFrame | None:
    """Sharpness estimates of results/<name>/sharpness.csv per (label, split), or None when not run;
    ``sharpness`` holds the MNIST grid, ``sharpness_cifar`` the CIFAR-10 heads."""
    path = results / name / "sharpness.csv"
    return logs.sharpness_by_label(logs.read_csv(path, REWRITE), results) if path.exists() else None


def build_figures(results: Path, out: Path, comparisons: pd.DataFrame, experts: pd.DataFrame,
                  routing: pd.DataFrame, agreement: pd.DataFrame) -> None:
    """The report's figures from the logs: ``experts`` and ``routing`` are the runs' experts.csv
    and routing.csv, ``comparisons`` the paired differences and ``agreement`` the gating grid's
    seed agreement, read once by main for the tables too."""

    out.mkdir(parents=True, exist_ok=True)
    # The report's figures; the others of the study are in the notebook.
    figures = {"where_moe_pays": plots.where_moe_pays(comparisons),
               "activations": routing_figures.activation_distributions(logs.read_test_gates(results, "gating", "mnist")),
               "class_routing": routing_figures.class_routing(routing, agreement=agreement),
               "expert_loss": routing_figures.expert_loss_curves(experts, labels=routing_figures.CORE_ROUTERS)}
    for name, figure in figures.items():
        figure.savefig(out / f"{name}.pdf", bbox_inches="tight")
        plots.plt.close(figure)


def _committed(computed: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The committed table of ``sweep.py --aggregate`` at ``path``; it must equal ``computed``, what
    the logs give today (AssertionError otherwise)."""
    committed = logs.read_csv(path, "restore it from git, or write it again with python sweep.py --aggregate")
    pd.testing.assert_frame_equal(computed.reset_index(drop=True), committed, check_dtype=False, atol=1e-12)
    return committed


def load_summary(results: Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The aggregation of the logs (``runs``: logs.run_table, read here if not given); it must
    equal the committed summary.csv."""
    runs = logs.run_table(results) if runs is None else runs
    return _committed(logs.aggregate(runs), results / "summary.csv")


def load_comparisons(results: Path, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paired comparisons of the logs (``runs`` as in load_summary); they must equal the
    committed comparisons.csv."""
    runs = logs.run_table(results) if runs is None else runs
    return _committed(comparisons.comparisons(runs), results / "comparisons.csv")


@dataclass
class ReportInputs:
    """What the report's tables and figures are made of, read from the logs once."""
    tables: dict[str, str]          # name -> LaTeX of report/tables/<name>.tex
    comparisons: pd.DataFrame       # results/comparisons.csv (checked against the logs)
    experts: pd.DataFrame           # every run's experts.csv
    routing: pd.DataFrame           # every run's routing.csv
    agreement: pd.DataFrame         # the gating grid's seed agreement (specialisation.seed_agreement)


def report_inputs(results: Path) -> ReportInputs:
    """The report's tables from the logs under ``results``, and what its figures need; the
    committed summary.csv and comparisons.csv must equal what the logs give (AssertionError)."""
    runs = logs.run_table(results)    # read once: the summary and the comparisons come from it
    summary = load_summary(results, runs)
    bench, bench_repeat = (load_bench(results, name) for name in ("bench_layer.csv", "bench_layer_repeat.csv"))
    paired = load_comparisons(results, runs)
    experts, routing = logs.read_all(results, "experts.csv"), logs.read_all(results, "routing.csv")
    agreement = specialisation.seed_agreement(routing[routing.grid == "gating"])
    tables = build_tables(summary, bench, logs.read_all(results, "test_samples.csv"), load_train_bench(results),
                          load_sharpness(results), logs.read_all(results, "test_patches.csv"), bench_repeat,
                          load_sharpness(results, "sharpness_cifar"), logs.read_all(results, "metrics.csv"),
                          load_vit_step_time(results), load_lm_step_time(results, summary), paired, agreement,
                          logs.read_all(results, "tuning.csv"))
    return ReportInputs(tables, paired, experts, routing, agreement)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-pdf", action="store_true", help="only figures and tables")
    args = parser.parse_args(argv)
    try:
        inputs = report_inputs(args.results)
        (REPORT / "tables").mkdir(parents=True, exist_ok=True)
        for name, text in inputs.tables.items():
            (REPORT / "tables" / f"{name}.tex").write_text(text)
        build_figures(args.results, REPORT / "figures", inputs.comparisons, inputs.experts, inputs.routing,
                      inputs.agreement)
    except RunFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.no_pdf:
        return 0
    if shutil.which("pdflatex") is None:
        print("error: pdflatex not found; install TeX Live (Debian: apt-get install texlive-latex-base "
              "texlive-latex-recommended texlive-fonts-recommended) or run with --no-pdf", file=sys.stderr)
        return EXIT_BAD_INPUT
    for _ in range(2):  # twice, for references
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=REPORT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], file=sys.stderr)
            return 1
    shutil.copyfile(REPORT / "report.pdf", PROJECT_DIR / "report.pdf")
    print(f"wrote {PROJECT_DIR / 'report.pdf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
