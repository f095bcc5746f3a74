"""Batches cut from whole uint8 tensors on the device, augmented and normalised per batch.

Legend: B batch, C channels, H height, W width, P crop padding.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .graphs import GraphSplit, pack, padded_batch, padded_kinds
from .tables import TableSplit
from .types import Split


def draw_augment_params(batch: int, generator: torch.Generator, pad: int = 4):
    """Random crop offsets dy, dx in [0, 2*pad] inside the padded image and flip flags, each (B,)."""
    dev = generator.device
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator, device=dev)
    flip = torch.randint(0, 2, (batch,), generator=generator, device=dev).bool()
    return offsets[0], offsets[1], flip


def apply_augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop each zero-padded image at (dy, dx) and mirror it where flip is set; one gather for the batch."""
    b, _, h, w = x.shape
    dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2P, W+2P)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = torch.arange(w, device=x.device).expand(b, w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]  # a mirrored crop reads its columns backwards
    batch_idx = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad` plus random horizontal flip; same shape and dtype."""
    dy, dx, flip = draw_augment_params(len(x), generator, pad)
    return apply_augment(x, dy, dx, flip, pad)


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from a tuple of ints/strings (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int, device) -> torch.Tensor:
    """The order (n,) int64 in which an epoch visits n examples: a permutation drawn from (seed, epoch)
    only, or 0..n-1 without ``shuffle``. Drawn on a CPU generator so the order does not depend on the
    device type."""
    if not shuffle:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(derive_seed("shuffle", seed, epoch))
    return torch.randperm(n, generator=g).to(device)


def check_start_step(start_step: int, steps: int) -> None:
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step must be in [0, {steps}], got {start_step}")


class BatchLoader:
    """Batches of a Split that lives on the device as uint8; normalised float32 comes out.

    Every random draw depends only on (seed, epoch, step), never on what was iterated before,
    so resuming with iter_epoch(epoch, start_step) reproduces an uninterrupted run exactly.
    """

    def __init__(self, split: Split, batch_size: int, mean, std, *, shuffle: bool, augment: bool, seed: int,
                 device: torch.device | str = "cpu", drop_last: bool = False, channels_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = split.images.to(self.device)  # (N, C, H, W) uint8, copied once
        self.labels = split.labels.to(self.device)
        self.tokens = self.images.dim() == 2          # byte sequences: no normalisation, int64 out
        if not self.tokens:
            c = self.images.shape[1]
            mean_t = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
            std_t = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
            self.scale, self.shift = 1 / (255 * std_t), mean_t / std_t  # (x/255 - mean)/std as one fma
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last = seed, drop_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 (B, C, H, W), y int64 (B,)) on the device, from batch start_step on
        (x in channels-last memory layout if the loader was made with ``channels_last``); for
        byte sequences x is int64 (B, T)."""
        check_start_step(start_step, len(self))
        order = epoch_order(len(self.labels), shuffle=self.shuffle, seed=self.seed, epoch=epoch, device=self.device)
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            x = self.images[idx]
            if self.tokens:
                yield x.long(), self.labels[idx]
                continue
            if self.augment:
                x = augment_batch(x, torch.Generator().manual_seed(derive_seed("augment", self.seed, epoch, step)))
            yield (x.float() * self.scale - self.shift).contiguous(memory_format=self.memory_format), self.labels[idx]


class StreamLoader:
    """Windows of a byte stream for a language model: x (B, T) int64 and its next bytes y (B, T).

    Training (``shuffle``): ``steps`` batches per epoch of windows starting at random offsets,
    drawn from (seed, epoch, step) only, so that a resumed run sees the same windows. Evaluation:
    the stream cut into consecutive windows in order (the first bytes of each window are
    predicted from a short context, as in any windowed evaluation), each with the kinds of its
    input bytes, (B, T) int64: batches are (x, y, kinds).
    """

    def __init__(self, stream, batch_size: int, context: int, *, shuffle: bool, seed: int, steps: int = 0,
                 device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.tokens = stream.tokens.to(self.device)             # (n,) uint8
        self.kinds = stream.kinds.to(self.device)               # (n,) uint8
        self.batch_size, self.context, self.shuffle, self.seed = batch_size, context, shuffle, seed
        self.windows = (len(self.tokens) - 1) // context        # evaluation: consecutive windows
        # Training: one epoch is ``steps`` batches, or by default as many as cover the stream once.
        self.steps = steps or max(1, (len(self.tokens) - 1) // (batch_size * context))
        self.offsets = torch.arange(context + 1, device=self.device)   # (T + 1,)

    def __len__(self) -> int:
        return self.steps if self.shuffle else math.ceil(self.windows / self.batch_size)

    def iter_epoch(self, epoch: int, start_step: int = 0):
        check_start_step(start_step, len(self))
        last_start = len(self.tokens) - self.context - 1
        for step in range(start_step, len(self)):
            if self.shuffle:
                g = torch.Generator().manual_seed(derive_seed("windows", self.seed, epoch, step))
                starts = torch.randint(0, last_start + 1, (self.batch_size,), generator=g).to(self.device)
            else:
                first = step * self.batch_size
                starts = torch.arange(first, min(first + self.batch_size, self.windows), device=self.device) \
                    * self.context
            window = self.tokens[starts[:, None] + self.offsets].long()           # (B, T + 1)
            x, y = window[:, :-1], window[:, 1:]
            if self.shuffle:
                yield x, y
            else:
                yield x, y, self.kinds[starts[:, None] + self.offsets[:-1]].long()


class TableLoader:
    """Batches of a table's rows: x (B, F) float32 already standardised, y (B,) classes or targets.
    The order of an epoch depends only on (seed, epoch), as in BatchLoader."""

    def __init__(self, split: TableSplit, batch_size: int, *, shuffle: bool, seed: int,
                 device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.features = split.features.to(self.device)      # (N, F), copied once
        self.targets = split.targets.to(self.device)        # (N,)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        check_start_step(start_step, len(self))
        order = epoch_order(len(self.targets), shuffle=self.shuffle, seed=self.seed, epoch=epoch, device=self.device)
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.features[idx], self.targets[idx]


class GraphLoader:
    """Batches of graphs: x (B, N, F + 1 + N) float32, a padded batch packed into one tensor
    (graphs.pack), and y (B,) classes. The order of an epoch depends only on (seed, epoch).
    Evaluation (not ``shuffle``) adds each node's kind, (B, N) int64, -1 on padding: batches are
    (x, y, kinds), as a language model's, for the routing tables per node kind."""

    def __init__(self, split: GraphSplit, batch_size: int, *, shuffle: bool, seed: int,
                 device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.split = split.to(self.device)                 # copied once
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        check_start_step(start_step, len(self))
        order = epoch_order(len(self.split), shuffle=self.shuffle, seed=self.seed, epoch=epoch, device=self.device)
        for step in range(start_step, len(self)):
            graphs = order[step * self.batch_size:(step + 1) * self.batch_size]
            if self.shuffle:
                yield pack(*padded_batch(self.split, graphs)), self.split.labels[graphs]
            else:
                yield pack(*padded_batch(self.split, graphs)), self.split.labels[graphs], padded_kinds(self.split, graphs)


def loader_for(dataset, split, batch_size: int, *, shuffle: bool, seed: int, device, steps: int = 0,
               channels_last: bool = False):
    """The loader of one split of any dataset: a StreamLoader for a language model's byte
    stream, a TableLoader for a table, a GraphLoader for graphs, a BatchLoader (images or byte
    sequences) otherwise."""
    if isinstance(split, TableSplit):
        return TableLoader(split, batch_size, shuffle=shuffle, seed=seed, device=device)
    if isinstance(split, GraphSplit):
        return GraphLoader(split, batch_size, shuffle=shuffle, seed=seed, device=device)
    if hasattr(split, "kinds"):
        return StreamLoader(split, batch_size, dataset.context, shuffle=shuffle, seed=seed, steps=steps,
                            device=device)
    return BatchLoader(split, batch_size, dataset.mean, dataset.std, shuffle=shuffle, augment=shuffle and
                       dataset.augment, seed=seed, device=device, channels_last=channels_last)
