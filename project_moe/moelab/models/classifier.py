"""Mixture-of-Experts classifiers and their dense baseline.

Legend: N samples, E experts, K classes (the output width of every expert).

An MoE classifier is [an optional shared trunk] -> an MoE layer (layers/moe.py) over experts
that each predict class logits; the dense baseline is the same trunk and one expert-shaped
network, widened until its parameter count matches the MoE's total or active parameters.
"""
from __future__ import annotations

import dataclasses
import math

from torch import Tensor, nn

from ..layers.experts import MLPExperts, ModuleExperts, mlp
from ..layers.moe import MoE
from . import trunks
from .output import ModelOutput
from .spec import ModelSpec, spec_router
from .trunks import CNNTrunk, ResNetTrunk, trunk_features


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (channels c, 2c, max-pool after each), a 4x4 adaptive average
    pool, then an MLP head. Works for 28x28x1 and 32x32x3 inputs alike."""

    def __init__(self, in_channels: int, channels: int, hidden: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = mlp(2 * channels * 16, hidden, out_features, depth=1, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))  # (N, 2c*16) -> (N, K)


class MoEClassifier(nn.Module):
    """[optional shared trunk] -> MoE over experts that each predict class logits."""

    routes_tokens = False  # it routes whole samples (the trainer logs its per-expert tables)

    def __init__(self, spec: ModelSpec, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.spec = spec
        self.trunk = build_trunk(spec, in_shape)
        expert_in = self.trunk.out_features if self.trunk is not None else math.prod(in_shape)
        experts = build_experts(spec, in_shape, num_classes)   # before the router: the seed's draws, in order
        router = spec_router(spec, expert_in)
        shared = build_experts(dataclasses.replace(spec, experts=spec.shared_experts), in_shape, num_classes) \
            if spec.shared_experts else None
        self.moe = MoE(router, experts, combine=spec.combine, shared=shared)

    def expert_input(self, x: Tensor) -> Tensor:
        """What the experts read: trunk features (N, F), flat pixels (N, C*H*W), or images."""
        if self.trunk is not None:
            return self.trunk(x)
        return x.flatten(1) if self.spec.expert_type == "mlp" else x

    def forward(self, x: Tensor) -> ModelOutput:
        return self.classify_features(self.expert_input(x))

    def classify_features(self, features: Tensor) -> ModelOutput:
        """The model's output from what ``expert_input`` returns (evaluation reuses the features
        to run every expert on every sample)."""
        layer = self.moe(features)
        return ModelOutput(layer.logits, [layer.routing], mixture=layer)

    def routers(self) -> list[nn.Module]:
        """The model's routers, in the order of its output's routings."""
        return [self.moe.router]


class DenseClassifier(nn.Module):
    """The baseline: [same trunk] -> one expert-shaped network of width ``hidden``."""

    routes_tokens = False

    def __init__(self, spec: ModelSpec, in_shape: tuple[int, int, int], num_classes: int, hidden: int,
                 channels: int | None = None):
        super().__init__()
        self.spec = spec
        self.hidden = hidden
        self.trunk = build_trunk(spec, in_shape)
        self.net = build_expert(spec, in_shape, num_classes, hidden, channels)

    expert_input = MoEClassifier.expert_input

    def forward(self, x: Tensor) -> ModelOutput:
        return ModelOutput(self.net(self.expert_input(x)))

    def routers(self) -> list[nn.Module]:
        return []


def build_trunk(spec: ModelSpec, in_shape) -> CNNTrunk | ResNetTrunk | None:
    return trunks.build_trunk(spec.trunk, in_shape[0], spec.trunk_channels, spec.trunk_blocks)


def build_experts(spec: ModelSpec, in_shape, num_classes: int) -> MLPExperts | ModuleExperts:
    """The expert bank: stacked MLPs (flat pixels or trunk features), or E small CNNs."""
    if spec.trunk == "none" and spec.expert_type == "cnn":
        return ModuleExperts([build_expert(spec, in_shape, num_classes, spec.expert_hidden)
                              for _ in range(spec.experts)], num_classes)
    in_features = trunk_features(spec.trunk, spec.trunk_channels) if spec.trunk != "none" else math.prod(in_shape)
    return MLPExperts(spec.experts, in_features, spec.expert_hidden, num_classes, spec.expert_depth, spec.dropout,
                      spec.expert_dispatch)


def build_expert(spec: ModelSpec, in_shape, num_classes: int, hidden: int, channels: int | None = None) -> nn.Module:
    if spec.trunk != "none":
        return mlp(trunk_features(spec.trunk, spec.trunk_channels), hidden, num_classes, spec.expert_depth,
                   spec.dropout)
    if spec.expert_type == "cnn":
        return SmallCNN(in_shape[0], channels or spec.expert_channels, hidden, num_classes, spec.dropout)
    return mlp(math.prod(in_shape), hidden, num_classes, spec.expert_depth, spec.dropout)


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def moe_param_counts(model: MoEClassifier) -> dict[str, float]:
    """Total parameters, and parameters touched by one sample on average (active)."""
    spec = model.spec
    per_expert = model.moe.experts.params_per_expert()
    shared = count_params(model.trunk) + count_params(model.moe.router) + count_params(model.moe.shared)
    used = spec.experts_per_sample(spec.experts)   # as chosen, not capped
    return {"total": count_params(model), "active": shared + used * per_expert}


def build_dense_matched(spec: ModelSpec, in_shape, num_classes: int, target_params: float) -> DenseClassifier:
    """Dense baseline whose parameter count is closest to ``target_params``.

    The width of the hidden layer is found by bisection (parameters grow monotonically
    with it). For CNN experts the channel count is first scaled by the fourth root of
    (target / expert size): the convolutions grow too, not only the head, while their
    FLOPs grow only with the square root of the size ratio.
    """
    channels = None
    if spec.expert_type == "cnn" and spec.trunk == "none":
        expert_params = count_params(build_expert(spec, in_shape, num_classes, spec.expert_hidden))
        channels = max(1, round(spec.expert_channels * max(1.0, target_params / expert_params) ** 0.25))

    def size(width: int) -> int:
        return count_params(DenseClassifier(spec, in_shape, num_classes, width, channels))

    low, high = 1, 2
    while size(high) < target_params:
        high *= 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if size(mid) < target_params else (low, mid)
    best = min((low, high), key=lambda w: abs(size(w) - target_params))
    return DenseClassifier(spec, in_shape, num_classes, best, channels)

