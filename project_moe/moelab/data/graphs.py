"""Graph classification data: graphs stored as one table of nodes with a segment index, and
padded batches with an adjacency mask for models that attend along edges.

Legend: G graphs, M nodes of all graphs, F node features, P directed edges, B graphs of a batch,
N nodes of its largest graph.

Sources:
  tu:PATH   a graph-classification dataset in the TU Dortmund format, the folder that holds
            DS_A.txt (one "row, col" edge per line, 1-based node ids), DS_graph_indicator.txt
            (line i: the graph of node i), DS_graph_labels.txt (line g: the class of graph g)
            and optionally DS_node_labels.txt (line i: an integer label, one-hot encoded) and
            DS_node_attributes.txt (line i: comma-separated numbers, standardised with the
            training nodes' statistics); DS is taken from the *_A.txt file's name. It has no
            given test split: it is cut as the tables are (folds.py, stratified by class).

Storage: ``GraphSplit`` keeps every node of a split in one (M, F) matrix, each graph's nodes
contiguous (``offsets``), and its edges as (2, P) node indices into that matrix, each graph's
edges contiguous (``edge_offsets``), so no Python object per graph exists and a batch touches
only its own nodes and edges. ``padded_batch`` turns B graphs into x (B, N, F), node mask (B, N) and
adjacency (B, N, N) with self-loops in a few gathers and one scatter, whatever the graph sizes.
"""
from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .folds import fold_rows
from .types import DataError, pack, unpack  # noqa: F401 (graphs.pack, graphs.unpack)


@dataclass(frozen=True)
class GraphSplit:
    nodes: torch.Tensor         # (M, F) float32, the nodes of every graph, graph by graph
    offsets: torch.Tensor       # (G + 1,) int64: graph g holds nodes offsets[g] .. offsets[g + 1] - 1
    edges: torch.Tensor         # (2, P) int64 directed edges (source, target) into nodes, graph by graph
    edge_offsets: torch.Tensor  # (G + 1,) int64: graph g holds edges edge_offsets[g] .. edge_offsets[g + 1] - 1
    labels: torch.Tensor        # (G,) int64 classes, or float32 standardised targets of a regression
    node_kinds: torch.Tensor    # (M,) int64: what routing tables break nodes down by (node label, region...)

    def __post_init__(self):
        graphs = len(self.labels)
        if self.offsets.shape != (graphs + 1,) or int(self.offsets[-1]) != len(self.nodes):
            raise ValueError("GraphSplit.offsets must be (G + 1,) and end at the number of nodes")
        if self.edges.dim() != 2 or self.edges.shape[0] != 2 or self.edge_offsets.shape != (graphs + 1,) \
                or int(self.edge_offsets[-1]) != self.edges.shape[1]:
            raise ValueError("GraphSplit.edges must be (2, P) with (G + 1,) edge_offsets ending at P")

    @classmethod
    def build(cls, nodes: torch.Tensor, sizes: torch.Tensor, edges: torch.Tensor, labels: torch.Tensor,
              node_kinds: torch.Tensor) -> "GraphSplit":
        """From node counts (G,) and edges (2, P) in any order, each inside one graph."""
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
        graph_of_edge = torch.bucketize(edges[0], offsets[1:], right=True)        # (P,)
        order = torch.sort(graph_of_edge, stable=True).indices
        edge_counts = torch.bincount(graph_of_edge, minlength=len(sizes))
        edge_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), edge_counts.cumsum(0)])
        return cls(nodes, offsets, edges[:, order], edge_offsets, labels, node_kinds)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "GraphSplit":
        return GraphSplit(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    @property
    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]                             # (G,)

    @property
    def edge_counts(self) -> torch.Tensor:
        return self.edge_offsets[1:] - self.edge_offsets[:-1]                   # (G,)

    def subset(self, graphs: torch.Tensor) -> "GraphSplit":
        """The graphs ``graphs`` (indices, in that order) as a split of their own."""
        sizes = self.sizes[graphs]
        node_index = ranges(self.offsets[graphs], sizes)                       # (M',) old node ids, new order
        edge_index = ranges(self.edge_offsets[graphs], self.edge_counts[graphs])  # (P',)
        new_start = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])   # (G',)
        shift = torch.repeat_interleave(new_start - self.offsets[graphs], self.edge_counts[graphs])   # (P',)
        edge_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), self.edge_counts[graphs].cumsum(0)])
        return GraphSplit(self.nodes[node_index], torch.cat([new_start, sizes.sum().view(1)]),
                          self.edges[:, edge_index] + shift, edge_offsets, self.labels[graphs],
                          self.node_kinds[node_index])


def ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """concat(arange(s, s + n) for s, n in zip(starts, lengths)), without a Python loop."""
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)   # which range
    first = torch.cumsum(lengths, 0) - lengths                                 # (R,) where each range begins
    return starts[segment] + torch.arange(len(segment), device=lengths.device) - first[segment]


def padded_layout(starts: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Node mask (B, N) bool and node ids (B, N) int64 (0 on padding) of B graphs whose nodes are
    starts[b] .. starts[b] + sizes[b] - 1, padded to the largest (N = max size)."""
    width = int(sizes.max()) if len(sizes) else 0
    slot = torch.arange(width, device=sizes.device)                            # (N,)
    mask = slot < sizes[:, None]                                               # (B, N)
    return mask, torch.where(mask, starts[:, None] + slot, 0)


def padded_batch(split: GraphSplit, graphs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N, F), node mask (B, N) bool and adjacency (B, N, N) bool (self-loops included; entry
    [b, i, j]: node i of graph b receives from node j) of the graphs ``graphs`` (B,)."""
    device = split.nodes.device
    sizes, starts = split.sizes[graphs], split.offsets[graphs]                 # (B,), (B,)
    mask, node = padded_layout(starts, sizes)                                  # (B, N), (B, N)
    width = mask.shape[1]
    x = split.nodes[node] * mask[..., None]                                    # (B, N, F), padding zero
    counts = split.edge_counts[graphs]                                         # (B,)
    edge = ranges(split.edge_offsets[graphs], counts)                          # (P_b,) the batch's edges
    batch_of_edge = torch.repeat_interleave(torch.arange(len(graphs), device=device), counts)
    source, target = split.edges[:, edge] - starts[batch_of_edge]              # node slots in their graph
    adjacency = torch.zeros(len(graphs), width, width, dtype=torch.bool, device=device)
    adjacency[batch_of_edge, target, source] = True                            # target receives from source
    return x, mask, adjacency | torch.diag_embed(mask)                         # every node sees itself


def padded_kinds(split: GraphSplit, graphs: torch.Tensor) -> torch.Tensor:
    """(B, N) int64: the kind of each node of the graphs ``graphs`` (B,) as padded_batch lays them
    out, -1 on padding."""
    mask, node = padded_layout(split.offsets[graphs], split.sizes[graphs])     # (B, N), (B, N)
    return torch.where(mask, split.node_kinds[node], -1)


# ----------------------------------------------------------------------------------------------
# The TU Dortmund format


@dataclass(frozen=True)
class TUGraphs:
    """Every graph of a TU dataset, before any split: one GraphSplit of all graphs."""

    name: str
    graphs: GraphSplit
    classes: list[str]
    kinds: list[str]          # names of the node kinds (the node labels, or "node")
    feature_names: list[str]
    source: str


def _read_lines(path: pathlib.Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the TU format needs it beside the other DS_*.txt files") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _integers(path: pathlib.Path, per_line: int | None = 1) -> np.ndarray:
    """(lines,) or (lines, per_line) int64 of a file of comma-separated integers."""
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = [f.strip() for f in line.split(",")]
        if per_line is not None and len(fields) != per_line:
            raise DataError(f"{path}: line {number} has {len(fields)} value(s), expected {per_line}")
        try:
            rows.append([int(float(f)) for f in fields])
        except ValueError:
            raise DataError(f"{path}: line {number} is not {'an integer' if per_line == 1 else 'integers'}: "
                            f"{line[:40]!r}") from None
    values = np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    return values[:, 0] if per_line == 1 else values


def _attributes(path: pathlib.Path) -> np.ndarray:
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            rows.append([float(f) for f in line.split(",")])
        except ValueError:
            raise DataError(f"{path}: line {number} is not comma-separated numbers: {line[:40]!r}") from None
        if len(rows[-1]) != len(rows[0]):
            raise DataError(f"{path}: line {number} has {len(rows[-1])} attributes, line 1 has {len(rows[0])}")
    return np.asarray(rows, dtype=np.float64)


def _dataset_prefix(root: pathlib.Path) -> str:
    if not root.is_dir():
        raise DataError(f"--dataset tu:{root}: no such folder; point at the folder of DS_A.txt and its siblings")
    found = sorted(p.name[:-len("_A.txt")] for p in root.glob("*_A.txt"))
    if len(found) != 1:
        raise DataError(f"--dataset tu:{root}: expected one DS_A.txt file, found "
                        f"{len(found) or 'none'}{': ' + ', '.join(found) if found else ''}")
    return found[0]


def read_tu(root: pathlib.Path) -> TUGraphs:
    """Read and check a TU dataset: every error is one line that names the file and the line."""
    root = pathlib.Path(root).expanduser()
    ds = _dataset_prefix(root)
    path = {part: root / f"{ds}_{part}.txt" for part in ("A", "graph_indicator", "graph_labels", "node_labels",
                                                          "node_attributes")}
    graph_of = _integers(path["graph_indicator"])                               # (M,) 1-based
    if len(graph_of) == 0:
        raise DataError(f"{path['graph_indicator']} is empty; it needs one line per node")
    jumps = np.flatnonzero(np.diff(graph_of) < 0)
    if len(jumps):
        raise DataError(f"{path['graph_indicator']}: line {jumps[0] + 2} goes back to graph {graph_of[jumps[0] + 1]}; "
                        "the nodes of each graph must be contiguous and in graph order")
    labels = _integers(path["graph_labels"])                                    # (G,)
    counts = np.bincount(graph_of, minlength=len(labels) + 1)[1:]
    if graph_of.min() < 1 or graph_of.max() > len(labels):
        bad = int(np.flatnonzero((graph_of < 1) | (graph_of > len(labels)))[0])
        raise DataError(f"{path['graph_indicator']}: line {bad + 1} names graph {graph_of[bad]}, but "
                        f"{path['graph_labels'].name} has {len(labels)} graphs")
    if (counts == 0).any():
        empty = int(np.flatnonzero(counts == 0)[0]) + 1
        raise DataError(f"{path['graph_indicator']}: graph {empty} has no node (line {empty} of "
                        f"{path['graph_labels'].name}); remove it from the label file or give it nodes")
    nodes = len(graph_of)
    edges = _integers(path["A"], per_line=2) - 1 if path["A"].stat().st_size else np.zeros((0, 2), np.int64)
    outside = np.flatnonzero(((edges < 0) | (edges >= nodes)).any(axis=1))
    if len(outside):
        line = int(outside[0])
        bad = int(edges[line][(edges[line] < 0) | (edges[line] >= nodes)][0]) + 1
        raise DataError(f"{path['A']}: line {line + 1} names node {bad}, but {path['graph_indicator'].name} has "
                        f"{nodes} nodes")
    across = np.flatnonzero(graph_of[edges[:, 0]] != graph_of[edges[:, 1]])
    if len(across):
        raise DataError(f"{path['A']}: line {across[0] + 1} joins nodes of graphs {graph_of[edges[across[0], 0]]} "
                        f"and {graph_of[edges[across[0], 1]]}; an edge stays inside its graph")
    features, names, kinds, kind_names = [], [], np.zeros(nodes, dtype=np.int64), ["node"]
    if path["node_labels"].is_file():
        node_labels = _integers(path["node_labels"])
        if len(node_labels) != nodes:
            raise DataError(f"{path['node_labels']} has {len(node_labels)} lines, {path['graph_indicator'].name} "
                            f"{nodes}: one line per node in both")
        values, kinds = np.unique(node_labels, return_inverse=True)
        features.append(np.eye(len(values))[kinds])
        names += [f"label={v}" for v in values]
        kind_names = [f"label {v}" for v in values]
    if path["node_attributes"].is_file():
        attributes = _attributes(path["node_attributes"])
        if len(attributes) != nodes:
            raise DataError(f"{path['node_attributes']} has {len(attributes)} lines, {path['graph_indicator'].name} "
                            f"{nodes}: one line per node in both")
        features.append(attributes)
        names += [f"attribute {i}" for i in range(attributes.shape[1])]
    if not features:                 # no node information: every node the same, structure only
        features, names = [np.ones((nodes, 1))], ["constant"]
    classes, label_index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"{path['graph_labels']}: one class only ({classes[0]}); a classifier needs two or more")
    graphs = GraphSplit.build(torch.as_tensor(np.concatenate(features, axis=1), dtype=torch.float32),
                              torch.as_tensor(counts, dtype=torch.int64), torch.as_tensor(edges.T.copy()),
                              torch.as_tensor(label_index, dtype=torch.int64), torch.as_tensor(kinds, dtype=torch.int64))
    return TUGraphs(ds, graphs, [str(c) for c in classes], kind_names, names,
                    f"TU dataset {ds} under {root}: {len(labels)} graphs, {nodes} nodes, {len(edges)} directed edges")


def split_tu(tu: TUGraphs, folds: int, fold: int, val_fraction: float,
             seed: int) -> tuple[GraphSplit, GraphSplit, GraphSplit]:
    """(train, val, test) of fold ``fold`` of ``folds`` (stratified by class, drawn from ``seed``),
    the node attributes standardised with the training nodes' mean and standard deviation."""
    labels = tu.graphs.labels.numpy()
    rows = fold_rows(len(labels), folds, fold, val_fraction, seed, labels, f"tu:{tu.name}")
    train, val, test = (tu.graphs.subset(torch.as_tensor(r)) for r in rows)
    columns = [i for i, name in enumerate(tu.feature_names) if name.startswith("attribute")]
    if columns:
        mean = train.nodes[:, columns].mean(0)
        std = train.nodes[:, columns].std(0).clamp_min(1e-6)
        for split in (train, val, test):
            split.nodes[:, columns] = (split.nodes[:, columns] - mean) / std
    return train, val, test


# ----------------------------------------------------------------------------------------------
# A dataset of graphs, and its batches as one tensor


def is_graph_dataset(name: str) -> bool:
    """tu:PATH, superpixels:SPEC (superpixels.py: the graphs of an image dataset) or solubility
    (molecules.py)."""
    return name.startswith(("tu:", "superpixels:")) or name == "solubility"


@dataclass
class GraphDataset:
    name: str
    train: GraphSplit
    val: GraphSplit
    test: GraphSplit
    classes: list[str]
    kinds: list[str]          # node kinds of the routing tables
    feature_names: list[str]
    source: str
    folds: int
    fold: int
    augment: bool = False
    task: str = "classification"     # or regression: labels are standardised real targets (float32)
    target_mean: float = 0.0         # regression: y = target_mean + target_std * standardised y
    target_std: float = 1.0
    bin_edges: list[float] = field(default_factory=list)   # regression: inner bin edges, standardised units
    mean = std = None

    @property
    def in_shape(self) -> tuple[int]:
        return (self.train.nodes.shape[1],)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_graph_dataset(name: str, folds: int, fold: int, val_fraction: float, seed: int) -> GraphDataset:
    path = name[len("tu:"):]
    if not path:
        raise DataError("--dataset tu: needs a path, e.g. --dataset tu:/data/MUTAG")
    tu = read_tu(pathlib.Path(path))
    train, val, test = split_tu(tu, folds, fold, val_fraction, seed)
    return GraphDataset(f"tu:{pathlib.Path(path).expanduser().absolute()}", train, val, test, tu.classes, tu.kinds,
                        tu.feature_names, f"{tu.source}, stratified fold {fold} of {folds} from seed {seed} as the "
                        f"test split, {val_fraction:g} of the rest validates", folds, fold)
