"""The transformer room: multi-head self-attention (bidirectional or causal), the pre-norm
block, the MoE slot a block's MLP may become, and what every model of tokens shares (its MoE
blocks and routers, the width of its plain MLPs). The ViT and the byte-level text
models build on it.

Legend: B sequences (images, texts), T tokens each, d width, N = B*T tokens, E experts,
L MoE blocks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.experts import MLPExperts, mlp
from ..layers.moe import MoE
from ..layers.routing import Routing
from ..layers.soft_moe import SoftMoE
from .classifier import count_params
from .cost import forward_flops
from .spec import ModelSpec, spec_router


class Attention(nn.Module):
    """Multi-head self-attention over the T tokens of each sequence; ``causal``: token t sees
    tokens 0..t only (a language model)."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``key_mask``: (B, T) bool, the tokens that may be attended to (padding excluded), or
        (B, T, T) bool, entry [b, i, j] whether token i may attend to token j (a graph's edges)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                   # each (B, h, T, d/h)
        mask = None if key_mask is None else \
            key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]   # (B, 1, 1 or T, T)
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)  # (B, h, T, d/h)
        return self.out(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block; ``ffn`` is an MLP or an MoE layer over tokens."""

    def __init__(self, dim: int, heads: int, ffn: nn.Module, causal: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, causal)
        self.ffn = ffn

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, (MoE, SoftMoE))

    def forward(self, x: Tensor, key_mask: Tensor | None = None,
                token_mask: Tensor | None = None) -> tuple[Tensor, Routing | None]:
        """``token_mask``: (B, T) bool, the real tokens; the MoE layer then routes those alone
        (a padded graph node takes no expert's capacity and no share of the balancing losses)."""
        x = x + self.attention(self.norm1(x), key_mask)                        # (B, T, d)
        h = self.norm2(x)
        if not self.is_moe:
            return x + self.ffn(h), None
        if token_mask is not None:
            out = self.ffn(h[token_mask])                                      # (M, d): real tokens, one by one
            return x + torch.zeros_like(x).index_put((token_mask,), out.logits), out.routing
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


class TokenModel(nn.Module):
    """What the models of tokens share: ``self.blocks`` of Block, every --moe-every-th an MoE
    block with --model moe, the others plain MLPs of the MoE layer's active width."""

    routes_tokens = True   # its MoE blocks route tokens (the trainer logs their tables per layer)

    spec: ModelSpec

    def block_ffn(self, block: int, dim: int, tokens: int) -> nn.Module:
        spec = self.spec
        is_moe_slot = (block + 1) % spec.moe_every == 0
        if spec.model == "moe" and is_moe_slot:
            return moe_slot(spec, dim, tokens)
        return mlp(dim, mlp_width(spec, is_moe_slot, tokens), dim, spec.expert_depth, spec.dropout)

    @property
    def moe_blocks(self) -> list[int]:
        return [i for i, block in enumerate(self.blocks) if block.is_moe]

    def routers(self) -> list[nn.Module]:
        """The router of each MoE block, in the order of the output's routings (a Soft MoE layer
        routes by itself: its slot parameters are its router)."""
        return [getattr(self.blocks[index].ffn, "router", self.blocks[index].ffn) for index in self.moe_blocks]

    def run_blocks(self, x: Tensor, key_mask: Tensor | None = None,
                   token_mask: Tensor | None = None) -> tuple[Tensor, list[Routing]]:
        routings = []
        for block in self.blocks:
            x, routing = block(x, key_mask, token_mask)
            if routing is not None:
                routings.append(routing)
        return x, routings


def mlp_width(spec: ModelSpec, moe_slot: bool, tokens: int) -> int:
    """Hidden width of a plain MLP block. Every plain block has the MoE layer's active width
    (expert_hidden x experts per token, shared experts included), so that MoE and dense models
    differ only in the MoE slots; there the dense model's MLP has that same width (``--dense-match
    active``) or expert_hidden x (E + shared experts), the MoE layer's parameters
    (``--dense-match params``)."""
    if moe_slot and spec.model == "dense" and spec.dense_match == "params":
        return spec.expert_hidden * (spec.experts + spec.shared_experts)
    return max(1, round(spec.expert_hidden * (experts_per_token(spec, tokens) + spec.shared_experts)))


def experts_per_token(spec: ModelSpec, tokens: int) -> float:
    """Experts' work per token: k for top-k; E n / T under Soft MoE (E n slots per sequence of T tokens)."""
    if spec.gating == "soft-slots":
        return spec.experts * spec.slots_per_expert / tokens
    return spec.experts_per_sample(spec.experts)


def token_model_cost(model: TokenModel, example: Tensor, per: int) -> dict[str, float]:
    """Total / active parameters and forward FLOPs per sample of ``example`` (a batch of 2), or
    per token when ``per`` is T (FLOPs as executed: the sparse dispatch computes only the
    selected experts)."""
    spec = model.spec
    total = count_params(model)
    inactive = 0.0
    for index in model.moe_blocks:
        experts = model.blocks[index].ffn.experts
        used = len(experts) if spec.gating == "soft-slots" else \
            spec.experts_per_sample(spec.experts)
        inactive += (len(experts) - used) * experts.params_per_expert()
    return {"params_total": total, "params_active": total - inactive,
            "flops_per_sample": forward_flops(model, example) / (example.shape[0] * per)}
