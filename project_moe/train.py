"""Train one MoE classifier (or its dense baseline) and log how it routes.

    cd project_moe && python train.py --experts 8 --gating hard

Usage and options: ``python train.py --help``. The code is in moelab/training/launch.py.
"""
from moelab.distributed import exit_process
from moelab.training.launch import main

if __name__ == "__main__":
    exit_process(main())
