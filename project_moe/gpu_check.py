"""Everything that needs a GPU, in one command (about 8 minutes on one recent GPU):

    python gpu_check.py [--out DIR]

Usage and options: ``python gpu_check.py --help``. The code is in moelab/bench/gpu_check.py.
"""
import sys

from moelab.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
