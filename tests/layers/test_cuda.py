"""The layers on a CUDA device (router invariants, dispatch equivalence, bfloat16); marked cuda, skipped without one."""
import pytest
import torch

from moelab.layers.experts import MLPExperts, dispatch_as
from moelab.layers.moe import MoE
from moelab.layers.routers import build_router
from moelab.layers.routing import GATING_CHOICES, TOKEN_CHOICE

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

N, D, E, K = 96, 20, 8, 7
CUDA = torch.device("cuda")


def make_moe(gating: str, **router) -> MoE:
    torch.manual_seed(0)
    return MoE(build_router(gating, D, E, top_k=2, **router), MLPExperts(E, D, 32, K, dropout=0.0)).to(CUDA)


@pytest.mark.parametrize("gating", TOKEN_CHOICE)
def test_token_choice_weights_and_counts_on_cuda(gating):
    routing = make_moe(gating).train().router(torch.randn(N, D, device=CUDA))
    k = 1 if gating == "hard" else 2
    assert torch.allclose(routing.weights.sum(dim=1), torch.ones(N, device=CUDA), atol=1e-5)
    assert ((routing.weights != 0).sum(dim=1) == k).all()
    assert torch.equal(routing.counts, torch.bincount(routing.expert_index, minlength=E))


@pytest.mark.parametrize("policy", ["position", "priority"])
def test_capacity_is_respected_on_cuda(policy):
    routing = make_moe("topk", capacity_factor=1.0, drop_policy=policy).train().router(torch.randn(N, D, device=CUDA))
    assert routing.counts.max().item() <= -(-N * 2 // E)
    assert (routing.counts + routing.dropped_counts()).sum().item() == 2 * N


@pytest.mark.parametrize("gating", GATING_CHOICES)
def test_grouped_padded_and_autograd_dispatch_agree_on_cuda(gating):
    moe = make_moe(gating).train()
    x = torch.randn(N, D, device=CUDA, requires_grad=True)
    results = []
    for dispatch, fused in (("grouped", True), ("padded", True), ("grouped_mm", True), ("grouped", False)):
        moe.experts.fused = fused
        torch.manual_seed(1)
        with dispatch_as(moe, dispatch):
            out = moe(x)
            ran = set(moe.experts.ran)
        assert ran == ({dispatch} if fused else {"grouped"}) or moe.experts.fallback, (dispatch, ran)
        grads = torch.autograd.grad(out.logits.square().sum(), [x, *moe.parameters()], allow_unused=True)
        results.append((out.logits, grads))
    reference_logits, reference_grads = results[-1]
    for logits, grads in results[:-1]:
        assert torch.allclose(logits, reference_logits, atol=1e-4)
        for grad, reference in zip(grads, reference_grads):
            if reference is not None:
                assert torch.allclose(grad, reference, atol=1e-3, rtol=1e-3)


def test_cuda_forward_equals_cpu_forward():
    moe = make_moe("topk").eval()
    x = torch.randn(N, D)
    with torch.no_grad():
        on_gpu = moe(x.to(CUDA)).logits.cpu()
        on_cpu = moe.cpu()(x).logits
    assert torch.allclose(on_gpu, on_cpu, atol=1e-4)


def test_grouped_mm_runs_in_bfloat16_on_a_gpu_that_has_the_kernel():
    """torch documents its CUDA grouped GEMM for bfloat16 on compute capability 8.0 and newer;
    elsewhere the bank must say why it fell back, and still compute."""
    moe = make_moe("topk").train()
    moe.experts.dispatch = "grouped_mm"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = moe(torch.randn(N, D, device=CUDA))
    out.logits.float().square().sum().backward()
    if torch.cuda.get_device_capability() >= (8, 0):
        assert moe.experts.ran == {"grouped_mm"}, moe.experts.fallback
    else:
        assert moe.experts.ran == {"grouped"} and moe.experts.fallback
