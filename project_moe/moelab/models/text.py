"""Byte-level transformers (--arch gpt): a causal language model and a text classifier.

Legend: B sequences, T bytes each (--context), d width (--vit-dim), V = 256 byte values,
N = B*T tokens, K classes, L MoE blocks.

Bytes are embedded (V x d), a learned position embedding is added, and the pre-norm blocks of
the transformer room follow, every --moe-every-th one an MoE layer routing each byte's token on
its own (Switch, GLaM, Mixtral route tokens the same way). The language model is causal (token
t attends to tokens 0..t) and predicts byte t+1 from the final norm through the transposed
embedding (tied output head, as GPT-2); its logits are one row per token, (N, V), so that a
"sample" of the training loop is one predicted byte. The classifier reads the same blocks
without the causal mask, padding masked out of attention and of the mean over tokens, then a
linear head.

Routers whose choice for a token depends on other tokens of its sequence would let a causal
model see the future: config.validate refuses them for the language model (LM_REFUSED).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.types import PAD, VOCAB
from .spec import ModelSpec
from .output import ModelOutput
from .transformer import Block, TokenModel, token_model_cost

# What a causal language model cannot use, and why (config.validate says it).
LM_REFUSED = {
    "expert-choice": "each expert picks its tokens among all tokens of the batch, so a byte's routing "
                     "depends on later bytes",
    "soft-slots": "every slot mixes all tokens of a sequence, so a byte's output depends on later bytes",
}


class ByteTransformer(TokenModel):
    def __init__(self, spec: ModelSpec, context: int, num_classes: int, causal: bool):
        super().__init__()
        self.spec, self.context, self.causal = spec, context, causal
        dim = spec.vit_dim
        self.embed = nn.Embedding(VOCAB, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, spec.vit_heads, self.block_ffn(block, dim, context), causal)
                                    for block in range(spec.vit_depth))
        self.norm = nn.LayerNorm(dim)
        self.head = None if causal else nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> ModelOutput:
        batch, length = tokens.shape                                           # (B, T) int64
        x = self.embed(tokens) + self.position[:, :length]                     # (B, T, d)
        # (B, T) real bytes; the first position always counts, so that an empty text attends somewhere.
        keep = None if self.causal else (tokens != PAD) | (torch.arange(length, device=tokens.device) == 0)
        x, routings = self.run_blocks(x, keep)
        h = self.norm(x)
        if self.causal:
            logits = (h @ self.embed.weight.t()).reshape(batch * length, VOCAB)  # (N, V), tied head
        else:
            weights = keep.unsqueeze(-1).to(h.dtype)                           # (B, T, 1)
            pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1)        # (B, d)
            logits = self.head(pooled)                                         # (B, K)
        return ModelOutput(logits, routings, length)


def text_cost(model: ByteTransformer) -> dict[str, float]:
    """Parameters, and forward FLOPs per token (language model) or per text (classifier)."""
    device = next(model.parameters()).device
    example = torch.randint(1, VOCAB, (2, model.context), device=device)
    return token_model_cost(model, example, per=model.context if model.causal else 1)
