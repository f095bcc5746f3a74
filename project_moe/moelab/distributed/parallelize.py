"""What makes one model, built the same way on every rank, one model spread over the ranks: the
routers' batch scope (``ShardedBatch``), synchronised batch norm, and under expert parallelism each
rank's own experts with the exchange of layers/expert_parallel.py."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..layers.expert_parallel import ExpertParallel
from ..layers.moe import MoE
from ..layers.routers import Router
from ..layers.soft_moe import SoftMoE
from .batches import all_sizes, gather_rows
from .cluster import Cluster, collective_device
from .sync_batchnorm import sync_batchnorm


class ShardedBatch:
    """A router's view of a batch split over the ranks (see routers.LocalBatch)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def row_span(self, rows: int) -> tuple[int, int]:
        sizes = all_sizes(rows, collective_device(self.cluster))
        return sum(sizes[:self.cluster.rank]), sum(sizes)

    def gather_rows(self, rows: Tensor) -> Tensor:
        return gather_rows(self.cluster, rows)

    def global_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        # The value is the whole batch's sum; the gradient reaches this rank's own part only,
        # and the other ranks' parts reach their own parameters' gradients, summed afterwards.
        flat = torch.cat([value.reshape(-1).float() for value in sums.values()])
        total = flat.detach().clone()
        dist.all_reduce(total)
        flat = flat + (total - flat.detach())
        out, start = {}, 0
        for name, value in sums.items():
            out[name] = flat[start:start + value.numel()].view(value.shape)
            start += value.numel()
        return out

    def batch_independent(self, loss: Tensor) -> Tensor:
        # Every rank adds the same term, and the gradients are summed over the ranks.
        return loss.detach() + (loss - loss.detach()) / self.cluster.world_size


def parallelize(model: nn.Module, cluster: Cluster) -> nn.Module:
    """Make ``model`` (built the same way on every rank) one model spread over the ranks: each
    routing layer computes its batch statistics over the whole batch, batch norm is
    synchronised, and under expert parallelism each MoE layer keeps its rank's experts and runs
    them through the exchange. Call before the optimiser is made: expert parallelism replaces
    the expert parameters."""
    if not cluster.is_distributed:
        return model
    scope = ShardedBatch(cluster)
    for module in model.modules():
        if isinstance(module, (Router, SoftMoE)):
            module.use_batch_scope(scope)
    sync_batchnorm(model)
    if cluster.expert_parallel:
        for name, module in model.named_modules():
            if isinstance(module, MoE):
                module.use_exchange(ExpertParallel(cluster))
                for param_name, param in module.experts.named_parameters():
                    cluster.sharded[f"{name}.experts.{param_name}".lstrip(".")] = param.shape[0] * cluster.world_size
    return model
