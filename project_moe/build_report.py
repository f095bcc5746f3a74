"""Rebuild report.pdf from the committed results: figures, tables, numbers, then LaTeX.

    python build_report.py            # figures + tables + report.pdf (needs pdflatex)
    python build_report.py --no-pdf   # only regenerate figures and tables

Every number of the report comes from results/ through this script: tables are written to
report/tables/*.tex, numbers used in the text to report/tables/numbers.tex (``\\res{grid}{dataset}
{label}`` is "mean \\pm std" of the test accuracy in %), figures to report/figures/*.pdf.
pdflatex comes from TeX Live (Debian: texlive-latex-base texlive-latex-recommended
texlive-fonts-recommended).

The code is in moelab/study/report.py; this file is its command line.
"""
import sys

from moelab.study.report import main

if __name__ == "__main__":
    sys.exit(main())
