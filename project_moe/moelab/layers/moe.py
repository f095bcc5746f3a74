"""The MoE layer: a router and a bank of experts, with the sparse dispatch.

Legend: N samples (or tokens), E experts, M assignments (sample, expert) pairs, D router input
features, K output features of every expert (class logits, or token features in a ViT).

    y(x) = sum_i w_i(x) E_i(x)

with w the combine weights of a router (routers.py). Sparse routers evaluate each expert
only on the samples sent to it: assignments are sorted by expert once, every expert runs
on its own contiguous slice (experts.py), and the weighted outputs are added back with
one ``index_add_``.
No (N, E, ...) intermediate is built unless the router is dense (``soft``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .experts import MLPExperts, ModuleExperts
from .routing import Routing


@dataclass
class MoEOutput:
    """Result of one MoE forward pass.

    logits: (N, K) combined output.
    routing: the router's record.
    sample_index, expert_index: (M,) the assignments in the order they were computed
        (sorted by expert); expert_logits: (M, K) each expert's own output for them.
    """

    logits: Tensor
    routing: Routing
    sample_index: Tensor
    expert_index: Tensor
    expert_logits: Tensor

    @property
    def aux(self) -> dict[str, Tensor]:
        """The router's unweighted auxiliary losses (empty in eval mode)."""
        return self.routing.aux

    def assignment_counts(self) -> Tensor:
        """(E,) samples each expert processed."""
        return self.routing.assignment_counts()

    def dropped_counts(self) -> Tensor:
        """(E,) assignments each expert's capacity dropped."""
        return self.routing.dropped_counts()


class LocalExperts:
    """Runs rows on an expert bank that holds every expert: the exchange of an MoE layer in
    one process. Under expert parallelism the layer is given its counterpart (``MoE.use_exchange``,
    from ``distributed/parallelize.py``), ``expert_parallel.ExpertParallel``, which sends the rows
    to the processes that own their experts and brings the outputs back."""

    def adopt(self, experts: MLPExperts | ModuleExperts) -> None:
        """Nothing to change: every expert stays in this process."""

    def run_sorted(self, experts: MLPExperts | ModuleExperts, x_sorted: Tensor, counts: Tensor) -> Tensor:
        """(M, ...) rows grouped by expert, counts (E,) -> (M, K)."""
        # One host sync for the slice sizes; everything else stays on the device.
        return experts.forward_sorted(x_sorted, counts.tolist())

    def run_all(self, experts: MLPExperts | ModuleExperts, x: Tensor) -> Tensor:
        """(N, ...) -> (E, N, K): every expert on every row."""
        return experts.forward_all(x)


LOCAL_EXPERTS = LocalExperts()


class MoE(nn.Module):
    """A router and a bank of experts. ``combine="logits"`` mixes expert outputs,
    y = sum_i w_i E_i(x) (Shazeer 2017, Switch 2021); ``combine="probs"`` mixes expert
    class distributions, p(y|x) = sum_i w_i softmax(E_i(x)) (Jacobs et al. 1991), and
    returns log p as logits."""

    def __init__(self, router: nn.Module, experts: MLPExperts | ModuleExperts, combine: str = "logits",
                 shared: MLPExperts | ModuleExperts | None = None):
        super().__init__()
        self.router = router
        self.experts = experts
        self.combine = combine
        # Shared experts (DeepSeekMoE) run on every row, outside the routing; their outputs
        # are added to the routed mixture.
        self.shared = shared
        self.exchange = LOCAL_EXPERTS

    def use_exchange(self, exchange) -> None:
        """Run the experts through ``exchange`` (a LocalExperts, or expert_parallel.ExpertParallel,
        which keeps this process's share of the bank and sends rows to the others)."""
        exchange.adopt(self.experts)
        self.exchange = exchange

    def all_expert_outputs(self, x: Tensor) -> Tensor:
        """(N, ...) -> (E, N, K): every expert of the layer on every row."""
        return self.exchange.run_all(self.experts, x)

    def forward(self, x: Tensor, router_input: Tensor | None = None) -> MoEOutput:
        """x (N, ...) rows for the experts; ``router_input`` (N, D) what the router sees, the
        flattened rows by default."""
        routing = self.router(x.flatten(1) if router_input is None else router_input)
        output = self._dense(x, routing) if routing.is_dense else self._sparse(x, routing)
        if self.shared is not None:
            output.logits = output.logits + self.shared.forward_all(x).sum(dim=0)   # (N, K)
        return output

    def _dense(self, x: Tensor, routing: Routing) -> MoEOutput:
        expert_out = self.all_expert_outputs(x)                                # (E, N, K)
        num_experts, num_samples, num_classes = expert_out.shape
        weights = routing.weights.to(expert_out.dtype)                          # (N, E)
        if self.combine == "probs":
            mixed = torch.einsum("ne,enk->nk", weights, expert_out.softmax(dim=-1))
            logits = torch.log(mixed.clamp_min(1e-12))
        else:
            logits = torch.einsum("ne,enk->nk", weights, expert_out)            # (N, K)
        device = x.device
        sample_index = torch.arange(num_samples, device=device).repeat(num_experts)          # (E*N,)
        expert_index = torch.arange(num_experts, device=device).repeat_interleave(num_samples)
        return MoEOutput(logits, routing, sample_index, expert_index,
                         expert_out.reshape(num_experts * num_samples, num_classes))

    def _sparse(self, x: Tensor, routing: Routing) -> MoEOutput:
        expert_index, order = torch.sort(routing.expert_index, stable=True)    # (M,), (M,)
        sample_index = routing.sample_index[order]                             # (M,)
        gate = routing.gate[order]                                             # (M,)
        x_sorted = x.index_select(0, sample_index)                             # (M, ...)
        out = self.exchange.run_sorted(self.experts, x_sorted, routing.counts)  # (M, K)
        contribution = out.softmax(dim=-1) if self.combine == "probs" else out
        mixed = out.new_zeros(x.shape[0], out.shape[1]).index_add_(             # (N, K)
            0, sample_index, contribution * gate.to(out.dtype).unsqueeze(1))
        logits = torch.log(mixed.clamp_min(1e-12)) if self.combine == "probs" else mixed
        return MoEOutput(logits, routing, sample_index, expert_index, out)
