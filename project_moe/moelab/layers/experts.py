"""Expert banks: the E experts of an MoE layer, run on every sample (dense routing) or
each on the samples routed to it (sparse routing).

Legend: N samples, E experts, M assignments sorted by expert (``counts[e]`` consecutive
rows for expert e), D input features, H hidden width, K outputs.

Both banks answer the same calls:
    forward_all(x)                             (N, ...) -> (E, N, K)
    forward_sorted(x_sorted, counts)            (M, ...) -> (M, K)
    expert_forward(e, x)                       one expert, plain autograd (the reference)
    params_per_expert()

``ModuleExperts`` holds any E modules (the CNN experts) and calls them one by one.
``MLPExperts`` holds E MLPs as stacked weights, (E, in, out) per layer, and has three ways to
run the sorted rows:
- ``grouped``: one matmul per expert on exactly its rows, all experts and layers in a single
  autograd node (:class:`GroupedMLP`) with a hand-written backward. With E separate
  ``nn.Linear`` modules a training step would build about 6E autograd nodes and give the
  optimiser 4E tensors; and the weight gradient of an (out, in) weight, g^T x, is about
  twice as slow as x^T g for the few rows an expert gets in a small batch.
- ``padded``: each expert's rows copied into an (E, C, D) buffer, C the largest count, zero
  rows after them, and one batched matmul per layer, again in one autograd node
  (:class:`PaddedMLP`). It computes E*C rows instead of M, but
  a batched matmul spreads the experts over the CPU cores, while a matmul on a few dozen
  rows runs on one core.
- ``grouped_mm``: torch's grouped GEMM (``F.grouped_mm``, torch >= 2.8): one call per layer
  for all experts on their rows (:class:`GroupedMMMLP`). Where this torch or device lacks it
  (float64, some GPUs), ``grouped`` runs instead, with the same results, and the run's log says so.
``fused=False`` runs them in plain autograd operations instead (for ``torch.func`` and as the
reference of the tests). ``auto`` takes ``padded`` while experts get few rows on average and padding at most
multiplies the rows by ``PADDED_MAX_GROWTH`` (``bench.py`` measures both).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import autocast_dtype, float32_region


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


DISPATCH_CHOICES = ("auto", "grouped", "padded", "grouped_mm")
# Where padded batched matmuls beat per-expert matmuls for a training step on a 2-core CPU,
# measured for experts 784 -> 128 -> 10: with 16 rows per expert on average, by about 1.4x
# while the busiest expert had at most 1.4x the mean, and no longer at 1.7x; with 128 rows
# per expert the per-expert matmuls were faster even at 1.16x (they already use both cores).
# grouped_mm is not among auto's choices: on the CPU (2-core AMD EPYC, torch 2.14.1, bench.py
# layer and train) torch's grouped GEMM loops over the experts with one matmul each, as grouped
# does, plus the bias gathers it needs, and was never faster; on CUDA it is not measured yet.
PADDED_MAX_MEAN_ROWS = 32
PADDED_MAX_GROWTH = 1.5


def choose_dispatch(counts: list[int]) -> str:
    """``auto`` dispatch for these per-expert row counts: "padded" or "grouped"."""
    rows = sum(counts)
    if rows == 0:
        return "grouped"
    mean = rows / len(counts)
    return "padded" if mean <= PADDED_MAX_MEAN_ROWS and max(counts) * len(counts) <= PADDED_MAX_GROWTH * rows \
        else "grouped"


def padded_positions(counts: list[int], capacity: int, device: torch.device) -> Tensor:
    """(M,) row of each sorted row in the (E * capacity) padded layout: expert e's j-th row
    goes to e * capacity + j. Computed on the host, where the counts already are: one copy
    instead of the eight small tensor operations of the same arithmetic on the device."""
    counts_np = np.asarray(counts, dtype=np.int64)
    shift = np.arange(len(counts), dtype=np.int64) * capacity - (np.cumsum(counts_np) - counts_np)   # (E,)
    positions = np.arange(int(counts_np.sum()), dtype=np.int64) + np.repeat(shift, counts_np)
    return torch.from_numpy(positions).to(device)


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

    def forward_sorted(self, x_sorted: Tensor, counts: list[int]) -> Tensor:
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
    ``dispatch``: "grouped", "padded" or "auto" (module docstring). ``fused=False`` makes the
    grouped dispatch use plain autograd ops, one expert at a time: slower, but differentiable
    by any transform (``torch.func`` Hessian-vector products).
    """

    def __init__(self, num_experts: int, in_features: int, hidden: int, out_features: int, depth: int = 1,
                 dropout: float = 0.0, dispatch: str = "auto"):
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
        self.dispatch = dispatch
        self.fused = True
        self.ran: set[str] = set()         # the dispatches forward_sorted has run (dispatch_report)
        self.fallback: str | None = None   # why grouped_mm could not run, once it could not

    def __len__(self) -> int:
        return self.num_experts

    def extra_repr(self) -> str:
        widths = [self.weights[0].shape[1]] + [w.shape[2] for w in self.weights]
        return f"experts={self.num_experts}, widths={widths}, dropout={self.dropout}, dispatch={self.dispatch}"

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
        return self._batched_layers(h, lambda layer, hidden: F.dropout(hidden, self.dropout, self.training))

    def forward_batched(self, h: Tensor) -> Tensor:
        """(E, C, D) -> (E, C, K): expert e on its own C rows h[e] (Soft MoE's slots)."""
        return self._batched_layers(h, lambda layer, hidden: F.dropout(hidden, self.dropout, self.training))

    def _batched_layers(self, h: Tensor, after_relu) -> Tensor:
        """(E, C, D) -> (E, C, K), one batched matmul per layer; ``after_relu(layer, h)``
        applies dropout to each hidden layer."""
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight)                    # (E, C, out_l)
            if layer < last:
                h = after_relu(layer, h.relu())
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

    def forward_sorted(self, x_sorted: Tensor, counts: list[int]) -> Tensor:
        """(M, D) rows grouped by expert -> (M, K); experts with no rows cost nothing."""
        x_sorted = x_sorted.flatten(1)
        masks = self._dropout_masks(x_sorted.shape[0])
        dtype = autocast_dtype(x_sorted.device.type)
        dispatch = self._resolve_dispatch(counts, x_sorted.device, dtype or x_sorted.dtype)
        padded = dispatch == "padded"
        params = (*self.weights, *self.biases)
        if not self.fused:    # plain autograd, one operation at a time (torch.func, reference tests)
            if padded:
                return self._padded(x_sorted, counts, masks)
            if not torch.is_grad_enabled():
                return grouped_mlp_forward(x_sorted, counts, masks, params)[0]
            outputs = [self.expert_forward(e, x_sorted[rows], [m[rows] for m in masks])
                       for e, rows in expert_slices(counts)]
            return torch.cat(outputs) if outputs else x_sorted.new_zeros(0, self.out_features)
        run = {"padded": PaddedMLP.apply, "grouped_mm": GroupedMMMLP.apply, "grouped": GroupedMLP.apply}[dispatch]
        if dtype is None:
            return run(x_sorted, counts, masks, *params)
        # Under --amp the hand-written kernels run in autocast's dtype themselves (their out=
        # buffers would refuse autocast's casts); the casts of the float32 weights are
        # differentiable, so their gradients come back in float32.
        with float32_region(x_sorted.device.type):
            return run(x_sorted.to(dtype), counts, [m.to(dtype) for m in masks], *(p.to(dtype) for p in params))

    def _resolve_dispatch(self, counts: list[int], device: torch.device, dtype: torch.dtype) -> str:
        """The dispatch that runs these counts: ``auto``'s choice or the one asked for, ``grouped``
        for no rows at all and for ``grouped_mm`` in plain autograd (``fused`` False), and
        ``grouped`` in place of a ``grouped_mm`` that this torch or device lacks (the reason kept
        in ``fallback``, for the run's log)."""
        dispatch = choose_dispatch(counts) if self.dispatch == "auto" else self.dispatch
        if not sum(counts) or (dispatch == "grouped_mm" and not self.fused):
            dispatch = "grouped"    # no rows: nothing to pad or group, the grouped node returns (0, K)
        if dispatch == "grouped_mm" and (missing := grouped_mm_missing(device, dtype)) is not None:
            self.fallback, dispatch = missing, "grouped"
        self.ran.add(dispatch)
        return dispatch

    def _padded(self, x_sorted: Tensor, counts: list[int], masks: list[Tensor]) -> Tensor:
        """The padded dispatch in plain autograd operations (what :class:`PaddedMLP` computes)."""
        num_experts, capacity = self.num_experts, max(counts)
        positions = padded_positions(counts, capacity, x_sorted.device)       # (M,)
        pad = lambda rows: pad_rows(rows, positions, num_experts, capacity)   # noqa: E731  (M, w) -> (E, C, w)
        h = self._batched_layers(pad(x_sorted), lambda layer, hidden: hidden * pad(masks[layer]) if masks else hidden)
        return h.reshape(num_experts * capacity, -1).index_select(0, positions)   # (M, K)


