"""Tiny datasets written in the real on-disk formats, for tests that go through moelab.data."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

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
