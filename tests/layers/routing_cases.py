"""The small MoE layers of the router, capacity and dispatch tests: N rows of D features, E experts, K outputs."""
import torch

from moelab.layers.experts import MLPExperts, ModuleExperts, mlp
from moelab.layers.moe import MoE
from moelab.layers.routers import build_router

N, D, E, K = 37, 12, 6, 5
TOKEN_CHOICE = ("hard", "topk", "noisy-topk", "gumbel")


def make_moe(gating: str, k: int = 2, seed: int = 0, combine: str = "logits", bank: str = "stacked",
             **router_kwargs) -> MoE:
    torch.manual_seed(seed)
    router = build_router(gating, D, E, top_k=k, **router_kwargs)
    if bank == "stacked":
        experts = MLPExperts(E, D, 16, K, depth=1)
    else:
        experts = ModuleExperts([mlp(D, 16, K, depth=1) for _ in range(E)], K)
    return MoE(router, experts, combine=combine)
