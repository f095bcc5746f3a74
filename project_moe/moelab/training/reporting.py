"""What a run reports: the metrics.csv row and console line of every epoch, the test-routing
tables, and summary.json (schemas in docs/run-files.md)."""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
from pathlib import Path

import numpy as np
import torch

from .. import distributed, stats
from ..distributed import Cluster
from ..data.tables import TableDataset
from ..layers.aux_losses import AUX_NAMES
from .evaluation import (
    NODE_COLUMNS,
    PATCH_COLUMNS,
    SAMPLES_COLUMNS,
    TEXT_COLUMNS,
    SplitResult,
    node_routing,
    patch_routing,
    sample_routing,
    sample_rows,
    text_routing,
)
from .exits import EXIT_DIVERGED, EXIT_PEER_FAILED, first_line
from .run_files import atomic_write_bytes, write_json
from .table_routing import table_routing

ROUTED_SAMPLES = 1000   # test samples of test_samples.csv (test_gates.npz has every one, compactly)
GATES_KEPT_WHOLE = 16   # test_gates.npz keeps every gate weight up to this many experts, the top ones beyond
ROUTED_PATCH_IMAGES = 16  # ViT: test images whose per-patch routing is kept
ROUTED_GRAPHS = 16        # graphs: test graphs whose per-node routing is kept, with the graphs themselves
ROUTED_TEXT_BYTES = 1024  # language model: leading test bytes whose per-byte routing is kept


def metrics_row(epoch: int, step: int, lr: float, totals: dict, val: SplitResult, aux: list[float] | None,
                drops: bool, elapsed: float, bits: bool = False) -> dict:
    """The metrics.csv row of an epoch from its training sums (EpochSums.totals), its validation
    result and the mean auxiliary losses (None for a model without routers). ``bits``: a
    language model, whose losses (nats per byte) are also given in bits per byte."""
    count = max(totals["count"], 1)
    routes = aux is not None
    aux = aux if routes else [float("nan")] * len(AUX_NAMES)
    # A ViT's load CV is the mean over its MoE blocks of each block's CV.
    train_load_cv = stats.load_cv(totals["routed"]).mean().item() if routes else float("nan")
    train_dropped = stats.dropped_share(totals["routed"], totals["dropped"]).item() if drops else float("nan")
    return {"epoch": epoch, "step": step, "lr": lr,
            "train_loss": (totals["loss"] / count).item(), "train_acc": (totals["correct"] / count).item(),
            "val_loss": val.loss, "val_acc": val.acc, "val_rmse": val.rmse, "val_mae": val.mae, "val_r2": val.r2,
            "train_bpb": (totals["loss"] / count).item() / math.log(2) if bits else float("nan"),
            "val_bpb": val.loss / math.log(2) if bits else float("nan"),
            **{f"aux_{name}": value for name, value in zip(AUX_NAMES, aux)},
            "train_load_cv": train_load_cv, "val_load_cv": val.load_cv, "val_gate_entropy": val.gate_entropy,
            "train_dropped": train_dropped, "val_dropped": val.dropped if drops else float("nan"),
            "samples_per_s": totals["count"] / max(totals["train_seconds"], 1e-9),
            "epoch_time_s": totals["train_seconds"], "wall_time_s": elapsed}


