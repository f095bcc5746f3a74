"""Mixture-of-Experts classifiers and their dense baseline.

Legend: N samples, E experts, M assignments (sample, expert) pairs, D router input
features, K classes (the output width of every expert).

    y(x) = sum_i w_i(x) E_i(x)

with w the combine weights of a router (routers.py). Sparse routers evaluate each expert
only on the samples sent to it: assignments are sorted by expert once, every expert runs
on its own contiguous slice (experts.py), and the weighted outputs are added back with
one ``index_add_``.
No (N, E, ...) intermediate is built unless the router is dense (``soft``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from experts import MLPExperts, ModuleExperts, dispatch_as, mlp
from fused_routing import Top1Combine, Top1Dispatch
from precision import autocast_dtype
from routers import HardRouter, Routing, build_router, experts_per_sample
import trunks
from trunks import CNNTrunk, ResNetTrunk, trunk_features

ARCH_CHOICES = ("mixture", "vit")
EXPERT_TYPES = ("mlp", "cnn")
COMBINE_CHOICES = ("logits", "probs")
DENSE_MATCH_CHOICES = ("params", "active")


# ----------------------------------------------------------------------------- building blocks

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


# ----------------------------------------------------------------------------- the MoE layer

@dataclass
class MoEOutput:
    """Result of one MoE forward pass.

    logits: (N, K) combined output.
    routing: the router's record.
    sample_index, expert_index: (M,) the assignments in the order they were computed
        (sorted by expert); expert_logits: (M, K) each expert's own output for them.
    """

    logits: Tensor
    routing: Routing
    sample_index: Tensor
    expert_index: Tensor
    expert_logits: Tensor

    @property
    def aux(self) -> dict[str, Tensor]:
        """The router's unweighted auxiliary losses (empty in eval mode)."""
        return self.routing.aux

    def assignment_counts(self) -> Tensor:
        """(E,) samples each expert processed."""
        return self.routing.assignment_counts()

    def dropped_counts(self) -> Tensor:
        """(E,) assignments each expert's capacity dropped."""
        return self.routing.dropped_counts()


class LocalExperts:
    """Runs rows on an expert bank that holds every expert: the exchange of an MoE layer in
    one process. ``distributed.py`` installs its expert-parallel counterpart, which sends
    the rows to the processes that own their experts and brings the outputs back."""

    def run_sorted(self, experts: MLPExperts | ModuleExperts, x_sorted: Tensor, counts: Tensor) -> Tensor:
        """(M, ...) rows grouped by expert, counts (E,) -> (M, K)."""
        # One host sync for the slice sizes; everything else stays on the device.
        return experts.forward_sorted(x_sorted, counts.tolist())

    def run_all(self, experts: MLPExperts | ModuleExperts, x: Tensor) -> Tensor:
        """(N, ...) -> (E, N, K): every expert on every row."""
        return experts.forward_all(x)


LOCAL_EXPERTS = LocalExperts()


