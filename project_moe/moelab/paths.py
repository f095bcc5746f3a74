"""Where a checkout keeps what the study reads and writes.

In a checkout (or an editable install) the package sits in ``project_moe/`` beside the scripts,
``results/``, ``report/`` and ``figures/``, and the study's commands default to those folders;
the default data folder is ``data/`` at the repository root. An installed copy has no such
folders: its defaults are the current directory, and the sweep, which starts train.py of a
checkout, refuses to run. The library itself (layers, models, training) needs none of them.
"""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
IN_CHECKOUT = (PACKAGE_DIR.parent / "train.py").is_file()
PROJECT_DIR = PACKAGE_DIR.parent if IN_CHECKOUT else Path.cwd()   # scripts, results/, report/, figures/
REPO_ROOT = PROJECT_DIR.parent if IN_CHECKOUT else Path.cwd()      # git commit of a run, default data/ folder
