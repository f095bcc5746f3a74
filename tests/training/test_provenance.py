"""moelab/training/provenance.py: where a run came from (commit, uncommitted changes, CPU, portable paths)."""
import pytest

from moelab.training import provenance
from moelab.training.provenance import DATA_DIR_TOKEN, PortablePaths


def test_paths_are_recorded_relative_to_the_project_and_the_data_directory_named(tmp_path):
    repo, data = tmp_path / "repo", tmp_path / "datasets"
    (repo / "project_moe").mkdir(parents=True)
    paths = PortablePaths(data, project=repo / "project_moe", repo=repo)
    assert paths.portable(str(data)) == DATA_DIR_TOKEN
    assert paths.portable(f"folder:{data}/cifar10-jpeg") == f"folder:{DATA_DIR_TOKEN}/cifar10-jpeg"
    assert paths.portable(str(repo / "project_moe" / "results" / "runs" / "gating")) == "results/runs/gating"
    assert paths.portable(str(repo / "project_moe" / "train.py")) == "train.py"
    assert paths.portable("/somewhere/else/runs") == "/somewhere/else/runs"     # a path of one's own: as given
    assert paths.portable("8") == "8" and paths.portable("mnist") == "mnist" and paths.portable(None) is None
    assert paths.portable_sentence(f"MNIST IDX files in {data}/MNIST/raw") == f"MNIST IDX files in {DATA_DIR_TOKEN}/MNIST/raw"
    here = PortablePaths(tmp_path / "mine")
    assert here.local(f"folder:{DATA_DIR_TOKEN}/cifar10-jpeg") == f"folder:{tmp_path / 'mine'}/cifar10-jpeg"
    with pytest.raises(ValueError, match="--data-dir"):
        PortablePaths(None).local(DATA_DIR_TOKEN)
    # only a run inside the repository (whose logs may be committed) records portable paths
    inside = PortablePaths.for_run(repo / "project_moe" / "results" / "runs" / "g" / "r", data,
                                   project=repo / "project_moe", repo=repo)
    outside = PortablePaths.for_run(tmp_path / "mine" / "r", data, project=repo / "project_moe", repo=repo)
    assert inside.portable(str(data / "MNIST")) == f"{DATA_DIR_TOKEN}/MNIST"
    assert outside.portable(str(data / "MNIST")) == str(data / "MNIST")
    assert outside.portable_sentence(f"files in {data}") == f"files in {data}"


def test_code_state_tells_a_clean_tree_from_uncommitted_code_and_hashes_the_change(repo):
    clean = provenance.code_state(repo)
    assert len(clean.commit) == 40 and not clean.dirty and clean.diff_sha256 is None
    (repo / "project_moe" / "results" / "summary.csv").write_text("b\n")   # results are not code
    assert not provenance.code_state(repo).dirty
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 2\n")
    one = provenance.code_state(repo)
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 3\n")
    other = provenance.code_state(repo)
    assert one.dirty and other.dirty and one.commit == clean.commit
    assert one.diff_sha256 != other.diff_sha256 and one.changed == ("project_moe/moelab/layer.py",)
    (repo / "project_moe" / "moelab" / "layer.py").write_text("x = 1\n")
    (repo / "project_moe" / "moelab" / "new.py").write_text("y = 1\n")    # an untracked module is code too
    assert provenance.code_state(repo).dirty
    assert provenance.cpu_family("AMD EPYC 7B13") == "amd" and provenance.cpu_family("Intel(R) Xeon(R)") == "intel"
    assert provenance.cpu_family(None) is None
