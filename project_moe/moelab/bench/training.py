"""Samples/s of MoE training against the dense baselines (``python bench.py train``)."""
from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn

from .. import data
from ..layers.experts import dispatch_as
from ..layers.precision import Precision
from ..models.builder import build_model
from ..study.grids import CIFAR, LM_BASE, LM_VARIANTS, split_convergence_label
from ..study.grids import runs as grid_runs
from ..training.config import Config
from ..training.step import aux_coefficients, make_optimizer, train_step
from .timing import (
    Timer,
    count_ops,
    interleaved_times,
    minor_page_faults,
    ratio_with_spread,
)

TRAIN_VARIANTS = {
    "dense_active": dict(model="dense", dense_match="active", gating="hard"),
    "dense_params": dict(model="dense", dense_match="params", gating="hard"),
    "moe_soft": dict(gating="soft"), "moe_hard": dict(gating="hard"),
    "moe_top2": dict(gating="topk", top_k=2), "moe_expert_choice": dict(gating="expert-choice", top_k=1),
    # the hard MoE with each dispatch forced (moe_hard: --expert-dispatch auto)
    "moe_hard_grouped": dict(gating="hard", expert_dispatch="grouped"),
    "moe_hard_padded": dict(gating="hard", expert_dispatch="padded"),
    "moe_hard_grouped_mm": dict(gating="hard", expert_dispatch="grouped_mm"),
}
# also timed under --modes amp / compile
MODE_VARIANTS = ("dense_active", "dense_params", "moe_hard", "moe_hard_grouped_mm")
COMPILE_WARMUP_STEPS = 20
FAMILIES = ("mnist", "vit", "lm")


def vit_convergence_variants(depth: int) -> dict[str, dict]:
    """--family vit: the CIFAR-10 models of the ViT convergence grid at ``depth`` blocks (their
    train.py flags, without the epochs), named as the MNIST variants (dense_active, moe_top2, ...)."""

    runs = [run for run in grid_runs("vit_convergence", 1, depth=depth) if run.dataset == CIFAR]
    return {split_convergence_label(run.label)[1].replace("-", "_"): {k: v for k, v in run.flags.items() if k != "epochs"}
            for run in runs}


def lm_variants() -> dict[str, dict]:
    """--family lm: the language models of the lm grid (their train.py flags, without the epochs),
    named as the MNIST variants (dense_active, top2_e8, ...), and top-2 and top-1 of 8 again with
    the grouped_mm dispatch."""
    variants = {name.replace("-", "_"): {**LM_BASE, **flags} for name, flags in LM_VARIANTS.items()}
    for name in ("top2_e8", "top1_e8"):           # the same models through torch's grouped GEMM
        variants[f"{name}_grouped_mm"] = {**variants[name], "expert_dispatch": "grouped_mm"}
    return variants


