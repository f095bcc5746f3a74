"""moelab/study/sharpness.py: estimators against exact answers, the HVP of an MoE, and the command end to end."""
import math

import matplotlib
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from moelab.models.builder import build_model
from moelab.models.spec import ModelSpec
from moelab.study import sharpness
from moelab.training import launch

matplotlib.use("Agg")
from moelab.study import plots

SHAPES = {"a": (2,), "b": (3, 1)}   # two tensors, five coordinates in all


# ----------------------------------------------------------------------------- a quadratic with known spectrum

def matrix_with_spectrum(eigenvalues, seed=0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q: dense, coupling both tensors."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def quadratic(a_matrix: torch.Tensor):
    """f(theta) = 0.5 theta^T A theta, theta the concatenation of the dict's tensors; its Hessian is A."""
    def loss(params):
        theta = torch.cat([params[k].flatten() for k in SHAPES])   # (5,)
        return 0.5 * theta @ a_matrix @ theta
    return loss


def point(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g, dtype=torch.float64) for k, shape in SHAPES.items()}


@pytest.mark.parametrize("eigenvalues, expected", [
    ([5.0, 2.0, 0.5, -1.0, -3.0], 5.0),     # largest eigenvalue also the largest in magnitude
    ([4.0, 2.0, 0.5, -1.0, -6.0], -6.0),    # power iteration returns the dominant one, with its sign
])
def test_power_iteration_finds_the_dominant_eigenvalue(eigenvalues, expected):
    a_matrix = matrix_with_spectrum(eigenvalues)
    params = point()
    hvp = sharpness.hvp_fn(quadratic(a_matrix), params)
    estimate = sharpness.top_eigenvalue(hvp, params, iters=500, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert estimate.converged
    assert estimate.value == pytest.approx(expected, rel=1e-4)
    v = torch.cat([estimate.vector[k].flatten() for k in SHAPES])
    assert v.norm().item() == pytest.approx(1.0)
    assert (a_matrix @ v).allclose(expected * v, atol=1e-3)     # it is the eigenvector too


def test_power_iteration_reports_no_convergence_when_out_of_iterations():
    params = point()
    hvp = sharpness.hvp_fn(quadratic(matrix_with_spectrum([1.0, 0.99, 0.5, 0.1, 0.0])), params)
    estimate = sharpness.top_eigenvalue(hvp, params, iters=3, tol=1e-14, generator=torch.Generator().manual_seed(0))
    assert not estimate.converged and estimate.iterations == 3


def test_hutchinson_trace_is_unbiased_and_exact_for_a_diagonal_hessian():
    a_matrix = matrix_with_spectrum([5.0, 2.0, 0.5, -1.0, -3.0])
    params = point()
    estimate = sharpness.hutchinson_trace(sharpness.hvp_fn(quadratic(a_matrix), params), params, probes=400,
                                         generator=torch.Generator().manual_seed(0))
    assert len(estimate.samples) == 400 and estimate.stderr > 0
    assert abs(estimate.mean - torch.trace(a_matrix).item()) < 4 * estimate.stderr

    diagonal = torch.diag(torch.tensor([3.0, -1.0, 0.25, 7.0, 2.0], dtype=torch.float64))
    exact = sharpness.hutchinson_trace(sharpness.hvp_fn(quadratic(diagonal), params), params, probes=5,
                                      generator=torch.Generator().manual_seed(0))
    assert exact.mean == pytest.approx(11.25, abs=1e-12) and exact.stderr == pytest.approx(0.0, abs=1e-12)


def test_reverse_over_reverse_takes_over_when_an_op_has_no_forward_derivative():
    class Cube(torch.autograd.Function):   # backward only: forward-mode AD raises NotImplementedError
        @staticmethod
        def forward(x):
            return x ** 3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * g

    params = {"x": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    hvp = sharpness.hvp_fn(lambda p: Cube.apply(p["x"]).sum(), params)
    v = {"x": torch.tensor([1.0, 2.0, -4.0], dtype=torch.float64)}
    assert torch.equal(hvp(v)["x"], 6 * params["x"] * v["x"])     # d^2/dx^2 x^3 = 6x, diagonal


def test_hvp_differentiates_attention_twice():
    # PyTorch's fused attention kernels have no second derivatives; a ViT needs this to work.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)                  # (B, T, d)
    params = {"w": torch.randn(4, 4, dtype=torch.float64, generator=g)}
    v = {"w": torch.randn(4, 4, dtype=torch.float64, generator=g)}

    def loss(p):
        q = x @ p["w"]
        return F.scaled_dot_product_attention(q, x, x).pow(2).sum()
    eps = 1e-6
    finite_difference = (grad(loss)(sharpness.shifted(params, v, eps))["w"]
                         - grad(loss)(sharpness.shifted(params, v, -eps))["w"]) / (2 * eps)
    torch.testing.assert_close(sharpness.hvp_fn(loss, params)(v)["w"], finite_difference, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- the HVP of an MoE classifier

def tiny_moe(gating: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelSpec(experts=4, gating=gating, top_k=2, expert_hidden=8), (1, 4, 4), 3)
    model = model.double().eval()
    # The router scores in float32 on purpose (routing must not depend on autocast); score in
    # float64 here so that finite differences can be compared at float64 precision.
    router = model.moe.router
    router.router_logits = lambda x: F.linear(x, router.proj.weight)
    return model


def assignments(model, params, x):
    out = functional_call(model, params, (x,)).mixture
    return out.sample_index, out.expert_index


def clear_routing(model, x: torch.Tensor, k: int, margin: float = 1e-3) -> torch.Tensor:
    """The samples of x whose k-th and (k+1)-th router scores differ by more than ``margin``:
    a step of 1e-5 along a random direction cannot change their experts."""
    scores = model.moe.router.router_logits(x.flatten(1)).sort(dim=1, descending=True).values   # (N, E)
    return x[scores[:, k - 1] - scores[:, k] > margin]


@pytest.mark.parametrize("gating, k", [("hard", 1), ("topk", 2)])
def test_moe_hvp_equals_finite_difference_of_gradients(gating, k):
    model = tiny_moe(gating)
    g = torch.Generator().manual_seed(1)
    x = clear_routing(model, torch.randn(32, 1, 4, 4, generator=g, dtype=torch.float64), k)
    y = torch.randint(0, 3, (len(x),), generator=g)
    assert len(x) >= 16
    params = {k: p.detach() for k, p in model.named_parameters()}
    v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    loss = sharpness.summed_loss(model, x, y)
    hv = sharpness.hvp_fn(loss, params)(v)

    eps = 1e-5
    plus, minus = sharpness.shifted(params, v, eps), sharpness.shifted(params, v, -eps)
    routed = assignments(model, params, x)
    for shifted in (plus, minus):   # finite differences see the same routing as the HVP
        assert all(torch.equal(a, b) for a, b in zip(assignments(model, shifted, x), routed))
    grad_plus, grad_minus = grad(loss)(plus), grad(loss)(minus)
    scale = max(hv[k].abs().max().item() for k in params)
    assert scale > 0
    for k in params:
        finite_difference = (grad_plus[k] - grad_minus[k]) / (2 * eps)
        torch.testing.assert_close(hv[k], finite_difference, rtol=0, atol=1e-7 * scale, msg=k)
    assert hv["moe.router.proj.weight"].abs().max() > 0   # the gate values do depend on the router


def test_batched_hvp_equals_the_hvp_of_the_mean_loss():
    model = tiny_moe("topk")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    params = {k: p.detach() for k, p in model.named_parameters()}
    v = {k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in params.items()}
    batched = sharpness.mean_loss_hvp(model, params, [(x[:8], y[:8]), (x[8:], y[8:])])(v)

    def mean_loss(p):
        return F.cross_entropy(functional_call(model, p, (x,)).logits, y)
    whole = sharpness.hvp_fn(mean_loss, params)(v)
    for k in params:
        torch.testing.assert_close(batched[k], whole[k], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the command

def trained_run(tmp_path, data_dir):
    name = "tiny-top2"
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path / "runs" / "grid-a"), "--run-name", name,
            "--epochs", "1", "--batch-size", "64", "--experts", "4", "--expert-hidden", "8", "--gating", "topk",
            "--train-eval-size", "64", "--log-every", "0", "--threads", "1"]
    assert launch.main(argv) == 0
    return tmp_path / "runs" / "grid-a" / name


def test_sharpness_command_end_to_end(tmp_path, tiny_data, capsys):
    run_dir = trained_run(tmp_path, tiny_data)
    out = tmp_path / "sharpness"
    argv = ["sharpness", str(run_dir), "--samples", "64", "--iters", "30", "--tol", "1e-3", "--probes", "4",
            "--points", "5", "--radius", "0.5", "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert sharpness.main(argv) == 0
    table = pd.read_csv(out / "sharpness.csv")
    curves = pd.read_csv(out / "sharpness_curves.csv")
    assert list(table.columns) == sharpness.SHARPNESS_COLUMNS
    assert list(curves.columns) == sharpness.CURVE_COLUMNS
    assert sorted(table.split) == ["test", "train"] and set(table.run) == {run_dir.name}
    assert set(table.grid) == {"grid-a"} and set(table.gating) == {"topk"}
    assert (table.n_samples == 64).all() and (table.probes == 4).all()
    numbers = table[["loss", "accuracy", "top_eigenvalue", "trace", "trace_stderr", "params"]]
    assert numbers.map(math.isfinite).all().all()
    assert (table.power_iterations >= 1).all() and (table.power_iterations <= 30).all()
    assert (table.top_eigenvalue > 0).all()        # near a minimum of the cross-entropy
    for split, row in table.set_index("split").iterrows():
        curve = curves[curves.split == split].sort_values("t")
        assert list(curve.t) == [-0.5, -0.25, 0.0, 0.25, 0.5]
        assert curve.loss.map(math.isfinite).all()
        assert curve.loc[curve.t == 0.0, "loss"].item() == row.loss   # the curve passes through the trained point
    assert "top_eigenvalue" not in capsys.readouterr().err

    before = {name: (out / name).read_bytes() for name in ("sharpness.csv", "sharpness_curves.csv")}
    assert sharpness.main(argv) == 2                              # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sharpness.main(argv + ["--overwrite"]) == 0            # same seed, same numbers
    assert {name: (out / name).read_bytes() for name in before} == before

    fig = plots.sharpness_curves(curves)
    assert len(fig.axes[0].lines) == 2 + 1                       # two splits and the t = 0 marker


@pytest.mark.parametrize("what", ["no weights", "not a run"])
def test_sharpness_rejects_runs_it_cannot_analyse(tmp_path, tiny_data, capsys, what):
    run_dir = tmp_path / "runs" / "grid-a" / "r"
    run_dir.mkdir(parents=True)
    if what == "no weights":   # a finished run whose weights were dropped, as sweep.py does
        (run_dir / "config.json").write_text('{"config": {}, "dataset": {}}')
    out = tmp_path / "sharpness"
    code = sharpness.main(["sharpness", str(run_dir), "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ")
    assert ("model.pt" if what == "no weights" else "config.json") in err
    assert not out.exists()
