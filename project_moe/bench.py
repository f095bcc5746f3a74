"""Speed of the sparse MoE layer and of MoE training, as ratios to references timed in the same run.

    python bench.py layer    # MoE layer vs (a) dense MLP of the same active FLOPs, (b) soft routing
                             # over all experts, (c) a per-expert loop with boolean masks
    python bench.py train    # samples/s of one MNIST training epoch, MoE vs dense baselines
    python bench.py train --family vit --data-dir DIR   # the same for the CIFAR-10 ViTs of vit_convergence
    python bench.py ep       # the MoE layer on 1 and 2 processes (expert parallel): compute, all-to-all, bytes

Machines are noisy, so absolute times mean little: candidates and references are interleaved
in rounds, every ratio is a ratio of medians, and the spread of the per-round ratios is shown.

The code is in moelab/bench/cli.py; this file is its command line.
"""
import sys

from moelab.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
