"""The record every model returns, dense or MoE, of images, tables, text or graphs.

Legend: N rows of the logits (samples, or B*T tokens of a language model), K outputs, L MoE
layers of the model, E experts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..layers.moe import MoEOutput
from ..layers.routing import Routing


@dataclass
class ModelOutput:
    """logits: (N, K) class logits or regression outputs, (B*T, V) next-byte logits of a
    language model.
    routings: one Routing per MoE layer, in layer order; empty for a dense model. A routing
        has one row per sample (the mixture) or per token (token n of the batch is token
        n % T of sequence n // T).
    tokens: T, the routed rows per sample (1 for the mixture).
    mixture: the mixture classifier's MoE layer record, with each assignment's own expert
        output (per-expert losses, the Jacobs likelihood of a regression); None otherwise.
    """

    logits: Tensor
    routings: list[Routing] = field(default_factory=list)
    tokens: int = 1
    mixture: MoEOutput | None = None

    @property
    def aux(self) -> dict[str, Tensor]:
        """The unweighted auxiliary losses by name, each averaged over the MoE layers (empty for
        a dense model and in evaluation)."""
        if not self.routings or not self.routings[0].aux:
            return {}
        if len(self.routings) == 1:
            return self.routings[0].aux
        return {name: torch.stack([r.aux[name] for r in self.routings]).mean() for name in self.routings[0].aux}

    def plus_weighted_aux(self, loss: Tensor, coefs: dict[str, float]) -> Tensor:
        """``loss`` + sum_name coefs[name] * aux[name]: the training objective (the coefficients
        are the run's --*-coef; a dense model adds nothing)."""
        aux = self.aux
        if aux:
            for name, coef in coefs.items():
                loss = loss + coef * aux[name]
        return loss

    def assignment_counts(self) -> Tensor:
        """(L, E) rows each expert of each MoE layer processed."""
        return torch.stack([r.assignment_counts() for r in self.routings])

    def dropped_counts(self) -> Tensor:
        """(L, E) assignments each expert's capacity dropped, per MoE layer."""
        return torch.stack([r.dropped_counts() for r in self.routings])
