"""The CSV tables of a run directory (schema in docs/run-files.md). Under torchrun rank 0 writes
them and the other processes' writes go nowhere, so a P-process run writes one set."""
from __future__ import annotations

from pathlib import Path

from ..layers.aux_losses import AUX_NAMES
from .evaluation import KIND_COLUMNS, LAYER_COLUMNS, SplitResult
from .run_files import CSVLog, NullLog, read_log

METRICS_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_rmse", "val_mae",
                   "val_r2", "train_bpb", "val_bpb",
                   *[f"aux_{name}" for name in AUX_NAMES], "train_load_cv", "val_load_cv",
                   "val_gate_entropy", "train_dropped", "val_dropped", "samples_per_s", "epoch_time_s", "wall_time_s"]
EXPERTS_COLUMNS = ["epoch", "step", "split", "expert", "n_samples", "n_routed", "n_dropped", "frac_routed", "mean_gate",
                   "loss_routed", "acc_routed", "loss_all", "acc_all", "selection_bias"]
ROUTING_COLUMNS = ["epoch", "step", "split", "expert", "class", "count", "gate_mass", "top1"]
LAYERS_COLUMNS = ["epoch", "step", "split", *LAYER_COLUMNS]
KINDS_COLUMNS = ["epoch", "step", "split", *KIND_COLUMNS]
LOG_COLUMNS = {"metrics.csv": METRICS_COLUMNS, "experts.csv": EXPERTS_COLUMNS, "routing.csv": ROUTING_COLUMNS,
               "layers.csv": LAYERS_COLUMNS, "kinds.csv": KINDS_COLUMNS}   # the logs a resumed run continues


def check_logs(run_dir: Path, step: int, layers: bool, kinds: bool = False) -> None:
    """Refuse (RunFileError) a missing or damaged log of a run to resume from ``step``, before
    RunLogs and keep_through_step write to any of them."""
    for name, columns in logs_of_run(layers, kinds).items():
        read_log(Path(run_dir) / name, columns, step)


def logs_of_run(layers: bool, kinds: bool = False) -> dict[str, list[str]]:
    """The CSV logs of a run and their columns: layers.csv only for a model with MoE blocks of
    tokens (ViT, gpt, graph), kinds.csv only for MoE blocks whose tokens have kinds (a language
    model's bytes, a graph's nodes)."""
    wanted = {"layers.csv": layers, "kinds.csv": layers and kinds}
    return {name: columns for name, columns in LOG_COLUMNS.items() if wanted.get(name, True)}


class RunLogs:
    def __init__(self, run_dir: Path, writer: bool, layers: bool, kinds: bool = False):
        self.run_dir, self.log = Path(run_dir), CSVLog if writer else NullLog
        self.tables = {name.removesuffix(".csv"): self.log(self.run_dir / name, columns)
                       for name, columns in logs_of_run(layers, kinds).items()}

    def keep_through_step(self, step: int) -> None:
        """Drop rows after ``step``: the work a resumed run will redo."""
        for table in self.tables.values():
            table.keep_through_step(step)

    def metrics(self, row: dict) -> None:
        self.tables["metrics"].write([row])

    def train_batch(self, epoch: int, step: int, rows: list[dict]) -> None:
        self.tables["experts"].write([{"epoch": epoch, "step": step, "split": "train_batch", **row} for row in rows])

    def split(self, result: SplitResult, split: str, epoch: int, step: int) -> None:
        common = {"epoch": epoch, "step": step, "split": split}
        self.tables["experts"].write([{**common, **row} for row in result.expert_rows])
        self.tables["routing"].write([{**common, **row} for row in result.routing_rows])
        if "layers" in self.tables:
            self.tables["layers"].write([{**common, **row} for row in result.layer_rows])
        if "kinds" in self.tables and split != "train":
            self.tables["kinds"].write([{**common, **row} for row in result.kind_rows])

    def table(self, name: str, columns: list[str], rows: list[dict]) -> None:
        """A table written once (the test-set routing samples)."""
        self.log(self.run_dir / name, columns).write(rows)
