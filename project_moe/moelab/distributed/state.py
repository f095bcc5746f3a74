"""Gradients and state of a model spread over the ranks: the gradient sum of the replicated
parameters, and checkpoints (model and optimiser) in the single-process layout."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .cluster import Cluster


def sync_gradients(model: nn.Module, cluster: Cluster) -> None:
    """Sum the gradients of the replicated parameters over the ranks (one all-reduce). Each
    rank's gradient is its part of the global-batch gradient, so the sum is the whole."""
    if not cluster.is_distributed:
        return
    params = [p for name, p in model.named_parameters() if name not in cluster.sharded and p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    start = 0
    for param, grad in zip(params, grads):
        reduced = flat[start:start + grad.numel()].view_as(grad)
        start += grad.numel()
        if param.grad is not None:
            param.grad.copy_(reduced)


def gather_experts(cluster: Cluster, tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(cluster.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def own_experts(cluster: Cluster, tensor: Tensor, full: int) -> Tensor:
    if tensor.shape[0] != full:
        raise ValueError(f"expert tensor of {tensor.shape[0]} experts where the model has {full}")
    local = full // cluster.world_size
    return tensor[cluster.rank * local:(cluster.rank + 1) * local]


def model_state(model: nn.Module, cluster: Cluster) -> dict[str, Tensor]:
    """The whole model's state_dict in the single-process layout (every rank must call it)."""
    state = model.state_dict()
    for name in cluster.sharded:
        state[name] = gather_experts(cluster, state[name])
    return state


def load_model_state(model: nn.Module, state: dict[str, Tensor], cluster: Cluster) -> None:
    """Load a single-process state_dict, keeping this rank's experts."""
    state = dict(state)
    for name, full in cluster.sharded.items():
        if name in state:
            state[name] = own_experts(cluster, state[name], full)
    model.load_state_dict(state)


def optimizer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, cluster: Cluster) -> dict:
    """The optimiser's state_dict with every expert's moments, in the single-process layout."""
    state = optimizer.state_dict()
    if not cluster.sharded:
        return state
    names = optimizer_names(model)
    # state_dict() shares the optimiser's own per-parameter dicts: build new ones.
    return {**state, "state": {index: {key: (gather_experts(cluster, value)
                                             if names[index] in cluster.sharded and torch.is_tensor(value)
                                             and value.dim() > 0 else value)
                                       for key, value in per_param.items()}
                               for index, per_param in state["state"].items()}}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, state: dict, cluster: Cluster) -> None:
    if cluster.sharded:
        names = optimizer_names(model)
        state = {**state, "state": {index: {key: (own_experts(cluster, value, cluster.sharded[names[index]])
                                                 if names[index] in cluster.sharded and torch.is_tensor(value)
                                                 and value.dim() > 0 else value)
                                           for key, value in per_param.items()}
                                    for index, per_param in state["state"].items()}}
    optimizer.load_state_dict(state)
