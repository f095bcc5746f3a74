"""The experiment suite: named grids of train.py runs over several seeds, and their aggregation.

    python sweep.py --quick                 # reduced grid, a few minutes on 2 CPU cores
    python sweep.py --data-dir DIR          # the full grid (DIR holds MNIST/, FashionMNIST/, cifar10-jpeg/)
    python sweep.py --grid gating experts   # some grids only
    python sweep.py --aggregate             # results/summary.csv from the runs in results/

Each run is a separate ``train.py`` process writing to results/runs/<grid>/<run-name>/. A run
whose summary says "completed" is skipped, an interrupted one is resumed, and a failing one
is recorded and the sweep goes on; the sweep exits non-zero at the end if any run failed.
Weights (*.pt) are deleted once a run completes: results/ keeps only the compact logs.

The code is in moelab/study/sweep.py; this file is its command line.
"""
import sys

from moelab.study.sweep import main

if __name__ == "__main__":
    sys.exit(main())
