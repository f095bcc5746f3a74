"""moelab/layers/aux_losses.py: the auxiliary losses against their formulas, and only the ones asked for."""
import math

import pytest
import torch

from moelab.layers import aux_losses
from moelab.layers.experts import MLPExperts
from moelab.layers.moe import MoE
from moelab.layers.routers import build_router
from moelab.layers.routing import GATING_CHOICES

N, D, E, K = 40, 12, 6, 5


def test_switch_balance_loss_hand_example():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    counts = torch.tensor([2, 0])                            # f = [1, 0], P = [0.55, 0.45]
    assert aux_losses.switch_balance_loss(probs, counts).item() == pytest.approx(2 * 0.55)


def test_losses_from_batch_sums_equal_the_definitions_and_add_over_shards():
    torch.manual_seed(0)
    logits = torch.randn(30, 5) * 2
    probs = logits.softmax(dim=-1)
    weights = probs * (probs > 0.2)
    counts = (weights > 0).sum(dim=0)
    load = torch.rand(5) * 10
    sums = aux_losses.routing_sums(logits, probs, weights, counts, load)
    losses = aux_losses.losses_from_sums(sums)
    assert losses["balance"].item() == pytest.approx(aux_losses.switch_balance_loss(probs, counts).item(), rel=1e-6)
    assert losses["cv"].item() == pytest.approx(aux_losses.importance_load_loss(weights, load).item(), rel=1e-6)
    assert losses["z"].item() == pytest.approx(aux_losses.router_z_loss(logits).item(), rel=1e-6)
    assert losses["entropy"].item() == pytest.approx(aux_losses.gate_entropy_loss(probs).item(), rel=1e-6)
    assert losses["kl_uniform"].item() == pytest.approx(aux_losses.kl_to_uniform_loss(probs).item(), abs=1e-6)
    # The sums of two shards of the batch are the sums of the batch (what several processes add up).
    halves = [aux_losses.routing_sums(logits[rows], probs[rows], weights[rows], (weights[rows] > 0).sum(dim=0),
                                      load / 2) for rows in (slice(0, 13), slice(13, 30))]
    for name, total in sums.items():
        assert torch.allclose(halves[0][name] + halves[1][name], total, atol=1e-5), name


@pytest.mark.parametrize("num_experts", [2, 4, 8])
def test_switch_balance_loss_is_one_when_uniform_and_e_when_collapsed(num_experts):
    n = 4 * num_experts
    uniform = torch.full((n, num_experts), 1.0 / num_experts)
    spread = torch.bincount(torch.arange(n) % num_experts)
    assert aux_losses.switch_balance_loss(uniform, spread).item() == pytest.approx(1.0)
    collapsed = torch.zeros(n, num_experts)
    collapsed[:, 0] = 1.0
    one_expert = torch.bincount(torch.zeros(n, dtype=torch.long), minlength=num_experts)
    assert aux_losses.switch_balance_loss(collapsed, one_expert).item() == pytest.approx(num_experts)


