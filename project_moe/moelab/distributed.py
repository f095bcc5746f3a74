"""Training on several processes with ``torch.distributed``: data and expert parallelism.

Legend: P processes (ranks), r this rank, B samples of a global batch, b_r this rank's share,
E experts, L = E / P experts per rank under expert parallelism, M assignments of this rank,
R rows this rank's experts receive, K expert outputs.

One process runs as if this module did not exist. Under ``torchrun`` every rank builds the
same model from the same seed, and :func:`parallelize` applies the parallelism to it from
this one place (the model files know nothing of process groups):
- every router gets a :class:`ShardedBatch` scope: the auxiliary losses come from sums over
  the whole batch (one all-reduce), expert-choice picks among the rows of the whole batch
  (one all-gather of the (N, E) router scores), noise is cut from one whole-batch draw;
- every BatchNorm becomes :class:`SyncBatchNorm2d` (statistics of the whole batch);
- with ``--expert-parallel``, rank r keeps experts r*L .. r*L+L-1 of every MLP bank and each
  MoE layer exchanges its rows through :class:`ExpertParallel` (all-to-all, counts first).
Each rank takes a contiguous share of every global batch, and its loss is its part of the
global-batch loss (cross-entropy summed over its rows / B; each auxiliary loss of the whole
batch with the gradient of its own rows), so that summing the gradients of the replicated
parameters over the ranks (:func:`sync_gradients`) gives the single-process gradient, and the
all-to-all backward gives each expert the sum of every rank's contribution.
Checkpoints hold the whole model in the single-process layout (:func:`model_state`).

Why not ``DistributedDataParallel`` and ``nn.SyncBatchNorm``: ``nn.SyncBatchNorm`` refuses CPU
tensors (it accepts only CUDA, HPU, XPU and private-use devices), and this code must train on
CPU with gloo as it does on CUDA with nccl. DDP averages the gradients over the ranks, while
here each rank's loss is already its part of the global-batch loss, so the plain sum is the
one-process gradient with no rescaling; DDP would also need the expert-parallel parameters
excluded from its all-reduce and ``find_unused_parameters`` for experts that get no rows in a
step. One flat all-reduce per step (:func:`sync_gradients`) and a 20-line batch norm keep the
P-process run equal to the one-process run, which the tests check to 1e-5.

This module takes the few settings it needs as arguments (:func:`check_fits_world`,
:func:`start`); it knows nothing of the command line.
"""
from __future__ import annotations

import datetime
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .layers.experts import MLPExperts, ModuleExperts
from .layers.moe import MoE
from .layers.routers import Router
from .layers.soft_moe import SoftMoE
from .models.spec import ModelSpec


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


# ----------------------------------------------------------------------------- the process group

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
    flag = torch.tensor([0.0 if ok else 1.0], device=_collective_device(cluster))
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
                         device=_collective_device(cluster))
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


def _collective_device(cluster: Cluster) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if cluster.backend == "nccl" else torch.device("cpu")


# ----------------------------------------------------------------------------- batches

def shard_sizes(rows: int, world_size: int) -> list[int]:
    """Contiguous shares of ``rows``, the first ranks one larger when it does not divide."""
    base, extra = divmod(rows, world_size)
    return [base + (r < extra) for r in range(world_size)]


def shard(cluster: Cluster, *tensors: Tensor) -> tuple[Tensor, ...]:
    """This rank's contiguous share of the rows of a global batch."""
    if not cluster.is_distributed:
        return tensors
    sizes = shard_sizes(tensors[0].shape[0], cluster.world_size)
    start = sum(sizes[:cluster.rank])
    return tuple(t[start:start + sizes[cluster.rank]] for t in tensors)


def shard_batches(cluster: Cluster, batches):
    """Iterate this rank's share of every global batch."""
    for batch in batches:
        yield shard(cluster, *batch)


def gather_rows(cluster: Cluster, rows: Tensor) -> Tensor:
    """(b_r, ...) on every rank -> (B, ...) on every rank, in rank order; no gradient."""
    if not cluster.is_distributed:
        return rows
    sizes = _all_sizes(rows.shape[0], rows.device)
    padded = rows.new_zeros(max(sizes), *rows.shape[1:])
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def _all_sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's number of rows (one small all-gather)."""
    mine = torch.tensor([rows], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return torch.cat(sizes).tolist()


# ----------------------------------------------------------------------------- collectives with gradients

class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of every rank's input is the sum of the ranks'
    output gradients (each rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, x):
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _AllToAll(torch.autograd.Function):
    """Rows to and from every rank: ``send[q]`` consecutive rows go to rank q, ``recv[q]``
    arrive from it. The backward pass sends the gradients back the same way reversed."""

    @staticmethod
    def forward(ctx, x, send, recv, traffic):
        ctx.send, ctx.recv, ctx.traffic = send, recv, traffic
        return _all_to_all(x.contiguous(), send, recv, traffic)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad.contiguous(), ctx.recv, ctx.send, ctx.traffic), None, None, None


