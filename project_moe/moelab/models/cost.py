"""Accounting: parameters (total, and active per sample) and forward FLOPs of a model."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.experts import dispatch_as
from .classifier import DenseClassifier, count_params, moe_param_counts


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
    used = spec.experts_per_sample(spec.experts, capped=True)
    counts = moe_param_counts(model)
    return {"params_total": counts["total"], "params_active": counts["active"],
            "flops_per_sample": trunk_flops + router_flops + (used + spec.shared_experts) * expert_flops}
