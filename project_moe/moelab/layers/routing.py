"""The record every router returns, and the batch scope a router computes its batch statistics in.

Legend: N samples in the batch, E experts, M assignments = (sample, expert) pairs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

GATING_CHOICES = ("soft", "hard", "topk", "noisy-topk", "gumbel", "expert-choice")
TOKEN_CHOICE = ("hard", "topk", "noisy-topk", "gumbel")
SLOT_GATINGS = ("soft-slots",)   # Soft MoE (soft_moe.py): slots, not a router
DROP_POLICIES = ("dropless", "position", "priority")
HARD_GRAD_CHOICES = ("switch", "ste")
SCORE_CHOICES = ("linear", "cosine", "attention")


@dataclass
class Routing:
    """What a router decided for one batch.

    logits:  (N, E) float32 router logits (before any training noise).
    probs:   (N, E) softmax of ``logits``.
    weights: (N, E) combine weights; zero on experts a sample is not sent to.
    sample_index, expert_index, gate: (M,) one entry per assignment, with
        gate[m] == weights[sample_index[m], expert_index[m]]. ``None`` for dense routing.
    counts:  (E,) int64 samples each expert processes (N for every expert when dense).
    load:    (E,) per-expert load fed to the CV^2 loss: counts, or a smooth estimate.
    dropped: (E,) int64 assignments the router chose but the expert's capacity refused
        (token choice with a drop policy); None when nothing can be dropped.
    batch_losses: the batch's unweighted auxiliary losses (routers.BatchLosses), computed when
        first asked for by ``losses``; None in eval mode, where there are none.
    """

    logits: Tensor
    probs: Tensor
    weights: Tensor
    sample_index: Tensor | None
    expert_index: Tensor | None
    gate: Tensor | None
    counts: Tensor
    load: Tensor
    dropped: Tensor | None = None
    batch_losses: Callable[[tuple[str, ...] | None], dict[str, Tensor]] | None = None

    def losses(self, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """The unweighted auxiliary losses ``names`` (None: all of aux_losses.AUX_NAMES) by name;
        empty in eval mode. A training step asks for those of its objective, and for the others
        only on the steps whose statistics are logged: each is computed once, when first asked for."""
        return self.batch_losses(names) if self.batch_losses is not None else {}

    @property
    def aux(self) -> dict[str, Tensor]:
        """Every auxiliary loss (``losses()``)."""
        return self.losses()

    @property
    def is_dense(self) -> bool:
        return self.sample_index is None

    def assignment_counts(self) -> Tensor:
        """(E,) number of samples each expert processes in this batch."""
        return self.counts

    def dropped_counts(self) -> Tensor:
        """(E,) assignments dropped for capacity (zeros when nothing can be dropped)."""
        return self.dropped if self.dropped is not None else torch.zeros_like(self.counts)


class LocalBatch:
    """The batch scope of a router when the whole batch is in this process: every call is the
    identity. ``distributed/parallelize.py`` installs a scope for a batch split over processes, where the
    same calls reach the other shards, so that a router computes what it would compute on
    the whole batch."""

    def row_span(self, rows: int) -> tuple[int, int]:
        """(offset of this process's rows in the batch, rows of the whole batch)."""
        return 0, rows

    def gather_rows(self, rows: Tensor) -> Tensor:
        """(n, ...) rows of this process -> (N, ...) rows of the whole batch, no gradient."""
        return rows

    def global_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-batch sums -> the sums over the whole batch (gradient through this shard's part)."""
        return sums

    def batch_independent(self, loss: Tensor) -> Tensor:
        """A loss of the parameters alone, counted once however many processes add it."""
        return loss


LOCAL_BATCH = LocalBatch()
