"""Where a checkout keeps what the study reads and writes.

The package sits in ``project_moe/`` beside the scripts, ``results/``, ``report/`` and
``figures/``; the study's commands default to those folders. The library itself (layers, models,
training) needs none of them.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent          # project_moe/: scripts, results/, report/, figures/
REPO_ROOT = PROJECT_DIR.parent            # git commit of a run, default data/ folder
