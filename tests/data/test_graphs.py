import random

import numpy as np
import pytest
import torch
from synthetic import write_tu

from moelab.data import graphs
from moelab.data.types import DataError


def one_line(error) -> bool:
    message = str(error.value).strip()
    return bool(message) and "\n" not in message


def random_graphs(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for g in range(count):
        size = rng.randint(1, 9)
        edges = {tuple(sorted(rng.sample(range(size), 2))) for _ in range(rng.randint(0, 2 * size))} if size > 1 else set()
        out.append({"label": g % 3, "nodes": [rng.randint(1, 4) for _ in range(size)], "edges": sorted(edges),
                    "attributes": [[round(rng.uniform(-2, 2), 3), rng.randint(0, 9)] for _ in range(size)]})
    return out


def test_a_tu_dataset_reads_back_what_was_written(tmp_path):
    written = random_graphs(30)
    write_tu(tmp_path / "toy", written)
    tu = graphs.read_tu(tmp_path / "toy")
    data = tu.graphs
    assert tu.name == "TOY" and len(data) == 30 and tu.classes == ["0", "1", "2"]
    assert data.labels.tolist() == [g["label"] for g in written]
    assert data.sizes.tolist() == [len(g["nodes"]) for g in written]
    values = sorted({label for g in written for label in g["nodes"]})
    assert tu.feature_names == [f"label={v}" for v in values] + ["attribute 0", "attribute 1"]
    for g, graph in enumerate(written):
        start, end = int(data.offsets[g]), int(data.offsets[g + 1])
        one_hot = data.nodes[start:end, :len(values)]
        assert [values[i] for i in one_hot.argmax(1).tolist()] == graph["nodes"] and one_hot.sum().item() == end - start
        assert torch.allclose(data.nodes[start:end, len(values):], torch.tensor(graph["attributes"], dtype=torch.float32))
        assert [values[k] for k in data.node_kinds[start:end].tolist()] == graph["nodes"]
        mine = data.edges[:, int(data.edge_offsets[g]):int(data.edge_offsets[g + 1])] - start
        pairs = {tuple(e) for e in mine.T.tolist()}
        assert pairs == {(u, v) for u, v in graph["edges"]} | {(v, u) for u, v in graph["edges"]}


def test_padded_batches_match_a_graph_by_graph_reference(tmp_path):
    write_tu(tmp_path / "toy", random_graphs(40, seed=1))
    data = graphs.read_tu(tmp_path / "toy").graphs
    chosen = torch.tensor([7, 0, 31, 12, 12, 39, 5])
    x, mask, adjacency = graphs.padded_batch(data, chosen)
    width = int(data.sizes[chosen].max())
    assert x.shape == (7, width, data.nodes.shape[1]) and mask.shape == (7, width) and adjacency.shape == (7, width, width)
    for b, g in enumerate(chosen.tolist()):               # the reference: one graph at a time, plain loops
        start, size = int(data.offsets[g]), int(data.sizes[g])
        expected = torch.zeros(width, width, dtype=torch.bool)
        for e in range(int(data.edge_offsets[g]), int(data.edge_offsets[g + 1])):
            source, target = data.edges[:, e].tolist()
            expected[target - start, source - start] = True
        for i in range(size):
            expected[i, i] = True
        assert torch.equal(adjacency[b], expected)
        assert torch.equal(x[b, :size], data.nodes[start:start + size]) and not x[b, size:].any()
        assert mask[b].tolist() == [i < size for i in range(width)]
    # A subset is the same graphs: its batches are the batches of the whole.
    part = data.subset(chosen)
    assert torch.equal(graphs.padded_batch(part, torch.arange(7))[2], adjacency)
    assert torch.equal(part.labels, data.labels[chosen])


def test_tu_folds_are_stratified_disjoint_and_standardise_attributes_on_training_nodes(tmp_path):
    write_tu(tmp_path / "toy", random_graphs(60, seed=2))
    tu = graphs.read_tu(tmp_path / "toy")
    train, val, test = graphs.split_tu(tu, folds=5, fold=1, val_fraction=0.2, seed=0)
    assert len(train) + len(val) + len(test) == 60 and len(test) == 12
    assert np.bincount(test.labels.numpy()).tolist() == [4, 4, 4]               # stratified
    columns = [i for i, n in enumerate(tu.feature_names) if n.startswith("attribute")]
    assert torch.allclose(train.nodes[:, columns].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(train.nodes[:, columns].std(0), torch.ones(2), atol=1e-5)
    assert not torch.allclose(test.nodes[:, columns].mean(0), torch.zeros(2), atol=1e-3)   # not its own statistics
    assert torch.equal(tu.graphs.nodes[:, :columns[0]].sum(0), torch.cat([s.nodes[:, :columns[0]] for s in
                                                                          (train, val, test)]).sum(0))


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "TOY_graph_labels.txt").unlink(), "TOY_graph_labels.txt is missing"),
    (lambda root: (root / "TOY_A.txt").write_text("1, 2\n2, 99\n"), "line 2 names node 99"),
    (lambda root: (root / "TOY_node_labels.txt").write_text("1\n2\n"), "one line per node"),
    (lambda root: (root / "TOY_graph_labels.txt").write_text("0\n1\n2\n0\n"), "graph 4 has no node"),
    (lambda root: (root / "TOY_graph_labels.txt").write_text("0\n"), "names graph 2"),
    (lambda root: (root / "TOY_A.txt").write_text("1, x\n"), "line 1 is not integers"),
    (lambda root: (root / "TOY_A.txt").write_text("1, 4\n"), "joins nodes of graphs 1 and 2"),
    (lambda root: (root / "TOY_A.txt").rename(root / "OTHER.txt"), "expected one DS_A.txt file, found none"),
])
def test_bad_tu_files_stop_with_one_line_naming_the_file_and_line(tmp_path, damage, message):
    write_tu(tmp_path / "toy", [{"label": 0, "nodes": [1, 2, 1], "edges": [(0, 1), (1, 2)]},
                                {"label": 1, "nodes": [2, 2], "edges": [(0, 1)]},
                                {"label": 2, "nodes": [1], "edges": []}])
    damage(tmp_path / "toy")
    with pytest.raises(DataError, match=message) as error:
        graphs.read_tu(tmp_path / "toy")
    assert one_line(error)


