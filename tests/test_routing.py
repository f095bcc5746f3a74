"""Routers and sparse dispatch: invariants, and equality with a slow per-sample reference."""
import math

import pytest
import torch

from moelab.layers.capacity import capacity_keep, update_selection_bias
from moelab.layers.experts import MLPExperts, ModuleExperts, mlp
from moelab.layers.moe import MoE
from moelab.layers.routers import ExpertChoiceRouter, build_router
from moelab.layers.routing import GATING_CHOICES

N, D, E, K = 37, 12, 6, 5
TOKEN_CHOICE = ("hard", "topk", "noisy-topk", "gumbel")


def make_moe(gating: str, k: int = 2, seed: int = 0, combine: str = "logits", bank: str = "stacked",
             **router_kwargs) -> MoE:
    torch.manual_seed(seed)
    router = build_router(gating, D, E, top_k=k, **router_kwargs)
    if bank == "stacked":
        experts = MLPExperts(E, D, 16, K, depth=1)
    else:
        experts = ModuleExperts([mlp(D, 16, K, depth=1) for _ in range(E)], K)
    return MoE(router, experts, combine=combine)


def experts_used(gating: str, k: int) -> int:
    return {"hard": 1, "soft": E}.get(gating, k)


@pytest.mark.parametrize("gating", TOKEN_CHOICE + ("soft",))
@pytest.mark.parametrize("training", [True, False])
def test_token_choice_weights_are_distributions_over_k_experts(gating, training):
    k = 3
    router = build_router(gating, D, E, top_k=k).train(training)
    routing = router(torch.randn(N, D))
    assert routing.weights.shape == (N, E)
    row_sum = routing.weights.sum(dim=1)
    if gating == "hard":  # Switch scales the one chosen expert by its probability, not by 1
        assert torch.allclose(row_sum, routing.probs.max(dim=1).values)
    else:
        assert torch.allclose(row_sum, torch.ones(N), atol=1e-6)
    assert (routing.weights >= 0).all()
    assert ((routing.weights != 0).sum(dim=1) == experts_used(gating, k)).all()
    if not routing.is_dense:
        assert torch.equal(routing.gate, routing.weights[routing.sample_index, routing.expert_index])


@pytest.mark.parametrize("gating", GATING_CHOICES)
def test_counts_are_the_assignments_per_expert_and_feed_the_switch_loss(gating):
    router = build_router(gating, D, E, top_k=2).train()
    routing = router(torch.randn(N, D) * 3)
    if routing.is_dense:
        assert torch.equal(routing.counts, torch.full((E,), N))
        top1 = torch.bincount(routing.probs.argmax(dim=1), minlength=E)   # Switch's f_i for dense routing
    else:
        assert torch.equal(routing.counts, torch.bincount(routing.expert_index, minlength=E))
        top1 = routing.counts
    f = top1.float() / top1.sum()
    assert routing.aux["balance"].item() == pytest.approx(E * (f * routing.probs.mean(dim=0)).sum().item(), rel=1e-6)


@pytest.mark.parametrize("capacity_factor,k", [(1.0, 1), (1.0, 2), (2.0, 2), (0.5, 1)])
def test_expert_choice_respects_capacity(capacity_factor, k):
    router = ExpertChoiceRouter(D, E, k=k, capacity_factor=capacity_factor)
    routing = router(torch.randn(N, D))
    capacity = min(N, math.ceil(capacity_factor * N * k / E))
    assert torch.equal(routing.assignment_counts(), torch.full((E,), capacity))
    assert ((routing.weights != 0).sum(dim=0) == capacity).all()
    # each expert keeps exactly the samples where its own score is highest
    for e in range(E):
        kept = routing.weights[:, e] != 0
        assert routing.probs[kept, e].min() >= routing.probs[~kept, e].max()
    assert torch.equal(routing.gate, routing.weights[routing.sample_index, routing.expert_index])


def test_hard_gradient_modes():
    x = torch.randn(N, D)
    switch = build_router("hard", D, E, hard_grad="switch")
    ste = build_router("hard", D, E, hard_grad="ste")
    ste.load_state_dict(switch.state_dict())
    r_switch, r_ste = switch(x), ste(x)
    top_prob = r_switch.probs.max(dim=1).values
    assert torch.allclose(r_switch.gate, top_prob)          # Switch: scaled by p
    assert torch.allclose(r_ste.gate, torch.ones(N))         # STE: forward weight 1
    g_switch = torch.autograd.grad(r_switch.gate.sum(), switch.proj.weight)[0]
    g_ste = torch.autograd.grad(r_ste.gate.sum(), ste.proj.weight)[0]
    assert torch.allclose(g_switch, g_ste)                   # same backward


@pytest.mark.parametrize("gating", GATING_CHOICES)
def test_gradient_reaches_every_router_parameter(gating):
    moe = make_moe(gating).train()
    out = moe(torch.randn(N, D))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.randint(0, K, (N,)))
    if gating == "noisy-topk":  # its noise scale learns through the smooth load estimate
        loss = loss + out.routing.aux["cv"]
    loss.backward()
    for name, param in moe.router.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_noise_only_in_training():
    for gating in ("noisy-topk", "gumbel"):
        moe = make_moe(gating)
        x = torch.randn(N, D)
        moe.eval()
        assert torch.equal(moe(x).routing.weights, moe(x).routing.weights)
        moe.train()
        assert not torch.equal(moe(x).routing.weights, moe(x).routing.weights)


def test_noisy_smooth_load_matches_monte_carlo_load():
    """Averaged over noise draws, the smooth load sum_x P(x, i) must equal the expected
    number of samples routed to expert i (P is that probability given the other noises)."""
    torch.manual_seed(0)
    router = build_router("noisy-topk", D, E, top_k=2).train()
    x = torch.randn(N, D)
    with torch.no_grad():
        draws = [router(x) for _ in range(3000)]
    smooth = torch.stack([r.load for r in draws]).mean(0)
    actual = torch.stack([r.assignment_counts().float() for r in draws]).mean(0)
    assert torch.allclose(smooth, actual, atol=0.35), (smooth, actual)
    assert torch.allclose(smooth.sum(), torch.tensor(N * 2.0), rtol=0.02)


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
    router = build_router(gating, D, E, top_k=2, bias_rate=0.1).train()
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
    router = build_router("hard", D, 4, bias_rate=0.25)
    update_selection_bias(router, torch.tensor([4, 0, 2, 2]))              # mean load 2
    assert router.selection_bias.tolist() == [-0.25, 0.25, 0.0, 0.0]
    update_selection_bias(router, torch.tensor([4, 0, 2, 2]))
    assert router.selection_bias.tolist() == [-0.5, 0.5, 0.0, 0.0]
    fresh = build_router("hard", D, 4, bias_rate=0.25)
    fresh.load_state_dict(router.state_dict())                               # saved with the model
    assert torch.equal(fresh.selection_bias, router.selection_bias)
    assert "selection_bias" not in build_router("hard", D, 4).state_dict()   # off: old checkpoints still load


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
