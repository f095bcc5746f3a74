"""What decides a model's architecture: the ModelSpec (a subset of the run config, the router's
configuration included), and the router it asks for."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layers.router_config import RouterConfig
from ..layers.routers import build_router

ARCH_CHOICES = ("mixture", "vit", "gpt", "graph")
EXPERT_TYPES = ("mlp", "cnn")
COMBINE_CHOICES = ("logits", "probs")
DENSE_MATCH_CHOICES = ("params", "active")


@dataclass
class ModelSpec(RouterConfig):
    """Everything that decides the architecture (a subset of the run config): the router's
    fields, inherited from RouterConfig, and these."""

    model: str = "moe"               # moe | dense
    arch: str = "mixture"            # mixture of expert classifiers | vit | gpt | graph (MoE blocks routing tokens)
    experts: int = 8
    expert_type: str = "mlp"
    expert_hidden: int = 128
    expert_depth: int = 1
    expert_channels: int = 32
    trunk: str = "none"
    trunk_channels: int = 32
    trunk_blocks: int = 1            # residual blocks per stage of --trunk resnet
    dropout: float = 0.0
    expert_dispatch: str = "auto"    # auto | grouped | padded | grouped_mm (experts.py)
    shared_experts: int = 0          # experts every sample or token goes through (DeepSeekMoE)
    slots_per_expert: int = 1        # --gating soft-slots (soft_moe.py)
    combine: str = "logits"
    dense_match: str = "params"
    vit_patch: int = 4
    vit_dim: int = 96
    vit_depth: int = 4
    vit_heads: int = 3
    moe_every: int = 2
    causal: bool = False             # gpt: a causal language model (text: data), not a text classifier


def spec_router(spec: ModelSpec, in_features: int, tokens: int = 1) -> nn.Module:
    """The router the spec asks for (the spec is its RouterConfig), reading ``in_features``-wide
    inputs (``tokens`` per image)."""
    return build_router(spec, in_features, spec.experts, tokens=tokens)
