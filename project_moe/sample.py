"""Print text written by a trained byte-level language model.

    cd project_moe && python sample.py runs/RUN_DIR --prompt "def " --tokens 300

Usage and options: ``python sample.py --help``. The code is in moelab/training/sampling.py.
"""
import sys

from moelab.training.sampling import main

if __name__ == "__main__":
    sys.exit(main())
