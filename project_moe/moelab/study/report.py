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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..data.text import KINDS  # noqa: E402
from ..paths import PROJECT_DIR  # noqa: E402
from ..training.exits import EXIT_BAD_INPUT  # noqa: E402
from ..training.run_files import RunFileError  # noqa: E402
from . import comparisons, logs, plots  # noqa: E402
from .grids import CONVERGENCE_GRIDS  # noqa: E402
from .report_tables import build_tables  # noqa: E402

REPORT = PROJECT_DIR / "report"
RESULTS = PROJECT_DIR / "results"
REPORT_PATCH_RUN = "fashion-mnist-vit-moe-top2-s0"   # the ViT whose patch routing the report shows
REPORT_LM_RUN = "python-stdlib-lm-top2-e8-s0"      # the language model whose byte-kind routing it shows
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


def build_figures(results: Path, summary: pd.DataFrame, metrics: pd.DataFrame, patches: pd.DataFrame,
                  out: Path, lm_step_time: dict[str, float]) -> None:
    """The report's figures from the logs; ``metrics`` and ``patches`` are the runs' metrics.csv and
    test_patches.csv, and ``lm_step_time`` load_lm_step_time's ratios, read once by main for the
    tables too."""

    out.mkdir(parents=True, exist_ok=True)
    experts = logs.read_all(results, "experts.csv")
    routing, runs = logs.read_all(results, "routing.csv"), logs.run_table(results)
    hard = runs[(runs.grid == "gating") & (runs.label == "hard") & (runs.dataset == "mnist")].sort_values("seed")
    # The report's figures; the others of the study are in the notebook.
    figures = {"gating_comparison": plots.gating_comparison(summary),
               "expert_usage": plots.expert_usage(experts), "balance_over_time": plots.balance_over_time(metrics),
               "class_expert_heatmap": plots.class_expert_heatmap(routing, hard.run.iloc[0], grid="gating"),
               "per_expert_loss": plots.per_expert_loss_curves(experts, hard.run.iloc[0], grid="gating"),
               "vit_convergence": plots.convergence(metrics, CONVERGENCE_GRIDS, "cifar10-jpeg",
                                                        height=2.4),
               "lm_convergence": plots.lm_convergence(metrics, lm_step_time, height=2.8, width=5.6)}
    kinds = logs.read_all(results, "kinds.csv")
    if not kinds.empty:
        run = REPORT_LM_RUN if REPORT_LM_RUN in set(kinds.run) else sorted(kinds.run)[0]
        figures["lm_kind_expert_heatmap"] = plots.kind_expert_heatmap(kinds, run, KINDS, blocks=1)
    if not patches.empty:
        run = REPORT_PATCH_RUN if REPORT_PATCH_RUN in set(patches.run) else sorted(patches.run)[0]
        run_dir = next(results.glob(f"runs/*/{run}"))
        figures["patch_routing"] = plots.patch_routing(patches, load_patch_images(run_dir / "test_patch_images.npy"),
                                                       run, n_images=3)
    for name, figure in figures.items():
        figure.savefig(out / f"{name}.pdf", bbox_inches="tight")
        plots.plt.close(figure)


def load_patch_images(path: Path) -> np.ndarray:
    """A run's test_patch_images.npy; RunFileError if it is missing or damaged."""
    try:
        return np.load(path)
    except FileNotFoundError:
        raise RunFileError(path, "missing", logs.SET_ASIDE) from None
    except (OSError, ValueError, EOFError) as error:
        raise RunFileError(path, f"not a readable .npy array ({type(error).__name__})", logs.SET_ASIDE) from None


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--no-pdf", action="store_true", help="only figures and tables")
    args = parser.parse_args(argv)
    try:
        runs = logs.run_table(args.results)    # read once: the summary and the comparisons come from it
        summary = load_summary(args.results, runs)
        bench, bench_repeat = (load_bench(args.results, name) for name in ("bench_layer.csv", "bench_layer_repeat.csv"))
        (REPORT / "tables").mkdir(parents=True, exist_ok=True)
        samples = logs.read_all(args.results, "test_samples.csv")
        sharpness = load_sharpness(args.results)
        patches, metrics = logs.read_all(args.results, "test_patches.csv"), logs.read_all(args.results, "metrics.csv")
        lm_step_time = load_lm_step_time(args.results, summary)
        for name, text in build_tables(summary, bench, samples, load_train_bench(args.results), sharpness,
                                       patches, bench_repeat, load_sharpness(args.results, "sharpness_cifar"),
                                       metrics, load_vit_step_time(args.results), lm_step_time,
                                       load_comparisons(args.results, runs)).items():
            (REPORT / "tables" / f"{name}.tex").write_text(text)
        build_figures(args.results, summary, metrics, patches, REPORT / "figures", lm_step_time)
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