def _all_to_all(x: Tensor, send: list[int], recv: list[int], traffic: Traffic) -> Tensor:
    out = x.new_empty(sum(recv), *x.shape[1:])
    tick = time.perf_counter()
    dist.all_to_all_single(out, x, recv, send)
    traffic.calls += 1
    traffic.seconds += time.perf_counter() - tick
    row_bytes = x[0].numel() * x.element_size() if x.dim() > 1 else x.element_size()
    traffic.bytes_sent += (sum(send) - send[dist.get_rank()]) * row_bytes
    return out


# ----------------------------------------------------------------------------- what parallelize installs

class ShardedBatch:
    """A router's view of a batch split over the ranks (see routers.LocalBatch)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def row_span(self, rows: int) -> tuple[int, int]:
        sizes = _all_sizes(rows, _collective_device(self.cluster))
        return sum(sizes[:self.cluster.rank]), sum(sizes)

    def gather_rows(self, rows: Tensor) -> Tensor:
        return gather_rows(self.cluster, rows)

    def global_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        # The value is the whole batch's sum; the gradient reaches this rank's own part only,
        # and the other ranks' parts reach their own parameters' gradients, summed afterwards.
        flat = torch.cat([value.reshape(-1).float() for value in sums.values()])
        total = flat.detach().clone()
        dist.all_reduce(total)
        flat = flat + (total - flat.detach())
        out, start = {}, 0
        for name, value in sums.items():
            out[name] = flat[start:start + value.numel()].view(value.shape)
            start += value.numel()
        return out

    def batch_independent(self, loss: Tensor) -> Tensor:
        # Every rank adds the same term, and the gradients are summed over the ranks.
        return loss.detach() + (loss - loss.detach()) / self.cluster.world_size


class ExpertParallel:
    """The exchange of an MoE layer whose experts are spread over the ranks: rank q owns the
    experts q*L .. q*L+L-1 (a bank of L experts here)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def run_sorted(self, experts: MLPExperts, x_sorted: Tensor, counts: Tensor) -> Tensor:
        """(M, D) this rank's rows grouped by expert, counts (E,) -> (M, K) their outputs."""
        world, local = self.cluster.world_size, len(experts)
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts.contiguous())                 # counts first
        table = torch.stack([counts, received]).cpu()                           # one host sync
        send_matrix, recv_matrix = table[0].view(world, local), table[1].view(world, local)   # (P, L)
        send, recv = send_matrix.sum(dim=1).tolist(), recv_matrix.sum(dim=1).tolist()
        rows = _AllToAll.apply(x_sorted, send, recv, self.cluster.traffic)     # (R, D) by source, then expert
        order = source_to_expert_order(recv_matrix).to(rows.device)            # (R,)
        out = experts.forward_sorted(rows.index_select(0, order), recv_matrix.sum(dim=0).tolist())  # (R, K)
        by_source = out.new_empty(out.shape).index_copy(0, order, out)          # (R, K) back in arrival order
        return _AllToAll.apply(by_source, recv, send, self.cluster.traffic)    # (M, K)

    def run_all(self, experts: MLPExperts, x: Tensor) -> Tensor:
        """(b_r, D) -> (E, b_r, K): every row goes to every rank, which runs its L experts."""
        world, local = self.cluster.world_size, len(experts)
        sizes, rows = _all_sizes(x.shape[0], x.device), x.shape[0]
        copies = x.unsqueeze(0).expand(world, *x.shape).reshape(world * rows, *x.shape[1:])
        everyone = _AllToAll.apply(copies, [rows] * world, sizes, self.cluster.traffic)   # (B, D)
        out = experts.forward_all(everyone)                                    # (L, B, K)
        outputs = out.shape[-1]
        send = torch.cat([part.reshape(-1, outputs) for part in out.split(sizes, dim=1)])  # by destination
        back = _AllToAll.apply(send, [local * size for size in sizes], [local * rows] * world,
                               self.cluster.traffic)                          # (P*L*b_r, K)
        return back.view(world * local, rows, outputs)                         # (E, b_r, K)


