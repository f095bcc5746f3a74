"""moelab/training/tasks.py: regression losses against per-sample references, and a regression run's errors."""
import json
import math

import pandas as pd
import pytest
import torch
from runs import cli

from moelab.layers.routing import GATING_CHOICES
from moelab.models.builder import build_model
from moelab.models.spec import ModelSpec
from moelab.training.tasks import Regression, gaussian_log_likelihood, mixture_nll

# ----------------------------------------------------------------------------- regression losses

def _moe_output(gating: str, combine: str, variance: bool, seed: int = 0, rows: int = 9):
    torch.manual_seed(seed)
    spec = ModelSpec(experts=4, gating=gating, top_k=2, expert_hidden=8, combine="logits")
    model = build_model(spec, (5,), 2 if variance else 1)
    x, y = torch.randn(rows, 5), torch.randn(rows)
    return model, model(x), y


def _layer(output):
    """The mixture's MoE layer record: the expert output of every assignment."""
    return output.mixture


@pytest.mark.parametrize("gating", ["soft", "topk", "hard", "expert-choice"])
@pytest.mark.parametrize("variance", [False, True])
def test_mixture_likelihood_matches_a_per_sample_reference(gating, variance):
    model, output, y = _moe_output(gating, "probs", variance)
    loss = Regression("probs", variance, [0.0]).per_sample_loss(output, y)
    layer = _layer(output)
    weights = layer.routing.weights.detach()
    for n in range(len(y)):
        density = 0.0
        for e in range(4):
            if weights[n, e] == 0:
                continue
            m = ((layer.sample_index == n) & (layer.expert_index == e)).nonzero().item()
            mu = layer.expert_logits[m, 0].item()
            var = math.exp(layer.expert_logits[m, 1].item()) if variance else 1.0
            normal = math.exp(-(y[n].item() - mu) ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
            density += weights[n, e].item() * normal
        expected = -math.log(density) if density > 0 else -math.log(1e-12)
        assert loss[n].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("gating", ["soft", "topk", "hard", "expert-choice"])
def test_combined_squared_error_matches_a_per_sample_reference(gating):
    model, output, y = _moe_output(gating, "logits", False)
    loss = Regression("logits", False, [0.0]).per_sample_loss(output, y)
    layer = _layer(output)
    weights = layer.routing.weights.detach()
    for n in range(len(y)):
        mixed = sum(weights[n, e].item() * layer.expert_logits[
            ((layer.sample_index == n) & (layer.expert_index == e)).nonzero().item(), 0].item()
            for e in range(4) if weights[n, e] != 0)
        assert loss[n].item() == pytest.approx((y[n].item() - mixed) ** 2, rel=1e-4, abs=1e-6)


def test_gaussian_log_likelihood_is_the_normal_density():
    y, mean, log_var = torch.tensor([0.3, -1.0]), torch.tensor([0.0, 0.5]), torch.tensor([0.2, -0.4])
    normal = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    torch.testing.assert_close(gaussian_log_likelihood(y, mean, log_var), normal.log_prob(y))
    unit = torch.distributions.Normal(mean, 1.0)
    torch.testing.assert_close(gaussian_log_likelihood(y, mean, None), unit.log_prob(y))


def test_a_row_no_expert_took_costs_the_floor_and_no_nan():
    expert_out = torch.tensor([[0.5]], requires_grad=True)
    loss = mixture_nll(expert_out, torch.tensor([0.8]), torch.tensor([0]), torch.tensor([1]),
                       torch.tensor([0.0, 1.0]), 2)
    assert loss[1].item() == pytest.approx(-math.log(1e-12))
    loss.sum().backward()
    assert torch.isfinite(expert_out.grad).all()


@pytest.mark.parametrize("gating", GATING_CHOICES)
@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_regression_losses_reach_the_router_of_every_gating(gating, combine):
    model, output, y = _moe_output(gating, combine, combine == "probs", rows=32)
    model.train()
    output = model(torch.randn(32, 5))
    Regression(combine, combine == "probs", [0.0]).loss(output, y).backward()
    router_grads = [p.grad for p in model.moe.router.parameters() if p.requires_grad]
    assert router_grads and all(g is not None and torch.isfinite(g).all() for g in router_grads)
    assert sum(g.abs().sum().item() for g in router_grads) > 0


@pytest.mark.parametrize("combine", ["logits", "probs"])
def test_a_regression_trains_through_the_cli_and_logs_its_errors(tmp_path, combine):
    extra = ("--combine", "probs", "--expert-variance") if combine == "probs" else ()
    assert cli(tmp_path, "--dataset", "diabetes", "--experts", "4", "--gating", "topk", "--epochs", "6",
               "--expert-hidden", "16", *extra) == 0
    run = tmp_path / "runs" / "r"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]
    assert metrics.train_acc.isna().all() and metrics.val_r2.notna().all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "regression" and summary["test_acc"] is None and summary["test_r2"] > 0.2
    predictions = pd.read_csv(run / "test_predictions.csv")
    error = predictions.prediction - predictions.target
    assert summary["test_rmse"] == pytest.approx(math.sqrt((error ** 2).mean()), rel=1e-4)
    assert summary["test_mae"] == pytest.approx(error.abs().mean(), rel=1e-4)
    spread = ((predictions.target - predictions.target.mean()) ** 2).sum()
    assert summary["test_r2"] == pytest.approx(1 - (error ** 2).sum() / spread, rel=1e-4)
    experts = pd.read_csv(run / "experts.csv")
    test = experts[experts.split == "test"]
    assert test.loss_all.notna().all() and test.acc_all.isna().all()
    routing = pd.read_csv(run / "routing.csv")
    assert sorted(routing["class"].unique()) == [0, 1, 2, 3, 4]               # the five target bins
    assert routing[routing.split == "test"]["top1"].sum() == len(predictions)