def epoch_line(row: dict, epochs: int, routes: bool) -> str:
    """The console line of an epoch."""
    if math.isfinite(row["val_bpb"]):     # a language model: bits per byte, next-byte accuracy
        head = (f"epoch {row['epoch']:>3}/{epochs} step {row['step']}  train {row['train_bpb']:.4f} bits/byte  "
                f"val {row['val_bpb']:.4f} bits/byte acc {row['val_acc']:.4f}")
    elif math.isfinite(row["val_rmse"]):  # a regression: its loss, and the error in the target's units
        head = (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f} "
                f"rmse {row['val_rmse']:.4g} r2 {row['val_r2']:.4f}")
    else:
        head = (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    return (head
            + (f"  balance {row['aux_balance']:.3f} load-cv {row['val_load_cv']:.3f}" if routes else "")
            + f"  {row['samples_per_s']:,.0f} samples/s")


def compact_gates(routing: dict) -> dict[str, np.ndarray]:
    """Every test sample's routing as test_gates.npz stores it (compressed, a few tens of kB where
    the CSV would take hundreds): ``group`` (class, or target bin) and ``predicted`` (int16),
    ``experts_used`` (int16), ``gate_entropy`` (float16, nats) and the gate weights in float16,
    whole (``weights``, N x E) up to GATES_KEPT_WHOLE experts, else each sample's GATES_KEPT_WHOLE
    largest (``top_weights``) and their experts (``top_experts``). ``routing``: sample_routing's columns."""
    columns = {"group": ("class", np.int16), "predicted": ("predicted", np.int16),
               "experts_used": ("experts_used", np.int16), "gate_entropy": ("gate_entropy", np.float16)}
    gates = {name: routing[key].numpy().astype(dtype) for name, (key, dtype) in columns.items()}
    weights = routing["weights"]                                             # (N, E)
    if weights.shape[1] <= GATES_KEPT_WHOLE:
        return {**gates, "weights": weights.numpy().astype(np.float16)}
    top, experts = weights.topk(GATES_KEPT_WHOLE, dim=1)                     # (N, GATES_KEPT_WHOLE)
    return {**gates, "top_weights": top.numpy().astype(np.float16), "top_experts": experts.numpy().astype(np.int16)}


class RunReport:
    """The console of a run and its summary.json (rank 0 writes; ``out``: the run's --out, for
    the command that continues it)."""

    def __init__(self, run_dir: Path, cluster: Cluster, out: str):
        self.run_dir, self.cluster, self.out = run_dir, cluster, out

    def say(self, message: str, error: bool = False) -> None:
        """Print once for the whole run (rank 0)."""
        if self.cluster.is_writer:
            print(message, file=sys.stderr if error else sys.stdout)

    def write_summary(self, summary: dict) -> None:
        if self.cluster.is_writer:
            write_json(self.run_dir / "summary.json", summary)

    def stopped_by_signal(self, signum: int, step: int) -> int:
        """After SIGINT / SIGTERM, with the checkpoint and summary saved: how to continue, the exit code."""
        launcher = "torchrun ... train.py" if self.cluster.is_distributed else "python train.py"
        self.say(f"{signal.Signals(signum).name}: stopped after step {step}; logs and checkpoint saved. "
                 f"Continue with: {launcher} --resume --out {self.out} --run-name {self.run_dir.name} "
                 "and the same settings", error=True)
        return 128 + signum

    def diverged(self, error: FloatingPointError) -> int:
        self.say(f"error: {error}; the last good checkpoint is {self.run_dir / 'checkpoint.pt'}. "
                 "Try a lower --lr or enable the router z-loss (--z-coef 1e-3)", error=True)
        return EXIT_DIVERGED

    def peer_failed(self, error: RuntimeError) -> int:
        """Every rank says it: the one that failed may not have."""
        print(f"error: rank {self.cluster.rank}: the other processes stopped answering ({first_line(error)}); "
              f"the last checkpoint is {self.run_dir / 'checkpoint.pt'}: add --resume to the command to continue",
              file=sys.stderr)
        return EXIT_PEER_FAILED


def test_scores(task_name: str, test: SplitResult | None, best_epoch: int, best_val_acc: float,
                best_val_r2: float) -> dict:
    """summary.json's test metrics of the task and its best validation score, under their names."""
    if task_name != "regression":
        return {"task": task_name, "test_acc": test.acc if test else None,
                "best_val_acc": best_val_acc if best_epoch > 0 else None}
    return {"task": "regression", "test_acc": None, "best_val_r2": best_val_r2 if best_epoch > 0 else None,
            **{f"test_{name}": getattr(test, name) if test else None for name in ("rmse", "mae", "r2")}}


def write_test_tables(model, dataset, task, arch: str, test_batches, test_loader, logs, cluster: Cluster,
                      run_dir: Path, mixture: bool, token_layers: bool, language: bool) -> None:
    """The routing of the test split: of its first samples (``mixture``: a model routing whole
    samples), of a table's rows and its gate grid, of the bytes, patches or nodes of the first
    texts, images or graphs (``token_layers``: a token model with MoE blocks; ``language``: a
    language model). ``test_batches()``: this rank's share of the test batches, afresh;
    ``test_loader``: all of them (tables, rank 0)."""
    gather = lambda rows: distributed.gather_rows(cluster, rows)  # noqa: E731
    if mixture:
        routing = sample_routing(model, test_batches(), gather, task)
        logs.table("test_samples.csv", SAMPLES_COLUMNS, sample_rows(routing, ROUTED_SAMPLES))
        if cluster.is_writer:
            gates = compact_gates(routing)
            atomic_write_bytes(run_dir / "test_gates.npz", lambda handle: np.savez_compressed(handle, **gates))
    if isinstance(dataset, TableDataset) and cluster.is_writer:
        predictions, grid = table_routing(model, dataset, task, test_loader.iter_epoch(0), test_loader.device)
        logs.table("test_predictions.csv", list(predictions[0]), predictions)
        if grid:
            logs.table("gate_grid.csv", list(grid[0]), grid)
    if token_layers and language:
        logs.table("test_text.csv", TEXT_COLUMNS, text_routing(model, test_batches(), ROUTED_TEXT_BYTES, gather))
    elif token_layers and arch == "vit":
        logs.table("test_patches.csv", PATCH_COLUMNS,
                   patch_routing(model, test_batches(), ROUTED_PATCH_IMAGES, gather))
        images = dataset.test.images[:ROUTED_PATCH_IMAGES].cpu().numpy()          # (n, C, H, W) uint8
        if cluster.is_writer:
            atomic_write_bytes(run_dir / "test_patch_images.npy", lambda handle: np.save(handle, images))
    elif token_layers and arch == "graph":
        logs.table("test_nodes.csv", NODE_COLUMNS, node_routing(model, test_batches(), ROUTED_GRAPHS, gather))
        if cluster.is_writer:
            graphs = test_graphs(dataset, ROUTED_GRAPHS)
            atomic_write_bytes(run_dir / "test_graphs.npz", lambda handle: np.savez_compressed(handle, **graphs))


def test_graphs(dataset, count: int) -> dict[str, np.ndarray]:
    """The first ``count`` test graphs of a graph dataset, as test_graphs.npz keeps them beside the
    routing of their nodes (test_nodes.csv): node features (M, F), offsets (G + 1,), edges (2, P)
    with edge_offsets (G + 1,), labels (G,), node kinds (M,), and the names of the features and kinds."""
    split = dataset.test.subset(torch.arange(min(count, len(dataset.test)), device=dataset.test.labels.device))
    return {**{f.name: getattr(split, f.name).cpu().numpy() for f in dataclasses.fields(split)},
            "feature_names": np.array(dataset.feature_names), "kind_names": np.array(dataset.kinds)}
