"""The experiment suite: named grids of train.py runs over several seeds, and their aggregation.

    python sweep.py --quick                 # reduced grid, a few minutes on 2 CPU cores

Usage and options: ``python sweep.py --help``. The code is in moelab/study/sweep.py.
"""
import sys

from moelab.study.sweep import main

if __name__ == "__main__":
    sys.exit(main())
