"""moelab/layers/capacity.py: expert capacity, its drop policies, and the selection bias of loss-free balancing."""
import math

import pytest
import torch

from moelab.layers.capacity import capacity_keep, update_selection_bias
from moelab.layers.routers import build_router

from .routing_cases import TOKEN_CHOICE, D, E, N, make_moe

# ----------------------------------------------------------------------------- capacity and dropping

@pytest.mark.parametrize("gating", TOKEN_CHOICE)
@pytest.mark.parametrize("policy", ["position", "priority"])
@pytest.mark.parametrize("factor", [0.5, 1.0, 1.25])
def test_no_expert_takes_more_than_its_capacity(gating, policy, factor):
    torch.manual_seed(0)
    router = build_router(gating, D, E, top_k=2, capacity_factor=factor, drop_policy=policy).train()
    routing = router(torch.randn(N, D) * 3)
    k = 1 if gating == "hard" else 2
    capacity = math.ceil(factor * N * k / E)
    assert (routing.counts <= capacity).all()
    assert torch.equal(routing.counts, torch.bincount(routing.expert_index, minlength=E))
    assert int(routing.dropped.sum()) == N * k - len(routing.expert_index)   # every choice kept or dropped
    assert torch.equal(routing.gate, routing.weights[routing.sample_index, routing.expert_index])
    assert int((routing.weights != 0).sum()) == len(routing.expert_index)   # dropped pairs weigh nothing


@pytest.mark.parametrize("gating", TOKEN_CHOICE)
@pytest.mark.parametrize("policy", ["position", "priority"])
def test_ample_capacity_drops_nothing_and_equals_the_dropless_router(gating, policy):
    x = torch.randn(N, D)
    dropless = make_moe(gating, seed=3).train()
    capped = make_moe(gating, seed=3, capacity_factor=float(E), drop_policy=policy).train()
    torch.manual_seed(1)
    a = dropless(x)
    torch.manual_seed(1)
    b = capped(x)
    assert int(b.routing.dropped.sum()) == 0 and a.routing.dropped is None
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.routing.weights, b.routing.weights)
    for name in a.aux:
        assert torch.equal(a.aux[name], b.aux[name]), name


def test_position_policy_keeps_each_experts_first_samples_and_priority_its_most_probable():
    torch.manual_seed(0)
    x = torch.randn(N, D) * 3
    for policy in ("position", "priority"):
        router = build_router("hard", D, E, capacity_factor=0.5, drop_policy=policy).train()
        torch.manual_seed(0)
        routing = router(x)
        choice = routing.probs.argmax(dim=1)                                 # (N,) top-1 expert
        capacity = math.ceil(0.5 * N / E)
        for e in range(E):
            candidates = (choice == e).nonzero().flatten()                    # in batch order
            kept = routing.sample_index[routing.expert_index == e].sort().values
            if policy == "position":
                expected = candidates[:capacity]
            else:
                by_probability = routing.probs[candidates, e].argsort(descending=True, stable=True)
                expected = candidates[by_probability[:capacity]].sort().values
            assert torch.equal(kept, expected), (policy, e)


def test_capacity_serves_first_choices_before_second_choices():
    top_index = torch.tensor([[0, 1], [0, 1], [1, 0]])                      # (N=3, k=2)
    priority = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    # C = ceil(1.0 * 3 * 2 / 2) = 3 per expert: expert 0 gets first choices of rows 0, 1 and the
    # second choice of row 2; expert 1 the first choice of row 2 and second choices of rows 0, 1.
    keep = capacity_keep(top_index, priority, 2, 1.0, "position")
    assert keep.all()
    # C = ceil(0.5 * 6 / 2) = 2: expert 0 serves rows 0 and 1 (first choices), drops row 2's second;
    # expert 1 serves row 2's first choice, then row 0's second (position) or the more probable one.
    keep = capacity_keep(top_index, priority, 2, 0.5, "position")
    assert keep.tolist() == [[True, True], [True, False], [True, False]]
    keep = capacity_keep(top_index, priority, 2, 0.5, "priority")
    assert keep.tolist() == [[True, False], [True, True], [True, False]]


# ----------------------------------------------------------------------------- loss-free balancing

@pytest.mark.parametrize("gating", TOKEN_CHOICE)
def test_selection_bias_moves_the_choice_but_not_the_weights_or_the_gradient(gating):
    torch.manual_seed(0)
    router = build_router(gating, D, E, top_k=2, bias_balance_rate=0.1).train()
    router.selection_bias.copy_(torch.tensor([50.0] + [0.0] * (E - 1)))       # every token picks expert 0
    assert "selection_bias" not in dict(router.named_parameters()) and not router.selection_bias.requires_grad
    x = torch.randn(N, D)
    torch.manual_seed(1)
    routing = router(x)
    k = 1 if gating == "hard" else 2
    picked = routing.expert_index.view(N, k)
    assert (picked == 0).any(dim=1).all()
    # The same choice made without the bias, weighted as each router weights it, gives the same
    # weights and router gradient: the bias decided the experts and nothing else.
    unbiased = build_router(gating, D, E, top_k=2)
    unbiased.load_state_dict({k_: v for k_, v in router.state_dict().items() if k_ != "selection_bias"})
    unbiased.train()
    forced = picked.sort(dim=1).values
    torch.manual_seed(1)
    reference = unbiased(x)
    if gating in ("hard", "topk"):
        probs = reference.probs.gather(1, forced)
        expected = probs if gating == "hard" else probs / probs.sum(dim=1, keepdim=True)
        got = routing.weights.gather(1, forced)
        assert torch.allclose(got, expected, atol=1e-6)
        grad_biased = torch.autograd.grad(got.square().sum(), router.proj.weight)[0]
        grad_reference = torch.autograd.grad(expected.square().sum(), unbiased.proj.weight)[0]
        assert torch.allclose(grad_biased, grad_reference, atol=1e-6)


def test_selection_bias_update_rule_on_a_hand_made_load():
    router = build_router("hard", D, 4, bias_balance_rate=0.25)
    update_selection_bias(router, torch.tensor([4, 0, 2, 2]))              # mean load 2
    assert router.selection_bias.tolist() == [-0.25, 0.25, 0.0, 0.0]
    update_selection_bias(router, torch.tensor([4, 0, 2, 2]))
    assert router.selection_bias.tolist() == [-0.5, 0.5, 0.0, 0.0]
    fresh = build_router("hard", D, 4, bias_balance_rate=0.25)
    fresh.load_state_dict(router.state_dict())                               # saved with the model
    assert torch.equal(fresh.selection_bias, router.selection_bias)
    assert "selection_bias" not in build_router("hard", D, 4).state_dict()   # off: old checkpoints still load
