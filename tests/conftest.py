import pytest
from synthetic import write_mnist_layout


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A small learnable dataset in the MNIST IDX layout, with the decode cache kept in tmp."""
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data")
    return tmp_path / "data"