def test_a_tiny_graph_run_trains_from_the_command_line_and_refuses_bad_flags(tmp_path, capsys):
    import json

    from runs import TINY

    from moelab.training import launch
    from moelab.training.exits import EXIT_BAD_INPUT
    written = random_graphs(60, seed=3)
    for graph in written:                      # a learnable label: does the graph hold a node of label 1?
        graph["label"] = int(1 in graph["nodes"])
    write_tu(tmp_path / "toy", written)
    out = tmp_path / "runs"
    common = ["--dataset", f"tu:{tmp_path / 'toy'}", "--arch", "graph", *TINY, "--epochs", "2", "--out", str(out),
              "--log-every", "0", "--val-fraction", "0.2"]
    for gating in ("topk", "expert-choice"):
        assert launch.main([*common, "--gating", gating, "--run-name", gating]) == 0
        summary = json.loads((out / gating / "summary.json").read_text())
        assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1
    config = json.loads((out / "topk" / "config.json").read_text())
    assert config["cost"]["dense_params"]["params_total"] > config["cost"]["this"]["params_active"]
    for flags, message in ((["--gating", "soft-slots"], "graphs differ in size"),
                           (["--fold", "5"], "--fold must be in 0..4")):
        assert launch.main([*common, *flags, "--run-name", "bad"]) == EXIT_BAD_INPUT
        assert message in capsys.readouterr().err and not (out / "bad").exists()
    assert launch.main(["--dataset", f"tu:{tmp_path / 'toy'}", "--out", str(out), "--run-name", "bad"]) == EXIT_BAD_INPUT
    assert "needs --arch graph" in capsys.readouterr().err
