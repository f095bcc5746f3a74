"""The records every dataset module shares, with no dependency beyond torch: the one-line
``DataError``, a ``Split`` of whole tensors, the ``Dataset`` the loaders read, the byte
vocabulary that the text datasets write and the text models read, and the one-tensor form of a
padded batch of graphs that the graph loader writes and the graph model reads."""
from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB = 256                        # byte values; the classifier pads with byte 0 (PAD)
PAD = 0


class DataError(ValueError):
    """A dataset cannot be found or read. The message is one line: what is wrong and how to fix it."""

    def __init__(self, message: str):
        # Collapse whitespace so that a caller can print it as a single log line.
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, or (N, T) uint8 byte sequences (text classification)
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() not in (2, 4):
            raise ValueError(f"Split.images must be uint8 (N, C, H, W) or (N, T), "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"Split.labels must be int64 of shape ({len(self.images)},), "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]  # per channel, [0, 1] units, from the train split only
    std: tuple[float, ...]
    augment: bool  # crop + flip suit natural RGB images, not digits whose mirror is another class
    source: str

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def pack(x: torch.Tensor, mask: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    """One (B, N, F + 1 + N) float tensor of a padded batch, so that the training loop, the
    evaluation and the sharding of a batch over processes handle graphs as any (B, ...) input:
    per node its features, then 1.0 for a real node, then its row of the adjacency."""
    return torch.cat([x, mask[..., None].to(x.dtype), adjacency.to(x.dtype)], dim=-1)


def unpack(packed: torch.Tensor, features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N, F), mask (B, N) and adjacency (B, N, N) back from ``pack``'s tensor."""
    return packed[..., :features], packed[..., features] > 0.5, packed[..., features + 1:] > 0.5
