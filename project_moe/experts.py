"""Expert banks: the E experts of an MoE layer, run on every sample (dense routing) or
each on the samples routed to it (sparse routing).

Legend: N samples, E experts, M assignments sorted by expert (``counts[e]`` consecutive
rows for expert e), D input features, H hidden width, K outputs.

Both banks answer the same calls:
    forward_all(x)                             (N, ...) -> (E, N, K)
    forward_sorted(x_sorted, counts, expert_index)  (M, ...) -> (M, K)
    expert_forward(e, x)                       one expert, plain autograd (the reference)
    params_per_expert()

``ModuleExperts`` holds any E modules (the CNN experts) and calls them one by one.
``MLPExperts`` holds E MLPs as stacked weights, (E, in, out) per layer, and runs each layer
of all experts in a single autograd node (:class:`GroupedMLP`) with a hand-written
backward. With E separate ``nn.Linear`` modules a training step builds about 6E autograd
nodes and gives the optimiser 4E tensors; and the weight gradient of an (out, in) weight,
g^T x, is about twice as slow as x^T g for the few rows an expert gets in a small batch.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_features: int, hidden: int, out_features: int, depth: int = 1, dropout: float = 0.0) -> nn.Sequential:
    """``depth`` hidden ReLU layers of width ``hidden``, dropout after each."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def expert_slices(counts: list[int]) -> list[tuple[int, slice]]:
    """(expert, its rows) for every expert that received at least one row."""
    bounds, start = [], 0
    for e, count in enumerate(counts):
        if count:
            bounds.append((e, slice(start, start + count)))
        start += count
    return bounds


class ModuleExperts(nn.Module):
    """E independent modules, called one after the other."""

    def __init__(self, experts: list[nn.Module], out_features: int):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.out_features = out_features

    def __len__(self) -> int:
        return len(self.experts)

    def forward_all(self, x: Tensor) -> Tensor:
        """(N, ...) -> (E, N, K)."""
        return torch.stack([expert(x) for expert in self.experts])

    def forward_sorted(self, x_sorted: Tensor, counts: list[int], expert_index: Tensor) -> Tensor:
        """(M, ...) rows grouped by expert -> (M, K); experts with no rows are never called."""
        outputs = [self.experts[e](x_sorted[rows]) for e, rows in expert_slices(counts)]
        if not outputs:
            return x_sorted.new_zeros(0, self.out_features)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def expert_forward(self, e: int, x: Tensor) -> Tensor:
        return self.experts[e](x)

    def expert_module(self, e: int) -> nn.Module:
        """A standalone copy of expert e."""
        return copy.deepcopy(self.experts[e])

    def params_per_expert(self) -> int:
        return sum(p.numel() for p in self.experts[0].parameters())


