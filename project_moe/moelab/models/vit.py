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

import torch
from torch import Tensor, nn

from .spec import ModelSpec
from .output import ModelOutput
from .transformer import Block, TokenModel, mlp_width, token_model_cost


def check_vit_fits(spec: ModelSpec, in_shape: tuple[int, int, int]) -> None:
    """Raise ValueError (one line, naming the flag) when the images cannot be cut into patches.
    The settings that do not depend on the data are checked by config.validate."""
    _, height, width = in_shape
    if height % spec.vit_patch or width % spec.vit_patch:
        raise ValueError(f"--vit-patch {spec.vit_patch} does not divide the {height}x{width} images; "
                         f"choose a divisor of {math.gcd(height, width)}")


class ViTClassifier(TokenModel):
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
        return self.block_ffn(block, self.spec.vit_dim, self.grid[0] * self.grid[1])

    @staticmethod
    def mlp_width(spec: ModelSpec, moe_slot: bool, tokens: int) -> int:
        return mlp_width(spec, moe_slot, tokens)

    def forward(self, images: Tensor) -> ModelOutput:
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.position  # (B, T, d)
        x, routings = self.run_blocks(x)
        logits = self.head(self.norm(x).mean(dim=1))                           # (B, K)
        return ModelOutput(logits, routings, x.shape[1])


def vit_cost(model: ViTClassifier, in_shape: tuple[int, int, int]) -> dict[str, float]:
    """Total / active parameters and forward FLOPs per image."""
    example = torch.zeros(2, *in_shape, device=next(model.parameters()).device)
    return token_model_cost(model, example, per=1)
