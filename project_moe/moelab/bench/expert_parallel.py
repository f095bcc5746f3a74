"""What expert parallelism costs: the MoE layer on 1 and on P processes over the same batch.

    python bench.py ep            # P = 1 and 2, N = 4096 rows, d = 256, experts 256 -> 512 -> 256, top-2 of 8

P = 1 runs the layer in this process; P > 1 spawns P gloo ranks (torch.multiprocessing), each
with its share of the rows and E / P experts, exchanging rows with all-to-all (layers/expert_parallel.py).
A step is forward + backward; each rank times its all-to-all calls apart from the rest
(compute), and counts the bytes it sends to other ranks. On a CPU with few cores the ranks
share the same cores and memory, so this measures the overhead of the exchange, not a speed-up.

Per MoE layer and step, with N rows, top-k and width d (input and output), the exchange sends
k*N*d values out and back in the forward pass and again in the backward pass: 4*k*N*d values,
of which the share (P - 1) / P leaves a rank when experts are equally loaded. The experts
compute 6*k*N*(d*h + h*d) FLOPs (forward and backward), so the exchange moves
bytes/FLOP = 4*d*b*(P-1)/P / (12*d*h) = b*(P-1)/P / (3*h) (b bytes per value, h hidden width), and
an interconnect of bandwidth B keeps up with experts running at F FLOP/s when B >= F * bytes/FLOP.
"""
from __future__ import annotations

import datetime
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .. import distributed
from ..distributed import Cluster
from ..layers.experts import MLPExperts
from ..layers.moe import MoE
from ..layers.routers import build_router
from .timing import LayerConfig


@dataclass
class EPConfig(LayerConfig):
    rounds: int = 5
    per_round: int = 4
    warmup: int = 3
    threads: int = 1


def exchange_bytes_per_flop(hidden: int, value_bytes: int, processes: int) -> float:
    """Bytes that leave a rank per expert FLOP (forward and backward, balanced experts)."""
    return value_bytes * (processes - 1) / processes / (3 * hidden)


def break_even_bandwidth(hidden: int, value_bytes: int, processes: int, flops_per_s: float) -> float:
    """Bytes/s of interconnect at which the exchange takes as long as the experts' compute."""
    return flops_per_s * exchange_bytes_per_flop(hidden, value_bytes, processes)


def expert_flops_per_step(cfg: EPConfig) -> float:
    """Forward + backward matmul FLOPs of the experts on N rows, top-k (d -> h -> d)."""
    return 6.0 * cfg.k * cfg.samples * 2 * cfg.d_model * cfg.hidden


def build_layer(cfg: EPConfig) -> tuple[MoE, torch.Tensor]:
    torch.manual_seed(0)
    gating = "hard" if cfg.k == 1 else "topk"
    moe = MoE(build_router(gating, cfg.d_model, cfg.experts, top_k=cfg.k),
              MLPExperts(cfg.experts, cfg.d_model, cfg.hidden, cfg.d_model))
    return moe, torch.randn(cfg.samples, cfg.d_model)


def time_steps(moe: MoE, x: torch.Tensor, cfg: EPConfig, cluster: Cluster) -> dict:
    """Per-step milliseconds (all, all-to-all) over rounds, and bytes sent per step."""
    def step():
        moe.zero_grad(set_to_none=True)
        moe(x).logits.square().mean().backward()

    for _ in range(cfg.warmup):
        step()
    totals, exchanges, sent = [], [], []
    for _ in range(cfg.rounds * cfg.per_round):
        distributed.barrier(cluster)                   # every rank starts the step together
        cluster.traffic.reset()
        begin = time.perf_counter()
        step()
        totals.append((time.perf_counter() - begin) * 1e3)
        exchanges.append(cluster.traffic.seconds * 1e3)
        sent.append(cluster.traffic.bytes_sent)
    return {"step_ms": totals, "all_to_all_ms": exchanges, "bytes_sent": sent}