class MLPExperts(nn.Module):
    """E MLPs ``mlp(in_features, hidden, out_features, depth, dropout)`` with stacked weights.

    weights[l]: (E, in_l, out_l), biases[l]: (E, out_l). Initialised exactly as E separate
    ``mlp`` modules would be (same random draws, same order), then stacked.
    ``fused=False`` makes ``forward_sorted`` use plain autograd ops, one expert at a time:
    slower, but differentiable by any transform (``torch.func`` Hessian-vector products).
    """

    def __init__(self, num_experts: int, in_features: int, hidden: int, out_features: int, depth: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        linears = [[m for m in mlp(in_features, hidden, out_features, depth) if isinstance(m, nn.Linear)]
                   for _ in range(num_experts)]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([expert[layer].weight.detach().t() for expert in linears]).contiguous())
            for layer in range(depth + 1))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([expert[layer].bias.detach() for expert in linears]))
            for layer in range(depth + 1))
        self.num_experts = num_experts
        self.out_features = out_features
        self.dropout = dropout
        self.fused = True

    def __len__(self) -> int:
        return self.num_experts

    def extra_repr(self) -> str:
        widths = [self.weights[0].shape[1]] + [w.shape[2] for w in self.weights]
        return f"experts={self.num_experts}, widths={widths}, dropout={self.dropout}"

    def params_per_expert(self) -> int:
        return sum(p[0].numel() for p in (*self.weights, *self.biases))

    def _dropout_masks(self, rows: int) -> list[Tensor]:
        """(rows, H) keep-masks scaled by 1 / (1 - p), one per hidden layer; [] when off."""
        if not (self.training and self.dropout > 0):
            return []
        keep = 1.0 - self.dropout
        return [self.weights[0].new_empty(rows, w.shape[2]).bernoulli_(keep).div_(keep) for w in self.weights[:-1]]

    def forward_all(self, x: Tensor) -> Tensor:
        """(N, D) -> (E, N, K): every expert on every sample, one batched matmul per layer."""
        h = x.flatten(1).expand(self.num_experts, *x.flatten(1).shape)         # (E, N, D)
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight)                    # (E, N, out_l)
            if layer < last:
                h = F.dropout(h.relu(), self.dropout, self.training)
        return h

    def expert_forward(self, e: int, x: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        """Expert e on (n, D) rows, with plain autograd ops."""
        h = x.flatten(1)
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.addmm(bias[e], h, weight[e])
            if layer < last:
                h = h.relu()
                if masks:
                    h = h * masks[layer]
        return h

    def expert_module(self, e: int) -> nn.Sequential:
        """A standalone ``mlp`` holding a copy of expert e's weights."""
        module = mlp(self.weights[0].shape[1], self.weights[0].shape[2], self.out_features,
                     len(self.weights) - 1, self.dropout)
        linears = [m for m in module if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, weight, bias in zip(linears, self.weights, self.biases):
                linear.weight.copy_(weight[e].t())
                linear.bias.copy_(bias[e])
        return module.to(self.weights[0].device)

    def forward_sorted(self, x_sorted: Tensor, counts: list[int], expert_index: Tensor) -> Tensor:
        """(M, D) rows grouped by expert -> (M, K); experts with no rows cost nothing."""
        x_sorted = x_sorted.flatten(1)
        bounds = expert_slices(counts)
        masks = self._dropout_masks(x_sorted.shape[0])
        params = (*self.weights, *self.biases)
        if not torch.is_grad_enabled():
            return grouped_mlp_forward(x_sorted, bounds, masks, params)[-1]
        if self.fused:
            return GroupedMLP.apply(x_sorted, expert_index, bounds, masks, *params)
        outputs = [self.expert_forward(e, x_sorted[rows], [m[rows] for m in masks]) for e, rows in bounds]
        if not outputs:
            return x_sorted.new_zeros(0, self.out_features)
        return torch.cat(outputs)


def use_reference_experts(model: nn.Module) -> None:
    """Run every MLP bank of ``model`` with plain autograd ops (see ``MLPExperts``)."""
    for module in model.modules():
        if isinstance(module, MLPExperts):
            module.fused = False


def grouped_mlp_forward(x: Tensor, bounds: list[tuple[int, slice]], masks: list[Tensor],
                        params: tuple[Tensor, ...]) -> list[Tensor]:
    """Layer inputs [x, h_1, ..., h_L] and the output, each (M, width): every expert's rows
    written in place into one buffer per layer (no autograd)."""
    depth = len(params) // 2
    weights, biases = params[:depth], params[depth:]
    activations = [x]
    for layer, (weight, bias) in enumerate(zip(weights, biases)):
        out = x.new_empty(x.shape[0], weight.shape[2])                          # (M, out_l)
        inputs = activations[-1]
        for e, rows in bounds:
            torch.addmm(bias[e], inputs[rows], weight[e], out=out[rows])
        if layer < depth - 1:
            out.relu_()
            if masks:
                out.mul_(masks[layer])
        activations.append(out)
    return activations


class GroupedMLP(torch.autograd.Function):
    """All experts of an MLP bank on their rows, as one autograd node.

    forward(x (M, D), expert_index (M,), bounds, masks, *weights, *biases) -> (M, K).
    backward, per layer l with input a_l and output gradient g (both (M, .)):
        dW_l[e] = a_l[rows_e]^T g[rows_e]   (written into one (E, in, out) buffer)
        db_l    = segment sums of g over each expert's rows (one index_add_)
        g       = (g[rows_e] W_l[e]^T) * relu'(a_l) * dropout mask
    Experts with no rows get zero gradients.
    """

    @staticmethod
    def forward(ctx, x, expert_index, bounds, masks, *params):
        activations = grouped_mlp_forward(x, bounds, masks, params)
        depth = len(params) // 2
        ctx.bounds, ctx.depth, ctx.masks = bounds, depth, len(masks)
        ctx.save_for_backward(expert_index, *activations[:-1], *params[:depth], *masks)
        return activations[-1]

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        depth, bounds = ctx.depth, ctx.bounds
        expert_index = saved[0]
        activations = saved[1:1 + depth]
        weights = saved[1 + depth:1 + 2 * depth]
        masks = saved[1 + 2 * depth:]
        num_experts = weights[0].shape[0]
        some_idle = len(bounds) < num_experts
        grad = grad_out.contiguous()
        weight_grads, bias_grads = [None] * depth, [None] * depth
        for layer in reversed(range(depth)):
            inputs, weight = activations[layer], weights[layer]
            weight_grad = torch.zeros_like(weight) if some_idle else torch.empty_like(weight)
            for e, rows in bounds:
                torch.mm(inputs[rows].t(), grad[rows], out=weight_grad[e])      # (in, out)
            weight_grads[layer] = weight_grad
            bias_grads[layer] = grad.new_zeros(num_experts, grad.shape[1]).index_add_(0, expert_index, grad)
            if layer == 0 and not ctx.needs_input_grad[0]:
                grad = None
                break
            grad_in = grad.new_empty(grad.shape[0], weight.shape[1])            # (M, in)
            for e, rows in bounds:
                torch.mm(grad[rows], weight[e].t(), out=grad_in[rows])
            if layer > 0:
                # a_l = relu(z) * mask: the gradient passes where a_l > 0, scaled by the mask.
                grad_in.mul_(inputs > 0)
                if masks:
                    grad_in.mul_(masks[layer - 1])
            grad = grad_in
        return (grad, None, None, None, *weight_grads, *bias_grads)