class MoE(nn.Module):
    """A router and a bank of experts. ``combine="logits"`` mixes expert outputs,
    y = sum_i w_i E_i(x) (Shazeer 2017, Switch 2021); ``combine="probs"`` mixes expert
    class distributions, p(y|x) = sum_i w_i softmax(E_i(x)) (Jacobs et al. 1991), and
    returns log p as logits."""

    def __init__(self, router: nn.Module, experts: MLPExperts | ModuleExperts, combine: str = "logits",
                 shared: MLPExperts | ModuleExperts | None = None):
        super().__init__()
        self.router = router
        self.experts = experts
        self.combine = combine
        # Shared experts (DeepSeekMoE) run on every row, outside the routing; their outputs
        # are added to the routed mixture.
        self.shared = shared
        self.exchange = LOCAL_EXPERTS
        self.fused_routing = True   # top-1 training steps through fused_routing.py where it applies

    def all_expert_outputs(self, x: Tensor) -> Tensor:
        """(N, ...) -> (E, N, K): every expert of the layer on every row."""
        return self.exchange.run_all(self.experts, x)

    def forward(self, x: Tensor, router_input: Tensor | None = None) -> MoEOutput:
        if self._fuses_top1(x):
            output = self._fused_top1(x, router_input)
        else:
            routing = self.router(x.flatten(1) if router_input is None else router_input)
            output = self._dense(x, routing) if routing.is_dense else self._sparse(x, routing)
        if self.shared is not None:
            output.logits = output.logits + self.shared.forward_all(x).sum(dim=0)   # (N, K)
        return output

    def _fuses_top1(self, x: Tensor) -> bool:
        """Whether a training step takes the fused top-1 path (fused_routing.py): the Switch
        router with linear scores and nothing that moves its choice (capacity, selection bias),
        combining logits, on an MLP bank in its fused mode (not under torch.func) and outside
        autocast (the router computes in float32 there); ``fused_routing = False`` turns it off."""
        router = self.router
        return (self.fused_routing and self.training and torch.is_grad_enabled() and type(router) is HardRouter
                and router.score == "linear" and router.grad == "switch" and not router.bias_rate
                and router.drop_policy == "dropless" and self.combine == "logits"
                and getattr(self.experts, "fused", False) and autocast_dtype(x.device.type) is None)

    def _fused_top1(self, x: Tensor, router_input: Tensor | None) -> MoEOutput:
        """What ``_sparse`` computes for the top-1 router, in three autograd nodes."""
        rows = x.flatten(1)                                                     # (N, D)
        logits, probs, expert_index, sample_index, gate, rows_sorted, counts = Top1Dispatch.apply(
            rows if router_input is None else router_input, self.router.proj.weight, rows)
        weights = probs.new_zeros(probs.shape).index_put_((sample_index, expert_index), gate)   # (N, E)
        routing = self.router._record(logits, probs, weights, sample_index, expert_index, gate, counts=counts)
        out = self.exchange.run_sorted(self.experts, rows_sorted, counts)       # (N, K)
        return MoEOutput(Top1Combine.apply(out, gate, sample_index), routing, sample_index, expert_index, out)

    def _dense(self, x: Tensor, routing: Routing) -> MoEOutput:
        expert_out = self.all_expert_outputs(x)                                # (E, N, K)
        num_experts, num_samples, num_classes = expert_out.shape
        weights = routing.weights.to(expert_out.dtype)                          # (N, E)
        if self.combine == "probs":
            mixed = torch.einsum("ne,enk->nk", weights, expert_out.softmax(dim=-1))
            logits = torch.log(mixed.clamp_min(1e-12))
        else:
            logits = torch.einsum("ne,enk->nk", weights, expert_out)            # (N, K)
        device = x.device
        sample_index = torch.arange(num_samples, device=device).repeat(num_experts)          # (E*N,)
        expert_index = torch.arange(num_experts, device=device).repeat_interleave(num_samples)
        return MoEOutput(logits, routing, sample_index, expert_index,
                         expert_out.reshape(num_experts * num_samples, num_classes))

    def _sparse(self, x: Tensor, routing: Routing) -> MoEOutput:
        expert_index, order = torch.sort(routing.expert_index, stable=True)    # (M,), (M,)
        sample_index = routing.sample_index[order]                             # (M,)
        gate = routing.gate[order]                                             # (M,)
        x_sorted = x.index_select(0, sample_index)                             # (M, ...)
        out = self.exchange.run_sorted(self.experts, x_sorted, routing.counts)  # (M, K)
        contribution = out.softmax(dim=-1) if self.combine == "probs" else out
        mixed = out.new_zeros(x.shape[0], out.shape[1]).index_add_(             # (N, K)
            0, sample_index, contribution * gate.to(out.dtype).unsqueeze(1))
        logits = torch.log(mixed.clamp_min(1e-12)) if self.combine == "probs" else mixed
        return MoEOutput(logits, routing, sample_index, expert_index, out)


# ----------------------------------------------------------------------------- classifiers

@dataclass
class ModelSpec:
    """Everything that decides the architecture (a subset of the run config)."""

    model: str = "moe"               # moe | dense
    arch: str = "mixture"            # mixture of expert classifiers | vit (MoE blocks routing tokens)
    experts: int = 8
    gating: str = "hard"
    top_k: int = 2
    capacity_factor: float = 1.0
    drop_policy: str = "dropless"    # token choice: dropless | position | priority (routers.py)
    bias_balance_rate: float = 0.0   # token choice: loss-free balancing step (routers.py)
    hard_grad: str = "switch"
    tau: float = 1.0
    router_score: str = "linear"
    router_dim: int = 16
    router_centroids: int = 1
    expert_type: str = "mlp"
    expert_hidden: int = 128
    expert_depth: int = 1
    expert_channels: int = 32
    trunk: str = "none"
    trunk_channels: int = 32
    trunk_blocks: int = 1            # residual blocks per stage of --trunk resnet
    dropout: float = 0.0
    expert_dispatch: str = "auto"    # auto | grouped | padded (experts.py)
    shared_experts: int = 0          # experts every sample or token goes through (DeepSeekMoE)
    slots_per_expert: int = 1        # --gating soft-slots (soft_moe.py)
    combine: str = "logits"
    dense_match: str = "params"
    vit_patch: int = 4
    vit_dim: int = 96
    vit_depth: int = 4
    vit_heads: int = 3
    moe_every: int = 2