def source_to_expert_order(counts: Tensor) -> Tensor:
    """Rows that arrived grouped by source rank, then expert, (P, L) ``counts`` of them ->
    the (R,) permutation that lists them grouped by expert, then source rank."""
    sizes = counts.flatten()                                                   # blocks in arrival order
    starts = sizes.cumsum(0) - sizes                                           # (P*L,)
    by_expert_starts = starts.view(counts.shape).t().flatten()                 # (L*P,)
    by_expert_sizes = counts.t().flatten()
    rows = int(sizes.sum())
    shift = by_expert_starts - (by_expert_sizes.cumsum(0) - by_expert_sizes)
    return torch.arange(rows) + shift.repeat_interleave(by_expert_sizes, output_size=rows)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over every rank
    (sum and sum of squares all-reduced, with gradient). Evaluation uses the running
    statistics, as BatchNorm2d does."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        count = x.new_tensor([x.numel() / channels])
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3)), count])   # (2C+1,)
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:channels] / n                                            # (C,)
        var = (total[channels:2 * channels] / n - mean.square()).clamp_min(0.0)   # (C,) biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1.0), momentum)
        scale = torch.rsqrt(var + self.eps) * (self.weight if self.affine else 1.0)   # (C,)
        shift = (self.bias if self.affine else 0.0) - mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def _sync_batchnorm(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.BatchNorm2d:
                synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats).to(child.weight.device)
                synced.load_state_dict(child.state_dict())
                setattr(parent, name, synced)


def parallelize(model: nn.Module, cluster: Cluster) -> nn.Module:
    """Make ``model`` (built the same way on every rank) one model spread over the ranks.
    Call before the optimiser is made: expert parallelism replaces the expert parameters."""
    if not cluster.is_distributed:
        return model
    scope = ShardedBatch(cluster)
    for module in model.modules():
        if isinstance(module, (Router, SoftMoE)):
            module.batch = scope
    _sync_batchnorm(model)
    if cluster.expert_parallel:
        for name, module in model.named_modules():
            if isinstance(module, MoE):
                if isinstance(module.experts, ModuleExperts):
                    raise ValueError("expert parallelism needs stacked MLP experts")
                _keep_own_experts(module.experts, cluster)
                module.exchange = ExpertParallel(cluster)
                for param_name, param in module.experts.named_parameters():
                    cluster.sharded[f"{name}.experts.{param_name}".lstrip(".")] = param.shape[0] * cluster.world_size
    return model


def _keep_own_experts(bank: MLPExperts, cluster: Cluster) -> None:
    local = bank.num_experts // cluster.world_size
    own = slice(cluster.rank * local, (cluster.rank + 1) * local)
    for params in (bank.weights, bank.biases):
        for i, param in enumerate(params):
            params[i] = nn.Parameter(param.detach()[own].clone())
    bank.num_experts = local


# ----------------------------------------------------------------------------- gradients and state

def sync_gradients(model: nn.Module, cluster: Cluster) -> None:
    """Sum the gradients of the replicated parameters over the ranks (one all-reduce). Each
    rank's gradient is its part of the global-batch gradient, so the sum is the whole."""
    if not cluster.is_distributed:
        return
    params = [p for name, p in model.named_parameters() if name not in cluster.sharded and p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    start = 0
    for param, grad in zip(params, grads):
        reduced = flat[start:start + grad.numel()].view_as(grad)
        start += grad.numel()
        if param.grad is not None:
            param.grad.copy_(reduced)


def _gather_experts(cluster: Cluster, tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(cluster.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _own_experts(cluster: Cluster, tensor: Tensor, full: int) -> Tensor:
    if tensor.shape[0] != full:
        raise ValueError(f"expert tensor of {tensor.shape[0]} experts where the model has {full}")
    local = full // cluster.world_size
    return tensor[cluster.rank * local:(cluster.rank + 1) * local]


def model_state(model: nn.Module, cluster: Cluster) -> dict[str, Tensor]:
    """The whole model's state_dict in the single-process layout (every rank must call it)."""
    state = model.state_dict()
    for name in cluster.sharded:
        state[name] = _gather_experts(cluster, state[name])
    return state


def load_model_state(model: nn.Module, state: dict[str, Tensor], cluster: Cluster) -> None:
    """Load a single-process state_dict, keeping this rank's experts."""
    state = dict(state)
    for name, full in cluster.sharded.items():
        if name in state:
            state[name] = _own_experts(cluster, state[name], full)
    model.load_state_dict(state)


def _optimizer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, cluster: Cluster) -> dict:
    """The optimiser's state_dict with every expert's moments, in the single-process layout."""
    state = optimizer.state_dict()
    if not cluster.sharded:
        return state
    names = _optimizer_names(model)
    # state_dict() shares the optimiser's own per-parameter dicts: build new ones.
    return {**state, "state": {index: {key: (_gather_experts(cluster, value)
                                             if names[index] in cluster.sharded and torch.is_tensor(value)
                                             and value.dim() > 0 else value)
                                       for key, value in per_param.items()}
                               for index, per_param in state["state"].items()}}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, state: dict, cluster: Cluster) -> None:
    if cluster.sharded:
        names = _optimizer_names(model)
        state = {**state, "state": {index: {key: (_own_experts(cluster, value, cluster.sharded[names[index]])
                                                 if names[index] in cluster.sharded and torch.is_tensor(value)
                                                 and value.dim() > 0 else value)
                                           for key, value in per_param.items()}
                                    for index, per_param in state["state"].items()}}
    optimizer.load_state_dict(state)
