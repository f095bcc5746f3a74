"""moelab/layers/experts.py: the stacked MLP bank and its hand-written backward against plain autograd."""
import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from moelab.layers import experts as experts_module
from moelab.layers.experts import (
    PADDED_MAX_GROWTH,
    PADDED_MAX_MEAN_ROWS,
    GroupedMLP,
    MLPExperts,
    aligned_width,
    choose_dispatch,
    dispatch_report,
    expert_slices,
    mlp,
    padded_positions,
)

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
@pytest.mark.parametrize("dispatch", ["grouped", "padded"])
def test_fast_dispatch_equals_plain_autograd(depth, counts, input_grad, dispatch):
    """Output, weight, bias and input gradients of the fused node (grouped) and of the padded
    batched matmuls equal those of plain autograd run expert by expert; idle experts get
    exactly zero gradients."""
    experts = bank(depth)
    x = sorted_batch(counts)
    x.requires_grad_(input_grad)
    upstream = torch.randn(sum(counts), K, dtype=torch.float64)
    results = []
    for fast in (True, False):
        experts.dispatch, experts.fused = (dispatch, True) if fast else ("grouped", False)
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


def float32_run(experts: MLPExperts, x: torch.Tensor, counts: list[int], upstream: torch.Tensor, dispatch: str):
    """Output and gradients (input, then parameters) of a float32 copy of ``experts``."""
    bank32 = copy.deepcopy(experts).float()
    bank32.dispatch = dispatch
    x32 = x.detach().float().requires_grad_()
    torch.manual_seed(7)                                      # the same dropout masks in every run
    out = bank32.forward_sorted(x32, counts)
    grads = torch.autograd.grad((out * upstream.float()).sum(), [x32, *bank32.parameters()]) if out.numel() else ()
    return out, grads, bank32


@pytest.mark.parametrize("depth,dropout", [(1, 0.0), (2, 0.0), (2, 0.4)])
@pytest.mark.parametrize("counts", [[3, 1, 4, 2, 5], [0, 6, 0, 0, 3], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0],
                                    [1500, 0, 700, 1, 1799]])
def test_grouped_mm_dispatch_equals_plain_autograd_in_float32(depth, dropout, counts):
    """torch's grouped GEMM (float32 only: it has no float64 kernel) against plain autograd in float64,
    on widths that are no multiple of its 16-byte alignment (7 -> 8, 6 -> 8): outputs and every
    gradient, uneven and empty experts, one row, thousands of rows; idle experts get zero gradients."""
    experts = bank(depth, dropout).train()
    x = sorted_batch(counts)
    upstream = torch.randn(sum(counts), K, dtype=torch.float64)
    out, grads, bank32 = float32_run(experts, x, counts, upstream, "grouped_mm")
    assert bank32.ran == ({"grouped_mm"} if sum(counts) else {"grouped"}) and bank32.fallback is None
    experts.dispatch, experts.fused = "grouped", False
    torch.manual_seed(7)
    want = experts.forward_sorted(x, counts)
    assert out.shape == (sum(counts), K) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    if not sum(counts):
        return
    want_grads = torch.autograd.grad((want * upstream).sum(), [x, *experts.parameters()])
    for got, expected in zip(grads, want_grads):
        assert got.shape == expected.shape
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    idle = [e for e, c in enumerate(counts) if c == 0]
    assert all(g[idle].abs().sum() == 0 for g in grads[1:])


