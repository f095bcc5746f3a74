"""Auxiliary routing losses, as pure functions of the router's outputs.

Legend: N samples, E experts, k experts per sample (token choice), M assignments (sample, expert) pairs.

Every function returns an *unweighted* scalar; the training loop multiplies each by
its own coefficient (``--balance-coef``, ``--cv-coef``, ``--z-coef``, ``--entropy-coef``,
``--kl-uniform-coef``, ``--centroid-coef``). Values are chosen so that they are easy to read in logs:
the Switch loss is 1 for perfectly uniform routing and E/k when every sample goes to the same k
experts (E for top-1 collapse).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

_EPS = 1e-9
# Every router returns these, in this order in the logs (centroid: cosine routers only, else 0).
AUX_NAMES = ("balance", "cv", "z", "entropy", "kl_uniform", "centroid")


def switch_balance_loss(probs: Tensor, counts: Tensor) -> Tensor:
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4-6).

        L = E * sum_i f_i * P_i

    f_i: fraction of the M assignments dispatched to expert i (not differentiable);
    P_i: mean router probability of expert i over the N samples (differentiable).
    For top-k routing every selected (sample, expert) pair is one assignment, so M = N k and
    f_i = counts_i / (N k) <= 1/k: L = 1 for uniform routing and at most E/k, reached when every
    sample goes to the same k experts and all router probability lies on them (E at top-1).
    Hugging Face Mixtral's ``load_balancing_loss_func`` divides the counts by N instead, so its
    loss is k times this one (equal at top-1, twice at top-2): a Mixtral ``router_aux_loss_coef``
    c is ``--balance-coef`` c k here. Under expert choice every expert takes C samples, f_i = 1/E
    and L = sum_i P_i = 1 whatever the router (no gradient).

    probs: (N, E) router softmax; counts: (E,) assignments dispatched to each expert.
    """
    return switch_balance(probs.mean(dim=0), counts)


def switch_balance(mean_prob: Tensor, counts: Tensor) -> Tensor:
    """The Switch loss from its batch statistics: P_i = ``mean_prob`` (E,), counts (E,)."""
    num_experts = mean_prob.shape[0]
    counts = counts.to(mean_prob.dtype)                                            # (E,)
    # E sum_i f_i P_i with f_i = counts_i / sum(counts), in as few operations as it takes
    return num_experts * torch.dot(counts, mean_prob) / counts.sum().clamp_min(1.0)


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation var(x) / mean(x)^2 (population variance) along the
    last dimension: (..., E) -> (...).

    Shazeer et al. 2017 (sec. 4) use it on per-expert importance and load; it is 0 when
    all experts receive the same amount and grows with the imbalance.
    """
    mean = values.mean(dim=-1)
    return values.var(dim=-1, unbiased=False) / (mean * mean + _EPS)


def importance_load_loss(weights: Tensor, load: Tensor) -> Tensor:
    """Shazeer et al. 2017: L = CV(Importance)^2 + CV(Load)^2.

    Importance_i = sum over the batch of the gate values of expert i (eq. 6);
    Load_i = number of samples routed to expert i, or its smooth estimate
    sum_x P(x, i) for noisy top-k gating (eq. 8-10), which is what makes it
    differentiable. weights: (N, E) combine weights; load: (E,).
    """
    importance = weights.sum(dim=0)  # (E,)
    return cv_squared(importance) + cv_squared(load)


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): mean_x (logsumexp_i logits(x)_i)^2.

    Penalises large router logits, which keeps the float32 softmax well conditioned.
    """
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) along ``dim``; 0 log 0 is taken as 0."""
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(dim=dim)


def gate_entropy_loss(probs: Tensor) -> Tensor:
    """Mean per-sample entropy of the gate distribution, mean_x H(g(x)).

    A positive coefficient minimises it (sharper, more decisive gates);
    a negative one maximises it (smoother gates, more experts share each sample).
    """
    return entropy(probs).mean()


def kl_to_uniform_loss(probs: Tensor) -> Tensor:
    """KL(p_bar || U) = log E - H(p_bar), with p_bar the batch-mean gate distribution.

    Zero exactly when the experts are used equally on average over the batch, whatever
    each sample does, so it balances load without flattening per-sample gates. The
    argument order matters: KL(U || p_bar) would blow up on an unused expert.
    """
    return kl_uniform(probs.mean(dim=0))


def kl_uniform(mean_prob: Tensor) -> Tensor:
    """KL(p_bar || U) from the batch-mean gate distribution ``mean_prob`` (E,)."""
    return math.log(mean_prob.shape[0]) - entropy(mean_prob)


# The batch sums each loss is a function of (routing_sums, losses_from_sums).
SUMS_OF = {"balance": ("samples", "prob", "count"), "cv": ("importance", "load"), "z": ("samples", "z"),
           "entropy": ("samples", "entropy"), "kl_uniform": ("samples", "prob")}


def wanted(names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The batch losses among ``names`` (None: every one), in SUMS_OF order."""
    return tuple(name for name in SUMS_OF if names is None or name in names)


