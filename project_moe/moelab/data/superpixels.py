"""Images as graphs of superpixels (Knyazev et al. 2019; Dwivedi et al., "Benchmarking Graph
Neural Networks", 2020): ``--dataset superpixels:SPEC`` for any image dataset SPEC of the
project (mnist, fashion-mnist, cifar10, folder:PATH).

Each image is cut by SLIC (scikit-image) into at most 75 superpixels (grey images) or 150
(colour). A node is a superpixel: its mean intensity per channel in [0, 1] and its centroid
(row, column) as fractions of the image size, F = C + 2 features. Edges join each node to its 8
nearest superpixels by centroid distance, both ways (the attention of the graph model is masked
by them; it learns its own weights, so the distances are not kept). Node kinds, for the routing
tables: dark, mid or bright by mean intensity (thirds of [0, 1]).

The segmentation is the slow part, one image at a time (a millisecond or two each; MNIST's 60,000
training images took 90 s on one shared CPU core): it is computed once per split and cached under
$MOE_CACHE_DIR/superpixels, keyed by a hash of the images and the settings. The edges are
recomputed at each load, vectorised over graphs. Training and validation graphs are the images of
the image dataset's own split (images.train_val_rows, same seed), the test graphs its test images.

Legend: G graphs (images), M nodes of all graphs, N nodes of the largest graph, C channels.
"""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import torch

from .graphs import GraphDataset, GraphSplit, padded_layout
from .images import cache_dir, check_dataset_spec, load_image_splits, train_val_rows
from .types import DataError, Split

PREFIX = "superpixels:"
MAX_NODES = {1: 75, 3: 150}          # superpixels per image, grey and colour (as Dwivedi et al.)
COMPACTNESS = {1: 0.25, 3: 10.0}     # grey: intensities in [0, 1]; colour: SLIC's CIELAB, L in [0, 100]
NEIGHBOURS = 8
KIND_NAMES = ["dark", "mid", "bright"]
CACHE_VERSION = 1                    # bump when the segmentation or the node features change


def is_superpixel_dataset(name: str) -> bool:
    return name.startswith(PREFIX)


def check_superpixel_spec(name: str) -> None:
    """Fail fast on a bad superpixels:SPEC, before any loading."""
    inner = name[len(PREFIX):]
    if not inner or inner.startswith((PREFIX, "tu:", "text:", "csv-text:", "tfidf:")) or inner in (
            "python-stdlib", "rotten-tomatoes"):
        raise DataError(f"--dataset {name}: superpixels: needs an image dataset, e.g. superpixels:mnist or "
                        f"superpixels:folder:/data/cifar10-jpeg")
    check_dataset_spec(inner)


def segment(image: np.ndarray, max_nodes: int) -> np.ndarray:
    """SLIC labels (H, W) int64, 0 .. n - 1 with n <= max_nodes, of one image (H, W, C) float in [0, 1].
    SLIC places its seeds on a grid, so that asking for ``max_nodes`` may give a few more: such an
    image is cut again with 10 % fewer seeds until it fits."""
    from skimage.segmentation import slic

    channels = image.shape[-1]
    seeds = max_nodes
    while True:
        labels = slic(image if channels == 3 else image[..., 0], n_segments=seeds,
                      compactness=COMPACTNESS[channels], channel_axis=-1 if channels == 3 else None, start_label=0)
        _, labels = np.unique(labels, return_inverse=True)      # 0 .. n - 1 without gaps
        labels = labels.reshape(image.shape[:2])
        if labels.max() < max_nodes or seeds <= 1:
            return labels
        seeds = max(1, int(seeds * 0.9))


def superpixel_nodes(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n, C + 2) float32: each superpixel's mean intensity per channel and its centroid (row, column)
    as a fraction of the image's height and width; image (H, W, C) float in [0, 1]."""
    height, width, channels = image.shape
    flat = labels.reshape(-1)
    count = np.bincount(flat).astype(np.float64)                                  # (n,)
    rows, cols = np.divmod(np.arange(flat.size), width)
    columns = [np.bincount(flat, weights=image[..., c].reshape(-1)) / count for c in range(channels)]
    columns += [np.bincount(flat, weights=rows) / count / max(height - 1, 1),
                np.bincount(flat, weights=cols) / count / max(width - 1, 1)]
    return np.stack(columns, 1).astype(np.float32)


