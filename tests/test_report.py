"""The report is generated from the committed results: its tables equal what the aggregation
of results/ gives today, and the PDF has 4 to 6 pages."""
import pytest
from pypdf import PdfReader

from moelab.paths import PROJECT_DIR
from moelab.study import report, report_tables

RESULTS = report.RESULTS
pytestmark = pytest.mark.skipif(not (RESULTS / "summary.csv").exists(), reason="no committed results")


def test_summary_csv_is_the_aggregation_of_the_run_logs():
    summary = report.load_summary(RESULTS)   # raises if summary.csv and the logs disagree
    # 3 seeds for the core study and the language models of lm, 2 for the extension grids (cosine,
    # sharpness, vit), 1 for the 12-block ViTs of vit_convergence_deep (a run costs twice a 6-block one; the report says so)
    summary = summary[summary.grid != "vit_convergence_deep"]
    assert (summary.seeds >= 2).all(), summary[summary.seeds < 2][["grid", "dataset", "label", "seeds"]]
    core = summary[~summary.grid.isin(["cosine", "sharpness", "vit"])]
    assert (core.seeds >= 3).all(), core[core.seeds < 3][["grid", "dataset", "label", "seeds"]]


def test_report_tables_equal_the_results():
    summary = report.load_summary(RESULTS)
    bench = report.load_bench(RESULTS, "bench_layer.csv")
    bench_repeat = report.load_bench(RESULTS, "bench_layer_repeat.csv")
    samples = report.logs.read_all(RESULTS, "test_samples.csv")
    train_bench = report.load_train_bench(RESULTS)
    sharpness = report.load_sharpness(RESULTS)
    patches = report.logs.read_all(RESULTS, "test_patches.csv")
    cifar_sharpness = report.load_sharpness(RESULTS, "sharpness_cifar")
    for name, text in report_tables.build_tables(summary, bench, samples, train_bench, sharpness, patches,
                                                bench_repeat, cifar_sharpness,
                                                report.logs.read_all(RESULTS, "metrics.csv"),
                                                report.load_vit_step_time(RESULTS),
                                                report.load_lm_step_time(RESULTS),
                                                report.load_comparisons(RESULTS)).items():
        committed = (report.REPORT / "tables" / f"{name}.tex").read_text()
        assert committed == text, f"report/tables/{name}.tex is stale: run python build_report.py"


def test_report_pdf_has_four_to_six_pages():
    pdf = PROJECT_DIR / "report.pdf"
    assert pdf.exists()
    assert 4 <= len(PdfReader(pdf).pages) <= 6