def routing_sums(logits: Tensor, probs: Tensor, weights: Tensor, counts: Tensor | None, load: Tensor,
                 names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """The batch sums that the losses ``names`` (None: all of them) are functions of.

    Sums, not means, so that the sums of several shards of a batch (one per process) give
    the losses of the whole batch. logits, probs, weights: (N, E); counts: (E,) assignments
    for the Switch loss (None when it is not asked for); load: (E,) the load of the CV^2 loss.
    Only the sums the losses need are computed: on a training step they are a good share of
    the small operations a router dispatches.
    """
    makers = {"samples": lambda: probs.new_tensor(float(probs.shape[0])),
              "prob": lambda: probs.sum(dim=0),                                          # (E,)
              "count": lambda: counts.to(probs.dtype),                                   # (E,)
              "importance": lambda: weights.sum(dim=0).to(probs.dtype),                  # (E,)
              "load": lambda: load.to(probs.dtype),                                      # (E,)
              "z": lambda: torch.logsumexp(logits.float(), dim=-1).square().sum(),
              "entropy": lambda: entropy(probs).sum()}
    needed = {key for name in wanted(names) for key in SUMS_OF[name]}
    return {key: make() for key, make in makers.items() if key in needed}


def losses_from_sums(sums: dict[str, Tensor], names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
    """The losses ``names`` (None: balance, cv, z, entropy and kl_uniform) of a batch from its
    ``routing_sums``; equal to ``switch_balance_loss``, ``importance_load_loss``,
    ``router_z_loss``, ``gate_entropy_loss`` and ``kl_to_uniform_loss`` of the same batch."""
    samples = sums["samples"].clamp_min(1.0) if "samples" in sums else None
    makers = {"balance": lambda: switch_balance(sums["prob"] / samples, sums["count"]),
              "cv": lambda: cv_squared(sums["importance"]) + cv_squared(sums["load"]),
              "z": lambda: sums["z"] / samples,
              "entropy": lambda: sums["entropy"] / samples,
              "kl_uniform": lambda: kl_uniform(sums["prob"] / samples)}
    return {name: makers[name]() for name in wanted(names)}


def centroid_overlap_loss(centroids: Tensor) -> Tensor:
    """Mean squared cosine similarity over distinct pairs of the C centroid vectors (C, dim).

    Zero when the centroids are orthogonal; minimising it spreads the centroids of a cosine
    router over the sphere, so that two experts (or two centroids of one expert) do not
    claim the same region. Squared, so that opposite directions are not rewarded over
    orthogonal ones.
    """
    unit = torch.nn.functional.normalize(centroids, dim=-1)
    gram = unit @ unit.t()                                                     # (C, C)
    count = centroids.shape[0]
    if count < 2:
        return gram.new_zeros(())
    off_diagonal = gram.square().sum() - gram.diagonal().square().sum()
    return off_diagonal / (count * (count - 1))
