"""What moves a token-choice router's choice besides its scores: expert capacity (drop
policies: Switch / GShard position order, V-MoE batch priority) and the selection bias of
loss-free balancing (Wang et al. 2024, DeepSeek-V3).

Legend: N samples (or tokens) in the batch, n of them in this process, E experts, k experts per
sample, C = ceil(capacity_factor * N * k / E) assignments an expert keeps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .routing import Routing


class CapacityAndBias:
    """Token choice after the scores, for a Router: the k experts of largest probability (plus
    the selection bias), and the assignments that fit each expert's capacity. Needs the router's
    ``num_experts``, ``capacity_factor``, ``drop_policy``, ``batch`` and ``_record``."""

    def biased_topk(self, scores: Tensor, k: int, values: Tensor) -> tuple[Tensor, Tensor]:
        """``values`` (N, E) at the k experts of largest ``scores`` + selection bias: (N, k) each.
        The bias of loss-free balancing (Wang et al. 2024) moves the choice only. The scores are
        probabilities, bounded as DeepSeek-V3's sigmoid affinities are: a bias on unbounded
        logits loses the race against a router whose logits keep growing (seen on MNIST: top-1
        collapsed onto one expert at every rate tried)."""
        index = (scores + self.selection_bias).topk(k, dim=-1).indices            # (N, k)
        return values.gather(1, index), index

    def _token_choice(self, logits: Tensor, probs: Tensor, top_index: Tensor, top_gate: Tensor,
                      load: Tensor | None = None) -> Routing:
        """The record of a (N, k) token choice, after the capacity of each expert (if any)."""
        if self.drop_policy == "dropless":
            weights, sample_index, expert_index, gate = token_choice_assignments(top_index, top_gate, self.num_experts)
            return self._record(logits, probs, weights, sample_index, expert_index, gate, load=load)
        chosen = torch.bincount(top_index.reshape(-1), minlength=self.num_experts)   # (E,) before capacity
        keep = self._within_capacity(top_index, probs)
        weights, sample_index, expert_index, gate = token_choice_assignments(top_index, top_gate * keep,
                                                                             self.num_experts)
        kept = keep.reshape(-1)
        return self._record(logits, probs, weights, sample_index[kept], expert_index[kept], gate[kept],
                            load=load, chosen=chosen)

    def _within_capacity(self, top_index: Tensor, probs: Tensor) -> Tensor:
        """(n, k) bool: the assignments that fit their expert's capacity over the whole batch."""
        priority = probs.detach().gather(1, top_index)                                # (n, k)
        whole = self.batch.gather_rows(torch.cat([top_index.to(priority.dtype), priority], dim=1))   # (N, 2k)
        k = top_index.shape[1]
        keep = capacity_keep(whole[:, :k].long(), whole[:, k:], self.num_experts, self.capacity_factor,
                             self.drop_policy)                                       # (N, k)
        if whole.shape[0] == top_index.shape[0]:
            return keep
        offset = self.batch.row_span(top_index.shape[0])[0]
        return keep[offset:offset + top_index.shape[0]]


def capacity_keep(top_index: Tensor, priority: Tensor, num_experts: int, capacity_factor: float,
                  policy: str) -> Tensor:
    """(N, k) bool: which token-choice assignments an expert of capacity
    C = ceil(capacity_factor * N * k / E) keeps.

    Assignments are served in rounds, all first choices before any second choice (GShard,
    V-MoE); within a round, in batch order (``position``, Switch) or by decreasing router
    probability ``priority`` (``priority``, V-MoE's batch-priority routing). Each expert
    keeps its first C assignments in that order.
    """
    n, k = top_index.shape
    capacity = math.ceil(capacity_factor * n * k / num_experts)
    experts = top_index.t().reshape(-1)                                        # (k*N,) round-major
    if policy == "priority":
        rounds = torch.arange(k, device=top_index.device).repeat_interleave(n).to(priority.dtype)
        order = torch.argsort(2.0 * rounds - priority.t().reshape(-1), stable=True)   # probabilities are in [0, 1]
    else:
        order = torch.arange(k * n, device=top_index.device)
    served = experts[order]                                                    # (k*N,) in serving order
    by_expert = torch.argsort(served, stable=True)                             # grouped by expert, order kept
    counts = torch.bincount(served, minlength=num_experts)
    starts = counts.cumsum(0) - counts                                         # (E,)
    rank = torch.empty_like(by_expert)
    rank[by_expert] = torch.arange(k * n, device=top_index.device) - starts[served[by_expert]]
    keep = torch.empty(k * n, dtype=torch.bool, device=top_index.device)
    keep[order] = rank < capacity
    return keep.view(k, n).t()                                                 # (N, k)


def token_choice_assignments(top_index: Tensor, top_gate: Tensor, num_experts: int):
    """Flatten a (N, k) choice into assignments and a dense (N, E) weight matrix.

    Returns weights (N, E), sample_index (N*k,), expert_index (N*k,), gate (N*k,).
    """
    num_samples, k = top_index.shape
    sample_index = torch.arange(num_samples, device=top_index.device)                      # (N,)
    if k > 1:
        sample_index = sample_index.unsqueeze(1).expand(num_samples, k).reshape(-1)        # (N*k,)
    expert_index = top_index.reshape(-1)                                                   # (N*k,)
    gate = top_gate.reshape(-1)                                                            # (N*k,)
    weights = top_gate.new_zeros(num_samples, num_experts).scatter(1, top_index, top_gate)  # (N, E)
    return weights, sample_index, expert_index, gate


def selection_bias(layer: nn.Module) -> list[float]:
    """Each expert's loss-free balancing bias in a router, or in an MoE layer's router (NaN where
    there is none), for the logs."""
    router = getattr(layer, "router", layer)
    if getattr(router, "bias_rate", 0):
        return router.selection_bias.tolist()
    return [float("nan")] * (router.num_experts if isinstance(router, CapacityAndBias) else len(layer.experts))


def update_selection_bias(router: nn.Module, chosen: Tensor) -> None:
    """Loss-free balancing (Wang et al. 2024): after a step, b_e += u * sign(mean load - load_e),
    with load_e the assignments the router chose for expert e in the step's (whole) batch."""
    load = chosen.to(router.selection_bias.dtype)                              # (E,)
    router.selection_bias += router.bias_rate * torch.sign(load.mean() - load)
