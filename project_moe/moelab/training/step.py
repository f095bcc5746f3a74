"""One optimisation step, and what it needs: the optimiser, the learning-rate schedule, the
auxiliary-loss coefficients, and the loss-free balancing update that follows a step."""
from __future__ import annotations

import math

import torch

from .. import distributed
from ..distributed import Cluster
from ..layers.aux_losses import AUX_NAMES
from ..layers.capacity import update_selection_bias
from ..layers.precision import FULL, Precision
from .config import Config
from .tasks import CLASSIFICATION


def aux_coefficients(cfg: Config) -> dict[str, float]:
    """The auxiliary losses that enter the training loss, with their non-zero coefficients.
    The others are still computed and logged, but stay out of the loss, so the backward
    pass never visits them."""
    coefs = {name: getattr(cfg, f"{name}_coef") for name in AUX_NAMES}
    return {name: coef for name, coef in coefs.items() if coef != 0}


def lr_factor(schedule: str, step: int, total_steps: int, warmup_fraction: float = 0.0) -> float:
    """The learning rate at ``step`` as a fraction of --lr."""
    progress = min(step, total_steps) / max(total_steps, 1)
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":   # linear warm-up from 0, then linear decay to 0
        if progress < warmup_fraction:
            return progress / warmup_fraction
        return (1.0 - progress) / (1.0 - warmup_fraction)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum; the fused kernel when this build has it: an MoE
    carries E experts' worth of parameters, and on small batches their update, not the forward
    pass, dominates a step."""
    if cfg.optimizer == "sgd":
        make = lambda **fused: torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,  # noqa: E731
                                               nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay, **fused)
    else:
        make = lambda **fused: torch.optim.AdamW(model.parameters(), lr=cfg.lr,  # noqa: E731
                                                 weight_decay=cfg.weight_decay, **fused)
    try:
        return make(fused=True)
    except (RuntimeError, TypeError):
        return make()


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, coefs: dict[str, float],
               cluster: Cluster = distributed.SINGLE_PROCESS, batch_rows: int | None = None,
               precision: Precision = FULL, label_smoothing: float = 0.0, task=CLASSIFICATION, logs_aux: bool = False):
    """One optimisation step: the task's loss (cross-entropy, or a regression loss: tasks.py)
    plus the weighted auxiliary losses of an MoE.

    Under torchrun, (x, y) is this rank's share of a global batch of ``batch_rows`` rows: it
    back-propagates its part of the global-batch loss and the gradients of the replicated
    parameters are summed over the ranks, which makes the step the one a single process
    would take on the whole batch (moelab/distributed/).
    ``precision``: the forward pass under autocast (--amp), with loss scaling where it needs one.
    ``label_smoothing``: of the cross-entropy (which is then what the step returns).
    ``logs_aux``: a step whose statistics are logged computes every auxiliary loss
    (``output.losses()``); the others only those of the objective, ``coefs``.
    Raises FloatingPointError, before touching the weights, if the loss is not finite.
    Returns (model output, logits, task loss of the whole batch).
    """
    with precision.autocast():
        output = model(x)
        logits = output.logits
        # In one batch, before the update: the centroid loss reads the weights the step changes.
        output.losses(None if logs_aux else tuple(coefs))
        if cluster.is_distributed:
            ce_part = task.loss(output, y, reduction="sum", label_smoothing=label_smoothing) / batch_rows
            ce = distributed.all_sum(cluster, ce_part.detach())
        else:
            ce = ce_part = task.loss(output, y, label_smoothing=label_smoothing)
        loss = output.plus_weighted_aux(ce_part, coefs)
    whole_batch_loss = loss if not cluster.is_distributed else loss.detach() - ce_part.detach() + ce
    value = whole_batch_loss.item()       # one host sync; torch.isfinite would add four small ops
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value}")
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss)
    distributed.sync_gradients(model, cluster)
    precision.step(optimizer)
    return output, logits, ce


def balance_selection(model, output, cluster: Cluster) -> None:
    """One step of loss-free balancing for every router of ``model``, on the loads of the
    whole batch (summed over the processes)."""
    chosen = torch.stack([r.counts + r.dropped_counts() for r in output.routings])   # (L, E) before capacity
    for router, load in zip(model.routers(), distributed.all_sum(cluster, chosen)):
        update_selection_bias(router, load)
