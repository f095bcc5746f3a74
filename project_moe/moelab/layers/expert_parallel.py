"""The exchange of an MoE layer whose experts are spread over the ranks (``--expert-parallel``):
rows go to the rank that owns their expert and come back, through all-to-all collectives with
gradients. ``distributed/parallelize.py`` gives it to the layer (``MoE.use_exchange``) in place of
LocalExperts.

Legend: P ranks, L = E / P experts per rank, M assignments of this rank, R rows this rank's experts
receive, D input and K output features."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed.batches import all_sizes
from .experts import MLPExperts

if TYPE_CHECKING:
    from ..distributed.cluster import Cluster, Traffic


class AllToAll(torch.autograd.Function):
    """Rows to and from every rank: ``send[q]`` consecutive rows go to rank q, ``recv[q]``
    arrive from it. The backward pass sends the gradients back the same way reversed."""

    @staticmethod
    def forward(ctx, x, send, recv, traffic):
        ctx.send, ctx.recv, ctx.traffic = send, recv, traffic
        return all_to_all(x.contiguous(), send, recv, traffic)

    @staticmethod
    def backward(ctx, grad):
        return all_to_all(grad.contiguous(), ctx.recv, ctx.send, ctx.traffic), None, None, None


def all_to_all(x: Tensor, send: list[int], recv: list[int], traffic: Traffic) -> Tensor:
    out = x.new_empty(sum(recv), *x.shape[1:])
    tick = time.perf_counter()
    dist.all_to_all_single(out, x, recv, send)
    traffic.calls += 1
    traffic.seconds += time.perf_counter() - tick
    row_bytes = x[0].numel() * x.element_size() if x.dim() > 1 else x.element_size()
    traffic.bytes_sent += (sum(send) - send[dist.get_rank()]) * row_bytes
    return out


class ExpertParallel:
    """The exchange of an MoE layer whose experts are spread over the ranks: rank q owns the
    experts q*L .. q*L+L-1 (a bank of L experts here)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def adopt(self, bank) -> None:
        """Keep this rank's L experts of the whole bank (built alike on every rank, so that the
        experts are those one process would have)."""
        if not isinstance(bank, MLPExperts):
            raise ValueError("expert parallelism needs stacked MLP experts")
        local = bank.num_experts // self.cluster.world_size
        own = slice(self.cluster.rank * local, (self.cluster.rank + 1) * local)
        for params in (bank.weights, bank.biases):
            for i, param in enumerate(params):
                params[i] = nn.Parameter(param.detach()[own].clone())
        bank.num_experts = local

    def run_sorted(self, experts: MLPExperts, x_sorted: Tensor, counts: Tensor) -> Tensor:
        """(M, D) this rank's rows grouped by expert, counts (E,) -> (M, K) their outputs."""
        world, local = self.cluster.world_size, len(experts)
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts.contiguous())                 # counts first
        table = torch.stack([counts, received]).cpu()                           # one host sync
        send_matrix, recv_matrix = table[0].view(world, local), table[1].view(world, local)   # (P, L)
        send, recv = send_matrix.sum(dim=1).tolist(), recv_matrix.sum(dim=1).tolist()
        rows = AllToAll.apply(x_sorted, send, recv, self.cluster.traffic)     # (R, D) by source, then expert
        order = source_to_expert_order(recv_matrix).to(rows.device)            # (R,)
        out = experts.forward_sorted(rows.index_select(0, order), recv_matrix.sum(dim=0).tolist())  # (R, K)
        by_source = out.new_empty(out.shape).index_copy(0, order, out)          # (R, K) back in arrival order
        return AllToAll.apply(by_source, recv, send, self.cluster.traffic)    # (M, K)

    def run_all(self, experts: MLPExperts, x: Tensor) -> Tensor:
        """(b_r, D) -> (E, b_r, K): every row goes to every rank, which runs its L experts."""
        world, local = self.cluster.world_size, len(experts)
        sizes, rows = all_sizes(x.shape[0], x.device), x.shape[0]
        copies = x.unsqueeze(0).expand(world, *x.shape).reshape(world * rows, *x.shape[1:])
        everyone = AllToAll.apply(copies, [rows] * world, sizes, self.cluster.traffic)   # (B, D)
        out = experts.forward_all(everyone)                                    # (L, B, K)
        outputs = out.shape[-1]
        send = torch.cat([part.reshape(-1, outputs) for part in out.split(sizes, dim=1)])  # by destination
        back = AllToAll.apply(send, [local * size for size in sizes], [local * rows] * world,
                               self.cluster.traffic)                          # (P*L*b_r, K)
        return back.view(world * local, rows, outputs)                         # (E, b_r, K)


def source_to_expert_order(counts: Tensor) -> Tensor:
    """Rows that arrived grouped by source rank, then expert, (P, L) ``counts`` of them ->
    the (R,) permutation that lists them grouped by expert, then source rank."""
    sizes = counts.flatten()                                                   # blocks in arrival order
    starts = sizes.cumsum(0) - sizes                                           # (P*L,)
    by_expert_starts = starts.view(counts.shape).t().flatten()                 # (L*P,)
    by_expert_sizes = counts.t().flatten()
    rows = int(sizes.sum())
    shift = by_expert_starts - (by_expert_sizes.cumsum(0) - by_expert_sizes)
    return torch.arange(rows) + shift.repeat_interleave(by_expert_sizes, output_size=rows)