def test_grouped_mm_dispatch_equals_the_grouped_one_on_aligned_and_unaligned_class_logits():
    """At the MNIST bank's shape (784 -> 128 -> 10 logits, padded to 12 columns inside) the two
    hand-written dispatches agree in float32."""
    torch.manual_seed(0)
    experts = MLPExperts(8, 784, 128, 10).train()
    counts = [40, 0, 17, 3, 90, 1, 0, 30]
    x = torch.randn(sum(counts), 784, dtype=torch.float64)
    upstream = torch.randn(sum(counts), 10)
    out_mm, grads_mm, _ = float32_run(experts, x, counts, upstream, "grouped_mm")
    out, grads, _ = float32_run(experts, x, counts, upstream, "grouped")
    torch.testing.assert_close(out_mm, out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_mm, grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_grouped_mm_takes_a_non_contiguous_input_and_plain_autograd_reports_grouped():
    torch.manual_seed(0)
    experts = MLPExperts(3, 8, 8, 4)
    counts = [2, 3, 3]
    x = torch.randn(8, 8).t()                                                   # strides (1, 8)
    experts.dispatch = "grouped_mm"
    torch.testing.assert_close(experts.forward_sorted(x, counts), experts.forward_sorted(x.contiguous(), counts))
    plain = MLPExperts(3, 8, 8, 4)
    plain.dispatch, plain.fused = "grouped_mm", False
    plain.forward_sorted(x, counts)
    assert plain.ran == {"grouped"}                                             # what ran: per-expert autograd


def test_aligned_width_rounds_up_to_16_bytes():
    assert [aligned_width(w, torch.float32) for w in (1, 4, 10, 784)] == [4, 4, 12, 784]
    assert [aligned_width(w, torch.bfloat16) for w in (1, 8, 10)] == [8, 8, 16]


def test_grouped_mm_falls_back_to_grouped_where_torch_lacks_it_and_says_why(monkeypatch):
    """Without the kernel (older torch, simulated here; float64, which it has no kernel for) the
    bank runs the grouped dispatch: the same results, and one report line naming the reason."""
    experts = bank(depth=2)
    counts = [3, 0, 4, 2, 5]
    x = sorted_batch(counts)
    experts.dispatch = "grouped"
    want = experts.forward_sorted(x, counts)
    experts.dispatch = "grouped_mm"
    assert torch.equal(experts.forward_sorted(x, counts), want)                # float64: no kernel
    assert experts.ran == {"grouped"} and "float64" in experts.fallback
    assert dispatch_report(experts) == f"expert dispatch: grouped_mm ran grouped (in place of grouped_mm: " \
                                       f"{experts.fallback})"
    monkeypatch.setattr(experts_module, "_GROUPED_MM_SUPPORT", {})
    monkeypatch.delattr(torch.nn.functional, "grouped_mm")
    bank32 = bank(depth=2).float()
    bank32.dispatch = "grouped_mm"
    bank32.forward_sorted(x.detach().float(), counts)
    assert bank32.ran == {"grouped"} and "has no torch.nn.functional.grouped_mm" in bank32.fallback


def test_dispatch_report_names_what_auto_ran():
    experts = bank()
    assert dispatch_report(experts) is None                                    # nothing ran yet
    experts.forward_sorted(sorted_batch([2, 2, 2, 2, 2]), [2, 2, 2, 2, 2])     # few balanced rows: padded
    experts.forward_sorted(sorted_batch([200, 0, 0, 0, 1]), [200, 0, 0, 0, 1])  # skewed: grouped
    assert dispatch_report(experts) == "expert dispatch: auto ran grouped, padded"


def test_idle_experts_get_zero_gradients_whatever_fresh_memory_holds(monkeypatch):
    """The backward writes every busy expert's gradient and zeroes the idle ones'; fresh
    gradient buffers filled with NaN (as uninitialised memory may be) must not leak through."""
    nan_empty_like = lambda t, **kw: torch.full_like(t, float("nan"), **kw)  # noqa: E731
    real_new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda t, *size, **kw: real_new_empty(t, *size, **kw).fill_(float("nan")))
    experts = bank(depth=2)
    counts = [0, 4, 0, 3, 0]
    out = experts.forward_sorted(sorted_batch(counts), counts)
    grads = torch.autograd.grad(out.sum(), list(experts.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g[[0, 2, 4]].abs().sum() == 0 for g in grads)


def test_fused_bank_passes_gradcheck_with_dropout():
    experts = bank(depth=2, dropout=0.3).train()
    counts = [2, 0, 3, 1, 2]
    x = sorted_batch(counts)
    torch.manual_seed(5)
    masks = experts._dropout_masks(x.shape[0])
    assert any((m == 0).any() for m in masks) and all(torch.isin(m, torch.tensor([0.0, 1 / 0.7], dtype=m.dtype)).all()
                                                      for m in masks)
    params = [p.detach().clone().requires_grad_() for p in (*experts.weights, *experts.biases)]
    assert torch.autograd.gradcheck(lambda x, *p: GroupedMLP.apply(x, counts, masks, *p), (x, *params))


@pytest.mark.parametrize("dispatch", ["grouped", "padded"])
def test_dropout_masks_the_hidden_units_in_training_only(dispatch):
    experts = bank(dropout=0.5)
    experts.dispatch = dispatch
    counts = [4, 2, 0, 4, 4]
    x = sorted_batch(counts)
    torch.manual_seed(0)
    train_out = experts.train().forward_sorted(x, counts)
    torch.manual_seed(0)
    masks = experts._dropout_masks(x.shape[0])
    experts.dispatch, experts.fused = "grouped", False
    torch.manual_seed(0)
    assert torch.allclose(train_out, experts.forward_sorted(x, counts), atol=1e-12)
    rows = [experts.expert_forward(e, x[r], [m[r] for m in masks]) for e, r in expert_slices(counts)]
    assert torch.allclose(train_out, torch.cat(rows), atol=1e-12)
    eval_out = experts.eval().forward_sorted(x, counts)
    assert torch.allclose(eval_out, torch.cat([experts.expert_forward(e, x[r]) for e, r in expert_slices(counts)]))


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("dispatch", ["grouped", "padded"])
def test_dispatch_costs_the_routed_rows_or_the_padded_ones(grad, dispatch):
    """FLOPs of the grouped bank = routed rows x one expert's FLOPs (idle experts cost
    nothing); the padded bank computes E x the largest count."""
    experts = bank(depth=1)
    experts.dispatch = dispatch
    counts = [0, 7, 0, 2, 0]
    x = sorted_batch(counts)
    per_row = 2 * (D * H + H * K)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(grad):
        experts.forward_sorted(x, counts)
    rows = sum(counts) if dispatch == "grouped" else E * max(counts)
    assert counter.get_total_flops() == rows * per_row


def test_padded_positions_put_each_expert_rows_first_in_its_block():
    positions = padded_positions([2, 0, 3, 1], capacity=3, device=torch.device("cpu"))
    assert positions.tolist() == [0, 1, 6, 7, 8, 9]


def test_auto_dispatch_pads_only_small_and_balanced_groups():
    few = PADDED_MAX_MEAN_ROWS // 2
    balanced, skewed, very_skewed = [few] * 8, [few + few // 4] + [few] * 7, [few * 2] + [few] * 7
    growth = lambda counts: len(counts) * max(counts) / sum(counts)  # noqa: E731
    assert growth(skewed) <= PADDED_MAX_GROWTH < growth(very_skewed)
    assert choose_dispatch(balanced) == "padded"
    assert choose_dispatch(skewed) == "padded"
    assert choose_dispatch(very_skewed) == "grouped"                           # padding costs too many rows
    assert choose_dispatch([few * 8] + [0] * 7) == "grouped"
    assert choose_dispatch([PADDED_MAX_MEAN_ROWS * 2] * 8) == "grouped"        # big groups use all cores anyway
    assert choose_dispatch([0] * 8) == "grouped"