def pad_rows(rows: Tensor, positions: Tensor, num_experts: int, capacity: int) -> Tensor:
    """(M, w) rows grouped by expert -> (E, C, w): expert e's rows first in its block, zeros after."""
    padded = rows.new_zeros(num_experts * capacity, rows.shape[1]).index_copy(0, positions, rows)
    return padded.view(num_experts, capacity, rows.shape[1])


def mlp_banks(model: nn.Module) -> list[MLPExperts]:
    return [module for module in model.modules() if isinstance(module, MLPExperts)]


@contextlib.contextmanager
def dispatch_as(model: nn.Module, dispatch: str):
    """Run every MLP bank of ``model`` with ``dispatch`` inside the block; what ran inside it is
    left out of the banks' ``ran`` record (dispatch_report speaks of the model's own dispatch)."""
    banks = mlp_banks(model)
    before = [(bank.dispatch, set(bank.ran), bank.fallback) for bank in banks]
    for bank in banks:
        bank.dispatch = dispatch
    try:
        yield
    finally:
        for bank, (value, ran, fallback) in zip(banks, before):
            bank.dispatch, bank.ran, bank.fallback = value, ran, fallback


def dispatch_report(model: nn.Module) -> str | None:
    """One line naming the dispatch each MLP bank of ``model`` asked for and the ones that ran
    (and why a ``grouped_mm`` fell back); None for a model without MLP banks or before they ran."""
    banks = [bank for bank in mlp_banks(model) if bank.ran]
    if not banks:
        return None
    asked = sorted({bank.dispatch for bank in banks})
    ran = sorted(set().union(*(bank.ran for bank in banks)))
    line = f"expert dispatch: {', '.join(asked)} ran {', '.join(ran)}"
    fallbacks = sorted({bank.fallback for bank in banks if bank.fallback})
    return line + (f" (in place of grouped_mm: {'; '.join(fallbacks)})" if fallbacks else "")