def _rank_worker(rank: int, store: str, world: int, cfg_dict: dict, result: str) -> None:
    cfg = EPConfig(**cfg_dict)
    torch.set_num_threads(cfg.threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    cluster = Cluster(rank=rank, world_size=world, local_rank=rank, backend="gloo", expert_parallel=True)
    moe, x = build_layer(cfg)
    moe = distributed.parallelize(moe, cluster)
    times = time_steps(moe, distributed.shard(cluster, x)[0], cfg, cluster)
    # A step lasts as long as its slowest rank; bytes add up over the ranks.
    per_rank = [None] * world
    dist.all_gather_object(per_rank, times)
    if rank == 0:
        Path(result).write_text(json.dumps(per_rank))
    dist.destroy_process_group()


def run_processes(cfg: EPConfig, world: int) -> list[dict]:
    """Each rank's timings for a ``world``-process run (spawned here)."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        mp.start_processes(_rank_worker, args=(str(Path(folder) / "store"), world, asdict(cfg), str(result)),
                           nprocs=world, join=True, start_method="spawn")
        return json.loads(result.read_text())


def summarise(per_rank: list[dict], cfg: EPConfig, processes: int) -> dict:
    steps = len(per_rank[0]["step_ms"])
    step = [max(rank["step_ms"][i] for rank in per_rank) for i in range(steps)]
    exchange = [max(rank["all_to_all_ms"][i] for rank in per_rank) for i in range(steps)]
    sent = [sum(rank["bytes_sent"][i] for rank in per_rank) for i in range(steps)]
    step_ms, exchange_ms = statistics.median(step), statistics.median(exchange)
    return {"processes": processes, "experts_per_rank": cfg.experts // processes, "step_ms": step_ms,
            "step_ms_min": min(step), "step_ms_max": max(step), "all_to_all_ms": exchange_ms,
            "compute_ms": step_ms - exchange_ms, "bytes_per_step": statistics.median(sent),
            "bytes_if_balanced": 4 * cfg.k * cfg.samples * cfg.d_model * 4 * (processes - 1) / processes}


def bench_expert_parallel(args) -> list[dict]:
    cfg = EPConfig(samples=args.samples, d_model=args.d_model, hidden=args.hidden, rounds=args.rounds,
                   per_round=args.per_round, warmup=args.warmup)
    cfg.experts, cfg.k = (int(v) for v in args.config[0].split(":"))
    cores = torch.get_num_threads()
    rows = []
    for processes in sorted(set(args.processes)):
        if cfg.experts % processes or cfg.samples % processes:
            raise SystemExit(f"bench.py: error: {processes} processes must divide --samples {cfg.samples} "
                             f"and the {cfg.experts} experts")
        cfg.threads = max(1, cores // processes)        # the whole machine for every P
        if processes == 1:
            moe, x = build_layer(cfg)
            torch.set_num_threads(cfg.threads)
            per_rank = [time_steps(moe, x, cfg, distributed.SINGLE_PROCESS)]
            torch.set_num_threads(cores)
        else:
            per_rank = run_processes(cfg, processes)
        rows.append({**summarise(per_rank, cfg, processes), "threads_per_rank": cfg.threads})
    base = rows[0]["step_ms"]
    for row in rows:
        row["step_vs_1"] = row["step_ms"] / base
    print_report(rows, cfg)
    return rows


def print_report(rows: list[dict], cfg: EPConfig) -> None:
    flops = expert_flops_per_step(cfg)
    print(f"\nMoE layer, forward + backward: N={cfg.samples} rows, top-{cfg.k} of {cfg.experts} experts "
          f"{cfg.d_model} -> {cfg.hidden} -> {cfg.d_model}, float32, gloo; median over {cfg.rounds * cfg.per_round} "
          "steps of the slowest rank")
    print(f"  {'P':>2} {'experts/rank':>12} {'threads/rank':>12} {'step ms':>9} {'[min, max]':>18} "
          f"{'compute ms':>10} {'all-to-all ms':>13} {'MB sent/step':>12} {'balanced MB':>11} {'step / P=1':>10}")
    for r in rows:
        print(f"  {r['processes']:>2} {r['experts_per_rank']:>12} {r['threads_per_rank']:>12} {r['step_ms']:>9.2f} "
              f"{'[%.2f, %.2f]' % (r['step_ms_min'], r['step_ms_max']):>18} {r['compute_ms']:>10.2f} "
              f"{r['all_to_all_ms']:>13.2f} {r['bytes_per_step'] / 1e6:>12.2f} {r['bytes_if_balanced'] / 1e6:>11.2f} "
              f"{r['step_vs_1']:>10.2f}")
    single = rows[0]
    rate = flops / (single["compute_ms"] / 1e3)
    print(f"\nexpert FLOPs per step {flops / 1e9:.2f} G; this machine's experts on P=1 ran at "
          f"{rate / 1e9:.1f} GFLOP/s (whole step)")
    print("\ninterconnect at which the exchange takes as long as the experts' compute, P=2 "
          "(B = F * b * (P-1)/P / (3 h)):")
    print(f"  {'layer':<38} {'h':>5} {'bytes':>5} {'bytes/FLOP':>11} {'this CPU':>12} {'at 100 TFLOP/s':>15}")
    layers = (("this benchmark's layer (fp32)", cfg.hidden, 4), ("repo ViT MoE block, h=128 (fp32)", 128, 4),
              ("Switch-Base FFN, d=768 h=3072 (bf16)", 3072, 2))
    for name, hidden, value_bytes in layers:
        ratio = exchange_bytes_per_flop(hidden, value_bytes, 2)
        print(f"  {name:<38} {hidden:>5} {value_bytes:>5} {ratio:>11.2e} "
              f"{break_even_bandwidth(hidden, value_bytes, 2, rate) / 1e9:>9.2f} GB/s "
              f"{break_even_bandwidth(hidden, value_bytes, 2, 100e12) / 1e9:>10.1f} GB/s")
