"""Global batches split over the ranks: each rank's contiguous share, and the rows gathered back."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .cluster import Cluster


def shard_sizes(rows: int, world_size: int) -> list[int]:
    """Contiguous shares of ``rows``, the first ranks one larger when it does not divide."""
    base, extra = divmod(rows, world_size)
    return [base + (r < extra) for r in range(world_size)]


def shard(cluster: Cluster, *tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous share of the rows of a global batch."""
    if not cluster.is_distributed:
        return tensors
    sizes = shard_sizes(tensors[0].shape[0], cluster.world_size)
    start = sum(sizes[:cluster.rank])
    return tuple(t[start:start + sizes[cluster.rank]] for t in tensors)


def shard_batches(cluster: Cluster, batches):
    """Iterate this rank's share of every global batch."""
    for batch in batches:
        yield shard(cluster, *batch)


def gather_rows(cluster: Cluster, rows: Tensor) -> Tensor:
    """(b_r, ...) on every rank -> (B, ...) on every rank, in rank order; no gradient."""
    if not cluster.is_distributed:
        return rows
    sizes = all_sizes(rows.shape[0], rows.device)
    padded = rows.new_zeros(max(sizes), *rows.shape[1:])
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def all_sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's number of rows (one small all-gather)."""
    mine = torch.tensor([rows], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return torch.cat(sizes).tolist()