def use_reference_experts(model: nn.Module) -> None:
    """Run every MLP bank of ``model`` with plain autograd ops (see ``MLPExperts``), which any
    ``torch.func`` transform can differentiate."""
    for bank in mlp_banks(model):
        bank.fused = False


def grouped_mlp_forward(x: Tensor, counts: list[int], masks: list[Tensor],
                        params: tuple[Tensor, ...]) -> tuple[Tensor, list[list[Tensor]]]:
    """Output (M, K), and for each expert with rows, its hidden activations
    [h_1, ..., h_{L-1}] (no autograd). Experts run one after the other through all their
    layers, so each expert's activations are still in cache when its next layer reads them;
    whole-batch activation buffers filled layer by layer were measured slower on large batches."""
    num_layers = len(params) // 2
    weights, biases = params[:num_layers], params[num_layers:]
    out = x.new_empty(x.shape[0], weights[-1].shape[2])                        # (M, K)
    # One split or unbind per tensor, not one index operation per expert: at these sizes the
    # cost of an operation is mostly its fixed overhead.
    x_parts, out_parts = x.split(counts), out.split(counts)
    mask_parts = [m.split(counts) for m in masks]
    weights, biases = [w.unbind(0) for w in weights], [b.unbind(0) for b in biases]
    hidden_per_expert = []
    for e, _ in expert_slices(counts):
        h, hidden = x_parts[e], []
        for layer in range(num_layers - 1):
            h = torch.addmm(biases[layer][e], h, weights[layer][e]).relu_()   # (rows, H)
            if masks:
                h.mul_(mask_parts[layer][e])
            hidden.append(h)
        torch.addmm(biases[-1][e], h, weights[-1][e], out=out_parts[e])
        hidden_per_expert.append(hidden)
    return out, hidden_per_expert


