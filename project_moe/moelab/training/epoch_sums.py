"""Running sums of an epoch's training steps, for metrics.csv, on one process or several.

Legend: E experts, L MoE blocks of a ViT.

Under torchrun the cross-entropy and the auxiliary losses of a step are already those of the
whole batch on every process (moelab/distributed/), and so are their sums here; correct predictions
and expert assignments are counted on each process's share and added over the processes when
the sums are read (``totals``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed
from ..distributed import Cluster
from ..layers.aux_losses import AUX_NAMES
from .tasks import CLASSIFICATION


class EpochSums:
    def __init__(self, routed_shape: tuple[int, ...], device: torch.device, cluster: Cluster, drops: bool = False,
                 objective: tuple[str, ...] = ()):
        """``drops``: the routers have expert capacities, whose dropped assignments are counted.
        ``objective``: the auxiliary losses in the training loss, which every step computes."""
        self.routed_shape, self.device, self.cluster, self.drops = routed_shape, device, cluster, drops
        self.objective = objective
        self.reset()

    def reset(self) -> None:
        zero = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        # aux: each auxiliary loss summed over the rows of the steps that computed it (aux_rows)
        self.sums = {"loss": zero(()), "correct": zero(()), "count": 0, "aux": zero(len(AUX_NAMES)),
                     "aux_rows": zero(len(AUX_NAMES)),
                     "routed": zero(*self.routed_shape), "dropped": zero(*self.routed_shape), "train_seconds": 0.0}

    def add(self, output, logits: Tensor, ce: Tensor, labels: Tensor, batch_rows: int, routes: bool,
            task=CLASSIFICATION, logs_aux: bool = False) -> None:
        """One step: ``ce`` (the task's loss) of the whole batch of ``batch_rows`` rows; output and
        labels of this process's rows; ``routes``: the model has routers (aux losses, (E,) or
        (L, E) counts). A regression counts no correct predictions (its accuracy is NaN).
        ``logs_aux``: the step computed every auxiliary loss (train_step's ``logs_aux``), not only
        those of the objective."""
        s = self.sums
        with torch.no_grad():
            s["loss"] += ce.detach().double() * batch_rows
            s["correct"] += task.correct(output, labels)
            s["count"] += batch_rows
            if routes:
                # A step computes the losses it trains on, and the others only when it logs them.
                aux = output.losses(None if logs_aux else self.objective)   # those the step computed
                for i, name in enumerate(AUX_NAMES):
                    if name in aux:
                        s["aux"][i] += aux[name].detach().double() * batch_rows
                        s["aux_rows"][i] += batch_rows
                s["routed"] += output.assignment_counts().double().view(self.routed_shape)   # (L, E), or (E,)
                if self.drops:
                    s["dropped"] += output.dropped_counts().double().view(self.routed_shape)

    def add_seconds(self, seconds: float) -> None:
        self.sums["train_seconds"] += seconds

    def totals(self) -> dict:
        """The sums with correct predictions and (dropped) assignments added over the processes
        (every process must call it)."""
        s = dict(self.sums)
        shares = distributed.all_sum(self.cluster, torch.cat([s["correct"].view(1), s["routed"].flatten(),
                                                              s["dropped"].flatten()]))
        experts = s["routed"].numel()
        s["correct"] = shares[0]
        s["routed"], s["dropped"] = (part.view(s["routed"].shape) for part in shares[1:].split(experts))
        return s

    def state_dict(self) -> dict:
        return {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.totals().items()}

    def aux_means(self) -> list[float]:
        """Each auxiliary loss's mean over the rows of the steps that computed it (NaN if none did)."""
        rows = self.sums["aux_rows"]
        return torch.where(rows > 0, self.sums["aux"] / rows.clamp_min(1), float("nan")).tolist()

    def load_state_dict(self, state: dict) -> None:
        self.reset()                       # checkpoints from before drop counting lack "dropped"
        self.sums.update({k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in state.items()})
        if "aux_rows" not in state:        # checkpoints from when every step computed every loss
            self.sums["aux_rows"] += self.sums["count"]
        if not self.cluster.is_writer:     # the saved counts are summed over all processes: keep them once
            for name in ("correct", "routed", "dropped"):
                self.sums[name] = self.sums[name] * 0

    def progress(self, routes: bool) -> dict[str, str]:
        """Running means for the progress bar (accuracy only in one process: it is summed over
        the processes at the end of the epoch)."""
        s, count = self.sums, max(self.sums["count"], 1)
        post = {"loss": f"{(s['loss'] / count).item():.4f}"}
        if not self.cluster.is_distributed:
            post["acc"] = f"{(s['correct'] / count).item():.4f}"
        if routes and s["aux_rows"][0] > 0:
            post["balance"] = f"{(s['aux'][0] / s['aux_rows'][0]).item():.3f}"
        return post
