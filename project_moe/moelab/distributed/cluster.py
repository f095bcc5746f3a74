"""This process's place among the ranks (``Cluster``), the process group's life (start, stop, the
exit of a rank) and the small collectives that keep the ranks in step: agreement on bad input and
on stop signals, sums, and work done by rank 0 or by each machine's first rank first."""
from __future__ import annotations

import datetime
import functools
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from ..models.spec import ModelSpec


@dataclass
class Traffic:
    """What the all-to-all exchanges of one rank cost: calls, seconds spent in them, and bytes
    sent to other ranks (forward and backward)."""

    calls: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0

    def reset(self) -> None:
        self.calls, self.seconds, self.bytes_sent = 0, 0.0, 0


@dataclass
class Cluster:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    expert_parallel: bool = False
    sharded: dict[str, int] = field(default_factory=dict)   # expert parameter -> experts in the full model
    traffic: Traffic = field(default_factory=Traffic)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes the run's files."""
        return self.rank == 0

    def describe(self) -> str:
        if not self.is_distributed:
            return "1 process"
        kind = "expert parallel" if self.expert_parallel else "data parallel"
        return f"{self.world_size} processes ({kind}, {self.backend})"


SINGLE_PROCESS = Cluster()


class RefusedElsewhere(Exception):
    """Another rank refused the input (and printed why): this rank stops too."""


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) set by torchrun; (0, 1, 0) for a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class ParallelismError(ValueError):
    """A model or batch that cannot be split over the processes (one line, naming the flag)."""


def check_fits_world(spec: ModelSpec, batch_size: int, expert_parallel: bool, world_size: int) -> None:
    """Refuse, before any file is created, what cannot be split over ``world_size`` ranks."""
    if world_size == 1:
        return
    if batch_size % world_size:
        raise ParallelismError(f"--batch-size {batch_size} is the global batch and must be a multiple of the "
                               f"{world_size} processes; choose a multiple of {world_size}")
    if not expert_parallel:
        return
    if spec.model != "moe":
        raise ParallelismError("--expert-parallel splits the experts of an MoE over the processes; drop it for --model dense")
    if spec.gating == "soft-slots":
        raise ParallelismError("--expert-parallel exchanges routed rows; --gating soft-slots mixes every token into every "
                          "expert's slots: drop --expert-parallel (data parallel works)")
    if spec.arch == "mixture" and spec.expert_type != "mlp":
        raise ParallelismError("--expert-parallel splits stacked MLP experts; use --expert-type mlp, or drop "
                          "--expert-parallel (data parallel works with CNN experts)")
    if spec.experts % world_size:
        raise ParallelismError(f"--expert-parallel: --experts {spec.experts} must be a multiple of the {world_size} "
                          f"processes, so that every rank owns the same number of experts")


def start(device_type: str, backend: str = "auto", timeout_s: float = 120.0, expert_parallel: bool = False) -> Cluster:
    """Join the process group that torchrun describes (nothing to join for one process).
    ``backend``: gloo, nccl, or auto (nccl on CUDA, gloo on CPU). The timeout bounds how long a
    rank waits for a peer that died or hangs."""
    rank, world_size, local_rank = world_from_env()
    if world_size == 1:
        return Cluster()
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Cluster(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   backend=backend, expert_parallel=expert_parallel)


def stop(cluster: Cluster, peers_alive: bool = True) -> None:
    """Leave the process group. All ranks leave together (a barrier): a rank that tore gloo down
    while another was still exchanging was seen to abort the other at exit. With a dead peer
    there is nothing to wait for."""
    if cluster.is_distributed and dist.is_initialized() and peers_alive:
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End the process with ``code``. A torchrun rank, whose process group is already destroyed and
    whose files are written, ends with ``os._exit`` after flushing its output: at a normal
    interpreter exit one rank in about ten aborted ("terminate called without an active exception",
    no Python frame left) while C++ destructors tore down the communication threads, and torchrun
    then reported a run that had completed as failed. A plain process exits normally."""
    if world_from_env()[1] == 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_agree(cluster: Cluster, ok: bool) -> bool:
    """True when ``ok`` holds on every rank (so that all ranks stop together on bad input)."""
    if not cluster.is_distributed:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=collective_device(cluster))
    dist.all_reduce(flag)
    return flag.item() == 0


def all_sum(cluster: Cluster, values: Tensor) -> Tensor:
    """The sum of ``values`` over the ranks (``values`` itself for one process)."""
    if not cluster.is_distributed:
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total


def on_writer(cluster: Cluster, fn, refusals: tuple[type[Exception], ...]):
    """``fn()`` on rank 0 alone (checks of the run directory); when it refuses, every rank
    stops: rank 0 raises the refusal, the others RefusedElsewhere."""
    if not cluster.is_distributed:
        return fn()
    result, refusal = None, None
    if cluster.is_writer:
        try:
            result = fn()
        except refusals as error:
            refusal = error
    shared = [result, refusal is not None]
    dist.broadcast_object_list(shared, src=0)
    if refusal is not None:
        raise refusal
    if shared[1]:
        raise RefusedElsewhere
    return shared[0]


def local_first(cluster: Cluster, fn, refusals: tuple[type[Exception], ...]):
    """``fn()`` on every rank, the first rank of each machine before the others (it may
    unpack or cache files the others then read); if any rank refuses, every rank stops."""
    if not cluster.is_distributed:
        return fn()
    result, refusal = None, None
    for first in (True, False):
        if (cluster.local_rank == 0) == first:
            try:
                result = fn()
            except refusals as error:
                refusal = error
        dist.barrier()
    if not all_agree(cluster, refusal is None):
        if refusal is not None:
            raise refusal
        raise RefusedElsewhere
    return result


def load_on_writer(cluster: Cluster, path, device: torch.device, load, refusals: tuple[type[Exception], ...] = ()):
    """``load(path, map_location)`` of a run file that rank 0 reads and sends to the others (the
    run directory need not be on a file system that every machine sees); when rank 0 refuses
    the file (``refusals``), every rank stops, as with on_writer."""
    if not cluster.is_distributed:
        return load(path, device)
    return on_writer(cluster, lambda: load(path, "cpu"), refusals)


def agreed_signal(cluster: Cluster, signum: int | None) -> int | None:
    """The stop signal any rank received (SIGINT before SIGTERM), so that all stop after the
    same step; one small all-reduce per step."""
    if not cluster.is_distributed:
        return signum
    flags = torch.tensor([float(signum == signal.SIGINT), float(signum == signal.SIGTERM)],
                         device=collective_device(cluster))
    dist.all_reduce(flags)
    if flags[0] > 0:
        return signal.SIGINT
    return signal.SIGTERM if flags[1] > 0 else None


def is_peer_failure(cluster: Cluster, error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank died or timed out."""
    if not cluster.is_distributed:
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def summer(cluster: Cluster):
    """What sums a tensor over the ranks (for the evaluation tables), or None for one process."""
    return functools.partial(all_sum, cluster) if cluster.is_distributed else None


def barrier(cluster: Cluster) -> None:
    if cluster.is_distributed:
        dist.barrier()


def collective_device(cluster: Cluster) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if cluster.backend == "nccl" else torch.device("cpu")
