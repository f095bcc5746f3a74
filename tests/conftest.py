import subprocess

import pytest
from synthetic import write_mnist_layout


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A small learnable dataset in the MNIST IDX layout, with the decode cache kept in tmp."""
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data")
    return tmp_path / "data"


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo)})


@pytest.fixture
def repo(tmp_path):
    """A git repository of one commit with the project's layout: a module of moelab and a results file."""
    repo = tmp_path / "repo"
    (repo / "project_moe" / "moelab").mkdir(parents=True)
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 1\n")
    (repo / "project_moe" / "results").mkdir()
    (repo / "project_moe" / "results" / "summary.csv").write_text("a\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo
