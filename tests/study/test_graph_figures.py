"""moelab/study/graph_figures.py: the routed test graphs and the expert x node-kind shares."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from moelab.study import graph_figures  # noqa: E402


def test_kind_shares_are_the_last_test_epochs_top1_counts_per_kind():
    rows = []
    for epoch in (1, 2):
        for split in ("val", "test"):
            for layer in (1, 3):
                for kind in range(3):
                    for expert in range(4):
                        rows.append({"epoch": epoch, "split": split, "layer": layer, "expert": expert, "kind": kind,
                                     "count": 1, "gate_mass": 0.5, "top1": epoch * (expert + 1) * (kind + 1)})
    table = graph_figures.kind_shares(pd.DataFrame(rows))
    assert set(table.layer) == {1, 3} and len(table) == 2 * 3 * 4
    sums = table.groupby(["layer", "kind"]).share.sum()
    assert np.allclose(sums, 1)
    first = table[(table.layer == 1) & (table.kind == 0)].set_index("expert").share
    assert np.allclose(first.to_numpy(), np.arange(1, 5) / 10)        # (e + 1) / (1 + 2 + 3 + 4)
    fig = graph_figures.kind_routing(pd.DataFrame(rows), ["dark", "mid", "bright"])
    assert len(fig.axes) == 3                                          # two blocks and the colour bar


def test_routed_graphs_draw_every_node_at_its_centroid_in_its_experts_colour():
    sizes = [3, 4]
    offsets = np.array([0, 3, 7])
    centroid = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [0.0, 0.5]])
    graphs = {"nodes": np.column_stack([np.full(7, 0.5), centroid]), "offsets": offsets,
              "edges": np.array([[0, 1, 3, 4], [1, 0, 4, 3]]), "edge_offsets": np.array([0, 2, 4]),
              "labels": np.array([7, 1]), "node_kinds": np.zeros(7, dtype=int),
              "feature_names": np.array(["intensity 0", "centroid row", "centroid column"]),
              "kind_names": np.array(["dark", "mid", "bright"])}
    nodes = pd.DataFrame([{"index": g, "class": int(graphs["labels"][g]), "predicted": 1, "layer": layer, "node": n,
                           "kind": 0, "top1_expert": (n + layer) % 4, "top1_weight": 0.9, "experts_used": 2}
                          for layer in (1, 3) for g, size in enumerate(sizes) for n in range(size)])
    fig = graph_figures.routed_graphs(nodes, graphs)
    drawn = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in drawn] == sizes
    assert np.allclose(drawn[0].get_offsets(), centroid[:3, ::-1])      # x = column, y = row
    assert drawn[1].get_array().tolist() == [(n + 3) % 4 for n in range(4)]   # the last block's experts
    assert "class 7, predicted 1" in [ax.get_title() for ax in fig.axes]
    names = [f"digit {i}" for i in range(10)]                         # the dataset's names, when given
    titles = [ax.get_title() for ax in graph_figures.routed_graphs(nodes, graphs, class_names=names).axes]
    assert "class digit 7, predicted digit 1" in titles
