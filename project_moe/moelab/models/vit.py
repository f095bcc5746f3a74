"""A small Vision Transformer whose MLP blocks can be MoE layers that route patch tokens.

Legend: B images, T patch tokens per image, d width, N = B*T tokens, E experts, K classes,
L MoE blocks.

Images are cut into p x p patches (a strided convolution), a learned position embedding is
added, and pre-norm blocks follow: x + Attention(LN(x)), then x + MLP(LN(x)). With
``--model moe`` every ``moe_every``-th block (blocks moe_every, 2*moe_every, ...) replaces
its MLP by an MoE layer over E expert MLPs d -> expert_hidden -> d (V-MoE, Riquelme et al.
2021). The router sees one token at a time, so each patch of an image may go to a different
expert; every router of routers.py works unchanged on the (N, d) token matrix, and
expert-choice lets each expert pick its C tokens among all N tokens of the batch. The
classifier is LN -> mean over tokens -> linear head.

Plain MLP blocks have the MoE layer's active width, expert_hidden * (experts per token). The
dense ViT (``--model dense``) replaces each MoE layer by one MLP of that width (``--dense-match
active``: the same active compute) or of width expert_hidden * E (``--dense-match params``:
the same parameters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers.experts import mlp
from ..layers.routers import experts_per_sample
from ..layers.routing import Routing
from .classifier import count_params
from .cost import forward_flops
from .spec import ModelSpec
from .transformer import Block, moe_slot


def check_vit_fits(spec: ModelSpec, in_shape: tuple[int, int, int]) -> None:
    """Raise ValueError (one line, naming the flag) when the images cannot be cut into patches.
    The settings that do not depend on the data are checked by config.validate."""
    _, height, width = in_shape
    if height % spec.vit_patch or width % spec.vit_patch:
        raise ValueError(f"--vit-patch {spec.vit_patch} does not divide the {height}x{width} images; "
                         f"choose a divisor of {math.gcd(height, width)}")


@dataclass
class ViTOutput:
    """logits: (B, K); routings: one token-level Routing (N = B*T rows) per MoE block, in
    block order; tokens: T, patches per image (token n of the batch is patch n % T of
    image n // T)."""

    logits: Tensor
    routings: list[Routing]
    tokens: int

    @property
    def aux(self) -> dict[str, Tensor]:
        """Each auxiliary loss averaged over the MoE blocks (empty for a dense ViT or in eval)."""
        if not self.routings or not self.routings[0].aux:
            return {}
        return {name: torch.stack([r.aux[name] for r in self.routings]).mean() for name in self.routings[0].aux}

    def assignment_counts(self) -> Tensor:
        """(L, E) tokens each expert of each MoE block processed."""
        return torch.stack([r.assignment_counts() for r in self.routings])

    def dropped_counts(self) -> Tensor:
        """(L, E) token assignments each expert's capacity dropped, per MoE block."""
        return torch.stack([r.dropped_counts() for r in self.routings])


class ViTClassifier(nn.Module):
    def __init__(self, spec: ModelSpec, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        check_vit_fits(spec, in_shape)
        self.spec = spec
        channels, height, width = in_shape
        dim, patch = spec.vit_dim, spec.vit_patch
        self.grid = (height // patch, width // patch)
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.position = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, spec.vit_heads, self._ffn(block)) for block in range(spec.vit_depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def _ffn(self, block: int) -> nn.Module:
        spec, dim = self.spec, self.spec.vit_dim
        is_moe_slot = (block + 1) % spec.moe_every == 0
        if spec.model == "moe" and is_moe_slot:
            return moe_slot(spec, dim, self.grid[0] * self.grid[1])
        return mlp(dim, self.mlp_width(spec, is_moe_slot, self.grid[0] * self.grid[1]), dim, spec.expert_depth,
                   spec.dropout)

    @staticmethod
    def mlp_width(spec: ModelSpec, moe_slot: bool, tokens: int) -> int:
        """Hidden width of a plain MLP block. Every plain block has the MoE layer's active width
        (expert_hidden x experts per token, shared experts included), so that MoE and dense ViT
        differ only in the MoE slots; there the dense ViT's MLP has that same width (``--dense-match
        active``) or expert_hidden x (E + shared experts), the MoE layer's parameters
        (``--dense-match params``)."""
        if moe_slot and spec.model == "dense" and spec.dense_match == "params":
            return spec.expert_hidden * (spec.experts + spec.shared_experts)
        return max(1, round(spec.expert_hidden * (experts_per_token(spec, tokens) + spec.shared_experts)))

    @property
    def moe_blocks(self) -> list[int]:
        return [i for i, block in enumerate(self.blocks) if block.is_moe]

    def forward(self, images: Tensor) -> ViTOutput:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.position  # (B, T, d)
        routings = []
        for block in self.blocks:
            x, routing = block(x)
            if routing is not None:
                routings.append(routing)
        logits = self.head(self.norm(x).mean(dim=1))                           # (B, K)
        return ViTOutput(logits, routings, x.shape[1])


def experts_per_token(spec: ModelSpec, tokens: int) -> float:
    """Experts' work per token: k for top-k; E n / T under Soft MoE (E n slots per image of T tokens)."""
    if spec.gating == "soft-slots":
        return spec.experts * spec.slots_per_expert / tokens
    return experts_per_sample(spec.gating, spec.experts, spec.top_k, spec.capacity_factor)


def vit_cost(model: ViTClassifier, in_shape: tuple[int, int, int]) -> dict[str, float]:
    """Total / active parameters and forward FLOPs per image (FLOPs as executed: the sparse
    dispatch computes only the selected experts)."""
    spec = model.spec
    total = count_params(model)
    inactive = 0.0
    for index in model.moe_blocks:
        experts = model.blocks[index].ffn.experts
        used = len(experts) if spec.gating == "soft-slots" else \
            experts_per_sample(spec.gating, spec.experts, spec.top_k, spec.capacity_factor)
        inactive += (len(experts) - used) * experts.params_per_expert()
    example = torch.zeros(2, *in_shape, device=next(model.parameters()).device)
    return {"params_total": total, "params_active": total - inactive,
            "flops_per_sample": forward_flops(model, example) / example.shape[0]}
