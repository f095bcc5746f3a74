"""Rebuild report.pdf from the committed results: figures, tables, numbers, then LaTeX.

    python build_report.py            # figures + tables + report.pdf (needs pdflatex)

Usage and options: ``python build_report.py --help``. The code is in moelab/study/report.py.
"""
import sys

from moelab.study.report import main

if __name__ == "__main__":
    sys.exit(main())
