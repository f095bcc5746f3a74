"""The transformer room: multi-head self-attention, the pre-norm block, and the MoE slot a
block's MLP may become. The ViT builds on it; any model of tokens can.

Legend: B sequences (images), T tokens each, d width, N = B*T tokens, E experts.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.experts import MLPExperts
from ..layers.moe import MoE
from ..layers.routing import Routing
from ..layers.soft_moe import SoftMoE
from .spec import ModelSpec, spec_router


class Attention(nn.Module):
    """Multi-head self-attention over the T tokens of each image."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                   # each (B, h, T, d/h)
        mixed = F.scaled_dot_product_attention(q, k, v)                        # (B, h, T, d/h)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block; ``ffn`` is an MLP or an MoE layer over tokens."""

    def __init__(self, dim: int, heads: int, ffn: nn.Module):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.ffn = ffn

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, (MoE, SoftMoE))

    def forward(self, x: Tensor) -> tuple[Tensor, Routing | None]:
        x = x + self.attention(self.norm1(x))                                  # (B, T, d)
        h = self.norm2(x)
        if not self.is_moe:
            return x + self.ffn(h), None
        batch, tokens, dim = h.shape
        out = self.ffn(h.reshape(batch * tokens, dim))                         # tokens routed one by one
        return x + out.logits.view(batch, tokens, dim), out.routing


def moe_slot(spec: ModelSpec, dim: int, tokens: int) -> nn.Module:
    """The MoE layer of a block: E expert MLPs d -> expert_hidden -> d over the (N, d) token matrix,
    routed token by token (or Soft MoE over slots), with the spec's shared experts."""
    experts = MLPExperts(spec.experts, dim, spec.expert_hidden, dim, spec.expert_depth, spec.dropout,
                         spec.expert_dispatch)
    if spec.gating == "soft-slots":
        return SoftMoE(dim, experts, spec.slots_per_expert, tokens)
    router = spec_router(spec, dim, tokens=tokens)
    shared = MLPExperts(spec.shared_experts, dim, spec.expert_hidden, dim, spec.expert_depth, spec.dropout) \
        if spec.shared_experts else None
    return MoE(router, experts, combine="logits", shared=shared)
