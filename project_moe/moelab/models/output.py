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

    def losses(self, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """The unweighted auxiliary losses ``names`` (None: all of them) by name, each averaged
        over the MoE layers (empty for a dense model and in evaluation); computed when first
        asked for (Routing.losses)."""
        if not self.routings:
            return {}
        per_layer = [r.losses(names) for r in self.routings]
        if len(per_layer) == 1 or not per_layer[0]:
            return per_layer[0]
        return {name: torch.stack([losses[name] for losses in per_layer]).mean() for name in per_layer[0]}

    @property
    def aux(self) -> dict[str, Tensor]:
        """Every auxiliary loss (``losses()``)."""
        return self.losses()

    def plus_weighted_aux(self, loss: Tensor, coefs: dict[str, float]) -> Tensor:
        """``loss`` + sum_name coefs[name] * aux[name]: the training objective (the coefficients
        are the run's --*-coef; a dense model adds nothing)."""
        aux = self.losses(tuple(coefs))
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
