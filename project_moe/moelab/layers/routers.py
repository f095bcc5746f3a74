"""Routers (gating networks): map a batch to a distribution over experts and a dispatch plan.

Legend: N samples in the batch, D router input features, E experts, k experts per sample,
C samples per expert (expert-choice capacity), M assignments = (sample, expert) pairs.

Every router returns one :class:`Routing` record. Token-choice routers (``hard``,
``topk``, ``noisy-topk``, ``gumbel``) pick k experts per sample and their combine weights
sum to 1 per sample. ``expert-choice`` lets each expert pick C samples of the batch, so a
sample may get 0..E experts and its routing depends on the rest of the batch. ``soft``
evaluates every expert on every sample (``sample_index is None``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import aux_losses
from .capacity import CapacityAndBias
from .router_config import RouterConfig
from .routing import GATING_CHOICES, LOCAL_BATCH, Routing
from .scores import ExpertScores


class Router(CapacityAndBias, ExpertScores):
    """Gate g(x) = softmax(s(x)) over expert scores s(x) (scores.py); subclasses decide which
    experts run. Token choice goes through the capacity and selection bias of capacity.py;
    ``_record`` assembles the Routing record and the auxiliary losses of the batch.

    Every router reads its :class:`RouterConfig` whole (``self.config``); ``tokens``: the tokens
    per image of the attention scores."""

    def __init__(self, in_features: int, num_experts: int, config: RouterConfig, tokens: int = 1):
        super().__init__(in_features, num_experts, config.router_score, config.router_dim, config.router_centroids,
                         tokens)
        self.config = config
        self.capacity_factor = config.capacity_factor
        # Capacities and the selection bias act on token choice only: the other routers ignore them.
        self.drop_policy = config.drop_policy if config.token_choice else "dropless"
        self.bias_rate = config.bias_balance_rate if config.token_choice else 0.0
        if self.bias_rate:
            # Loss-free balancing: decides which experts a token picks, never how they are weighted;
            # a buffer (saved with the model), moved by update_selection_bias, not by the optimiser.
            self.register_buffer("selection_bias", torch.zeros(num_experts))
        self.batch = LOCAL_BATCH

    def use_batch_scope(self, scope) -> None:
        """Compute the batch statistics (auxiliary losses, capacities, noise) in ``scope``: a batch
        split over processes (distributed/parallelize.py) instead of LOCAL_BATCH."""
        self.batch = scope

    def forward(self, x: Tensor) -> Routing:
        raise NotImplementedError

    def router_logits(self, x: Tensor) -> Tensor:
        """The expert scores of ``x`` (N, D) -> (N, E); in training with --router-jitter eps, of
        x * U(1 - eps, 1 + eps) elementwise (Fedus et al. 2021: noise on the router's input)."""
        if self.training and self.config.router_jitter:
            eps = self.config.router_jitter
            x = x * (1.0 - eps + 2.0 * eps * self.batch_noise(x, torch.rand))
        return super().router_logits(x)

    def batch_noise(self, like: Tensor, draw) -> Tensor:
        """``draw(shape)`` noise for these (n, ...) rows, cut from one draw for the whole batch,
        so that a batch split over processes gets the noise one process would draw."""
        offset, total = self.batch.row_span(like.shape[0])
        if total == like.shape[0]:
            return draw(like.shape, dtype=like.dtype, device=like.device)
        return draw((total, *like.shape[1:]), dtype=like.dtype, device=like.device)[offset:offset + like.shape[0]]

    def _record(self, logits, probs, weights, sample_index=None, expert_index=None,
                gate=None, load=None, chosen=None, counts=None) -> Routing:
        """Assemble the record and every auxiliary loss (all cheap, O(N E)). The per-expert
        counts are computed once here: the dispatch, the logs and (for sparse routing) the
        Switch loss share them. ``chosen``: (E,) assignments the router chose before a
        capacity dropped some (the Switch loss and the load measure the router's choice).
        ``counts``: the (E,) assignments per expert, where the caller has them already."""
        dropped = None
        if sample_index is None:
            counts = torch.full((self.num_experts,), weights.shape[0], device=weights.device)
            load = weights.sum(dim=0) if load is None else load
        else:
            if counts is None:
                counts = torch.bincount(expert_index, minlength=self.num_experts)    # (E,)
            if chosen is not None:
                dropped = chosen - counts
            chosen = (counts if chosen is None else chosen).to(probs.dtype)           # the Switch loss's f, unnormalised
            if load is None:
                load = chosen
        losses = None
        if self.training:   # the losses only matter for optimisation
            # Dense routing sends everything everywhere; for the Switch loss the dispatch
            # fraction f_i is taken from each sample's top-1 expert.
            top1 = (lambda: torch.bincount(probs.argmax(dim=1), minlength=self.num_experts)) \
                if sample_index is None else (lambda: chosen)
            losses = BatchLosses(self.batch, logits, probs, weights, top1, load,
                                 lambda: self.batch.batch_independent(self.centroid_overlap()))
        return Routing(logits, probs, weights, sample_index, expert_index, gate, counts, load, dropped, losses)


class BatchLosses:
    """The auxiliary losses of a routing layer's whole batch (all processes' shards when it is
    split: ``scope``, the layer's batch scope), each computed when first asked for and then kept.
    ``top1_counts()``: the (E,) assignments of the Switch loss, and ``centroid()`` the centroid
    loss, each computed only when asked for. A call's batch losses come from one set of batch
    sums (one collective when the batch is split); every process asks for the same names in the
    same order, as the training step and its logs do."""

    def __init__(self, scope, logits: Tensor, probs: Tensor, weights: Tensor, top1_counts, load: Tensor, centroid):
        self.scope, self.logits, self.probs, self.weights, self.load = scope, logits, probs, weights, load
        self.top1_counts, self.centroid = top1_counts, centroid
        self.computed: dict[str, Tensor] = {}

    def __call__(self, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        asked = aux_losses.AUX_NAMES if names is None else names
        missing = tuple(name for name in asked if name not in self.computed)
        batch = aux_losses.wanted(missing)
        if batch:
            counts = self.top1_counts() if "balance" in batch else None
            sums = self.scope.global_sums(aux_losses.routing_sums(self.logits, self.probs, self.weights, counts,
                                                                  self.load, batch))
            self.computed.update(aux_losses.losses_from_sums(sums, batch))
        if "centroid" in missing:
            self.computed["centroid"] = self.centroid()
        return {name: self.computed[name] for name in aux_losses.AUX_NAMES if name in asked}


class SoftRouter(Router):
    """Jacobs et al. 1991: every expert runs, y = sum_i g_i(x) E_i(x)."""

    def forward(self, x: Tensor) -> Routing:
        logits = self.router_logits(x)
        probs = logits.softmax(dim=-1)
        return self._record(logits, probs, probs)


class TopKRouter(Router):
    """Top-k token choice with the k selected probabilities renormalised to sum to 1
    (as in Mixtral / GShard top-2). Gradient reaches the router through the weights."""

    def __init__(self, in_features: int, num_experts: int, config: RouterConfig, tokens: int = 1):
        super().__init__(in_features, num_experts, config, tokens)
        self.k = config.top_k

    def select(self, logits: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        if self.bias_rate:
            top_prob, top_index = self.biased_topk(probs, self.k, probs)
        else:
            top_prob, top_index = probs.topk(self.k, dim=-1)          # (N, k)
        return top_index, top_prob / top_prob.sum(dim=-1, keepdim=True)

    def forward(self, x: Tensor) -> Routing:
        logits = self.router_logits(x)
        probs = logits.softmax(dim=-1)
        top_index, top_gate = self.select(logits, probs)
        return self._token_choice(logits, probs, top_index, top_gate)


class HardRouter(TopKRouter):
    """Top-1 (Switch Transformer, Fedus et al. 2021).

    ``grad="switch"``: the chosen expert's output is scaled by its probability p_i(x),
    so the router learns through that scale (forward weight p_i, not 1).
    ``grad="ste"``: straight-through one-hot, forward weight exactly 1, backward as if
    the weight were p_i(x).
    """

    def __init__(self, in_features: int, num_experts: int, config: RouterConfig, tokens: int = 1):
        super().__init__(in_features, num_experts, config, tokens)
        self.k = 1
        self.grad = config.hard_grad

    def select(self, logits: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        if self.bias_rate:
            top_prob, top_index = self.biased_topk(probs, 1, probs)
        else:
            top_prob, top_index = probs.max(dim=-1, keepdim=True)     # (N, 1)
        if self.grad == "ste":
            top_prob = top_prob - top_prob.detach() + 1.0
        return top_index, top_prob


class NoisyTopKRouter(Router):
    """Noisy top-k gating (Shazeer et al. 2017, eq. 3-5, 8-10).

        H(x)_i = (x W_g)_i + eps * softplus((x W_noise)_i),  eps ~ N(0, 1) (training only)
        G(x)   = softmax(KeepTopK(H(x), k))

    The smooth load estimate P(x, i) = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / sigma_i)
    is the probability that expert i would still be selected if only its own noise were
    re-drawn; summed over the batch it is the differentiable "load" of the CV^2 loss.
    """

    min_noise = 1e-2   # the smallest noise deviation: the load estimate divides by it

    def __init__(self, in_features: int, num_experts: int, config: RouterConfig, tokens: int = 1):
        super().__init__(in_features, num_experts, config, tokens)
        self.k = config.top_k
        self.noise_proj = nn.Linear(in_features, num_experts, bias=False)
        nn.init.zeros_(self.noise_proj.weight)  # start with unit-scale softplus(0) noise

    def forward(self, x: Tensor) -> Routing:
        clean = self.router_logits(x)                                            # (N, E)
        load = None
        noisy = clean
        if self.training:
            noise_std = F.softplus(F.linear(x.float(), self.noise_proj.weight.float())) + self.min_noise
            noisy = clean + self.batch_noise(clean, torch.randn) * noise_std
        top_logit, top_index = noisy.topk(min(self.k + 1, self.num_experts), dim=-1)  # (N, k+1)
        chosen_logit = top_logit[:, :self.k]
        if self.training:
            load = self._smooth_load(clean, noisy, noise_std, top_logit)       # of the unbiased choice
        top_index = top_index[:, :self.k]
        if self.bias_rate:   # loss-free balancing: choose on biased probabilities, weigh unbiased
            chosen_logit, top_index = self.biased_topk(noisy.softmax(dim=-1), self.k, noisy)
        top_gate = chosen_logit.softmax(dim=-1)                                  # (N, k)
        return self._token_choice(clean, clean.softmax(dim=-1), top_index, top_gate, load=load)

    def _smooth_load(self, clean: Tensor, noisy: Tensor, noise_std: Tensor, top_logit: Tensor) -> Tensor:
        if self.k >= self.num_experts:
            return torch.full((self.num_experts,), float(clean.shape[0]), device=clean.device)
        # An expert inside the top k must beat the (k+1)-th value to stay; one outside must beat the k-th.
        kth_if_in = top_logit[:, self.k:self.k + 1]                              # (N, 1)
        kth_if_out = top_logit[:, self.k - 1:self.k]                             # (N, 1)
        is_in = noisy >= kth_if_out                                              # (N, E)
        threshold = torch.where(is_in, kth_if_in, kth_if_out)                    # (N, E)
        normal = torch.distributions.Normal(0.0, 1.0)
        prob_in = normal.cdf((clean - threshold) / noise_std)                    # (N, E)
        return prob_in.sum(dim=0)                                                # (E,)


class GumbelTopKRouter(Router):
    """Straight-through Gumbel-softmax top-k (Jang et al. 2017; Gumbel-top-k sampling).

    Training: y = softmax((logits + g) / tau), g ~ Gumbel(0, 1); the k largest y are
    selected and the forward weight is the hard k-hot / k, while the gradient is that of y
    (straight-through). Evaluation: no noise, top-k of the logits, weights 1/k.
    """

    def __init__(self, in_features: int, num_experts: int, config: RouterConfig, tokens: int = 1):
        super().__init__(in_features, num_experts, config, tokens)
        self.k = config.top_k
        self.tau = config.tau

    def forward(self, x: Tensor) -> Routing:
        logits = self.router_logits(x)
        probs = logits.softmax(dim=-1)
        if self.training:
            gumbel = -torch.log(-torch.log(self.batch_noise(logits, torch.rand).clamp(1e-10, 1.0 - 1e-7)))
            relaxed = ((logits + gumbel) / self.tau).softmax(dim=-1)            # (N, E)
        else:
            relaxed = probs
        if self.bias_rate:
            top_relaxed, top_index = self.biased_topk(relaxed, self.k, relaxed)
        else:
            top_relaxed, top_index = relaxed.topk(self.k, dim=-1)              # (N, k)
        top_gate = top_relaxed - top_relaxed.detach() + 1.0 / self.k           # forward 1/k, grad of y
        return self._token_choice(logits, probs, top_index, top_gate)


class ExpertChoiceRouter(Router):
    """Expert-choice routing (Zhou et al. 2022).

        S = softmax(x W_g) (N, E);  each expert e keeps the C samples with the largest S[:, e],
        C = ceil(capacity_factor * N * k / E) (at most N); gate = S[n, e] for the kept pairs.

    Every expert does exactly C samples of work (perfect load balance by construction), but a
    sample may be picked by 0..E experts, so its output depends on the other samples of its
    batch. A sample picked by no expert gets zero logits (a uniform prediction).
    """

    def __init__(self, in_features: int, num_experts: int, config: RouterConfig, tokens: int = 1):
        super().__init__(in_features, num_experts, config, tokens)
        self.k = config.top_k

    def capacity(self, num_samples: int) -> int:
        return min(num_samples, math.ceil(self.capacity_factor * num_samples * self.k / self.num_experts))

    def forward(self, x: Tensor) -> Routing:
        logits = self.router_logits(x)
        probs = logits.softmax(dim=-1)                                          # (n, E)
        # Each expert picks among the samples of the whole batch (all shards of it); under
        # attention routing, the tokens with the most votes.
        affinity = logits if self.score == "attention" else probs
        scores = self.batch.gather_rows(affinity.detach())                     # (N, E)
        capacity = self.capacity(scores.shape[0])
        sample_index = scores.topk(capacity, dim=0).indices.t().reshape(-1)    # (E*C,) expert-major
        expert_index = torch.arange(self.num_experts, device=x.device).repeat_interleave(capacity)
        if scores.shape[0] != probs.shape[0]:                                   # keep this shard's picks
            offset = self.batch.row_span(probs.shape[0])[0]
            mine = (sample_index >= offset) & (sample_index < offset + probs.shape[0])
            sample_index, expert_index = sample_index[mine] - offset, expert_index[mine]
        gate = probs[sample_index, expert_index]                               # (M,)
        weights = torch.zeros_like(probs).index_put((sample_index, expert_index), gate)   # (n, E)
        return self._record(logits, probs, weights, sample_index, expert_index, gate)


ROUTERS = {"soft": SoftRouter, "hard": HardRouter, "topk": TopKRouter, "noisy-topk": NoisyTopKRouter,
           "gumbel": GumbelTopKRouter, "expert-choice": ExpertChoiceRouter}


def build_router(config: RouterConfig | str, in_features: int, num_experts: int, *, tokens: int = 1,
                 **options) -> Router:
    """The router ``config`` asks for (a RouterConfig, or what is one: the run's Config, a
    ModelSpec), reading ``in_features``-wide rows (``tokens`` per image for attention scores).
    ``config`` may also be a gating name, with RouterConfig fields as keywords:
    ``build_router("topk", 784, 8, top_k=2)``."""
    if isinstance(config, str):
        config = RouterConfig(gating=config, **options)
    elif options:
        raise TypeError(f"build_router: options {sorted(options)} go into the RouterConfig")
    if config.gating not in ROUTERS:
        raise ValueError(f"unknown gating {config.gating!r}; choose one of {', '.join(GATING_CHOICES)}")
    return ROUTERS[config.gating](in_features, num_experts, config, tokens)
