"""Routing statistics as pure tensor functions (no state, no I/O, no .item()).

Legend: N samples, E experts, K classes.

"Routed" means an expert computed the sample with a non-zero combine weight: k experts
per sample for top-k routers, a batch-dependent number for expert-choice, all E for
soft routing (whose informative quantity is then the gate mass and the top-1 expert).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers.aux_losses import cv_squared, entropy


def routed_mask(weights: Tensor) -> Tensor:
    """(N, E) bool: which experts processed each sample."""
    return weights != 0


def top1_expert(weights: Tensor) -> Tensor:
    """(N,) the expert with the largest combine weight."""
    return weights.argmax(dim=1)


def expert_counts(weights: Tensor) -> Tensor:
    """(E,) number of samples each expert processed."""
    return routed_mask(weights).sum(dim=0)


def load_cv(counts: Tensor) -> Tensor:
    """Coefficient of variation of per-expert load along the last dim, (..., E) -> (...):
    0 = perfectly balanced."""
    return cv_squared(counts.float()).sqrt()


def dropped_share(routed: Tensor, dropped: Tensor) -> Tensor:
    """Share of the assignments the routers chose that expert capacities dropped: dropped /
    (routed + dropped) over all experts (and MoE blocks); 0 when nothing was dropped."""
    chosen = routed.sum() + dropped.sum()
    return dropped.sum() / chosen.clamp_min(1)


def gate_entropy(weights: Tensor) -> Tensor:
    """(N,) entropy (nats) of each sample's combine weights, renormalised per row: 0 for one
    expert, log E for a uniform gate."""
    mass = weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return entropy(weights / mass)


def mean_gate_entropy(weights: Tensor) -> Tensor:
    """Mean entropy (nats) of the per-sample combine weights, renormalised per row."""
    return gate_entropy(weights).mean()


def class_expert_matrix(weights: Tensor, labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Per (expert, class): samples routed, total gate mass, samples whose top-1 expert it is.

    Returns three (E, K) tensors: ``count``, ``gate_mass``, ``top1``.
    """
    onehot = F.one_hot(labels, num_classes).to(weights.dtype)                   # (N, K)
    top1 = F.one_hot(top1_expert(weights), weights.shape[1]).to(weights.dtype)  # (N, E)
    return {
        "count": routed_mask(weights).to(weights.dtype).t() @ onehot,          # (E, K)
        "gate_mass": weights.t() @ onehot,                                     # (E, K)
        "top1": top1.t() @ onehot,                                             # (E, K)
    }


def per_expert_sums(expert_logits: Tensor, labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Sums of each expert's own cross-entropy and correct predictions.

    expert_logits: (E, N, K) every expert on every sample; labels: (N,); mask: (N, E)
    selects which (sample, expert) pairs count. Returns (E,) ``loss`` and ``correct`` sums
    and ``n`` counts, so that several batches can be added before dividing.
    """
    num_experts, num_samples, num_classes = expert_logits.shape
    target = labels.repeat(num_experts)                                         # (E*N,)
    loss = F.cross_entropy(expert_logits.reshape(-1, num_classes), target, reduction="none")
    loss = loss.view(num_experts, num_samples)                                 # (E, N)
    correct = (expert_logits.argmax(dim=-1) == labels).to(loss.dtype)          # (E, N)
    weight = mask.t().to(loss.dtype)                                           # (E, N)
    return {"loss": (loss * weight).sum(dim=1), "correct": (correct * weight).sum(dim=1),
            "n": weight.sum(dim=1)}


def mutual_information(joint_counts: Tensor) -> Tensor:
    """I(expert; class) in nats from an (E, K) table of co-occurrence counts."""
    joint = joint_counts / joint_counts.sum().clamp_min(1e-12)
    outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)    # (E, K)
    ratio = torch.where(joint > 0, joint / outer.clamp_min(1e-12), torch.ones_like(joint))
    return (joint * torch.log(ratio)).sum()


def majority_share(expert_ids: Tensor, num_experts: int) -> Tensor:
    """(B, T) top-1 expert of each of T patches of B images -> (B,) share of each image's
    patches that go to its most frequent expert: 1/T.. when patches are spread, 1 when the
    whole image goes to one expert."""
    counts = F.one_hot(expert_ids, num_experts).sum(dim=1)                     # (B, E)
    return counts.max(dim=1).values.float() / expert_ids.shape[1]