def bench_train(args, device: torch.device) -> list[dict]:

    data_dir = data.resolve_data_dir(args.data_dir)
    if args.family == "vit":
        dataset = data.load_dataset(CIFAR.format(data_dir=data_dir), data_dir, seed=0)
        family = vit_convergence_variants(args.vit_depth)
    elif args.family == "lm":
        dataset = data.load_dataset(LM_BASE["dataset"], data_dir, seed=0, context=LM_BASE["context"],
                                    val_fraction=LM_BASE["val_fraction"])
        family = lm_variants()
    else:
        dataset, family = data.load_dataset("mnist", data_dir, seed=0), TRAIN_VARIANTS
    variants = {name: (overrides, "eager") for name, overrides in family.items()}
    variants.update({f"{name}+{mode}": (family[name], mode) for mode in args.modes if mode != "eager"
                     for name in MODE_VARIANTS})
    # Batches as in training (random crops and flips on CIFAR-10), drawn once: every model times the same ones.
    if args.family == "lm":     # windows of the byte stream; the rows of a step are its B x T next bytes
        loader = data.loader_for(dataset, dataset.train, args.batch_size, shuffle=True, seed=0, device=device,
                                 steps=args.steps or 30)
        batches = [(x, y.reshape(-1)) for x, y in loader.iter_epoch(0)]
    else:
        loader = data.BatchLoader(dataset.train, args.batch_size, dataset.mean, dataset.std, shuffle=True,
                                  augment=dataset.augment and args.family == "vit", seed=0, device=device)
        batches = list(loader.iter_epoch(0))[:args.steps or None]
    models, compile_s = {}, {}
    for name, (overrides, mode) in variants.items():
        cfg = Config(**{"experts": 8, **overrides, "batch_size": args.batch_size})
        torch.manual_seed(0)
        model = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
        precision, coefs = Precision(mode == "amp", device), aux_coefficients(cfg)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        if mode == "compile":
            model.compile(dynamic=True if cfg.model == "moe" else None)
            # Compiling, timed apart on steps that are then undone: the first step traces and
            # generates code, and the next ones recompile where routed shapes first vary.
            begin = time.perf_counter()
            optimizer = make_optimizer(model, cfg)
            for x, y in batches[:COMPILE_WARMUP_STEPS]:
                train_step(model, optimizer, x, y, coefs, precision=precision)
            compile_s[name] = time.perf_counter() - begin
        models[name] = (model, cfg, precision, initial, coefs)
    seconds = {name: [] for name in variants}
    faults = {name: [] for name in variants}   # minor page faults per step: fresh memory touched
    optimizer_ms = {name: [] for name in variants}
    ops = {}                                    # operator calls in one training step
    for round_index in range(args.rounds):
        for name, (model, cfg, precision, initial, coefs) in models.items():
            model.load_state_dict(initial)       # every round trains from the same weights
            optimizer = make_optimizer(model, cfg)
            faults_before = minor_page_faults()
            begin = time.perf_counter()
            for x, y in batches:
                train_step(model, optimizer, x, y, coefs, precision=precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - begin)
            faults[name].append((minor_page_faults() - faults_before) / len(batches))
            # The optimiser's cost: AdamW reads and writes every parameter (and two moments of
            # each) whatever the routing, so it scales with total parameters.
            timer = Timer(device)
            optimizer_ms[name].append(statistics.median(timer(optimizer.step) for _ in range(20)))
            if round_index == args.rounds - 1:   # counted once, on the last round's trained model
                # Median over a few steps: a routed model's count depends on how many experts got rows.
                ops[name] = statistics.median_low(
                    count_ops(lambda: train_step(model, optimizer, x, y, coefs, precision=precision))
                    for x, y in batches[:5])
    samples = sum(len(y) for _, y in batches)
    reference = statistics.median(seconds["dense_active"])
    rows = []
    models_line = {"mnist": f"E=8, MLP experts of hidden {Config().expert_hidden}",
                   "vit": f"the {args.vit_depth}-block ViTs of the convergence grid, E=8 in every second block",
                   "lm": "the byte-level language models of the lm grid (samples are predicted bytes)"}[args.family]
    print(f"\n{dataset.name} training ({samples} samples{'' if args.steps is None else f' = {len(batches)} steps'}, "
          f"batch {args.batch_size}, {models_line}), {args.rounds} "
          "interleaved rounds; +amp: bf16 autocast, +compile: torch.compile (compilation timed apart)")
    print(f"  {'model':<24}{'samples/s':>12}{'/ dense_active':>16}  round spread    {'faults/step':>11}"
          f"{'optimiser step / dense_active':>31}{'ops/step':>10}{'compile s':>11}")
    reference_optimizer = statistics.median(optimizer_ms["dense_active"])
    for name, values in seconds.items():
        ratios = [seconds["dense_active"][i] / values[i] for i in range(len(values))]
        row = {"model": name, "samples_per_s": samples / statistics.median(values),
               "vs_dense_active": reference / statistics.median(values),
               "vs_dense_active_min": min(ratios), "vs_dense_active_max": max(ratios),
               "faults_per_step": statistics.median(faults[name]),
               "optimizer_vs_dense_active": statistics.median(optimizer_ms[name]) / reference_optimizer,
               "ops_per_step": ops[name], "compile_s": compile_s.get(name, float("nan"))}
        rows.append(row)
        print(f"  {name:<24}{row['samples_per_s']:>12,.0f}{row['vs_dense_active']:>16.3f}  "
              f"[{row['vs_dense_active_min']:.3f}, {row['vs_dense_active_max']:.3f}]  {row['faults_per_step']:>11,.0f}"
              f"{row['optimizer_vs_dense_active']:>31.2f}{row['ops_per_step']:>10,}{row['compile_s']:>11.1f}")
    if args.family == "mnist":
        rows += step_cost_rows(dataset, args, device)
    return rows


def step_matmuls(x: Tensor, w1: Tensor, w2: Tensor, grad_out: Tensor) -> None:
    """The matrix products of one training step of a one-hidden-layer MLP on rows x (n, D):
    forward, both weight gradients, and the gradient into the hidden layer."""
    hidden = x @ w1                                                          # (n, H)
    hidden @ w2                                                              # (n, K)
    hidden.t() @ grad_out                                                    # (H, K)
    grad_hidden = grad_out @ w2.t()                                          # (n, H)
    x.t() @ grad_hidden                                                      # (D, H)


