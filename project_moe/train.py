"""Train one MoE classifier (or its dense baseline) and log how it routes.

    cd project_moe && python train.py --experts 8 --gating hard

writes runs/<run-name>/{config.json, metrics.csv, experts.csv, routing.csv, summary.json,
model.pt} (schema in docs/run-files.md), plus checkpoint.pt / best.pt for --resume and model selection.
Exit codes: 0 done, 2 bad input, 3 non-finite loss, 130 / 143 interrupted by SIGINT / SIGTERM.

The code is in moelab/training/launch.py; this file is its command line.
"""
import sys

from moelab.training.launch import main

if __name__ == "__main__":
    sys.exit(main())
