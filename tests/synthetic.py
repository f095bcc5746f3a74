"""Tiny synthetic data for the tests: images, tables and text in the real on-disk formats, and numbered images."""
from __future__ import annotations

import pathlib
import random

import numpy as np
import pandas as pd
import torch
from PIL import Image

from moelab import data
from moelab.models.output import ModelOutput

MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX format: magic 0x0000080<ndim>, big-endian uint32 dims, then uint8 data."""
    magic = magic if magic is not None else 0x00000800 | array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def learnable_images(n: int, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28x28 noise (0-89) with a bright shape (+160) whose form encodes the class: a horizontal bar,
    a vertical bar, a square ring, a bar at each side.

    Each shape is its own mirror image, so an image and its mirror (a flip augmentation,
    --tta-flip) show the same class; and each has its own form, not only its own place, so a
    convolutional trunk that pools over positions and sees random crops tells them apart too."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"learnable_images draws 2 to {len(SHAPES)} classes, not {num_classes}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 90, (n, 28, 28))
    for c in range(num_classes):
        images[labels == c] += 160 * SHAPES[c]
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def _shapes() -> np.ndarray:
    shapes = np.zeros((4, 28, 28), dtype=np.int64)
    shapes[0, 12:16, 4:24] = 1                                  # horizontal bar
    shapes[1, 4:24, 12:16] = 1                                  # vertical bar
    shapes[2, 6:22, 6:22] = 1
    shapes[2, 10:18, 10:18] = 0                                 # square ring
    shapes[3, 4:24, 1:5] = shapes[3, 4:24, 23:27] = 1           # a bar at each side
    assert (shapes == shapes[:, :, ::-1]).all()                 # each its own mirror image
    return shapes


SHAPES = _shapes()


def write_mnist_layout(root: pathlib.Path, n_train: int = 600, n_test: int = 200, folder: str = "MNIST",
                       seed: int = 0) -> pathlib.Path:
    """Write a learnable dataset as root/<folder>/raw/*-ubyte, the torchvision layout."""
    raw = pathlib.Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = learnable_images(n_train, seed=seed)
    test_x, test_y = learnable_images(n_test, seed=seed + 1)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    for key, name in MNIST_FILES.items():
        (raw / name).write_bytes(idx_bytes(arrays[key]))
    return raw


def write_folder_layout(root: pathlib.Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> pathlib.Path:
    """Write the same learnable images in 3 channels as root/{train,test}/<class>/NNNN.png, the
    --dataset folder:PATH layout (3-channel data is trained with crop + flip augmentation)."""
    root = pathlib.Path(root)
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = learnable_images(n, seed=split_seed)
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            rgb = np.repeat(image[:, :, None], 3, axis=2)
            Image.fromarray(rgb, "RGB").save(root / split / f"c{label}" / f"{i:04d}.png")
    return root


# ----------------------------------------------------------------------------- an ImageFolder of random images

def write_folder(root: pathlib.Path, per_class: dict[str, int], fmt="png", mode="RGB", size=8, seed=0,
                 splits=("train", "test")) -> dict[str, list[np.ndarray]]:
    """Random images under root/<split>/<class>/NNN.<fmt>; returns arrays in sorted-path order."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in splits:
        arrays = []
        for cls in sorted(per_class):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class[cls]):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode).save(root / split / cls / f"{i:03d}.{fmt}")
                arrays.append(arr)
        written[split] = arrays
    return written


# ----------------------------------------------------------------------------- images that spell their index

def numbered_split(n: int, channels: int = 1, size: int = 4) -> data.Split:
    """Images whose first two pixels spell their index, so a batch can be traced back to samples."""
    images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) // 256
    images[:, 0, 0, 1] = torch.arange(n) % 256
    return data.Split(images, torch.arange(n) % 10)


def sample_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


# ----------------------------------------------------------------------------- a CSV table

def write_csv(path, rows: int = 60, seed: int = 0, **overrides):
    """A table with two numeric features, one string feature and a string target that depends on them."""
    rng = np.random.default_rng(seed)
    size = rng.normal(10.0, 3.0, rows)
    weight = rng.normal(-5.0, 0.5, rows)
    colour = rng.choice(["red", "green", "blue"], rows)
    kind = np.where(size + 2 * (colour == "red") > 11, "big", "small")
    frame = pd.DataFrame({"size": size, "weight": weight, "colour": colour, "kind": kind,
                          "price": 3 * size + weight + rng.normal(0, 0.1, rows)})
    for column, values in overrides.items():
        frame[column] = values
    frame.to_csv(path, index=False)
    return frame


# ----------------------------------------------------------------------------- text: Python sources, AG News layout

PYTHON_KINDS = {"space", "newline", "name", "keyword", "operator", "number", "string", "comment"}


def write_sources(folder: pathlib.Path, count: int, seed: int = 0) -> dict[str, bytes]:
    """``count`` small Python modules of different sizes, each with a marker no other file holds."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i in range(count):
        marker = f"marker_{i:02d}_{rng.getrandbits(48):012x}"
        body = "".join(f'''
def {marker}_f{j}(x, y={j}):
    """Return x and y ({marker})."""
    if x > {j}.5:  # compare with {j}
        return x + y * {i}
    return [x, y, "s{j}"]
''' for j in range(1 + rng.randrange(6)))
        name = f"pkg{i % 3}/mod_{i:02d}.py"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"# module {marker}\n{body}", encoding="utf-8")
        written[name] = (folder / name).read_bytes()
    return written


AG_TRAIN = (
    '"3","Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling'
    '\\band of ultra-cynics, are seeing green again."\n'
    '"1","Talks, again","Leaders met on Monday, ""briefly"", and left."\n'
    '"2","Late goal","A 1-0 win, sealed in the 90th minute."\n'
    '"4","Chips","Faster, cheaper, smaller: the café\'s new laptop."\n'
) * 3
AG_TEST = ('"2","Match","Drawn, 1-1."\n'
           '"4","Software","An update, at last."\n'
           '"1","Summit","No deal."\n')


def write_ag_news(root: pathlib.Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(AG_TRAIN, encoding="utf-8")
    (root / "test.csv").write_text(AG_TEST, encoding="utf-8")


def write_tu(root: pathlib.Path, graphs: list[dict], name: str = "TOY") -> None:
    """Write ``graphs`` in the TU Dortmund format under root/: each graph a dict of ``label``,
    ``nodes`` (its node labels), ``edges`` (undirected pairs of its 0-based node slots, written
    both ways, as the TU files do) and optionally ``attributes`` (one list of numbers per node)."""
    root.mkdir(parents=True, exist_ok=True)
    a, indicator, node_labels, attributes = [], [], [], []
    first = 1
    for g, graph in enumerate(graphs, start=1):
        for u, v in graph["edges"]:
            a += [f"{first + u}, {first + v}", f"{first + v}, {first + u}"]
        indicator += [str(g)] * len(graph["nodes"])
        node_labels += [str(label) for label in graph["nodes"]]
        attributes += [", ".join(str(x) for x in row) for row in graph.get("attributes", [])]
        first += len(graph["nodes"])
    files = {"A": a, "graph_indicator": indicator, "graph_labels": [str(g["label"]) for g in graphs],
             "node_labels": node_labels, "node_attributes": attributes}
    for part, lines in files.items():
        if lines:
            (root / f"{name}_{part}.txt").write_text("\n".join(lines) + "\n")


class LogitsModel(torch.nn.Module):
    """Any network of logits as a model of the study: it returns the record every model returns
    (a dense one: no routings)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.net(x))

    def routers(self) -> list:
        return []
