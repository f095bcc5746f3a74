import pathlib
import sys

import pytest

# Modules in project_moe/ import each other flatly (`import data`), as when run from that directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "project_moe"))

from synthetic import write_mnist_layout  # noqa: E402  (needs the path above)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one); run alone with -m cuda")


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A small learnable dataset in the MNIST IDX layout, with the decode cache kept in tmp."""
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data")
    return tmp_path / "data"
