"""Expert scores s(x) of a router: linear, cosine (X-MoE) or attention votes (tokens of images).

Legend: N rows (samples or tokens), D input features, E experts, B images of T tokens, r the
width of the cosine projection or of the attention router's query and keys, m centroids per expert.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import aux_losses
from .precision import float32_region


class ExpertScores(nn.Module):
    """The scores s(x) a router's gate g(x) = softmax(s(x)) is computed from.

    ``score="linear"``: s(x) = x W_g (Shazeer 2017, Switch). ``score="cosine"`` (X-MoE, Chi
    et al. 2022): s_e(x) = max_j cos(P x, c_ej) / t, with P a projection to ``score_dim``
    dimensions, c_e1..c_em the ``centroids`` learnable embeddings of expert e and a learnable
    temperature t; scores stay in [-1/t, 1/t] whatever the scale of x, and several
    centroids let one expert own several regions of the input space.
    ``score="attention"`` (tokens of images, ``tokens`` T per image): within an image every
    token looks at the others before choosing. With a query Q(s) = x_s W_q shared by the
    experts and expert-specific keys K_e(t) = x_t W_k^e, both ``score_dim`` (r) wide,
    A_e = softmax_t(Q K_e^T / sqrt(r)) and s_e(t) = sum_s A_e[s, t], the attention token t gets
    from all tokens for expert e (the votes of an image sum to T per expert). The router has
    d r (E + 1) parameters.
    """

    def __init__(self, in_features: int, num_experts: int, score: str = "linear", score_dim: int = 16,
                 centroids: int = 1, tokens: int = 1):
        super().__init__()
        self.num_experts = num_experts
        self.score = score
        self.tokens = tokens
        if score == "linear":
            self.proj = nn.Linear(in_features, num_experts, bias=False)
        elif score == "attention":
            self.proj = nn.Linear(in_features, score_dim, bias=False)                  # the shared query W_q
            bound = 1 / math.sqrt(in_features)                                         # as nn.Linear's init
            self.keys = nn.Parameter(torch.empty(num_experts, in_features, score_dim).uniform_(-bound, bound))
        else:
            self.proj = nn.Linear(in_features, score_dim, bias=False)
            self.centroids = nn.Parameter(torch.randn(num_experts, centroids, score_dim) / math.sqrt(score_dim))
            # t starts at 0.07 (as in X-MoE) and is kept >= 0.01 so the softmax cannot saturate.
            self.log_inv_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def router_logits(self, x: Tensor) -> Tensor:
        # float32 scores and softmax even under autocast (--amp): small logit differences
        # decide the routing.
        with float32_region(x.device.type):
            return self._float32_logits(x)

    def _float32_logits(self, x: Tensor) -> Tensor:
        if self.score == "attention":
            return self.attention_votes(x.float())
        projected = F.linear(x.float(), self.proj.weight.float())              # (N, E) or (N, dim)
        if self.score == "linear":
            return projected
        tokens = F.normalize(projected, dim=-1)                                  # (N, dim)
        centroids = F.normalize(self.centroids.float(), dim=-1)                  # (E, m, dim)
        similarity = torch.einsum("nd,emd->nem", tokens, centroids)              # (N, E, m)
        return similarity.amax(dim=-1) * self.log_inv_temperature.clamp(max=math.log(100.0)).exp()

    def attention_votes(self, x: Tensor) -> Tensor:
        """(B*T, d) tokens of B images -> (B*T, E): s_e(t) = sum_s softmax_t(Q(s) K_e(t) / sqrt(r))."""
        if x.shape[0] % self.tokens:
            raise ValueError(f"attention routing needs whole images of {self.tokens} tokens, got {x.shape[0]} rows")
        images = x.view(x.shape[0] // self.tokens, self.tokens, -1)            # (B, T, d)
        query = F.linear(images, self.proj.weight.float())                     # (B, T, r)
        keys = torch.einsum("btd,edr->bert", images, self.keys.float())        # (B, E, r, T)
        scale = 1.0 / math.sqrt(query.shape[-1])
        attention = (torch.einsum("bsr,bert->best", query, keys) * scale).softmax(dim=-1)   # (B, E, S, T) over t
        return attention.sum(dim=2).transpose(1, 2).reshape(x.shape[0], self.num_experts)   # (B*T, E)

    def centroid_overlap(self) -> Tensor:
        """Mean squared cosine between distinct centroids (0 for a router without centroids)."""
        if self.score != "cosine":
            return self.proj.weight.new_zeros(())
        return aux_losses.centroid_overlap_loss(self.centroids.flatten(0, 1))
