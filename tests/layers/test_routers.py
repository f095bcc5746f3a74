"""moelab/layers/routers.py: the routers' weights, counts, gradients and noise."""
import math

import pytest
import torch

from moelab.layers.routers import build_router
from moelab.layers.routing import GATING_CHOICES

from .routing_cases import TOKEN_CHOICE, D, E, K, N, make_moe


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
    router = build_router("expert-choice", D, E, top_k=k, capacity_factor=capacity_factor)
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


def test_router_jitter_scales_each_router_input_in_training_only():
    """--router-jitter eps: in training the scores are those of x * m, m ~ U(1 - eps, 1 + eps)
    elementwise; off (0) or in evaluation, those of x itself."""
    x = torch.randn(N, D)
    plain, jittered = build_router("topk", D, E, top_k=2), build_router("topk", D, E, top_k=2, router_jitter=0.1)
    jittered.load_state_dict(plain.state_dict())
    weight = plain.proj.weight
    assert torch.equal(plain.train()(x).logits, x @ weight.t())
    assert torch.equal(jittered.eval()(x).logits, x @ weight.t())
    torch.manual_seed(0)
    noisy = jittered.train()(x).logits
    torch.manual_seed(0)
    scale = 0.9 + 0.2 * torch.rand(N, D)                    # the same draw, as the router makes it
    torch.testing.assert_close(noisy, (x * scale) @ weight.t())
    assert not torch.allclose(noisy, x @ weight.t())


def test_a_router_option_reaches_the_router_from_the_command_line():
    from moelab.models.builder import build_model
    from moelab.training.config import parse_args

    cfg = parse_args(["--router-jitter", "0.01", "--gating", "topk"])
    model = build_model(cfg.model_spec(), (1, 28, 28), 10)
    assert model.routers()[0].config.router_jitter == 0.01 and model.routers()[0].k == 2
