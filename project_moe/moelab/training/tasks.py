"""What a model is trained to do: classify, or predict a real number. The task gives training,
evaluation and the logs one meaning of loss, prediction and group (class, or target bin).

Legend: N samples, E experts, M assignments (sample, expert), K classes, W expert output
width (K for classification; 1, or 2 with --expert-variance, for regression), G groups.

Regression (targets standardised with the training mean and deviation; every expert i
outputs a mean mu_i and, with --expert-variance, a log-variance log sigma_i^2):
  --combine logits   y_hat = sum_i g_i mu_i, trained on the squared error (y - y_hat)^2;
  --combine probs    the mixture likelihood of Jacobs et al. (1991),
                     loss = -log sum_i g_i N(y; mu_i, sigma_i^2)   (sigma_i = 1 without
                     --expert-variance), predicting the mixture mean sum_i g_i mu_i / sum_i g_i.
A dense network outputs one mean (and log-variance: Gaussian negative log-likelihood).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import stats
from ..data.tables import target_bins
from ..layers.moe import MoEOutput
from ..models.output import ModelOutput
from ..models.spec import ModelSpec

LOG_2PI = math.log(2 * math.pi)
# An expert with few rows could shrink its variance towards 0 and its likelihood without bound:
# log sigma^2 is clamped to [-10, 10] (sigma from 0.007 to 150 standardised units).
LOG_VAR_BOUND = 10.0
EMPTY_MIXTURE = math.log(1e-12)   # the log-likelihood of a row no expert took (expert choice)


def gaussian_log_likelihood(y: Tensor, mean: Tensor, log_var: Tensor | None) -> Tensor:
    """log N(y; mean, exp(log_var)) elementwise (unit variance when ``log_var`` is None)."""
    if log_var is None:
        return -0.5 * (LOG_2PI + (y - mean).square())
    log_var = log_var.clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND)
    return -0.5 * (LOG_2PI + log_var + (y - mean).square() * torch.exp(-log_var))


def mixture_nll(expert_out: Tensor, gate: Tensor, sample_index: Tensor, expert_index: Tensor, y: Tensor,
                num_experts: int) -> Tensor:
    """(N,) -log sum_i g_i N(y; mu_i, sigma_i^2) over the experts each row was sent to.

    expert_out: (M, W) each assignment's (mu, [log sigma^2]); gate: (M,) its combine weight;
    sample_index, expert_index: (M,); y: (N,). A row with no assignment gets -log 1e-12."""
    n = y.shape[0]
    out = expert_out.float()
    log_var = out[:, 1] if out.shape[1] > 1 else None
    ll = gaussian_log_likelihood(y[sample_index].float(), out[:, 0], log_var)            # (M,)
    taken = torch.zeros(n, dtype=torch.bool, device=y.device).index_fill_(0, sample_index, True)
    scores = torch.full((n, num_experts + 1), -math.inf, device=y.device)                 # (N, E + 1)
    scores[:, num_experts] = torch.where(taken, -math.inf, EMPTY_MIXTURE)
    scores = scores.index_put((sample_index, expert_index), torch.log(gate.float().clamp_min(1e-30)) + ll)
    return -torch.logsumexp(scores, dim=1)


def assignment_gates(output: MoEOutput) -> Tensor:
    """(M,) the combine weight of every assignment of an MoE output (with its gradient)."""
    return output.routing.weights[output.sample_index, output.expert_index]


class Classification:
    name = "classification"

    def __init__(self, num_classes: int):
        self.out_width = num_classes
        self.groups = num_classes

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        return spec

    def loss(self, output: ModelOutput, y: Tensor, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output.logits, y, reduction=reduction, label_smoothing=label_smoothing)

    def correct(self, output: ModelOutput, y: Tensor) -> Tensor:
        return (output.logits.argmax(dim=1) == y).sum()

    def group_of(self, y: Tensor) -> Tensor:
        return y

    def predicted_group(self, output: ModelOutput) -> Tensor:
        return output.logits.argmax(dim=1)

    def expert_sums(self, all_out: Tensor, y: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """(E,) sums of each expert's own loss and hits (E, N, W outputs; mask (N, E))."""
        return stats.per_expert_sums(all_out, y, mask)

    def assignment_losses(self, expert_out: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(M,) each assignment's own loss and hit, from its expert's output (M, W)."""
        return (F.cross_entropy(expert_out.float(), target, reduction="none"),
                (expert_out.argmax(dim=1) == target).double())

    def split_sums(self, output, y: Tensor) -> dict[str, Tensor]:
        return {}


class Regression:
    name = "regression"

    def __init__(self, combine: str, variance: bool, bin_edges: list[float], target_std: float = 1.0):
        self.combine, self.variance = combine, variance
        self.out_width = 2 if variance else 1
        self.bin_edges, self.target_std = bin_edges, target_std
        self.groups = len(bin_edges) + 1

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        # The layer mixes expert outputs linearly (the mean of the mixture); the likelihood of
        # --combine probs is the loss's business, as it needs the target.
        return dataclasses.replace(spec, combine="logits")

    def prediction(self, output: ModelOutput) -> Tensor:
        """(N,) predicted standardised target."""
        mixed = output.logits[:, 0].float()
        if output.mixture is not None and self.combine == "probs":
            mass = output.mixture.routing.weights.float().sum(dim=1)
            return torch.where(mass > 0, mixed / mass.clamp_min(1e-12), torch.zeros_like(mixed))
        return mixed

    def per_sample_loss(self, output: ModelOutput, y: Tensor) -> Tensor:
        if (layer := output.mixture) is not None and self.combine == "probs":
            return mixture_nll(layer.expert_logits, assignment_gates(layer), layer.sample_index,
                               layer.expert_index, y, layer.routing.weights.shape[1])
        out = output.logits.float()
        if self.variance:          # a dense network's Gaussian likelihood
            return -gaussian_log_likelihood(y.float(), out[:, 0], out[:, 1])
        return (y.float() - out[:, 0]).square()

    def loss(self, output, y: Tensor, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        per_sample = self.per_sample_loss(output, y)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()

    def correct(self, output, y: Tensor) -> Tensor:
        return torch.tensor(math.nan, dtype=torch.float64, device=y.device)   # no accuracy for a real target

    def group_of(self, y: Tensor) -> Tensor:
        return target_bins(y.float(), self.bin_edges)

    def predicted_group(self, output) -> Tensor:
        return target_bins(self.prediction(output), self.bin_edges)

    def expert_sums(self, all_out: Tensor, y: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """(E,) sums of each expert's squared error of its mean (standardised units)."""
        error = (all_out[..., 0].float() - y.float()).square()                   # (E, N)
        weight = mask.t().to(error.dtype)                                         # (E, N)
        return {"loss": (error * weight).sum(dim=1), "correct": torch.full_like(weight[:, 0], math.nan),
                "n": weight.sum(dim=1)}

    def assignment_losses(self, expert_out: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        error = (expert_out[:, 0].float() - target.float()).square()
        return error, torch.full_like(error, math.nan, dtype=torch.float64)

    def split_sums(self, output, y: Tensor) -> dict[str, Tensor]:
        """Sums for RMSE, MAE and R^2 of a split (standardised units; R^2 is scale-free)."""
        error = (self.prediction(output) - y.float()).double()
        y = y.double()
        return {"sq_error": error.square().sum(), "abs_error": error.abs().sum(), "y_sum": y.sum(),
                "y_sq_sum": y.square().sum()}

    def metrics(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """RMSE and MAE in the units of the table, R^2 against the split's own mean."""
        if n == 0:
            return {"rmse": math.nan, "mae": math.nan, "r2": math.nan}
        spread = sums["y_sq_sum"] - sums["y_sum"] ** 2 / n
        return {"rmse": math.sqrt(sums["sq_error"] / n) * self.target_std,
                "mae": sums["abs_error"] / n * self.target_std,
                "r2": 1 - sums["sq_error"] / spread if spread > 0 else math.nan}


def task_for(dataset, combine: str = "logits", variance: bool = False) -> Classification | Regression:
    """The task of a dataset: regression for a table with a real target, classification otherwise."""
    if getattr(dataset, "task", "classification") == "regression":
        return Regression(combine, variance, dataset.bin_edges, dataset.target_std)
    return Classification(dataset.num_classes)


CLASSIFICATION = Classification(0)   # for callers that pass only logits and labels
