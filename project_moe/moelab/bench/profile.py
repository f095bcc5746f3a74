"""Where a training step's time goes, operator by operator (``python bench.py profile``).

torch.profiler over a few MNIST training steps of the dense network of equal active parameters
and of the hard MoE (auto and grouped_mm dispatch), after untimed warm-up steps: per model the
self CPU time per step of each operator and its calls per step, the rows that differ most from
the dense network first. The profiler adds a fixed cost per operator, so its times say where the
time goes, not how fast a step is (``bench.py train`` says that).
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from .. import data
from ..models.builder import build_model
from ..training.config import Config, ConfigError
from ..training.step import aux_coefficients, make_optimizer, train_step
from .training import TRAIN_VARIANTS

PROFILED = ("dense_active", "moe_hard", "moe_hard_grouped_mm")
WARMUP_STEPS = 5


def profile_steps(name: str, dataset, batches: list, device: torch.device) -> dict[str, tuple[float, float]]:
    """operator -> (self CPU ms per step, calls per step) over ``batches`` of one model's training."""
    cfg = Config(**{"experts": 8, **TRAIN_VARIANTS[name], "batch_size": len(batches[0][1])})
    torch.manual_seed(0)
    model = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
    coefs = aux_coefficients(cfg)
    optimizer = make_optimizer(model, cfg)
    for x, y in batches[:WARMUP_STEPS]:
        train_step(model, optimizer, x, y, coefs)
    timed = batches[WARMUP_STEPS:]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for x, y in timed:
            train_step(model, optimizer, x, y, coefs)
    per_op = defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        per_op[event.key][0] += event.self_cpu_time_total / 1e3
        per_op[event.key][1] += event.count
    return {op: (ms / len(timed), calls / len(timed)) for op, (ms, calls) in per_op.items()}


def bench_profile(args, device: torch.device) -> list[dict]:
    dataset = data.load_dataset("mnist", data.resolve_data_dir(args.data_dir), seed=0)
    loader = data.BatchLoader(dataset.train, args.batch_size, dataset.mean, dataset.std, shuffle=True,
                              augment=False, seed=0, device=device)
    steps = WARMUP_STEPS + (args.steps or 20)
    if len(loader) < steps:
        raise ConfigError(f"--steps {steps - WARMUP_STEPS}: an epoch of batch {args.batch_size} has {len(loader)} "
                          f"steps, and {WARMUP_STEPS} of them run untimed first; ask for at most "
                          f"{len(loader) - WARMUP_STEPS} or a smaller --batch-size")
    batches = [batch for _, batch in zip(range(steps), loader.iter_epoch(0))]
    profiles = {name: profile_steps(name, dataset, batches, device) for name in PROFILED}
    dense = profiles["dense_active"]
    rows = []
    for name, ops in profiles.items():
        for op, (ms, calls) in ops.items():
            rows.append({"model": name, "op": op, "self_ms_per_step": ms, "calls_per_step": calls,
                         "self_ms_over_dense": ms - dense.get(op, (0.0, 0))[0]})
    print(f"\ntorch.profiler over {steps - WARMUP_STEPS} MNIST training steps of batch {args.batch_size} "
          f"(after {WARMUP_STEPS} untimed), self CPU time per step")
    totals = {name: (sum(ms for ms, _ in ops.values()), sum(c for _, c in ops.values()))
              for name, ops in profiles.items()}                          # ms and operator calls per step
    for name in profiles:
        print(f"\n{name}: {totals[name][0]:.2f} ms, {totals[name][1]:.0f} operator calls per step (dense_active: "
              f"{totals['dense_active'][0]:.2f} ms, {totals['dense_active'][1]:.0f})")
        print(f"  {'operator':<44}{'ms/step':>9}{'calls/step':>12}{'ms over dense':>15}")
        # the dense network's dearest operators; the others' that differ most from the dense network's
        column = "self_ms_per_step" if name == "dense_active" else "self_ms_over_dense"
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: -abs(r[column]))
        for r in mine[:args.top]:
            print(f"  {r['op'][:43]:<44}{r['self_ms_per_step']:>9.3f}{r['calls_per_step']:>12.1f}"
                  f"{r['self_ms_over_dense']:>+15.3f}")
    return rows
