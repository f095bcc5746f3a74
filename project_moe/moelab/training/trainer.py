"""The training loop of one run: epochs of steps, evaluation after each, checkpoints, and the
logs of the run directory (schema in docs/run-files.md)."""
from __future__ import annotations

import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import data, distributed, stats
from ..distributed import Cluster
from ..layers.aux_losses import AUX_NAMES
from ..layers.precision import Precision
from ..layers.capacity import selection_bias
from ..layers.routers import set_loss_names
from ..models.builder import build_model, cost_report
from ..models.classifier import MoEClassifier
from ..models.vit import ViTClassifier
from . import rng_state
from .config import Config
from .epoch_sums import EpochSums
from .evaluation import (
    PATCH_COLUMNS,
    SAMPLES_COLUMNS,
    SplitResult,
    evaluate,
    patch_routing,
    sample_routing,
    train_batch_expert_rows,
)
from .exits import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PEER_FAILED
from .run_files import RunFileError, atomic_write_bytes, load_checkpoint, save_checkpoint, write_json
from .run_logs import RunLogs, check_logs
from .step import (
    aux_coefficients,
    balance_selection,
    lr_factor,
    make_optimizer,
    train_step,
)

ROUTED_SAMPLES = 1000   # test images whose routing is kept, to show what each expert sees
ROUTED_PATCH_IMAGES = 16  # ViT: test images whose per-patch routing is kept



