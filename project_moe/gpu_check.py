"""Everything that needs a GPU, in one command (about 8 minutes on one recent GPU):

    python gpu_check.py [--out DIR]

1. the CUDA tests (router invariants, dispatch equivalence, training with and without --amp
   and --compile, resume): ``python -m pytest -q -m cuda tests``;
2. ``bench.py layer`` on the GPU;
3. ``bench.py train`` at batch 128 and 1024, eager, --amp and --compile rows;
4. a 5-epoch MNIST run of the quickstart model (``train.py --experts 8 --gating hard``).

Every step writes under DIR (default: results/bench/gpu-<device name>/): its tables, its
output in <step>.log, and gpu_check.json with each step's exit status and seconds. A step that
fails or runs out of its time is recorded and the next one runs; the exit status is non-zero
if any step failed.

The code is in moelab/bench/gpu_check.py; this file is its command line.
"""
import sys

from moelab.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
