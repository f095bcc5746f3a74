"""Analyses of trained runs. For now one: the sharpness of the loss at the trained weights.

    python analysis.py sharpness RUN_DIR [RUN_DIR ...]                 # from project_moe/

Usage and options: ``python analysis.py sharpness --help``. The code is in moelab/study/sharpness.py.
"""
import sys

from moelab.study.sharpness import main

if __name__ == "__main__":
    sys.exit(main())