class GroupedMLP(torch.autograd.Function):
    """All experts of an MLP bank on their rows, as one autograd node.

    forward(x (M, D), counts, masks, *weights, *biases) -> (M, K), rows grouped by expert.
    backward, for each expert e with rows r_e, layer by layer from the top, with a_l the
    layer's input and g its output gradient on those rows:
        dW_l[e] = a_l^T g   (written into the (E, in, out) gradient buffer)
        db_l[e] = sum of g over the rows
        g       = (g W_l[e]^T) * relu'(a_l) * dropout mask
    Experts with no rows get zero gradients.
    """

    @staticmethod
    def forward(ctx, x, counts, masks, *params):
        out, hidden_per_expert = grouped_mlp_forward(x, counts, masks, params)
        ctx.counts, ctx.num_layers, ctx.num_masks = counts, len(params) // 2, len(masks)
        hidden = [h for per_expert in hidden_per_expert for h in per_expert]
        ctx.save_for_backward(x, *params[:ctx.num_layers], *masks, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        num_layers, counts = ctx.num_layers, ctx.counts
        x, *saved = ctx.saved_tensors
        weights, masks = saved[:num_layers], saved[num_layers:num_layers + ctx.num_masks]
        hidden = saved[num_layers + ctx.num_masks:]                            # per expert: h_1 .. h_{L-1}
        weight_grads = [torch.empty_like(w) for w in weights]
        bias_grads = [grad_out.new_empty(w.shape[0], w.shape[2]) for w in weights]
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_out = grad_out.contiguous()
        # Views for every expert at once (one operation per tensor, as in the forward).
        weights_t = [w.transpose(1, 2).unbind(0) for w in weights]            # W_l[e]^T: (out, in)
        weight_grad_views = [g.unbind(0) for g in weight_grads]
        bias_grad_views = [g.unbind(0) for g in bias_grads]
        # Idle experts get zero gradients: zeroing their slices alone is a plain memset, where
        # zero-filling whole E-expert buffers would write every busy expert's gradient twice.
        for idle in (e for e, count in enumerate(counts) if not count):
            for views in (*weight_grad_views, *bias_grad_views):
                views[idle].zero_()
        x_t_parts = x.t().split(counts, dim=1)                                 # a_0^T: (D, rows)
        grad_out_parts = grad_out.split(counts)
        grad_x_parts = grad_x.split(counts) if grad_x is not None else None
        mask_parts = [m.split(counts) for m in masks]
        for i, (e, _) in enumerate(expert_slices(counts)):
            hidden_e = hidden[i * (num_layers - 1):(i + 1) * (num_layers - 1)]   # a_1 .. a_{L-1}
            grad = grad_out_parts[e]                                            # (rows, out_L)
            for layer in reversed(range(num_layers)):
                inputs_t = x_t_parts[e] if layer == 0 else hidden_e[layer - 1].t()
                torch.mm(inputs_t, grad, out=weight_grad_views[layer][e])      # (in, out)
                torch.sum(grad, dim=0, out=bias_grad_views[layer][e])
                if layer > 0:
                    # a_l = relu(z) * mask: the gradient passes where a_l > 0 (one fused kernel,
                    # as autograd's own ReLU backward), scaled by the mask.
                    grad = torch.ops.aten.threshold_backward(torch.mm(grad, weights_t[layer][e]),
                                                             hidden_e[layer - 1], 0.0)
                    if masks:
                        grad.mul_(mask_parts[layer - 1][e])
                elif grad_x is not None:
                    torch.mm(grad, weights_t[0][e], out=grad_x_parts[e])
        return (grad_x, None, None, *weight_grads, *bias_grads)


class PaddedMLP(torch.autograd.Function):
    """The padded dispatch as one autograd node: every expert's rows in an (E, C, .) buffer
    (C the largest count, zero rows after each expert's own), one batched matmul per layer.

    forward(x (M, D), counts, masks, *weights, *biases) -> (M, K), rows grouped by expert.
    backward, with a_l the padded input of layer l and g the padded gradient of its output:
        dW_l = a_l^T g (batched over experts), db_l = sum of g over the rows,
        g    = (g W_l^T) * relu'(a_l) * dropout mask.
    Padding rows are zero at the input and get zero output gradient, so they add nothing to
    any gradient. Autograd would record the same maths as about twice as many operations
    (views, transposes and the copies of its saved tensors), which at small batches cost more
    than the matmuls.
    """

    @staticmethod
    def forward(ctx, x, counts, masks, *params):
        num_layers = len(params) // 2
        weights, biases = params[:num_layers], params[num_layers:]
        num_experts, capacity = weights[0].shape[0], max(counts)
        positions = padded_positions(counts, capacity, x.device)              # (M,)
        h = pad_rows(x, positions, num_experts, capacity)                     # (E, C, D)
        inputs = [h]
        for layer in range(num_layers):
            h = torch.baddbmm(biases[layer].unsqueeze(1), h, weights[layer])   # (E, C, out_l)
            if layer < num_layers - 1:
                h = h.relu_()
                if masks:
                    h = h.mul_(pad_rows(masks[layer], positions, num_experts, capacity))
                inputs.append(h)
        ctx.num_layers, ctx.num_masks, ctx.capacity = num_layers, len(masks), capacity
        ctx.save_for_backward(positions, *weights, *masks, *inputs)
        return h.view(num_experts * capacity, -1).index_select(0, positions)  # (M, K)

    @staticmethod
    def backward(ctx, grad_out):
        num_layers, capacity = ctx.num_layers, ctx.capacity
        positions, *saved = ctx.saved_tensors
        weights = saved[:num_layers]
        masks = saved[num_layers:num_layers + ctx.num_masks]
        inputs = saved[num_layers + ctx.num_masks:]                            # a_0 .. a_{L-1}, padded
        num_experts = weights[0].shape[0]
        grad = pad_rows(grad_out.contiguous(), positions, num_experts, capacity)   # (E, C, K)
        weight_grads, bias_grads, grad_x = [None] * num_layers, [None] * num_layers, None
        for layer in reversed(range(num_layers)):
            weight_grads[layer] = torch.bmm(inputs[layer].transpose(1, 2), grad)   # (E, in, out)
            bias_grads[layer] = grad.sum(dim=1)                                 # (E, out)
            if layer > 0:
                grad = torch.ops.aten.threshold_backward(torch.bmm(grad, weights[layer].transpose(1, 2)),
                                                         inputs[layer], 0.0)
                if masks:
                    grad = grad.mul_(pad_rows(masks[layer - 1], positions, num_experts, capacity))
            elif ctx.needs_input_grad[0]:
                grad_x = torch.bmm(grad, weights[0].transpose(1, 2)).view(num_experts * capacity, -1) \
                    .index_select(0, positions)                                 # (M, D)
        return (grad_x, None, None, *weight_grads, *bias_grads)


# ---- the grouped_mm dispatch: one grouped GEMM per layer for all experts

_GROUPED_MM_SUPPORT: dict[tuple[str, torch.dtype], str | None] = {}


def grouped_mm_missing(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why torch's grouped GEMM cannot run here (None: it can). Probed once per device type and
    dtype on the three products the dispatch uses: torch before 2.8 has no ``F.grouped_mm``, it has
    no float64 kernel, and on CUDA its kernels exist only for some GPU generations and dtypes."""
    if torch.compiler.is_compiling() and dtype not in (torch.bfloat16, torch.float16):
        # torch 2.14's meta kernel of grouped_mm, which torch.compile traces with, refuses float32
        return f"torch.compile traces grouped_mm in bfloat16 or float16 only, not {str(dtype).removeprefix('torch.')}"
    key = (device.type, dtype)
    if key not in _GROUPED_MM_SUPPORT:
        _GROUPED_MM_SUPPORT[key] = _probe_grouped_mm(device, dtype)
    return _GROUPED_MM_SUPPORT[key]


def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> str | None:
    if not hasattr(F, "grouped_mm"):
        return f"torch {torch.__version__} has no torch.nn.functional.grouped_mm"
    try:
        a = torch.ones(3, 8, device=device, dtype=dtype)
        b = torch.ones(2, 8, 8, device=device, dtype=dtype)
        offs = torch.tensor([1, 3], device=device, dtype=torch.int32)
        F.grouped_mm(a, b, offs=offs)
        F.grouped_mm(a.t(), a, offs=offs)                                  # the weight gradient's form
        F.grouped_mm(a, b.transpose(1, 2), offs=offs)                      # the input gradient's form
    except (RuntimeError, NotImplementedError) as error:
        return f"grouped_mm fails on {device.type} in {str(dtype).removeprefix('torch.')}: " \
               f"{str(error).splitlines()[0][:120]}"
    return None


def aligned_width(width: int, dtype: torch.dtype) -> int:
    """``width`` rounded up to the 16-byte row alignment that grouped GEMM kernels require."""
    per_16_bytes = max(1, 16 // torch.empty((), dtype=dtype).element_size())
    return -(-width // per_16_bytes) * per_16_bytes


def _pad_columns(t: Tensor, width: int) -> Tensor:
    """Zero columns appended to the last dimension up to ``width`` (t itself when already there)."""
    return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))


class GroupedMMMLP(torch.autograd.Function):
    """All experts of an MLP bank through torch's grouped GEMM (``F.grouped_mm``): one kernel
    per layer for the products of every expert on its own rows, whatever their counts.

    forward(x (M, D), counts, masks, *weights, *biases) -> (M, K), rows grouped by expert; per
    layer z = grouped_mm(a, W, offs) + b[expert of the row], a_{l+1} = relu(z) * dropout mask.
    backward, with g the gradient of a layer's output on all rows:
        dW_l = grouped_mm(a_l^T, g, offs)    (E, in, out): expert e's a^T g over its rows
        db_l = sum of g over each expert's rows (index_add by expert)
        g    = grouped_mm(g, W_l^T, offs) * relu'(a_l) * dropout mask
    Widths that are not a multiple of 16 bytes (10 class logits) are zero-padded, which adds
    nothing to any product; empty experts get zero gradients from the kernel itself.
    """

    @staticmethod
    def forward(ctx, x, counts, masks, *params):
        num_layers = len(params) // 2
        weights, biases = params[:num_layers], params[num_layers:]
        dtype, num_experts = x.dtype, weights[0].shape[0]
        widths = [aligned_width(w, dtype) for w in (weights[0].shape[1], *(w.shape[2] for w in weights))]
        offs_np = np.cumsum(np.asarray(counts), dtype=np.int32)
        offs = torch.from_numpy(offs_np).to(x.device)                              # (E,) int32
        expert_of_row = torch.from_numpy(np.repeat(np.arange(num_experts), counts)).to(x.device)   # (M,)
        h = _pad_columns(x, widths[0]).contiguous()                                # (M, D'), rows 16-byte aligned
        inputs, padded_weights = [h], []
        for layer in range(num_layers):
            weight = weights[layer]
            if weight.shape[1:] != (widths[layer], widths[layer + 1]):
                weight = F.pad(weight, (0, widths[layer + 1] - weight.shape[2], 0, widths[layer] - weight.shape[1]))
            padded_weights.append(weight)
            bias = _pad_columns(biases[layer], widths[layer + 1]).index_select(0, expert_of_row)   # (M, out')
            h = F.grouped_mm(h, weight, offs=offs).add_(bias)                      # (M, out')
            if layer < num_layers - 1:
                h = h.relu_()
                if masks:
                    h = h.mul_(_pad_columns(masks[layer], widths[layer + 1]))
                inputs.append(h)
        ctx.num_layers, ctx.num_masks, ctx.widths = num_layers, len(masks), widths
        ctx.shapes = [(w.shape[1], w.shape[2]) for w in weights]
        ctx.save_for_backward(offs, expert_of_row, *padded_weights, *masks, *inputs)
        return h[:, :weights[-1].shape[2]] if widths[-1] != weights[-1].shape[2] else h

    @staticmethod
    def backward(ctx, grad_out):
        num_layers, widths = ctx.num_layers, ctx.widths
        offs, expert_of_row, *saved = ctx.saved_tensors
        weights = saved[:num_layers]
        masks = saved[num_layers:num_layers + ctx.num_masks]
        inputs = saved[num_layers + ctx.num_masks:]                                # a_0 .. a_{L-1}, padded
        num_experts = weights[0].shape[0]
        # contiguous: the kernel refuses the stride-0 gradient of a sum, for one
        grad = _pad_columns(grad_out, widths[-1]).contiguous()                     # (M, K')
        weight_grads, bias_grads, grad_x = [None] * num_layers, [None] * num_layers, None
        for layer in reversed(range(num_layers)):
            rows_in, rows_out = ctx.shapes[layer]
            weight_grad = F.grouped_mm(inputs[layer].t(), grad, offs=offs)         # (E, in', out')
            bias_grad = grad.new_zeros(num_experts, widths[layer + 1]).index_add_(0, expert_of_row, grad)
            # sliced only where padded: a slice is one more operation per layer on the hot path
            weight_grads[layer] = weight_grad[:, :rows_in, :rows_out] \
                if weight_grad.shape[1:] != (rows_in, rows_out) else weight_grad
            bias_grads[layer] = bias_grad[:, :rows_out] if widths[layer + 1] != rows_out else bias_grad
            if layer > 0:
                grad = torch.ops.aten.threshold_backward(F.grouped_mm(grad, weights[layer].transpose(1, 2), offs=offs),
                                                         inputs[layer], 0.0)
                if masks:
                    grad = grad.mul_(_pad_columns(masks[layer - 1], widths[layer]))
            elif ctx.needs_input_grad[0]:
                grad_x = F.grouped_mm(grad, weights[0].transpose(1, 2), offs=offs)  # (M, D')
                if widths[0] != rows_in:
                    grad_x = grad_x[:, :rows_in]
        return (grad_x, None, None, *weight_grads, *bias_grads)