def spec_router(spec: ModelSpec, in_features: int, tokens: int = 1) -> nn.Module:
    """The router the spec asks for, reading ``in_features``-wide inputs (``tokens`` per image)."""
    return build_router(spec.gating, in_features, spec.experts, top_k=spec.top_k,
                        capacity_factor=spec.capacity_factor, drop_policy=spec.drop_policy,
                        bias_rate=spec.bias_balance_rate, hard_grad=spec.hard_grad, tau=spec.tau,
                        score=spec.router_score, score_dim=spec.router_dim, centroids=spec.router_centroids,
                        tokens=tokens)


class MoEClassifier(nn.Module):
    """[optional shared trunk] -> MoE over experts that each predict class logits."""

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

    def forward(self, x: Tensor) -> MoEOutput:
        return self.moe(self.expert_input(x))


class DenseClassifier(nn.Module):
    """The baseline: [same trunk] -> one expert-shaped network of width ``hidden``."""

    def __init__(self, spec: ModelSpec, in_shape: tuple[int, int, int], num_classes: int, hidden: int,
                 channels: int | None = None):
        super().__init__()
        self.spec = spec
        self.hidden = hidden
        self.trunk = build_trunk(spec, in_shape)
        self.net = build_expert(spec, in_shape, num_classes, hidden, channels)

    expert_input = MoEClassifier.expert_input

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.expert_input(x))


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
    used = experts_per_sample(spec.gating, spec.experts, spec.top_k, spec.capacity_factor)   # as chosen, not capped
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


# ----------------------------------------------------------------------------- accounting

def forward_flops(module: nn.Module, example: Tensor) -> int:
    """Floating point operations of one forward pass (matmuls and convolutions), of the routed
    rows only: not of the padding rows that the padded expert dispatch may add."""
    counter = FlopCounterMode(display=False)
    was_training = module.training
    module.eval()
    with torch.no_grad(), dispatch_as(module, "grouped"), counter:
        module(example)
    module.train(was_training)
    return counter.get_total_flops()


def model_cost(model: nn.Module, in_shape: tuple[int, int, int]) -> dict[str, float]:
    """Total / active parameters and forward FLOPs per sample, for MoE or dense alike.

    For an MoE the FLOPs are trunk + router + (average experts per sample) x one expert,
    i.e. what the sparse dispatch really computes, not what a dense emulation would.
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, *in_shape, device=device)
    if isinstance(model, DenseClassifier):
        params = count_params(model)
        return {"params_total": params, "params_active": params, "flops_per_sample": forward_flops(model, example)}
    spec = model.spec
    features = example
    trunk_flops = 0
    if model.trunk is not None:
        trunk_flops = forward_flops(model.trunk, example)
        with torch.no_grad():
            features = model.trunk.eval()(example)
        model.trunk.train()
    elif spec.expert_type == "mlp":
        features = example.flatten(1)
    router_flops = forward_flops(model.moe.router.proj, features.flatten(1))
    expert_flops = forward_flops(model.moe.experts.expert_module(0), features)
    # The capacity of token choice caps the experts' work (drop policies): count at most that.
    used = experts_per_sample(spec.gating, spec.experts, spec.top_k, spec.capacity_factor, spec.drop_policy)
    counts = moe_param_counts(model)
    return {"params_total": counts["total"], "params_active": counts["active"],
            "flops_per_sample": trunk_flops + router_flops + (used + spec.shared_experts) * expert_flops}


def classifier_logits(output) -> Tensor:
    """Logits of any model kind (MoE models return a record, dense nets a tensor)."""
    return output if isinstance(output, Tensor) else output.logits


def cross_entropy(output, target: Tensor) -> Tensor:
    return F.cross_entropy(classifier_logits(output), target)
