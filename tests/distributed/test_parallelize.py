"""moelab/distributed/: data- and expert-parallel training on 2 CPU processes (gloo), the same numbers
as one process.

Layer level: two ranks spawned here (torch.multiprocessing, a file store) each run their share
of a batch through the parallelised layer and compare output, input gradient and every
parameter's gradient with the whole batch run in one process. Run level: ``torchrun`` against
``python train.py``, faults, resumption with another number of processes, a two-node launch.
Every process gets a timeout, so a hang fails the test instead of stalling it.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moelab import distributed
from moelab.distributed import Cluster
from moelab.distributed.state import own_experts
from moelab.layers.experts import MLPExperts
from moelab.layers.moe import MoE
from moelab.layers.routers import build_router
from moelab.layers.routing import GATING_CHOICES
from moelab.models.builder import build_model
from moelab.paths import REPO_ROOT
from moelab.training import launch
from moelab.training.config import Config
from moelab.training.exits import EXIT_BAD_INPUT

PROJECT = REPO_ROOT / "project_moe"
N, D, E, K = 24, 10, 4, 6
AUX_COEFS = {"balance": 0.1, "cv": 0.1, "z": 0.01, "entropy": 0.05, "kl_uniform": 0.1, "centroid": 0.1}
TIME_COLUMNS = ["samples_per_s", "epoch_time_s", "wall_time_s"]
# Tolerance of a P-process run's logs against one process's: the ranks sum their shares of every
# statistic in another order than one process does (float32 rounding, ~1e-7 relative), and a few
# dozen optimiser steps carry that along; up to ~2e-6 relative was seen in these runs, 1e-4 leaves
# room for the rounding of other CPUs' kernels.
LOG_RTOL, LOG_ATOL = 1e-4, 1e-6


# ----------------------------------------------------------------------------- pure parts

def test_shares_are_contiguous_and_cover_the_batch():
    assert distributed.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert distributed.shard_sizes(8, 2) == [4, 4]
    x = torch.arange(10)
    cluster = Cluster(rank=1, world_size=4)
    assert distributed.shard(cluster, x)[0].tolist() == [3, 4, 5]


@pytest.mark.parametrize("flags, world, message", [
    (dict(batch_size=30), 4, "--batch-size 30"),
    (dict(batch_size=32, experts=6, expert_parallel=True), 4, "--experts 6"),
    (dict(batch_size=32, expert_type="cnn", expert_parallel=True), 2, "--expert-type mlp"),
    (dict(batch_size=32, model="dense", expert_parallel=True), 2, "--model dense"),
])
def test_what_cannot_be_split_is_refused(flags, world, message):
    cfg = Config(**flags)
    with pytest.raises(distributed.ParallelismError, match=message):
        distributed.check_fits_world(cfg.model_spec(), cfg.batch_size, cfg.expert_parallel, world)
    distributed.check_fits_world(cfg.model_spec(), cfg.batch_size, cfg.expert_parallel, 1)   # one process splits nothing


def test_world_that_does_not_divide_the_batch_exits_2_before_creating_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = launch.main(["--batch-size", "33", "--out", str(tmp_path / "runs")])
    assert code == EXIT_BAD_INPUT and not (tmp_path / "runs").exists()
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--batch-size 33" in err


# ----------------------------------------------------------------------------- layer level, 2 ranks

def spawn_two_ranks(worker, tmp_path, *args, timeout: float = 240.0) -> None:
    """Run worker(rank, store, *args) on 2 spawned processes in one gloo group; fail on any
    error or after ``timeout`` seconds."""
    store = tmp_path / "store"
    context = mp.start_processes(worker, args=(str(store), *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"2-rank worker still running after {timeout} s")


def _join_group(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))


def _mlp_layer(gating: str, dispatch: str, score: str = "linear", drop: str = "dropless", shared: int = 0) -> MoE:
    router = build_router(gating, D, E, top_k=2, router_score=score, router_dim=6, capacity_factor=0.75, drop_policy=drop,
                          bias_balance_rate=0.1 if shared else 0.0)
    if shared:
        router.selection_bias.copy_(torch.linspace(-1.0, 1.0, E))        # a bias that changes the choices
    return MoE(router, MLPExperts(E, D, 8, K, depth=1, dispatch=dispatch),
               shared=MLPExperts(shared, D, 8, K) if shared else None)


def _vit(gating: str, drop: str = "dropless", score: str = "linear") -> torch.nn.Module:
    spec = Config(arch="vit", gating=gating, experts=E, top_k=2, vit_dim=12, vit_heads=2, vit_depth=2,
                  moe_every=1, vit_patch=2, expert_hidden=8, capacity_factor=0.75, drop_policy=drop,
                  router_score=score, router_dim=4).model_spec()
    return build_model(spec, (1, 4, 4), K)


def _loss(output, weights: torch.Tensor) -> torch.Tensor:
    """A loss that reaches every output row with its own weight, plus every auxiliary loss."""
    loss = (output.logits * weights).sum()
    return loss + sum(coef * output.aux[name] for name, coef in AUX_COEFS.items())


def _check_equivalence(model: torch.nn.Module, x: torch.Tensor, rank: int, expert_parallel: bool) -> None:
    weights = torch.randn(x.shape[0], K)
    reference = copy.deepcopy(model).train()
    x_all = x.clone().requires_grad_()
    torch.manual_seed(1)                                                # the same router noise in both
    out_all = reference(x_all)
    _loss(out_all, weights).backward()

    cluster = Cluster(rank=rank, world_size=2, local_rank=rank, backend="gloo", expert_parallel=expert_parallel)
    parallel = distributed.parallelize(copy.deepcopy(model), cluster).train()
    x_mine, weights_mine = (t.clone() for t in distributed.shard(cluster, x, weights))
    x_mine.requires_grad_()
    torch.manual_seed(1)
    out_mine = parallel(x_mine)
    _loss(out_mine, weights_mine).backward()
    distributed.sync_gradients(parallel, cluster)

    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(distributed.gather_rows(cluster, out_mine.logits.detach()),
                               out_all.logits.detach(), **close)
    for name in out_all.aux:
        torch.testing.assert_close(out_mine.aux[name].detach(), out_all.aux[name].detach(), **close, msg=name)
    torch.testing.assert_close(x_mine.grad, distributed.shard(cluster, x_all.grad)[0], **close)
    for name, param in parallel.named_parameters():
        expected = reference.get_parameter(name).grad
        if name in cluster.sharded:
            expected = own_experts(cluster, expected, cluster.sharded[name])
        torch.testing.assert_close(param.grad, expected, **close, msg=lambda m: f"{name}: {m}")


LAYER_CASES = [("mlp", gating, dispatch, "linear", "dropless") for gating in GATING_CHOICES
               for dispatch in ("grouped", "padded", "grouped_mm")] \
    + [("mlp", "topk", "grouped", "cosine", "dropless"), ("mlp", "topk", "grouped", "linear", "priority"),
       ("mlp", "hard", "padded", "linear", "position"), ("vit", "noisy-topk", "auto", "linear", "position"),
       ("mlp", "topk", "grouped", "linear", "shared+bias"), ("vit", "expert-choice", "auto", "attention", "dropless"),
       ("vit", "soft-slots", "auto", "linear", "dropless")] \
    + [("vit", gating, "auto", "linear", "dropless") for gating in GATING_CHOICES]


def _layer_worker(rank: int, store: str) -> None:
    _join_group(rank, store)
    failures = []
    for kind, gating, dispatch, score, drop in LAYER_CASES:
        for expert_parallel in (False, True):
            torch.manual_seed(0)
            if kind == "mlp":
                shared = drop == "shared+bias"
                model = _mlp_layer(gating, dispatch, score, "dropless" if shared else drop, shared=int(shared))
                x = torch.randn(N, D) * 2
            else:
                model, x = _vit(gating, drop, score), torch.randn(N // 4, 1, 4, 4)
            try:
                _check_equivalence(model, x, rank, expert_parallel)
            except AssertionError as error:
                failures.append(f"{kind} {gating} {dispatch} {score} {drop} expert_parallel={expert_parallel}: "
                                f"{str(error).splitlines()[0]}")
    dist.destroy_process_group()
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_parallel_layer_equals_one_process_for_every_router_and_dispatch(tmp_path):
    spawn_two_ranks(_layer_worker, tmp_path)


def _batchnorm_worker(rank: int, store: str) -> None:
    _join_group(rank, store)
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, bias=False), torch.nn.BatchNorm2d(3))  # as in CNNTrunk
    x = torch.randn(8, 2, 5, 5)
    reference = copy.deepcopy(trunk)
    x_all = x.clone().requires_grad_()
    out_all = reference(x_all)
    (out_all ** 3).sum().backward()
    cluster = Cluster(rank=rank, world_size=2, local_rank=rank, backend="gloo")
    synced = distributed.parallelize(copy.deepcopy(trunk), cluster)
    assert isinstance(synced[1], distributed.SyncBatchNorm2d)
    x_mine = distributed.shard(cluster, x)[0].clone().requires_grad_()
    out_mine = synced(x_mine)
    (out_mine ** 3).sum().backward()
    distributed.sync_gradients(synced, cluster)
    close = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_mine, distributed.shard(cluster, out_all)[0], **close)
    torch.testing.assert_close(x_mine.grad, distributed.shard(cluster, x_all.grad)[0], **close)
    for (name, param), ref in zip(synced.named_parameters(), reference.parameters()):
        torch.testing.assert_close(param.grad, ref.grad, **close, msg=name)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(synced[1], name), getattr(reference[1], name), **close)
    dist.destroy_process_group()


@pytest.mark.slow
def test_sync_batchnorm_uses_the_statistics_of_the_whole_batch(tmp_path):
    spawn_two_ranks(_batchnorm_worker, tmp_path)


# ----------------------------------------------------------------------------- run level, torchrun

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_args(data_dir, out, name, *extra) -> list[str]:
    return ["--data-dir", str(data_dir), "--out", str(out), "--run-name", name, "--epochs", "2",
            "--batch-size", "32", "--experts", "4", "--expert-hidden", "16", "--train-eval-size", "100",
            "--log-every", "5", "--threads", "1", *extra]


def torchrun(args: list[str], *launcher: str, timeout: float = 180.0, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", *(launcher or ("--standalone", "--nproc-per-node", "2")),
               "train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_logs(reference, other, files=("metrics.csv", "experts.csv", "routing.csv")) -> None:
    for name in files:
        a, b = pd.read_csv(reference / name), pd.read_csv(other / name)
        a, b = a.drop(columns=TIME_COLUMNS, errors="ignore"), b.drop(columns=TIME_COLUMNS, errors="ignore")
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=LOG_RTOL, atol=LOG_ATOL, obj=name)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ("--gating", "topk"),
    ("--gating", "topk", "--expert-parallel"),
    ("--gating", "expert-choice", "--arch", "vit", "--vit-dim", "24", "--vit-heads", "2", "--vit-depth", "2",
     "--moe-every", "1", "--vit-patch", "7", "--expert-parallel"),
], ids=["data-parallel", "expert-parallel", "vit-expert-choice"])
def test_two_processes_write_the_logs_of_one(tmp_path, tiny_data, extra):
    assert launch.main(run_args(tiny_data, tmp_path / "runs", "one", *extra)) == 0
    done = torchrun(run_args(tiny_data, tmp_path / "runs", "two", *extra))
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    vit = "--arch" in extra
    assert_same_logs(one, two, ("metrics.csv", "layers.csv") if vit else ("metrics.csv", "experts.csv", "routing.csv"))
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    assert done.stdout.count("test loss") == 1                           # rank 0 alone reports
    # The expert-parallel model.pt is the whole model, loadable in one process.
    whole = torch.load(two / "model.pt", weights_only=True)
    single = torch.load(one / "model.pt", weights_only=True)
    assert {k: v.shape for k, v in whole.items()} == {k: v.shape for k, v in single.items()}


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [(), ("--expert-parallel",)], ids=["data-parallel", "expert-parallel"])
def test_two_processes_train_the_language_model_of_one(tmp_path, monkeypatch, parallel):
    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path / "cache"))       # the ranks read what one process cached
    source = tmp_path / "src"
    source.mkdir()
    for i in range(6):
        (source / f"mod_{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}  # {i}\n"
                                                    for j in range(40 + 9 * i)))
    args = ["--arch", "gpt", "--dataset", f"text:{source}", "--context", "16", "--steps-per-epoch", "6",
            "--epochs", "2", "--batch-size", "8", "--vit-dim", "16", "--vit-heads", "2", "--vit-depth", "2",
            "--moe-every", "1", "--experts", "4", "--expert-hidden", "8", "--gating", "topk", "--threads", "1",
            "--val-fraction", "0.2", *parallel]
    runs = tmp_path / "runs"
    assert launch.main([*args, "--out", str(runs), "--run-name", "one"]) == 0
    done = torchrun([*args, "--out", str(runs), "--run-name", "two"])
    assert done.returncode == 0, done.stdout + done.stderr
    one, two = runs / "one", runs / "two"
    assert_same_logs(one, two, ("metrics.csv", "layers.csv", "kinds.csv"))
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    for name in ("test_bpb", "test_acc"):
        assert json.loads((two / "summary.json").read_text())[name] == pytest.approx(
            json.loads((one / "summary.json").read_text())[name], rel=LOG_RTOL)


@pytest.mark.slow
def test_killed_rank_stops_the_other_and_the_run_resumes_on_one_or_two_processes(tmp_path, tiny_data):
    extra = ("--gating", "topk", "--expert-parallel", "--epochs", "8")
    runs = tmp_path / "runs"
    assert launch.main(run_args(tiny_data, runs, "reference", *extra)) == 0
    launcher = torchrun(run_args(tiny_data, runs, "cut", *extra), wait=False)
    checkpoint = runs / "cut" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint after the first epoch"
    ranks = subprocess.run(["ps", "--ppid", str(launcher.pid), "-o", "pid="], capture_output=True, text=True)
    os.kill(int(ranks.stdout.split()[-1]), signal.SIGKILL)              # rank 1, mid-training
    killed_at = time.monotonic()
    output, _ = launcher.communicate(timeout=90)
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 60                            # well inside --dist-timeout
    state = torch.load(checkpoint, weights_only=True)                   # intact
    assert state["step_in_epoch"] == 0
    cut = runs / "cut"
    assert json.loads((cut / "summary.json").read_text())["status"] in ("failed", "interrupted")
    # Resume the same checkpoint on one process and on two.
    again = tmp_path / "again"
    again.mkdir()
    subprocess.run(["cp", "-r", str(cut), str(again / "cut")], check=True)
    assert launch.main(run_args(tiny_data, runs, "cut", *extra, "--resume")) == 0
    resumed = torchrun(run_args(tiny_data, again, "cut", *extra, "--resume"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for run_dir in (cut, again / "cut"):
        assert_same_logs(runs / "reference", run_dir)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path, tiny_data):
    extra = ("--gating", "hard", "--epochs", "8")
    runs = tmp_path / "runs"
    launcher = torchrun(run_args(tiny_data, runs, "stopped", *extra), wait=False)
    deadline = time.monotonic() + 120
    while not (runs / "stopped" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=90)
    assert output.count("SIGTERM: stopped after step") == 1, output
    summary = json.loads((runs / "stopped" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    state = torch.load(runs / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == summary["steps"]
    assert launch.main(run_args(tiny_data, runs, "stopped", *extra, "--resume")) == 0
    assert launch.main(run_args(tiny_data, runs, "reference", *extra)) == 0
    assert_same_logs(runs / "reference", runs / "stopped")


@pytest.mark.slow
def test_two_node_launch_on_one_machine_writes_one_set_of_logs(tmp_path, tiny_data):
    port = free_port()
    # The rendezvous store lives in this process, as on a cluster where it outlives the nodes: when
    # an agent hosts it, the agent that exits first takes it down while the other still shuts its
    # rendezvous down, and that node exits with a connection error although training completed.
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    args = run_args(tiny_data, tmp_path / "runs", "nodes", "--gating", "topk", "--expert-parallel", "--epochs", "1")
    nodes = [torchrun(args, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                      "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nodes",
                      "--rdzv-conf", "is_host=0",
                      wait=False) for rank in (0, 1)]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    del store
    assert all(node.returncode == 0 for node in nodes), "\n".join(outputs)
    assert sum(output.count("test loss") for output in outputs) == 1
    run_dir = tmp_path / "runs" / "nodes"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 1
