"""moelab/layers/moe.py: sparse dispatch and combine against a slow per-sample reference."""
import math

import pytest
import torch

from moelab.layers.experts import MLPExperts, ModuleExperts, mlp
from moelab.layers.moe import MoE
from moelab.layers.routing import GATING_CHOICES

from .routing_cases import D, E, K, N, make_moe


def reference_forward(moe: MoE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Slow reference: every sample on its own, every selected expert called separately."""
    rows = []
    for n in range(x.shape[0]):
        terms = []
        for e in range(weights.shape[1]):
            if weights[n, e] != 0:
                out = moe.experts.expert_forward(e, x[n:n + 1])[0]
                terms.append(weights[n, e] * (out.softmax(-1) if moe.combine == "probs" else out))
        mixed = torch.stack(terms).sum(0) if terms else x.new_zeros(K)
        mixed = torch.log(mixed.clamp_min(1e-12)) if moe.combine == "probs" else mixed
        if moe.shared is not None:
            mixed = mixed + sum(moe.shared.expert_forward(s, x[n:n + 1])[0] for s in range(len(moe.shared)))
        rows.append(mixed)
    return torch.stack(rows)


@pytest.mark.parametrize("gating", GATING_CHOICES)
@pytest.mark.parametrize("combine", ["logits", "probs"])
@pytest.mark.parametrize("bank", ["stacked", "modules"])
def test_dispatch_equals_per_sample_reference(gating, combine, bank):
    moe = make_moe(gating, combine=combine, bank=bank).train()
    x = torch.randn(N, D, requires_grad=True)
    target = torch.randint(0, K, (N,))
    torch.manual_seed(1)
    out = moe(x)
    loss = torch.nn.functional.cross_entropy(out.logits, target)
    fast_grads = torch.autograd.grad(loss, [x, *moe.parameters()], allow_unused=True)

    torch.manual_seed(1)  # same router noise
    weights = moe.router(x).weights
    ref = reference_forward(moe, x, weights)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    ref_loss = torch.nn.functional.cross_entropy(ref, target)
    ref_grads = torch.autograd.grad(ref_loss, [x, *moe.parameters()], allow_unused=True)
    for fast, slow in zip(fast_grads, ref_grads):
        if fast is None or slow is None:
            assert (fast is None or fast.abs().max() == 0) and (slow is None or slow.abs().max() == 0)
        else:
            assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("gating,k", [("hard", 1), ("topk", 2), ("expert-choice", 2), ("soft", 2)])
def test_unselected_experts_are_not_evaluated(gating, k):
    moe = make_moe(gating, k=k, bank="modules").eval()
    x = torch.rand(N, D)                        # positive inputs ...
    with torch.no_grad():
        moe.router.proj.weight[0] = -1.0        # ... so expert 0 always scores lowest
    seen = [0] * E
    for e, expert in enumerate(moe.experts.experts):
        expert.register_forward_hook(lambda mod, inp, out, e=e: seen.__setitem__(e, seen[e] + inp[0].shape[0]))
    out = moe(x)
    counts = out.routing.assignment_counts().tolist()
    assert seen == counts                       # each expert ran on exactly its own samples
    if gating == "soft":
        assert seen == [N] * E
    elif gating == "expert-choice":
        assert seen == [math.ceil(N * k / E)] * E
    else:
        assert seen[0] == 0                     # never selected, never computed
        assert sum(seen) == N * k               # no wasted compute on unselected experts
    assert out.expert_logits.shape[0] == sum(seen)


def test_sample_picked_by_no_expert_gets_zero_logits():
    moe = make_moe("expert-choice", k=1, capacity_factor=0.25).eval()
    out = moe(torch.randn(N, D))
    unpicked = out.routing.weights.sum(dim=1) == 0
    assert unpicked.any()
    assert torch.equal(out.logits[unpicked], torch.zeros(int(unpicked.sum()), K))


# ----------------------------------------------------------------------------- shared experts

@pytest.mark.parametrize("gating", ["soft", "hard", "topk", "expert-choice"])
@pytest.mark.parametrize("bank", ["stacked", "modules"])
def test_shared_experts_add_their_outputs_to_the_routed_mixture(gating, bank):
    moe = make_moe(gating, bank=bank).train()
    torch.manual_seed(5)
    moe.shared = MLPExperts(2, D, 16, K) if bank == "stacked" else ModuleExperts([mlp(D, 16, K) for _ in range(2)], K)
    x = torch.randn(N, D, requires_grad=True)
    torch.manual_seed(1)
    out = moe(x)
    torch.manual_seed(1)
    reference = reference_forward(moe, x, moe.router(x).weights)
    assert torch.allclose(out.logits, reference, atol=1e-5)
    grads = torch.autograd.grad(out.logits.square().sum(), [x, *moe.shared.parameters()])
    ref_grads = torch.autograd.grad(reference.square().sum(), [x, *moe.shared.parameters()])
    for fast, slow in zip(grads, ref_grads):
        assert torch.allclose(fast, slow, atol=1e-4)
