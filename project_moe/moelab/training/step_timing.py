"""A run's training step timed against its dense reference of equal active width, in the run's
own process on the machine that trained it (``--step-time-rounds``).

Grid runs move between machines and share them with other work, so their wall times cannot be
compared; a ratio of two step times measured side by side can. After training, the run's model
(its final weights, so its routing is the trained one) and a freshly built dense network of the
run's active size (``--model dense --dense-match active``) each take the same batches, in
interleaved rounds, from the same weights every round; the ratio of the median round times is
what turns the run's steps into time on that machine (report, time to target).
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch

from ..layers.precision import Precision
from ..models.builder import build_model
from .config import Config
from .step import aux_coefficients, make_optimizer, train_step

STEPS_PER_ROUND = 10        # training steps timed per model and round (after one untimed step)


def dense_reference(cfg: Config) -> Config:
    """The dense network of ``cfg``'s active width (for a dense run: itself)."""
    return dataclasses.replace(cfg, model="dense", dense_match="active")


def step_time_ratio(model: torch.nn.Module, cfg: Config, task, in_shape, batches: list, device: torch.device,
                    rounds: int, steps: int = STEPS_PER_ROUND) -> dict[str, float]:
    """Median time of one training step of ``model`` over that of the dense reference of ``cfg``,
    on the first ``steps`` of ``batches`` ((x, y) pairs), over ``rounds`` interleaved rounds.
    ``model`` itself is left untouched (a copy is timed). Returns the ratio, the spread of the
    per-round ratios and the steps timed."""
    reference_spec = task.model_spec(dense_reference(cfg).model_spec())
    torch.manual_seed(0)
    timed = {"model": copy.deepcopy(model),
             "dense_active": build_model(reference_spec, in_shape, task.out_width).to(device)}
    batches = batches[:steps + 1]
    coefs, precision = aux_coefficients(cfg), Precision(cfg.amp, device)
    initial = {name: copy.deepcopy(m.state_dict()) for name, m in timed.items()}
    seconds = {name: [] for name in timed}
    for _ in range(rounds):
        for name, m in timed.items():
            m.load_state_dict(initial[name])      # every round trains from the same weights
            m.train()
            optimizer = make_optimizer(m, cfg)
            x, y = batches[0]
            train_step(m, optimizer, x, y.reshape(-1), coefs, precision=precision, task=task)   # untimed
            _synchronize(device)
            begin = time.perf_counter()
            for x, y in batches[1:]:
                train_step(m, optimizer, x, y.reshape(-1), coefs, precision=precision, task=task)
            _synchronize(device)
            seconds[name].append(time.perf_counter() - begin)
    ratios = [a / b for a, b in zip(seconds["model"], seconds["dense_active"])]
    return {"step_time_vs_dense_active": statistics.median(seconds["model"]) / statistics.median(seconds["dense_active"]),
            "step_time_vs_dense_active_min": min(ratios), "step_time_vs_dense_active_max": max(ratios),
            "step_time_steps": len(batches) - 1, "step_time_rounds": rounds}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
