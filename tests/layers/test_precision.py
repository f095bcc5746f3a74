"""moelab/layers/precision.py: router scores in float32 and the expert bank under bfloat16 autocast."""
import pytest
import torch

from moelab.layers.experts import MLPExperts
from moelab.layers.precision import Precision
from moelab.layers.routers import build_router

N, D, E, K = 40, 12, 6, 5


def test_router_scores_stay_float32_under_autocast():
    router = build_router("topk", D, E, top_k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(torch.randn(N, D))
    assert routing.logits.dtype == torch.float32 and routing.probs.dtype == torch.float32


@pytest.mark.parametrize("dispatch", ["grouped", "padded", "grouped_mm"])
def test_expert_bank_under_bf16_autocast_equals_autograd_and_keeps_float32_gradients(dispatch):
    torch.manual_seed(0)
    bank = MLPExperts(E, D, 32, K, dispatch=dispatch)
    x = torch.randn(N, D)
    counts = [7, 0, 11, 5, 9, 8]

    def run(amp: bool, fused: bool = True):
        bank.fused = fused
        bank.zero_grad()
        with Precision(amp).autocast():
            out = bank.forward_sorted(x, counts)
        out.float().square().sum().backward()
        return out, [p.grad.clone() for p in bank.parameters()]

    out32, grads32 = run(False)
    assert bank.ran == {dispatch}
    bank.ran = set()
    out16, grads16 = run(True)
    assert bank.ran == {dispatch} and bank.fallback is None     # grouped_mm ran in float32 and in bfloat16
    reference16, reference_grads16 = run(True, fused=False)      # plain autograd under the same autocast
    assert out16.dtype == torch.bfloat16
    assert torch.allclose(out16.float(), reference16.float(), rtol=1e-2, atol=1e-2)
    assert torch.allclose(out16.float(), out32, rtol=0.05, atol=0.05)
    for g16, reference, g32 in zip(grads16, reference_grads16, grads32):
        assert g16.dtype == torch.float32
        assert (g16 - reference).norm() <= 0.02 * reference.norm() + 1e-6
        # bf16 keeps 8 bits of mantissa, and a ReLU whose input changes sign passes no gradient.
        assert (g16 - g32).norm() <= 0.1 * g32.norm() + 1e-6