class Interrupted(Exception):
    pass


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, dataset: data.Dataset, device: torch.device,
                 cluster: Cluster = distributed.SINGLE_PROCESS):
        self.cfg, self.run_dir, self.dataset, self.device, self.cluster = cfg, run_dir, dataset, device, cluster
        rng_state.seed_everything(cfg.seed)
        model = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)     # conv weights only; the rest is not 4-D
        self.cost = cost_report(model, cfg.model_spec(), dataset.in_shape, dataset.num_classes)   # of the whole model
        self.model = distributed.parallelize(model, cluster)
        self.precision = Precision(cfg.amp, device)
        self.is_moe = isinstance(self.model, MoEClassifier)
        # Models with routers: the MoE classifier, or a ViT with MoE blocks (routing tokens).
        self.moe_blocks = self.model.moe_blocks if isinstance(self.model, ViTClassifier) else []
        self.routes = self.is_moe or bool(self.moe_blocks)
        if cfg.compile:
            # In place: the module keeps its class, attributes and state_dict keys. Routed rows per
            # expert change every step: symbolic shapes from the start, or a recompilation per step.
            self.model.compile(dynamic=True if self.routes else None)
        self.compile_seconds = None  # the first step's time with --compile (tracing and code generation)
        self.optimizer = make_optimizer(self.model, cfg)
        self.train_loader = data.BatchLoader(dataset.train, cfg.batch_size, dataset.mean, dataset.std,
                                             shuffle=True, augment=dataset.augment, seed=cfg.seed, device=device,
                                             channels_last=cfg.channels_last)
        self.total_steps = cfg.epochs * len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.eval_loaders = evaluation_loaders(cfg, dataset, device)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_val_acc, self.best_epoch = -1.0, -1
        routed_shape = (len(self.moe_blocks), cfg.experts) if self.moe_blocks else (cfg.experts,)
        self.accum = EpochSums(routed_shape, device, cluster, drops=cfg.drop_policy != "dropless")
        self.elapsed_before = 0.0   # wall seconds spent in earlier sessions of a resumed run
        self.received_signal: int | None = None  # written only by the signal handler
        self.stop_signal: int | None = None      # the signal every rank agreed to stop on
        self.loss_names: tuple[str, ...] | None = None   # what the routers compute (set_loss_names)

    def _lr_factor(self, step: int) -> float:
        return lr_factor(self.cfg.lr_schedule, step, self.total_steps, self.cfg.warmup_fraction)

    # ---- checkpointing (every rank takes part; rank 0 writes)

    def state(self) -> dict:
        return {"model": distributed.model_state(self.model, self.cluster),
                "optimizer": distributed.optimizer_state(self.optimizer, self.model, self.cluster),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "accum": self.accum.state_dict(), "elapsed": self.elapsed(), "rng": rng_state.capture(),
                "precision": self.precision.state_dict()}

    def load_state(self, state: dict) -> None:
        distributed.load_model_state(self.model, state["model"], self.cluster)
        distributed.load_optimizer_state(self.optimizer, self.model, state["optimizer"], self.cluster)
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.accum.load_state_dict(state["accum"])
        self.elapsed_before = state["elapsed"]
        rng_state.restore(state["rng"])
        self.precision.load_state_dict(state.get("precision", {}))

    def save(self) -> None:
        state = self.state()
        if self.cluster.is_writer:
            save_checkpoint(self.run_dir / "checkpoint.pt", state)

    def save_weights(self, name: str, extra: dict | None = None) -> None:
        weights = distributed.model_state(self.model, self.cluster)
        if self.cluster.is_writer:
            save_checkpoint(self.run_dir / name, {"model": weights, **extra} if extra is not None else weights)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ---- main loop

    def run(self, resume: bool) -> int:
        self.started = time.perf_counter()
        if resume:
            path = self.run_dir / "checkpoint.pt"
            try:
                self.load_state(distributed.load_on_writer(self.cluster, path, self.device, load_checkpoint,
                                                           (RunFileError,)))
                distributed.on_writer(self.cluster, self._check_files_to_resume, (RunFileError,))
            except RunFileError as error:
                print(f"error: {error}", file=sys.stderr)
                return EXIT_BAD_INPUT
            except distributed.RefusedElsewhere:
                return EXIT_BAD_INPUT      # rank 0 said why
            except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"error: --resume: {path} does not fit this run ({first_line}); "
                      "resume with the settings it was trained with, or start a new --run-name", file=sys.stderr)
                return EXIT_BAD_INPUT
        logs = RunLogs(self.run_dir, self.cluster.is_writer, layers=bool(self.moe_blocks))
        if resume:
            logs.keep_through_step(self.global_step)
            self.say(f"resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.global_step}")
        self.logs = logs
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < self.cfg.epochs:
                self.train_epoch()
                self.end_epoch()
            self.finish()
        except Interrupted:
            self.save()
            name = signal.Signals(self.stop_signal).name
            self.write_summary("interrupted", extra={"signal": name})
            launcher = "torchrun ... train.py" if self.cluster.is_distributed else "python train.py"
            self.say(f"{name}: stopped after step {self.global_step}; logs and checkpoint saved. "
                     f"Continue with: {launcher} --resume --out {self.cfg.out} --run-name {self.run_dir.name} "
                     "and the same settings", error=True)
            return 128 + self.stop_signal
        except FloatingPointError as error:
            self.write_summary("diverged", extra={"error": str(error)})
            self.say(f"error: {error}; the last good checkpoint is {self.run_dir / 'checkpoint.pt'}. "
                     "Try a lower --lr or enable the router z-loss (--z-coef 1e-3)", error=True)
            return EXIT_DIVERGED
        except RunFileError as error:      # best.pt, read back for the test
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except distributed.RefusedElsewhere:
            return EXIT_BAD_INPUT
        except RuntimeError as error:
            if not distributed.is_peer_failure(self.cluster, error):
                raise
            self.write_summary("failed", extra={"error": _first_line(error)})
            print(f"error: rank {self.cluster.rank}: the other processes stopped answering ({_first_line(error)}); "
                  f"the last checkpoint is {self.run_dir / 'checkpoint.pt'}: add --resume to the command to continue",
                  file=sys.stderr)
            return EXIT_PEER_FAILED
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _check_files_to_resume(self) -> None:
        """Rank 0, before any file of the run is written: the logs cut back to the checkpoint's
        step, and the best weights, which the test reads at the end, must be readable."""
        check_logs(self.run_dir, self.global_step, layers=bool(self.moe_blocks))
        if self.best_epoch > 0:
            load_checkpoint(self.run_dir / "best.pt")

    def say(self, message: str, error: bool = False) -> None:
        """Print once for the whole run (rank 0)."""
        if self.cluster.is_writer:
            print(message, file=sys.stderr if error else sys.stdout)

    def _on_signal(self, signum, frame) -> None:
        self.received_signal = signum  # acted on after the current step, so no step is half-applied

    def train_epoch(self) -> None:
        cfg, model, cluster = self.cfg, self.model, self.cluster
        model.train()
        coefs = aux_coefficients(cfg)
        batches = self.train_loader.iter_epoch(self.epoch, start_step=self.step_in_epoch)
        bar = tqdm(batches, total=len(self.train_loader), initial=self.step_in_epoch, leave=False,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=None if cluster.is_writer else True,
                   mininterval=1.0)
        tick = time.perf_counter()
        for x, y in bar:
            if self.routes:
                self._choose_losses(coefs)
            batch_rows = y.shape[0]
            x, y = distributed.shard(cluster, x, y)
            try:
                output, logits, ce = train_step(model, self.optimizer, x, y, coefs, cluster, batch_rows,
                                                self.precision, cfg.label_smoothing)
            except FloatingPointError as error:
                raise FloatingPointError(f"{error} at epoch {self.epoch + 1}, step {self.global_step + 1}") from None
            if self.cfg.compile and self.compile_seconds is None:
                # The step that compiled: timed apart, and not counted in samples/s.
                self.compile_seconds = time.perf_counter() - tick
                self.say(f"compiled the model in the first step: {self.compile_seconds:.1f} s")
                tick = time.perf_counter()
            self.scheduler.step()
            if cfg.bias_balance_rate:
                balance_selection(self.model, output, cluster)
            self._accumulate(output, logits, ce, y, batch_rows)
            self.step_in_epoch += 1
            self.global_step += 1
            if self.is_moe and cfg.log_every and self.global_step % cfg.log_every == 0:
                self.logs.train_batch(self.epoch + 1, self.global_step, train_batch_expert_rows(
                    output, y, cfg.experts, distributed.summer(cluster), selection_bias(self.model.moe.router)))
            if bar.disable is False and self.global_step % 20 == 0:
                bar.set_postfix(self.accum.progress(self.routes), refresh=False)
            # Every rank stops after the same step, whichever of them the signal reached. The
            # handler's own field is never assigned here: a signal landing during the all-reduce
            # would otherwise be overwritten by the answer computed before it arrived.
            self.stop_signal = distributed.agreed_signal(cluster, self.received_signal)
            if self.stop_signal is not None:
                self.accum.add_seconds(time.perf_counter() - tick)
                raise Interrupted
        self.accum.add_seconds(time.perf_counter() - tick)
        bar.close()
        set_loss_names(model, None)
        self.loss_names = None

    def _choose_losses(self, coefs: dict[str, float]) -> None:
        """The auxiliary losses of the coming step: those it trains on, and all of them on the
        steps that log (every --log-every steps), which sample the aux_* means of metrics.csv."""
        logs = self.cfg.log_every and (self.global_step + 1) % self.cfg.log_every == 0
        names = None if logs else tuple(coefs)
        if names != self.loss_names:
            set_loss_names(self.model, names)
            self.loss_names = names

    def _accumulate(self, output, logits, ce, y, batch_rows: int) -> None:
        self.accum.add(output, logits, ce, y, batch_rows, self.routes)

    def end_epoch(self) -> None:
        cfg, a = self.cfg, self.accum.totals()
        epoch = self.epoch + 1
        val = self._evaluate_split("val", epoch)
        if self.is_moe and cfg.train_eval_size > 0:
            self._evaluate_split("train", epoch)
        count = max(a["count"], 1)
        aux = self.accum.aux_means() if self.routes else [float("nan")] * len(AUX_NAMES)
        # A ViT's load CV is the mean over its MoE blocks of each block's CV.
        train_load_cv = stats.load_cv(a["routed"]).mean().item() if self.routes else float("nan")
        drops = cfg.drop_policy != "dropless"
        train_dropped = stats.dropped_share(a["routed"], a["dropped"]).item() if drops else float("nan")
        row = {"epoch": epoch, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
               "train_loss": (a["loss"] / count).item(), "train_acc": (a["correct"] / count).item(),
               "val_loss": val.loss, "val_acc": val.acc,
               **{f"aux_{name}": value for name, value in zip(AUX_NAMES, aux)},
               "train_load_cv": train_load_cv, "val_load_cv": val.load_cv, "val_gate_entropy": val.gate_entropy,
               "train_dropped": train_dropped, "val_dropped": val.dropped if drops else float("nan"),
               "samples_per_s": a["count"] / max(a["train_seconds"], 1e-9), "epoch_time_s": a["train_seconds"],
               "wall_time_s": self.elapsed()}
        self.logs.metrics(row)
        if val.acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val.acc, epoch
            self.save_weights("best.pt", {"epoch": epoch})
        self.say(f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
                 f"val loss {val.loss:.4f} acc {val.acc:.4f}"
                 + (f"  balance {aux[0]:.3f} load-cv {val.load_cv:.3f}" if self.routes else "")
                 + f"  {row['samples_per_s']:,.0f} samples/s")
        self.epoch, self.step_in_epoch = epoch, 0
        self.accum.reset()
        self.save()

    def _eval_batches(self, split: str):
        """This rank's share of every evaluation batch of ``split``."""
        return distributed.shard_batches(self.cluster, self.eval_loaders[split].iter_epoch(0))

    def _evaluate_split(self, split: str, epoch: int) -> SplitResult:
        with self.precision.autocast():
            result = evaluate(self.model, self._eval_batches(split), self.dataset.num_classes,
                              reduce=distributed.summer(self.cluster), tta_flip=self.cfg.tta_flip)
        self.logs.split(result, split, epoch, self.global_step)
        return result

    def finish(self) -> None:
        """Test once, with the weights that did best on validation."""
        self.save_weights("model.pt")
        best = distributed.load_on_writer(self.cluster, self.run_dir / "best.pt", self.device, load_checkpoint,
                                          (RunFileError,))
        distributed.load_model_state(self.model, best["model"], self.cluster)
        test = self._evaluate_split("test", self.best_epoch)
        gather = lambda rows: distributed.gather_rows(self.cluster, rows)  # noqa: E731
        if self.is_moe:
            self.logs.table("test_samples.csv", SAMPLES_COLUMNS,
                            sample_routing(self.model, self._eval_batches("test"), ROUTED_SAMPLES, gather))
        if self.moe_blocks:
            self.logs.table("test_patches.csv", PATCH_COLUMNS,
                            patch_routing(self.model, self._eval_batches("test"), ROUTED_PATCH_IMAGES, gather))
            images = self.dataset.test.images[:ROUTED_PATCH_IMAGES].cpu().numpy()          # (n, C, H, W) uint8
            if self.cluster.is_writer:
                atomic_write_bytes(self.run_dir / "test_patch_images.npy", lambda handle: np.save(handle, images))
        self.write_summary("completed", test=test)
        self.say(f"test loss {test.loss:.4f} acc {test.acc:.4f} (weights of epoch {self.best_epoch}, "
                 f"best val acc {self.best_val_acc:.4f}); logs in {self.run_dir}")

    def write_summary(self, status: str, test: SplitResult | None = None, extra: dict | None = None) -> None:
        if not self.cluster.is_writer:
            return
        summary = {"status": status, "epochs_done": self.epoch, "steps": self.global_step,
                   "test_loss": test.loss if test else None, "test_acc": test.acc if test else None,
                   "test_dropped": test.dropped if test and self.cfg.drop_policy != "dropless" else None,
                   "best_val_acc": self.best_val_acc if self.best_epoch > 0 else None,
                   "best_epoch": self.best_epoch if self.best_epoch > 0 else None,
                   **self.cost["this"], "cost": self.cost, "total_time_s": self.elapsed(),
                   "processes": self.cluster.world_size, "precision": self.precision.describe(),
                   "compile_s": self.compile_seconds, **(extra or {})}
        write_json(self.run_dir / "summary.json", summary)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def evaluation_loaders(cfg: Config, dataset: data.Dataset, device: torch.device) -> dict[str, data.BatchLoader]:
    """The splits evaluated each epoch (train: its first --train-eval-size samples), in a fixed order.
    Expert-choice routing and expert capacities depend on the batch: they are evaluated in
    training-sized batches, with the same capacity rule as in training."""
    batch_dependent = cfg.gating == "expert-choice" or cfg.drop_policy != "dropless"
    size = cfg.batch_size if batch_dependent else max(cfg.batch_size, 1000)
    splits = {"train": _head(dataset.train, cfg.train_eval_size), "val": dataset.val, "test": dataset.test}
    return {name: data.BatchLoader(split, size, dataset.mean, dataset.std, shuffle=False, augment=False,
                                   seed=cfg.seed, device=device, channels_last=cfg.channels_last)
            for name, split in splits.items()}


def _head(split: data.Split, size: int) -> data.Split:
    return data.Split(split.images[:size], split.labels[:size])