def image_nodes(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes (M, C + 2) float32 and sizes (G,) int64 of images (G, C, H, W) uint8: SLIC, one image at
    a time (the only per-image loop: segmentation is not batched)."""
    channels = images.shape[1]
    if channels not in MAX_NODES:
        raise DataError(f"superpixels: images with {channels} channels; only grey (1) or colour (3) images")
    pictures = images.permute(0, 2, 3, 1).numpy()                                 # (G, H, W, C)
    nodes, sizes = [], []
    for picture in pictures:
        scaled = picture.astype(np.float64) / 255
        features = superpixel_nodes(scaled, segment(scaled, MAX_NODES[channels]))
        nodes.append(features)
        sizes.append(len(features))
    return torch.from_numpy(np.concatenate(nodes)), torch.tensor(sizes, dtype=torch.int64)


def knn_edges(centroids: torch.Tensor, sizes: torch.Tensor, k: int = NEIGHBOURS,
              chunk: int = 2048) -> torch.Tensor:
    """Directed edges (2, P) int64 into the M nodes: each node to its k nearest nodes of its own graph
    by centroid (M, 2) distance (fewer in a graph of k nodes or less), and each such edge reversed, so
    that the graph is undirected; no self-loop, no edge twice. Graphs are padded by chunks of
    ``chunk``: no Python loop over graphs."""
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    pieces = []
    for first in range(0, len(sizes), chunk):
        part = sizes[first:first + chunk]                                              # (g,)
        mask, node = padded_layout(offsets[first:first + len(part)], part)             # (g, N), (g, N) node ids
        width = mask.shape[1]
        points = centroids[node]                                                       # (g, N, 2)
        distance = torch.cdist(points, points)                                         # (g, N, N)
        distance.masked_fill_(~mask[:, None, :], float("inf"))                         # no padding neighbour
        distance.diagonal(dim1=1, dim2=2).fill_(float("inf"))                          # no self-loop
        nearest = distance.topk(min(k, max(width - 1, 1)), dim=2, largest=False)       # (g, N, k)
        real = nearest.values.isfinite() & mask[..., None]                             # (g, N, k)
        source = node[..., None].expand_as(nearest.indices)[real]                      # (P_c,)
        target = torch.gather(node, 1, nearest.indices.flatten(1)).view_as(nearest.indices)[real]
        pieces.append(torch.stack([source, target]))
    edges = torch.cat(pieces + [torch.zeros(2, 0, dtype=torch.int64)], 1)
    both = torch.cat([edges, edges.flip(0)], 1)                                        # (2, 2P)
    key = torch.unique(both[0] * max(len(centroids), 1) + both[1])                     # sorted, each once
    return torch.stack([key // max(len(centroids), 1), key % max(len(centroids), 1)])


def node_kinds(nodes: torch.Tensor, channels: int) -> torch.Tensor:
    """(M,) int64: 0 dark, 1 mid, 2 bright by mean intensity over the channels, thirds of [0, 1]."""
    brightness = nodes[:, :channels].mean(1)
    return torch.bucketize(brightness, torch.tensor([1 / 3, 2 / 3]))


def _cache_path(images: torch.Tensor) -> pathlib.Path:
    digest = hashlib.blake2b(images.numpy().tobytes(), digest_size=12)
    digest.update(repr((CACHE_VERSION, tuple(images.shape), MAX_NODES, COMPACTNESS)).encode())
    return cache_dir() / "superpixels" / f"{digest.hexdigest()}.pt"


def cached_image_nodes(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image_nodes, read from the cache when these images were cut before with these settings."""
    path = _cache_path(images)
    if path.exists():
        stored = torch.load(path, weights_only=True)
        return stored["nodes"], stored["sizes"]
    nodes, sizes = image_nodes(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"nodes": nodes, "sizes": sizes}, partial)
    partial.replace(path)                                  # a cut-short build leaves no half file behind
    return nodes, sizes


def superpixel_graphs(split: Split) -> GraphSplit:
    """The graphs of a split of images (N, C, H, W) uint8, labels unchanged."""
    nodes, sizes = cached_image_nodes(split.images)
    channels = split.images.shape[1]
    edges = knn_edges(nodes[:, channels:], sizes)
    return GraphSplit.build(nodes, sizes, edges, split.labels, node_kinds(nodes, channels))


def load_superpixel_dataset(name: str, data_dir: pathlib.Path, val_fraction: float, seed: int,
                            download: bool = True) -> GraphDataset:
    check_superpixel_spec(name)
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    inner, full_train, test, classes, source = load_image_splits(name[len(PREFIX):], data_dir, download)
    train_rows, val_rows = (torch.from_numpy(rows) for rows in train_val_rows(len(full_train), val_fraction, seed))
    graphs = superpixel_graphs(full_train)
    channels = full_train.images.shape[1]
    names = [f"intensity {c}" for c in range(channels)] + ["centroid row", "centroid column"]
    sizes = graphs.sizes.float()
    return GraphDataset(
        PREFIX + inner, graphs.subset(train_rows), graphs.subset(val_rows), superpixel_graphs(test), classes,
        KIND_NAMES, names, f"SLIC superpixels (at most {MAX_NODES[channels]} per image, {NEIGHBOURS} nearest "
        f"neighbours) of {source}: {sizes.mean():.1f} nodes per training graph on average, {int(sizes.max())} "
        f"at most; {val_fraction:g} of the training images validate (seed {seed})", 0, 0)
