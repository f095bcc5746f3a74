"""moelab/data/superpixels.py: images as graphs of SLIC superpixels, read through the real loaders."""
import json

import numpy as np
import pytest
import torch
from synthetic import write_folder_layout, write_mnist_layout

from moelab.data import images, load_dataset, superpixels
from moelab.data.types import DataError

pytest.importorskip("skimage")


def test_nodes_are_each_superpixels_mean_and_centroid_as_a_loop_computes_them():
    rng = np.random.default_rng(0)
    picture = rng.random((12, 10, 3))
    labels = superpixels.segment(picture, 20)
    assert labels.min() == 0 and len(np.unique(labels)) == labels.max() + 1 <= 20
    nodes = superpixels.superpixel_nodes(picture, labels)
    for label in range(labels.max() + 1):                 # the reference: one superpixel at a time
        rows, cols = np.nonzero(labels == label)
        expected = [*picture[rows, cols].mean(0), rows.mean() / 11, cols.mean() / 9]
        assert np.allclose(nodes[label], expected, atol=1e-6)


def test_knn_edges_match_a_graph_by_graph_reference():
    torch.manual_seed(0)
    sizes = torch.tensor([1, 3, 9, 12, 2, 10])
    centroids = torch.rand(int(sizes.sum()), 2)
    edges = superpixels.knn_edges(centroids, sizes, k=4, chunk=4)        # chunks cut through the graphs
    expected, start = set(), 0
    for size in sizes.tolist():
        points = centroids[start:start + size]
        for i in range(size):
            distance = [((points[i] - points[j]) ** 2).sum().item() if j != i else float("inf") for j in range(size)]
            for j in sorted(range(size), key=distance.__getitem__)[:min(4, size - 1)]:
                expected |= {(start + i, start + j), (start + j, start + i)}
        start += size
    got = [tuple(e) for e in edges.T.tolist()]
    assert len(got) == len(set(got)) and set(got) == expected


def test_superpixel_graphs_of_mnist_files_keep_the_image_splits_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data", n_train=40, n_test=12)
    pictures = load_dataset("mnist", tmp_path / "data", val_fraction=0.25, seed=3, download=False)
    graphs = load_dataset("superpixels:mnist", tmp_path / "data", val_fraction=0.25, seed=3, download=False)
    assert graphs.name == "superpixels:mnist" and graphs.kinds == ["dark", "mid", "bright"]
    assert graphs.in_shape == (3,) and graphs.classes == pictures.classes
    for name in ("train", "val", "test"):
        split, source = getattr(graphs, name), getattr(pictures, name)
        assert torch.equal(split.labels, source.labels)                  # the same images, the same order
        assert (split.sizes >= 1).all() and (split.sizes <= 75).all()
        assert split.nodes.min() >= 0 and split.nodes.max() <= 1
        src, dst = split.edges
        graph_of = torch.repeat_interleave(torch.arange(len(split)), split.sizes)
        assert (graph_of[src] == graph_of[dst]).all() and (src != dst).all()
        pairs = set(map(tuple, split.edges.T.tolist()))
        assert all((b, a) in pairs for a, b in pairs)                      # undirected
        degree = torch.bincount(src, minlength=len(split.nodes))
        assert (degree >= torch.clamp(split.sizes[graph_of] - 1, max=8)).all()
        # A bright node is where the image is bright: its mean intensity is the kind's.
        brightness = split.nodes[:, 0]
        assert torch.equal(split.node_kinds, torch.bucketize(brightness.contiguous(), torch.tensor([1 / 3, 2 / 3])))
    assert len(list((tmp_path / "cache" / "superpixels").glob("*.pt"))) == 2       # train and test, once

    def no_segmentation(*args):
        raise AssertionError("segmented again instead of reading the cache")
    monkeypatch.setattr(superpixels, "image_nodes", no_segmentation)
    again = load_dataset("superpixels:mnist", tmp_path / "data", val_fraction=0.25, seed=4, download=False)
    assert torch.equal(again.test.nodes, graphs.test.nodes) and not torch.equal(again.val.labels, graphs.val.labels)


def test_colour_folders_give_colour_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    root = write_folder_layout(tmp_path / "folder", n_train=12, n_test=4)
    graphs = load_dataset(f"superpixels:folder:{root}", tmp_path, val_fraction=0.25, seed=0)
    assert graphs.in_shape == (5,) and (graphs.train.sizes <= 150).all()
    assert graphs.name == f"superpixels:folder:{root}"


@pytest.mark.parametrize("name", ["superpixels:", "superpixels:python-stdlib", "superpixels:tu:/x",
                                  "superpixels:superpixels:mnist", "superpixels:nope"])
def test_a_bad_superpixel_dataset_is_one_line(name):
    with pytest.raises(DataError) as error:
        images.check_dataset_spec(name)
    assert "\n" not in str(error.value)


def test_a_tiny_superpixel_run_trains_from_the_command_line(tmp_path, monkeypatch, capsys):
    from runs import TINY

    from moelab.training import launch
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))
    write_mnist_layout(tmp_path / "data", n_train=48, n_test=16)
    out = tmp_path / "runs"
    argv = ["--dataset", "superpixels:mnist", "--data-dir", str(tmp_path / "data"), "--arch", "graph", *TINY,
            "--epochs", "1", "--out", str(out), "--log-every", "0", "--gating", "topk", "--run-name", "sp"]
    assert launch.main(argv) == 0
    summary = json.loads((out / "sp" / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1
    # The expert x node-kind tables: every real test node once as some expert's top choice, by its kind.
    import pandas as pd
    test = load_dataset("superpixels:mnist", tmp_path / "data", val_fraction=0.1, seed=0, download=False).test
    kinds = pd.read_csv(out / "sp" / "kinds.csv")
    kinds = kinds[kinds.split == "test"]
    assert set(kinds.kind) == {0, 1, 2} and kinds.layer.nunique() >= 1
    for _, block in kinds.groupby("layer"):
        per_kind = block.groupby("kind").top1.sum()
        assert per_kind.tolist() == torch.bincount(test.node_kinds, minlength=3).tolist()
    # The routed graphs: the first test graphs themselves, and the top-1 expert of each of their nodes.
    graphs = np.load(out / "sp" / "test_graphs.npz")
    nodes = pd.read_csv(out / "sp" / "test_nodes.csv")
    assert graphs["labels"].tolist() == test.labels[:len(graphs["labels"])].tolist()
    assert list(graphs["kind_names"]) == ["dark", "mid", "bright"] and graphs["nodes"].shape[1] == 3
    for (index, layer), graph in nodes.groupby(["index", "layer"]):
        start, end = graphs["offsets"][index], graphs["offsets"][index + 1]
        assert graph.node.tolist() == list(range(end - start))
        assert graph.kind.tolist() == graphs["node_kinds"][start:end].tolist()
        assert graph["class"].iloc[0] == graphs["labels"][index] and graph.top1_expert.between(0, 3).all()
    assert nodes["index"].nunique() == len(graphs["labels"]) == min(16, len(test))
    assert launch.main(["--dataset", "superpixels:mnist", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                        "--run-name", "bad"]) == 2
    assert "needs --arch graph" in capsys.readouterr().err and not (out / "bad").exists()
