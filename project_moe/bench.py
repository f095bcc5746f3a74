"""Speed of the sparse MoE layer and of MoE training, as ratios to references timed in the same run.

    python bench.py layer | train | ep    # the MoE layer, a training step, expert parallelism

Usage and options: ``python bench.py --help``. The code is in moelab/bench/cli.py.
"""
import sys

from moelab.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
