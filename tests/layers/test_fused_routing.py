"""moelab/layers/fused_routing.py: the fused top-1 layer against the plain autograd layer it replaces."""
import copy

import pytest
import torch

from moelab.bench.timing import count_ops
from moelab.layers.experts import MLPExperts, use_reference_experts
from moelab.layers.fused_routing import Top1Combine, Top1Dispatch
from moelab.layers.moe import MoE
from moelab.layers.routers import build_router

NUM_EXPERTS, FEATURES, CLASSES = 5, 12, 4
LOSSES = {"balance": 0.3, "z": 0.05, "cv": 0.2, "entropy": 0.1, "kl_uniform": 0.1}


def layer(dispatch: str = "grouped", **router) -> MoE:
    torch.manual_seed(0)
    return MoE(build_router("hard", FEATURES, NUM_EXPERTS, **router),
               MLPExperts(NUM_EXPERTS, FEATURES, 16, CLASSES, dispatch=dispatch))


def objective(output, y):
    loss = torch.nn.functional.cross_entropy(output.logits, y)
    return loss + sum(coef * output.aux[name] for name, coef in LOSSES.items())


@pytest.mark.parametrize("dispatch", ["grouped", "padded"])
@pytest.mark.parametrize("input_grad", [False, True])     # raw pixels, or features of a trunk
def test_fused_layer_equals_the_plain_layer(dispatch, input_grad):
    fused = layer(dispatch)
    plain = copy.deepcopy(fused)
    use_reference_experts(plain)                            # plain autograd routing and experts
    x = torch.randn(40, FEATURES) * 3                       # spread logits: every expert gets rows
    y = torch.randint(0, CLASSES, (40,))
    results = []
    for net in (fused, plain):
        rows = x.clone().requires_grad_(input_grad)
        output = net(rows)
        objective(output, y).backward()
        results.append((output, rows.grad, {n: p.grad for n, p in net.named_parameters()}))
    (out_f, grad_x_f, grads_f), (out_p, grad_x_p, grads_p) = results
    assert fused._fuses_top1(x) and not plain._fuses_top1(x)
    assert torch.allclose(out_f.logits, out_p.logits, atol=1e-6)
    assert torch.allclose(out_f.expert_logits, out_p.expert_logits, atol=1e-6)
    for field in ("sample_index", "expert_index"):
        assert torch.equal(getattr(out_f, field), getattr(out_p, field))
    for field in ("counts", "load"):
        assert torch.equal(getattr(out_f.routing, field), getattr(out_p.routing, field))
    for field in ("logits", "probs", "weights"):
        assert torch.allclose(getattr(out_f.routing, field), getattr(out_p.routing, field), atol=1e-6), field
    for routing in (out_f.routing, out_p.routing):   # the assignments, each in its own order
        assert torch.equal(routing.weights[routing.sample_index, routing.expert_index], routing.gate)
    assert out_f.aux.keys() == out_p.aux.keys() and all(
        torch.allclose(out_f.aux[k], out_p.aux[k], atol=1e-6) for k in out_f.aux)
    for name, grad in grads_p.items():
        assert torch.allclose(grads_f[name], grad, atol=1e-5), name
    assert (grad_x_f is None) == (not input_grad)
    if input_grad:
        assert torch.allclose(grad_x_f, grad_x_p, atol=1e-5)


def test_fused_nodes_pass_gradcheck():
    torch.manual_seed(1)
    router_in = (torch.randn(9, 6, dtype=torch.double) * 2).requires_grad_()
    weight = torch.randn(3, 6, dtype=torch.double, requires_grad=True)
    rows = torch.randn(9, 7, dtype=torch.double, requires_grad=True)
    expert_map = torch.randn(3, 7, 2, dtype=torch.double, requires_grad=True)

    def layer_outputs(router_in, weight, rows, expert_map):
        logits, probs, expert, order, gate, rows_sorted, _ = Top1Dispatch.apply(router_in, weight, rows)
        out = torch.einsum("nd,ndk->nk", rows_sorted, expert_map[expert])   # a linear expert per row
        return Top1Combine.apply(out, gate, order), logits.square().sum(), (probs * probs).sum()

    assert torch.autograd.gradcheck(layer_outputs, (router_in, weight, rows, expert_map))


def test_fused_path_only_where_it_computes_the_same():
    x = torch.randn(4, FEATURES)
    assert layer()._fuses_top1(x)
    assert not layer().eval()._fuses_top1(x)                   # evaluation takes the plain path
    with torch.no_grad():
        assert not layer()._fuses_top1(x)
    for router in (dict(hard_grad="ste"), dict(score="cosine"), dict(bias_rate=1e-3),
                   dict(drop_policy="position", capacity_factor=1.0)):
        assert not layer(**router)._fuses_top1(x), router


@pytest.mark.parametrize("dispatch", ["grouped", "padded"])
def test_fused_step_dispatches_fewer_operations(dispatch):
    fused = layer(dispatch)
    plain = copy.deepcopy(fused)
    use_reference_experts(plain)
    for bank in (fused.experts, plain.experts):   # both with the one-node expert bank: only routing differs
        bank.fused = True
    x, y = torch.randn(64, FEATURES) * 3, torch.randint(0, CLASSES, (64,))
    plain.fused_routing = False
    counts = [count_ops(lambda: objective(net(x), y).backward()) for net in (fused, plain)]
    assert counts[0] < counts[1] - 10, counts
