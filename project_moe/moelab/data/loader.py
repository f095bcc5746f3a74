"""Batches cut from whole uint8 tensors on the device, augmented and normalised per batch.

Legend: B batch, C channels, H height, W width, P crop padding.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F

from .images import Split


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
        (x in channels-last memory layout if the loader was made with ``channels_last``)."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step must be in [0, {len(self)}], got {start_step}")
        order = self._order(epoch)
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = augment_batch(x, torch.Generator().manual_seed(derive_seed("augment", self.seed, epoch, step)))
            yield (x.float() * self.scale - self.shift).contiguous(memory_format=self.memory_format), self.labels[idx]

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        # Drawn on a CPU generator so the order does not depend on the device type.
        g = torch.Generator().manual_seed(derive_seed("shuffle", self.seed, epoch))
        return torch.randperm(n, generator=g).to(self.device)
