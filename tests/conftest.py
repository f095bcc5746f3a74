import pathlib
import sys

# Modules in project_moe/ import each other flatly (`import data`), as when run from that directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "project_moe"))
