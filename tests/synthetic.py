"""Tiny datasets written in the real on-disk formats, for tests that go through data.py."""
from __future__ import annotations

import pathlib

import numpy as np

MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX format: magic 0x0000080<ndim>, big-endian uint32 dims, then uint8 data."""
    magic = magic if magic is not None else 0x00000800 | array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def learnable_images(n: int, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28x28 noise with a bright 7x7 block whose position encodes the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 90, (n, 28, 28))
    for c in range(num_classes):
        row, col = divmod(c, 4)
        images[labels == c, 3 + 7 * row: 10 + 7 * row, 7 * col: 7 * col + 7] += 160
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


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