def mixtral_load_balancing_loss(logits: torch.Tensor, num_experts: int, top_k: int) -> torch.Tensor:
    """Hugging Face Mixtral's ``load_balancing_loss_func`` for one layer, no attention mask, written
    from its definition: E * sum_e (tokens_per_expert * router_prob_per_expert), where
    tokens_per_expert is the mean over tokens of the one-hot top-k mask (k, E), summed over k."""
    probs = logits.softmax(dim=-1)                                                    # (N, E)
    selected = probs.topk(top_k, dim=-1).indices                                      # (N, k)
    tokens_per_expert = torch.nn.functional.one_hot(selected, num_experts).float().mean(dim=0)  # (k, E)
    return num_experts * (tokens_per_expert * probs.mean(dim=0).unsqueeze(0)).sum()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_switch_balance_loss_times_k_is_mixtrals_loss(k):
    """Counts over the N k assignments, not the N tokens: Mixtral's loss is k times ours, so
    Mixtral's router_aux_loss_coef c is --balance-coef c k (docs/models.md)."""
    torch.manual_seed(k)
    num_experts = 8
    logits = torch.randn(64, num_experts) * 2
    probs = logits.softmax(dim=-1)
    counts = torch.bincount(probs.topk(k, dim=-1).indices.flatten(), minlength=num_experts)
    ours = aux_losses.switch_balance_loss(probs, counts)
    assert (k * ours).item() == pytest.approx(mixtral_load_balancing_loss(logits, num_experts, k).item(), rel=1e-6)
    # the same through a router's training step, which counts its own assignments
    router = build_router("hard" if k == 1 else "topk", 16, num_experts, top_k=k).train()
    routing = router(torch.randn(64, 16))
    assert (k * routing.aux["balance"]).item() == pytest.approx(
        mixtral_load_balancing_loss(routing.logits, num_experts, k).item(), rel=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_switch_balance_loss_is_e_over_k_when_every_sample_picks_the_same_k_experts(k):
    num_experts, n = 8, 32
    probs = torch.zeros(n, num_experts)
    probs[:, :k] = 1.0 / k
    counts = torch.bincount(torch.arange(k).repeat(n), minlength=num_experts)          # N k assignments
    assert aux_losses.switch_balance_loss(probs, counts).item() == pytest.approx(num_experts / k)


def test_cv_squared_and_importance_load():
    assert aux_losses.cv_squared(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx((2 / 3) / 4)
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])  # importance = [2.5, 0.5]
    load = torch.tensor([3.0, 1.0])
    expected = (1.0 / 1.5 ** 2) + (1.0 / 2.0 ** 2)               # var(2.5, .5)=1, var(3, 1)=1
    assert aux_losses.importance_load_loss(weights, load).item() == pytest.approx(expected, rel=1e-6)


def test_router_z_loss():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2.0), math.log(math.e + math.e ** 2)]
    assert aux_losses.router_z_loss(logits).item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2)


def test_entropy_losses():
    e = 5
    uniform = torch.full((3, e), 1.0 / e)
    assert aux_losses.gate_entropy_loss(uniform).item() == pytest.approx(math.log(e))
    assert aux_losses.kl_to_uniform_loss(uniform).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.eye(e)[[0, 0, 0]]
    assert aux_losses.gate_entropy_loss(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert aux_losses.kl_to_uniform_loss(one_hot).item() == pytest.approx(math.log(e), rel=1e-6)
    # each sample certain, but the batch uses every expert equally: balanced, not smooth
    assert aux_losses.kl_to_uniform_loss(torch.eye(e)).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([[0.2, 0.8]])
    assert aux_losses.gate_entropy_loss(p).item() == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))


def make_moe(gating: str, seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    return MoE(build_router(gating, D, E, top_k=2), MLPExperts(E, D, 16, K))


@pytest.mark.parametrize("gating", GATING_CHOICES)
def test_a_router_computes_each_loss_when_first_asked_for_and_the_same_values(gating):
    moe = make_moe(gating).train()
    x = torch.randn(N, D)
    torch.manual_seed(1)
    every = moe(x).aux
    assert set(every) == set(aux_losses.AUX_NAMES)
    for names in [("balance",), ("cv", "z"), ("entropy", "kl_uniform", "centroid"), ()]:
        torch.manual_seed(1)
        routing = moe(x).routing
        some = routing.losses(names)
        assert set(some) == set(names) == set(routing.batch_losses.computed)   # nothing else computed
        for name in names:
            assert torch.equal(some[name], every[name]), name
        again = routing.losses(names)
        assert all(again[name] is some[name] for name in names)               # kept, not computed again
        assert set(routing.losses()) == set(aux_losses.AUX_NAMES)              # the rest when asked for
    assert moe.eval()(x).routing.losses() == {}                               # none in evaluation


def test_centroid_overlap_loss_is_zero_for_orthogonal_and_one_for_equal_centroids():
    assert aux_losses.centroid_overlap_loss(torch.eye(4)).item() == pytest.approx(0.0)
    assert aux_losses.centroid_overlap_loss(torch.ones(3, 5)).item() == pytest.approx(1.0)
    linear = build_router("hard", 12, 5)
    assert linear.centroid_overlap().item() == 0.0
