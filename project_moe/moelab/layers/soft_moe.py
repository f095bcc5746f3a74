"""Soft MoE (Puigcerver et al. 2024) for the ViT's MoE blocks: the experts process slots,
soft mixtures of an image's tokens, so nothing is routed discretely and nothing is dropped.

Legend: B images, T tokens per image, d width, E experts, n slots per expert, S = E n slots
per image, N = B T tokens.

    logits = X Phi          (B, T, S), Phi (d, S) the learnable slot parameters
    D = softmax_t(logits)   dispatch: every slot is a convex mix of its image's tokens
    C = softmax_s(logits)   combine: every token a convex mix of its image's slot outputs
    X~ = D^T X              (B, S, d) slot inputs; expert e processes slots e n .. e n + n - 1
    Y = C E(X~)             (B, T, d)

The cost is set by the slots: every expert runs on B n rows, E n / T experts per token. The
layer's Routing record gives each token its combine mass per expert, C summed over the
expert's slots (rows sum to 1), so the per-expert logs read as for the classic soft gate.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .experts import MLPExperts
from .moe import MoEOutput
from .routers import BatchLosses, Router
from .routing import LOCAL_BATCH, Routing


class SoftMoE(nn.Module):
    def __init__(self, dim: int, experts: MLPExperts, slots_per_expert: int, tokens: int):
        super().__init__()
        self.experts = experts
        self.slots_per_expert, self.tokens = slots_per_expert, tokens
        self.slot_params = nn.Parameter(torch.randn(dim, len(experts) * slots_per_expert) / math.sqrt(dim))  # Phi
        self.batch = LOCAL_BATCH      # the auxiliary losses' batch scope (use_batch_scope)

    use_batch_scope = Router.use_batch_scope

    def slot_weights(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, d) -> dispatch (B, T, S), softmax over tokens, and combine (B, T, S), over slots."""
        logits = images @ self.slot_params.to(images.dtype)                    # (B, T, S)
        return logits.softmax(dim=1), logits.softmax(dim=2)

    def forward(self, x: Tensor) -> MoEOutput:
        num_experts, n = len(self.experts), self.slots_per_expert
        images = x.view(x.shape[0] // self.tokens, self.tokens, x.shape[1])   # (B, T, d)
        batch, dim = images.shape[0], images.shape[2]
        dispatch, combine = self.slot_weights(images)
        slot_in = dispatch.transpose(1, 2) @ images                           # (B, S, d)
        per_expert = slot_in.view(batch, num_experts, n, dim).transpose(0, 1).reshape(num_experts, batch * n, dim)
        slot_out = self.experts.forward_batched(per_expert)                   # (E, B*n, d)
        slot_out = slot_out.view(num_experts, batch, n, -1).transpose(0, 1).reshape(batch, num_experts * n, -1)
        out = (combine @ slot_out).reshape(x.shape[0], -1)                    # (N, d)
        weights = combine.view(batch, self.tokens, num_experts, n).sum(dim=-1).reshape(x.shape[0], num_experts)
        return MoEOutput(out, self._routing(weights), None, None, None)

    def _routing(self, weights: Tensor) -> Routing:
        """The record of the tokens' combine mass per expert (N, E); every expert sees every token."""
        num_experts = weights.shape[1]
        logits = weights.clamp_min(1e-12).log()
        counts = torch.full((num_experts,), weights.shape[0], device=weights.device)
        losses = None
        if self.training:   # the classic soft gate's losses, on the combine mass (all batch sums)
            top1 = lambda: torch.bincount(weights.argmax(dim=1), minlength=num_experts)   # noqa: E731
            losses = BatchLosses(self.batch, logits, weights, weights, top1, weights.sum(dim=0),
                                 lambda: weights.new_zeros(()))
        return Routing(logits, weights, weights, None, None, None, counts, weights.sum(dim=0), None, losses)
