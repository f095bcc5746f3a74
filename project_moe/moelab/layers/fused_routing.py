"""The top-1 (Switch) MoE layer's routing and combine, each as one autograd node.

Legend: N rows, E experts, D router and expert input features, K expert output width.

A training step of the plain layer records every small operation of the router and of the
combine (scores, softmax, max, sort, gathers, the scatter back, and the views and copies
autograd adds for them) as separate autograd nodes, each with its own backward. At small
batches that fixed cost, not the arithmetic, sets the speed. Here the layer is three nodes:

    Top1Dispatch   x -> logits s = x W^T, p = softmax(s), e(n) = argmax p(n), g(n) = p(n, e(n)),
                   rows sorted by expert (stable): x_sorted, g_sorted, order, counts
    experts        x_sorted -> out_sorted (experts.py, already one node)
    Top1Combine    y(order[m]) = g_sorted(m) out_sorted(m)

with hand-written backwards (the maths below). The plain layer (layers/moe.py MoE._sparse) stays
the reference: it is what ``torch.func`` differentiates and what the tests compare these
nodes with.

Backward, with G = dL/dp (from the auxiliary losses, or 0) and gy = dL/dy:
    dL/dg_sorted(m)   = <gy(order[m]), out_sorted(m)>
    dL/dout_sorted(m) = g_sorted(m) gy(order[m])
    G(order[m], e_sorted(m)) += dL/dg_sorted(m)
    dL/ds = p * (G - sum_e G p)       (softmax backward)  [+ dL/ds from the z-loss]
    dL/dW = (dL/ds)^T x,   dL/dx = (dL/ds) W + unsort(dL/dx_sorted)
"""
from __future__ import annotations

import torch


class Top1Dispatch(torch.autograd.Function):
    """forward(router_in (N, D), weight (E, D), rows (N, D')) ->
    logits (N, E), probs (N, E), expert_sorted (N,), order (N,), gate_sorted (N,),
    rows_sorted (N, D'), counts (E,). ``router_in`` and ``rows`` may be the same tensor.
    expert_sorted, order and counts are indices (no gradient)."""

    @staticmethod
    def forward(ctx, router_in, weight, rows):
        logits = torch.mm(router_in, weight.t())                                  # (N, E)
        probs = torch.softmax(logits, dim=1)                                      # (N, E)
        gate, expert = probs.max(dim=1)                                           # (N,), (N,)
        expert_sorted, order = torch.sort(expert, stable=True)                   # (N,), (N,)
        counts = torch.bincount(expert, minlength=weight.shape[0])               # (E,)
        gate_sorted = gate.index_select(0, order)                                 # (N,)
        rows_sorted = rows.index_select(0, order)                                 # (N, D')
        ctx.mark_non_differentiable(expert_sorted, order, counts)
        if not ctx.needs_input_grad[2]:
            # Rows of raw pixels: the experts need not compute a gradient for their input.
            ctx.mark_non_differentiable(rows_sorted)
        ctx.save_for_backward(router_in, weight, probs, expert_sorted, order)
        ctx.rows_shape = rows.shape
        ctx.set_materialize_grads(False)   # outputs nobody used get None: no work for them
        return logits, probs, expert_sorted, order, gate_sorted, rows_sorted, counts

    @staticmethod
    def backward(ctx, grad_logits, grad_probs, _expert, _order, grad_gate, grad_rows_sorted, _counts):
        router_in, weight, probs, expert_sorted, order = ctx.saved_tensors
        grad_router_in = grad_weight = grad_rows = None
        grad_scores = None
        if grad_probs is not None or grad_gate is not None:
            grad_p = grad_probs if grad_probs is not None else torch.zeros_like(probs)
            if grad_gate is not None:
                grad_p = grad_p.index_put((order, expert_sorted), grad_gate, accumulate=True)
            grad_scores = torch.ops.aten._softmax_backward_data(grad_p, probs, 1, probs.dtype)   # (N, E)
        if grad_logits is not None:
            grad_scores = grad_logits if grad_scores is None else grad_scores + grad_logits
        if grad_scores is not None:
            if ctx.needs_input_grad[1]:
                grad_weight = torch.mm(grad_scores.t(), router_in)              # (E, D)
            if ctx.needs_input_grad[0]:
                grad_router_in = torch.mm(grad_scores, weight)                  # (N, D)
        if grad_rows_sorted is not None and ctx.needs_input_grad[2]:
            grad_rows = grad_rows_sorted.new_empty(ctx.rows_shape).index_copy_(0, order, grad_rows_sorted)
        return grad_router_in, grad_weight, grad_rows


class Top1Combine(torch.autograd.Function):
    """forward(out_sorted (N, K), gate_sorted (N,), order (N,)) -> y (N, K), rows back in batch
    order, each scaled by its gate."""

    @staticmethod
    def forward(ctx, out_sorted, gate_sorted, order):
        ctx.save_for_backward(out_sorted, gate_sorted, order)
        scaled = out_sorted * gate_sorted.unsqueeze(1)                           # (N, K)
        return scaled.new_empty(scaled.shape).index_copy_(0, order, scaled)

    @staticmethod
    def backward(ctx, grad_y):
        out_sorted, gate_sorted, order = ctx.saved_tensors
        grad_sorted = grad_y.index_select(0, order)                              # (N, K)
        grad_out = grad_sorted * gate_sorted.unsqueeze(1) if ctx.needs_input_grad[0] else None
        grad_gate = torch.linalg.vecdot(grad_sorted, out_sorted) if ctx.needs_input_grad[1] else None
        return grad_out, grad_gate, None
