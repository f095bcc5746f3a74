"""A graph transformer whose MoE blocks route every node (--arch graph, in progress).

Legend: B graphs, N nodes of the largest graph of the batch, F node features, d width,
M real nodes of the batch, E experts, K classes.

Each node's features are embedded (F -> d); the pre-norm blocks of the transformer room follow,
with attention restricted to each node's neighbours and itself by the adjacency mask (a graph
attention layer: a node mixes the values of the nodes it receives from, weighted by learned
query-key affinities, as GAT does with one score function). Attention was chosen over a GIN or
GCN sum because it *is* the transformer room's block, so the MoE slot, the routers, the dense
baselines of equal active FLOPs and of equal total parameters and the routing logs are the ones
the ViT and the byte models use. Every --moe-every-th block's MLP is an MoE layer routing each
real node on its own (padded slots are never routed). No position embedding: a graph's nodes have
no order, and the model is invariant to their permutation (tested). Readout: mean over the real
nodes, then a linear head.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.types import pack, unpack
from .spec import ModelSpec
from .output import ModelOutput
from .transformer import Block, TokenModel, token_model_cost


class GraphTransformer(TokenModel):
    def __init__(self, spec: ModelSpec, features: int, num_classes: int):
        super().__init__()
        self.spec, self.features = spec, features
        dim = spec.vit_dim
        self.embed = nn.Linear(features, dim)
        # tokens=1: no router of a graph may depend on a fixed number of nodes per graph.
        self.blocks = nn.ModuleList(Block(dim, spec.vit_heads, self.block_ffn(block, dim, 1))
                                    for block in range(spec.vit_depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, adjacency: Tensor | None = None) -> ModelOutput:
        """x (B, N, F), mask (B, N) real nodes, adjacency (B, N, N) with self-loops (data/graphs.py);
        or x alone, the (B, N, F + 1 + N) tensor the graph loader yields (graphs.pack)."""
        if mask is None:
            x, mask, adjacency = unpack(x, self.features)
        # A padded slot attends to itself alone, so that no attention row is empty.
        eye = torch.eye(adjacency.shape[-1], dtype=torch.bool, device=adjacency.device)
        attend = adjacency | eye                                               # (B, N, N)
        h, routings = self.run_blocks(self.embed(x), attend, mask)             # (B, N, d)
        weights = mask.unsqueeze(-1).to(h.dtype)                               # (B, N, 1)
        pooled = (self.norm(h) * weights).sum(1) / weights.sum(1).clamp_min(1)  # (B, d)
        return ModelOutput(self.head(pooled), routings, x.shape[1])



def graph_cost(model: GraphTransformer, nodes: int = 32) -> dict[str, float]:
    """Parameters, and forward FLOPs per graph of ``nodes`` nodes (a ring: the cost of attention
    and of the MLPs does not depend on the edges, only on the nodes)."""
    device = next(model.parameters()).device
    x = torch.randn(2, nodes, model.features, device=device)
    mask = torch.ones(2, nodes, dtype=torch.bool, device=device)
    ring = torch.eye(nodes, dtype=torch.bool, device=device).roll(1, dims=1)
    adjacency = (ring | ring.T).expand(2, nodes, nodes)
    return token_model_cost(model, pack(x, mask, adjacency), per=1)