def step_cost_rows(dataset, args, device: torch.device) -> list[dict]:
    """Where the hard MoE's training step loses to the dense network's, in more ratios, all on
    batch // E * E rows with balanced routing (batch // E rows per expert):

    - bare matmuls: the matrix products of one training step, without autograd, router,
      dispatch or optimiser; the dense network's on all rows against the E experts' on their
      own rows, each with its own weights. It bounds what any implementation built on
      per-expert matmuls can reach on this machine;
    - layers: the same two networks' layers forward and backward through the real code
      (``nn.Linear`` for the dense one; the expert bank for the MoE, once with each dispatch),
      still without router, dispatch or optimiser.
    """

    cfg = Config(experts=8, model="dense", dense_match="active", gating="hard")
    dense = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
    bank = build_model(Config(experts=8, gating="hard").model_spec(), dataset.in_shape,
                       dataset.num_classes).moe.experts.to(device)
    d_in, classes, experts = dense.net[0].in_features, dataset.num_classes, cfg.experts
    rows_per_expert = args.batch_size // experts
    rows = rows_per_expert * experts
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    dense_w = (rand(d_in, dense.net[0].out_features), rand(dense.net[0].out_features, classes))
    expert_w = [(rand(d_in, cfg.expert_hidden), rand(cfg.expert_hidden, classes)) for _ in range(experts)]
    x, grad_out = rand(rows, d_in), rand(rows, classes)
    x_parts, grad_parts = x.split(rows_per_expert), grad_out.split(rows_per_expert)
    counts = [rows_per_expert] * experts

    def moe_matmuls():
        for (w1, w2), part, grad_part in zip(expert_w, x_parts, grad_parts):
            step_matmuls(part, w1, w2, grad_part)

    def layers_step(module: nn.Module, forward) -> callable:
        def step():
            module.zero_grad(set_to_none=True)   # as in training: fresh gradients, no accumulation
            forward().backward(grad_out)
        return step

    def bank_with(dispatch: str):
        def forward():
            with dispatch_as(bank, dispatch):
                return bank.forward_sorted(x, counts)
        return layers_step(bank, forward)

    fns = {"bare_matmuls_dense_active": lambda: step_matmuls(x, *dense_w, grad_out),
           "bare_matmuls_moe_hard": moe_matmuls,
           "layers_dense_active": layers_step(dense, lambda: dense.net(x)),
           "layers_moe_hard_grouped": bank_with("grouped"),
           "layers_moe_hard_padded": bank_with("padded"),
           "layers_moe_hard_grouped_mm": bank_with("grouped_mm")}
    times = interleaved_times(fns, Timer(device), args.rounds, per_round=50, warmup=20)
    print(f"\nOne training step's layers on {rows} rows without router, dispatch or optimiser: the hard MoE's "
          f"{experts} experts on {rows_per_expert} rows each (balanced) / dense_active (samples/s ratio)")
    lines = (("bare_matmuls_dense_active", "bare_matmuls_moe_hard", "bare matmuls, no autograd"),
             ("layers_dense_active", "layers_moe_hard_grouped", "layers, grouped dispatch"),
             ("layers_dense_active", "layers_moe_hard_padded", "layers, padded dispatch"),
             ("layers_dense_active", "layers_moe_hard_grouped_mm", "layers, grouped_mm dispatch"))
    spreads = {}                      # candidate -> (ratio, min, max); each reference is 1 against itself
    for reference, candidate, label in lines:
        spreads[candidate] = ratio_with_spread(times, reference, candidate)
        print(f"  {label:<28}{spreads[candidate][0]:.3f}  [{spreads[candidate][1]:.3f}, {spreads[candidate][2]:.3f}]")
    table = []
    for name in fns:
        ratio, low, high = spreads.get(name, (1.0, 1.0, 1.0))
        median_ms = statistics.median([t for r in times[name] for t in r])
        table.append({"model": name, "samples_per_s": rows / median_ms * 1e3, "vs_dense_active": ratio,
                      "vs_dense_active_min": low, "vs_dense_active_max": high, "faults_per_step": float("nan"),
                      "optimizer_vs_dense_active": float("nan"), "ops_per_step": float("nan"),
                      "compile_s": float("nan")})
    return table
