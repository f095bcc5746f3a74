"""Speed of the sparse MoE layer and of MoE training, as ratios to references timed in the same run.

    python bench.py layer    # MoE layer vs (a) dense MLP of the same active FLOPs, (b) soft routing
                             # over all experts, (c) a per-expert loop with boolean masks
    python bench.py train    # samples/s of one MNIST training epoch, MoE vs dense baselines
    python bench.py train --family vit --data-dir DIR   # the same for the CIFAR-10 ViTs of vit_convergence
    python bench.py ep       # the MoE layer on 1 and 2 processes (expert parallel): compute, all-to-all, bytes

Machines are noisy, so absolute times mean little: candidates and references are interleaved
in rounds, every ratio is a ratio of medians, and the spread of the per-round ratios is shown.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from experts import MLPExperts, dispatch_as, mlp
from moe_model import MoE
from routers import build_router
from run_files import atomic_write_bytes, refuse_to_replace

DEFAULT_GRID = ("8:1", "8:2", "32:2")


# ----------------------------------------------------------------------------- timing

class Timer:
    """Wall time on CPU; CUDA events on a GPU (kernels are asynchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        """Milliseconds of one call of ``fn``."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def interleaved_times(candidates: dict[str, callable], timer: Timer, rounds: int, per_round: int,
                      warmup: int) -> dict[str, list[list[float]]]:
    """times[name][round] = per-call milliseconds, candidates run in turn within each round."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            # One untimed call first: the previous candidate leaves caches and the allocator
            # in its own state, and the first call would time that, not this candidate.
            fn()
            times[name].append([timer(fn) for _ in range(per_round)])
    return times


class OpCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched to kernels (forward, backward and optimiser
    alike) while active. On a CPU each one has a fixed cost of a few microseconds whatever
    its size, which is what small tensors pay for."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    """Tensor operations dispatched by one call of ``fn``."""
    with OpCounter() as counter:
        fn()
    return counter.count


def ratio_with_spread(times: dict, name: str, reference: str) -> tuple[float, float, float]:
    """Median ratio over all calls, and min / max of the per-round median ratios."""
    flat = lambda rounds: [t for r in rounds for t in r]  # noqa: E731
    ratio = statistics.median(flat(times[name])) / statistics.median(flat(times[reference]))
    per_round = [statistics.median(a) / statistics.median(b) for a, b in zip(times[name], times[reference])]
    return ratio, min(per_round), max(per_round)


# ----------------------------------------------------------------------------- the layer benchmark

@dataclass
class LayerConfig:
    samples: int = 4096
    d_model: int = 256
    hidden: int = 512
    experts: int = 8
    k: int = 2


class MaskedLoopMoE(nn.Module):
    """The textbook implementation: for each expert, a boolean mask over the batch."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.router = moe.router
        self.experts = nn.ModuleList(moe.experts.expert_module(e) for e in range(len(moe.experts)))

    def forward(self, x: Tensor) -> Tensor:
        weights = self.router(x).weights                                       # (N, E)
        out = x.new_zeros(x.shape[0], x.shape[1])
        for e, expert in enumerate(self.experts):
            mask = weights[:, e] != 0                                          # (N,)
            if mask.any():
                out[mask] += weights[mask, e].unsqueeze(1) * expert(x[mask])
        return out


def build_layer_candidates(cfg: LayerConfig, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    d, h, e, k = cfg.d_model, cfg.hidden, cfg.experts, cfg.k
    experts = MLPExperts(e, d, h, d)
    gating = "hard" if k == 1 else "topk"
    moe = MoE(build_router(gating, d, e, top_k=k), experts)
    soft = MoE(build_router("soft", d, e), experts)
    return {"dense_same_active": mlp(d, k * h, d).to(device), "moe": moe.to(device),
            "soft_all_experts": soft.to(device), "masked_loop": MaskedLoopMoE(moe).to(device)}


def layer_step(module: nn.Module, x: Tensor, train: bool):
    def forward() -> Tensor:
        out = module(x)
        return out.logits if hasattr(out, "logits") else out

    if not train:
        def run():
            with torch.no_grad():
                forward()
        return run

    def run_train():
        module.zero_grad(set_to_none=True)
        forward().square().mean().backward()
    return run_train


def bench_layer(args) -> list[dict]:
    device = resolve(args.device)
    timer = Timer(device)
    rows = []
    for spec in args.config:
        e, k = (int(v) for v in spec.split(":"))
        cfg = LayerConfig(samples=args.samples, d_model=args.d_model, hidden=args.hidden, experts=e, k=k)
        modules = build_layer_candidates(cfg, device)
        x = torch.randn(cfg.samples, cfg.d_model, device=device)
        for mode in ("fwd", "fwd+bwd"):
            train = mode != "fwd"
            fns = {name: layer_step(m.train(train), x, train) for name, m in modules.items()}
            phases = timed_phases(fns, timer, args)
            for name in fns:
                home = next(p for p in phases if name in p)          # MoE: its first phase
                flat = [t for r in home[name] for t in r]
                row = {"E": e, "k": k, "mode": mode, "impl": name, "median_ms": statistics.median(flat),
                       "calls": len(flat)}
                for ref, label in (("dense_same_active", "vs_dense"), ("soft_all_experts", "vs_soft")):
                    ratio, low, high = phase_ratio(phases, name, ref)
                    row.update({label: ratio, f"{label}_min": low, f"{label}_max": high})
                rows.append(row)
            print_layer_rows([r for r in rows if r["E"] == e and r["k"] == k and r["mode"] == mode])
    print_headline(rows)
    return rows


def timed_phases(fns: dict[str, callable], timer: Timer, args) -> list[dict[str, list[list[float]]]]:
    """Two interleaved phases in one run: MoE with the dense and masked-loop references, then
    MoE with soft routing. A soft-routing call allocates and frees hundreds of MB; interleaved
    with the others it moves glibc's mmap and trim thresholds, and the calls after it pay page
    faults that no training loop pays. So it gets rounds of its own."""
    soft = "soft_all_experts"
    phases = [{n: f for n, f in fns.items() if n != soft}, {"moe": fns["moe"], soft: fns[soft]}]
    return [interleaved_times(phase, timer, args.rounds, args.per_round, args.warmup) for phase in phases]


def phase_ratio(phases: list[dict], name: str, reference: str, bridge: str = "moe") -> tuple[float, float, float]:
    """name / reference with spread; across phases, chained through ``bridge`` (timed in both):
    name/ref = (name/bridge in name's phase) * (bridge/ref in ref's phase)."""
    home = next(p for p in phases if name in p)
    away = next(p for p in phases if reference in p)
    if home is away:
        return ratio_with_spread(home, name, reference)
    first, second = ratio_with_spread(home, name, bridge), ratio_with_spread(away, bridge, reference)
    return first[0] * second[0], first[1] * second[1], first[2] * second[2]


def print_headline(rows: list[dict]) -> None:
    """The ratios that say whether sparse routing pays: MoE / dense-same-active, soft / MoE."""
    print("\nheadline (ratio of medians, [min, max] over rounds)")
    for r in rows:
        if r["impl"] == "moe":
            print(f"  top-{r['k']} of {r['E']:<3} {r['mode']:<8} MoE / dense same active  {r['vs_dense']:.3f}  "
                  f"[{r['vs_dense_min']:.3f}, {r['vs_dense_max']:.3f}]")
    for r in rows:
        if r["impl"] == "moe" and r["mode"] == "fwd+bwd":
            print(f"  soft over {r['E']:<3} / top-{r['k']} of {r['E']:<3} fwd+bwd  {1 / r['vs_soft']:.2f}  "
                  f"[{1 / r['vs_soft_max']:.2f}, {1 / r['vs_soft_min']:.2f}]")


def print_layer_rows(rows: list[dict]) -> None:
    first = rows[0]
    print(f"\nE={first['E']} k={first['k']} {first['mode']}  ({first['calls']} timed calls each; soft routing in "
          f"rounds of its own with MoE, ratios across the phases chained through MoE)")
    print(f"  {'implementation':<20}{'median ms':>11}{'/ dense (a)':>14}{'  round spread':<18}{'/ soft (b)':>12}")
    for r in rows:
        print(f"  {r['impl']:<20}{r['median_ms']:>11.2f}{r['vs_dense']:>14.3f}  "
              f"[{r['vs_dense_min']:.3f}, {r['vs_dense_max']:.3f}]  {r['vs_soft']:>10.3f}")


# ----------------------------------------------------------------------------- the training benchmark

TRAIN_VARIANTS = {
    "dense_active": dict(model="dense", dense_match="active", gating="hard"),
    "dense_params": dict(model="dense", dense_match="params", gating="hard"),
    "moe_soft": dict(gating="soft"), "moe_hard": dict(gating="hard"),
    "moe_top2": dict(gating="topk", top_k=2), "moe_expert_choice": dict(gating="expert-choice", top_k=1),
    # the hard MoE with each dispatch forced (moe_hard: --expert-dispatch auto)
    "moe_hard_grouped": dict(gating="hard", expert_dispatch="grouped"),
    "moe_hard_padded": dict(gating="hard", expert_dispatch="padded"),
    # the hard MoE routing and combining with plain autograd operations (fused_routing.py off);
    # fused_routing is a switch of the MoE layers, not a Config field
    "moe_hard_plain_routing": dict(gating="hard", fused_routing=False),
}
MODE_VARIANTS = ("dense_active", "dense_params", "moe_hard")   # also timed under --modes amp / compile
COMPILE_WARMUP_STEPS = 20
FAMILIES = ("mnist", "vit")


def vit_convergence_variants(depth: int) -> dict[str, dict]:
    """--family vit: the CIFAR-10 models of the ViT convergence grid at ``depth`` blocks (their
    train.py flags, without the epochs), named as the MNIST variants (dense_active, moe_top2, ...)."""
    from sweep import CIFAR, grid_vit_convergence, split_convergence_label

    runs = [run for run in grid_vit_convergence(1, depth=depth) if run.dataset == CIFAR]
    return {split_convergence_label(run.label)[1].replace("-", "_"): {k: v for k, v in run.flags.items() if k != "epochs"}
            for run in runs}


def bench_train(args) -> list[dict]:
    import data
    from config import Config
    from models import build_model
    from precision import Precision
    from routers import set_loss_names
    from sweep import CIFAR
    from train import aux_coefficients, make_optimizer, train_step

    device = resolve(args.device)
    data_dir = data.resolve_data_dir(args.data_dir)
    if args.family == "vit":
        dataset = data.load_dataset(CIFAR.format(data_dir=data_dir), data_dir, seed=0)
        family = vit_convergence_variants(args.vit_depth)
    else:
        dataset, family = data.load_dataset("mnist", data_dir, seed=0), TRAIN_VARIANTS
    variants = {name: (overrides, "eager") for name, overrides in family.items()}
    variants.update({f"{name}+{mode}": (family[name], mode) for mode in args.modes if mode != "eager"
                     for name in MODE_VARIANTS})
    # Batches as in training (random crops and flips on CIFAR-10), drawn once: every model times the same ones.
    loader = data.BatchLoader(dataset.train, args.batch_size, dataset.mean, dataset.std, shuffle=True,
                              augment=dataset.augment and args.family == "vit", seed=0, device=device)
    batches = list(loader.iter_epoch(0))[:args.steps or None]
    models, compile_s = {}, {}
    for name, (overrides, mode) in variants.items():
        overrides = dict(overrides)
        fused_routing = overrides.pop("fused_routing", True)
        cfg = Config(**{"experts": 8, **overrides, "batch_size": args.batch_size})
        torch.manual_seed(0)
        model = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
        for layer in model.modules():
            if isinstance(layer, MoE):
                layer.fused_routing = fused_routing
        # As in train.py: the losses outside the objective are computed on logging steps only.
        set_loss_names(model, tuple(aux_coefficients(cfg)))
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
    models_line = (f"E=8, MLP experts of hidden {Config().expert_hidden}" if args.family == "mnist" else
                   f"the {args.vit_depth}-block ViTs of the convergence grid, E=8 in every second block")
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
    from config import Config
    from models import build_model

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
           "layers_moe_hard_padded": bank_with("padded")}
    times = interleaved_times(fns, Timer(device), args.rounds, per_round=50, warmup=20)
    print(f"\nOne training step's layers on {rows} rows without router, dispatch or optimiser: the hard MoE's "
          f"{experts} experts on {rows_per_expert} rows each (balanced) / dense_active (samples/s ratio)")
    lines = (("bare_matmuls_dense_active", "bare_matmuls_moe_hard", "bare matmuls, no autograd"),
             ("layers_dense_active", "layers_moe_hard_grouped", "layers, grouped dispatch"),
             ("layers_dense_active", "layers_moe_hard_padded", "layers, padded dispatch"))
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


# ----------------------------------------------------------------------------- entry point

def minor_page_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def resolve(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {os.cpu_count()} cores"
    return (f"{time.strftime('%Y-%m-%d')}  {name}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
            f"device {device}")


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, lambda handle: handle.write(text.getvalue().encode()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("layer", "train", "ep"))
    parser.add_argument("--config", nargs="+", default=list(DEFAULT_GRID), metavar="E:K",
                        help="layer: experts:k pairs to time (ep: the first one)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="ep: process counts to compare")
    parser.add_argument("--samples", type=int, default=4096, help="layer: batch size N")
    parser.add_argument("--d-model", type=int, default=256, help="layer: input and output width")
    parser.add_argument("--hidden", type=int, default=512, help="layer: hidden width of each expert")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=4, help="layer: timed calls per round and candidate")
    parser.add_argument("--warmup", type=int, default=3, help="layer: untimed calls first")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--data-dir", default=None, help="train: dataset root, as for train.py")
    parser.add_argument("--batch-size", type=int, default=128, help="train: batch size")
    parser.add_argument("--steps", type=int, default=None,
                        help="train: time this many steps per round (default: one epoch)")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=("eager", "amp", "compile"),
                        help="train: also time the dense networks and the hard MoE under --amp and --compile")
    parser.add_argument("--family", default="mnist", choices=FAMILIES,
                        help="train: the MNIST mixtures, or the CIFAR-10 ViTs of the convergence grid "
                             "(vit; needs DIR/cifar10-jpeg)")
    parser.add_argument("--vit-depth", type=int, default=6, help="train --family vit: blocks of the ViTs")
    parser.add_argument("--csv", type=Path, default=None,
                        help="where to write the table (default: bench_layer.csv or bench_train_b<batch>.csv "
                             "here); the printed report goes beside it as .txt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing table")
    args = parser.parse_args(argv)
    if args.what in ("layer", "ep"):
        for spec in args.config:
            parts = spec.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[1]) <= int(parts[0]):
                parser.error(f"--config {spec!r}: expected E:K with 1 <= K <= E, e.g. 8:2")
    if args.family == "vit" and (args.what != "train" or args.modes != ["eager"]):
        parser.error("--family vit: only with train and --modes eager (amp and compile are timed on MNIST)")
    if args.what == "ep" and (1 not in args.processes or min(args.processes) < 1):
        parser.error("--processes: include 1 (the reference) and only positive counts, e.g. 1 2")
    train_table = (f"bench_train_b{args.batch_size}.csv" if args.family == "mnist" else
                   f"bench_vit_d{args.vit_depth}_b{args.batch_size}.csv")
    path = args.csv or Path({"layer": "bench_layer.csv", "ep": "bench_ep.csv"}.get(args.what, train_table))
    if path.suffix != ".csv":
        parser.error(f"--csv {path}: the table's name must end in .csv (the printed report goes beside it as .txt)")
    report = path.with_suffix(".txt")
    refusal = refuse_to_replace((path, report), args.overwrite, "--csv to write elsewhere")
    if refusal:
        parser.exit(2, f"bench.py: error: {refusal}\n")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = resolve(args.device)
    printed = io.StringIO()
    with contextlib.redirect_stdout(Tee(sys.stdout, printed)):
        print(machine_line(device))
        if args.what == "ep":
            from bench_ep import bench_expert_parallel   # it builds on this module
            rows = bench_expert_parallel(args)
        else:
            rows = bench_layer(args) if args.what == "layer" else bench_train(args)
        print(f"\nwrote {path} and {report.name}")
    # Written only once the run is over, each atomically: a failed run leaves the previous files intact.
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, rows)
    atomic_write_bytes(report, lambda handle: handle.write(printed.getvalue().encode()))
    return 0


class Tee:
    """A text stream that writes to several: the report is printed and kept."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.streams[0], name)   # isatty, encoding, ...: those of the console


if __name__ == "__main__":
    sys.exit(main())
