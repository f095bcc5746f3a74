"""The MoE layer against (a) a dense MLP of the same active FLOPs, (b) soft routing over all
experts, (c) the textbook per-expert loop with boolean masks (``python bench.py layer``); the MoE
layer runs its experts with the ``auto`` dispatch (``moe``) and with each dispatch forced."""
from __future__ import annotations

import copy
import statistics

import torch
from torch import Tensor, nn

from ..layers.experts import MLPExperts, mlp
from ..layers.moe import MoE
from ..layers.routers import build_router
from .timing import LayerConfig, Timer, interleaved_times, ratio_with_spread

DISPATCHES = ("grouped", "padded", "grouped_mm")


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
    candidates = {"dense_same_active": mlp(d, k * h, d).to(device), "moe": moe.to(device)}
    for dispatch in DISPATCHES:               # the same layer with each dispatch forced (moe: auto)
        forced = copy.deepcopy(moe)
        forced.experts.dispatch = dispatch
        candidates[f"moe_{dispatch}"] = forced
    return {**candidates, "soft_all_experts": soft.to(device), "masked_loop": MaskedLoopMoE(moe).to(device)}


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


def bench_layer(args, device: torch.device) -> list[dict]:
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
                for ref, label in (("dense_same_active", "vs_dense"), ("soft_all_experts", "vs_soft"),
                                   ("moe_grouped", "vs_grouped")):
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
    """The ratios that say whether sparse routing pays: MoE / dense-same-active, soft / MoE, and
    what torch's grouped GEMM does for the layer: grouped_mm / grouped dispatch."""
    print("\nheadline (ratio of medians, [min, max] over rounds)")
    for r in rows:
        if r["impl"] == "moe":
            print(f"  top-{r['k']} of {r['E']:<3} {r['mode']:<8} MoE / dense same active  {r['vs_dense']:.3f}  "
                  f"[{r['vs_dense_min']:.3f}, {r['vs_dense_max']:.3f}]")
    for r in rows:
        if r["impl"] == "moe_grouped_mm":
            print(f"  top-{r['k']} of {r['E']:<3} {r['mode']:<8} grouped_mm / grouped dispatch  {r['vs_grouped']:.3f}  "
                  f"[{r['vs_grouped_min']:.3f}, {r['vs_grouped_max']:.3f}]")
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
