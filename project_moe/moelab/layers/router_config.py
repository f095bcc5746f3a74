"""The router's configuration: one object that ``build_router`` and every router read whole.

Its fields are the run's router flags: the run's ``Config`` and the model's ``ModelSpec`` are
RouterConfigs (they inherit these fields), so a new router option is one field here and one use
where a router reads it; ``--flag``, ``config.json`` and docs/cli.md follow from the field.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..options import option
from .routing import DROP_POLICIES, GATING_CHOICES, HARD_GRAD_CHOICES, SCORE_CHOICES, SLOT_GATINGS, TOKEN_CHOICE


@dataclass
class RouterConfig:
    gating: str = option("hard", "router; soft-slots: Soft MoE (ViT), experts process soft mixtures of an image's "
                                 "tokens", GATING_CHOICES + SLOT_GATINGS)
    top_k: int = option(2, "experts per sample k for topk / noisy-topk / gumbel; expert-choice uses it in "
                           "its capacity C = capacity_factor * N * k / E")
    capacity_factor: float = option(1.0, "capacity factor cf: expert-choice takes C = ceil(cf * N * k / E) samples "
                                          "per expert; with a --drop-policy, token choice keeps at most C "
                                          "assignments per expert")
    drop_policy: str = option("dropless", "token choice (hard, topk, noisy-topk, gumbel): dropless, or cap every "
                                          "expert at --capacity-factor and drop the rest by batch position "
                                          "(Switch) or keep the most probable first (priority, V-MoE)",
                              DROP_POLICIES)
    bias_balance_rate: float = option(0.0, "token choice: loss-free balancing (DeepSeek-V3): a per-expert bias "
                                           "added to the router probabilities for the choice of experts only, moved "
                                           "by this step toward the mean load after every step (0 = off)")
    hard_grad: str = option("switch", "gradient of hard (top-1) routing: scale by the gate probability "
                                      "(switch) or straight-through one-hot (ste)", HARD_GRAD_CHOICES)
    tau: float = option(1.0, "Gumbel-softmax temperature")
    router_score: str = option("linear", "expert scores of the router: x W (linear), the votes of the other tokens "
                                         "of the image (attention, ViT), or cosine similarity of a "
                                         "projection of x to learnable expert centroids over a learned "
                                         "temperature (cosine, X-MoE)", SCORE_CHOICES)
    router_dim: int = option(16, "cosine router: dimension of the projection and the centroids; attention router: "
                                 "width r of the query and the keys")
    router_centroids: int = option(1, "cosine router: centroids per expert (score = the nearest one)")
    router_jitter: float = option(0.0, "Switch Transformer's jitter: in training, every router input is multiplied "
                                       "elementwise by noise drawn from U(1 - eps, 1 + eps), eps this value (0 = off)")

    @property
    def token_choice(self) -> bool:
        """Each sample chooses its experts (the routers that capacities and selection bias act on)."""
        return self.gating in TOKEN_CHOICE

    def experts_per_sample(self, num_experts: int, capped: bool = False) -> float:
        """Average number of experts that process one sample (what sets the active compute): as
        the router chooses, or with ``capped`` the most a token-choice capacity lets through."""
        if self.gating == "soft":
            return float(num_experts)
        if self.gating == "expert-choice":
            return min(float(num_experts), self.capacity_factor * self.top_k)
        chosen = 1.0 if self.gating == "hard" else float(self.top_k)
        if capped and self.drop_policy != "dropless":
            return min(chosen, self.capacity_factor * chosen)
        return chosen
