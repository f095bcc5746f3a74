"""Expert banks: the stacked MLP bank and its hand-written backward against plain autograd."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experts import GroupedMLP, MLPExperts, ModuleExperts, expert_slices, mlp

E, D, H, K = 5, 7, 6, 4


def sorted_batch(counts: list[int], features: int = D, seed: int = 0) -> torch.Tensor:
    """(sum(counts), features) rows, counts[e] of them for expert e."""
    torch.manual_seed(seed)
    return torch.randn(sum(counts), features, dtype=torch.float64, requires_grad=True)


def bank(depth: int = 1, dropout: float = 0.0, seed: int = 0) -> MLPExperts:
    torch.manual_seed(seed)
    return MLPExperts(E, D, H, K, depth=depth, dropout=dropout).double()


def test_stacked_bank_is_initialised_like_separate_mlps():
    torch.manual_seed(3)
    separate = [mlp(D, H, K, depth=2) for _ in range(E)]
    torch.manual_seed(3)
    stacked = MLPExperts(E, D, H, K, depth=2)
    x = torch.randn(9, D)
    for e in range(E):
        assert torch.allclose(stacked.expert_forward(e, x), separate[e](x), atol=1e-6)
        assert torch.allclose(stacked.expert_module(e)(x), separate[e](x), atol=1e-6)
    assert stacked.params_per_expert() == sum(p.numel() for p in separate[0].parameters())
    assert torch.allclose(stacked.forward_all(x), torch.stack([m(x) for m in separate]), atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("counts", [[3, 1, 4, 2, 5], [0, 6, 0, 0, 3], [0, 0, 0, 0, 0]])
@pytest.mark.parametrize("input_grad", [True, False])
def test_fused_bank_equals_plain_autograd(depth, counts, input_grad):
    """Output, weight, bias and input gradients of the fused node equal those of plain
    autograd run expert by expert; idle experts get exactly zero gradients."""
    experts = bank(depth)
    x = sorted_batch(counts)
    x.requires_grad_(input_grad)
    upstream = torch.randn(sum(counts), K, dtype=torch.float64)
    results = []
    for fused in (True, False):
        experts.fused = fused
        out = experts.forward_sorted(x, counts)
        inputs = [x, *experts.parameters()] if input_grad else list(experts.parameters())
        grads = torch.autograd.grad((out * upstream).sum(), inputs, allow_unused=True) if out.numel() else None
        results.append((out, grads))
    (fast, fast_grads), (slow, slow_grads) = results
    assert fast.shape == (sum(counts), K)
    assert torch.allclose(fast, slow, atol=1e-12)
    if fast_grads is None:
        return
    for got, want in zip(fast_grads, slow_grads):
        want = torch.zeros_like(got) if want is None else want
        assert torch.allclose(got, want, atol=1e-12)
    idle = [e for e, c in enumerate(counts) if c == 0]
    for weight_grad in fast_grads[-2 * (depth + 1):]:
        assert weight_grad[idle].abs().sum() == 0


def test_fused_bank_passes_gradcheck_with_dropout():
    experts = bank(depth=2, dropout=0.3).train()
    counts = [2, 0, 3, 1, 2]
    x = sorted_batch(counts)
    torch.manual_seed(5)
    masks = experts._dropout_masks(x.shape[0])
    assert any((m == 0).any() for m in masks) and all(torch.isin(m, torch.tensor([0.0, 1 / 0.7], dtype=m.dtype)).all()
                                                      for m in masks)
    bounds = expert_slices(counts)
    params = [p.detach().clone().requires_grad_() for p in (*experts.weights, *experts.biases)]
    assert torch.autograd.gradcheck(lambda x, *p: GroupedMLP.apply(x, bounds, masks, *p), (x, *params))


def test_dropout_masks_the_hidden_units_in_training_only():
    experts = bank(dropout=0.5)
    counts = [4, 4, 4, 4, 4]
    x = sorted_batch(counts)
    torch.manual_seed(0)
    train_out = experts.train().forward_sorted(x, counts)
    torch.manual_seed(0)
    masks = experts._dropout_masks(x.shape[0])
    experts.fused = False
    torch.manual_seed(0)
    assert torch.allclose(train_out, experts.forward_sorted(x, counts), atol=1e-12)
    rows = [experts.expert_forward(e, x[r], [m[r] for m in masks]) for e, r in expert_slices(counts)]
    assert torch.allclose(train_out, torch.cat(rows), atol=1e-12)
    eval_out = experts.eval().forward_sorted(x, counts)
    assert torch.allclose(eval_out, torch.cat([experts.expert_forward(e, x[r]) for e, r in expert_slices(counts)]))


@pytest.mark.parametrize("grad", [True, False])
def test_grouped_forward_costs_only_the_routed_rows(grad):
    """FLOPs of the sparse bank = rows x one expert's FLOPs: idle experts cost nothing."""
    experts = bank(depth=1)
    counts = [0, 7, 0, 2, 0]
    x = sorted_batch(counts)
    per_row = 2 * (D * H + H * K)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
        experts.forward_sorted(x, counts)
    assert counter.get_total_flops() == sum(counts) * per_row


def test_module_bank_runs_each_expert_on_its_rows_only():
    torch.manual_seed(0)
    modules = ModuleExperts([mlp(D, H, K) for _ in range(E)], K)
    counts = [2, 0, 3, 0, 1]
    x = sorted_batch(counts)
    x = x.float().detach()
    out = modules.forward_sorted(x, counts)
    expected = torch.cat([modules.experts[e](x[r]) for e, r in expert_slices(counts)])
    assert torch.equal(out, expected)
    assert modules.forward_sorted(x[:0], [0] * E).shape == (0, K)
