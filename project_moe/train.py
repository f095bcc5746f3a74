"""Train one MoE classifier (or its dense baseline) and log how it routes.

    cd project_moe && python train.py --experts 8 --gating hard

writes runs/<run-name>/{config.json, metrics.csv, experts.csv, routing.csv, summary.json,
model.pt} (schema in README.md), plus checkpoint.pt / best.pt for --resume and model selection.
Exit codes: 0 done, 2 bad input, 3 non-finite loss, 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import distributed
import rng_state
import stats
from config import Config, ConfigError, parse_args, validate
from distributed import Cluster
from aux_losses import AUX_NAMES
from epoch_sums import EpochSums
from evaluation import (PATCH_COLUMNS, SAMPLES_COLUMNS, SplitResult, evaluate, model_routers, patch_routing,
                        sample_routing, train_batch_expert_rows)
from models import build_model
from moe_model import MoEClassifier, build_dense_matched, classifier_logits, model_cost, moe_param_counts
from run_files import atomic_write_bytes, read_json, save_checkpoint, write_json
from precision import FULL, Precision
from run_logs import RunLogs
from routers import selection_bias, set_loss_names, update_selection_bias
from vit_model import ViTClassifier, ViTOutput, check_vit_fits, vit_cost

ROUTED_SAMPLES = 1000   # test images whose routing is kept, to show what each expert sees
ROUTED_PATCH_IMAGES = 16  # ViT: test images whose per-patch routing is kept
# Settings that may change between a run and its resumption without changing its results.
RESUMABLE_DIFFERENCES = {"resume", "overwrite", "device", "threads", "data_dir", "out", "log_every", "expert_dispatch",
                         "compile", "channels_last", "expert_parallel", "dist_backend", "dist_timeout"}
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PEER_FAILED = 2, 3, 4
BAD_INPUT = (ConfigError, data.DataError)
REPO_ROOT = Path(__file__).resolve().parent.parent


class Interrupted(Exception):
    pass


# ----------------------------------------------------------------------------- setup

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``local_rank``: under torchrun, each process of a machine takes its own GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {local_rank} of this machine has no GPU of its own "
                              f"({torch.cuda.device_count()} visible); start at most that many per node")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device, cluster: Cluster) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(), "processes": cluster.world_size,
            "dist_backend": cluster.backend, "git_commit": git_commit(), "argv": sys.argv}


def prepare_run_dir(cfg: Config) -> Path:
    """Check, before any work, that the run directory may be used as asked."""
    run_dir = cfg.run_dir
    if cfg.resume:
        if not (run_dir / "checkpoint.pt").exists():
            raise ConfigError(f"--resume: no checkpoint at {run_dir / 'checkpoint.pt'}; "
                              "check --out and --run-name, or start a new run without --resume")
        check_same_config(cfg, read_json(run_dir / "config.json")["config"])
        summary = run_dir / "summary.json"
        if summary.exists() and read_json(summary).get("status") == "completed":
            raise ConfigError(f"--resume: {run_dir} already completed (see its summary.json); "
                              "pass --overwrite to train it again, or choose another --run-name")
    elif run_dir.exists() and not cfg.overwrite:
        raise ConfigError(f"run directory {run_dir} already exists: pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --run-name")
    return run_dir


def check_same_config(cfg: Config, saved: dict) -> None:
    current = dataclasses.asdict(cfg)
    for key, value in saved.items():
        if key in RESUMABLE_DIFFERENCES or key not in current or current[key] == value:
            continue
        flag = "--" + key.replace("_", "-")
        raise ConfigError(f"--resume: the checkpoint was trained with {flag} {value}, this command says "
                          f"{flag} {current[key]}; use the same settings or a new --run-name")


def cost_report(model, cfg: Config, in_shape, num_classes: int) -> dict:
    """Parameters and FLOPs of this model and of the models it is compared with."""
    spec = cfg.model_spec()
    if spec.arch == "vit":
        variants = {"moe": dataclasses.replace(spec, model="moe"),
                    "dense_params": dataclasses.replace(spec, model="dense", dense_match="params"),
                    "dense_active": dataclasses.replace(spec, model="dense", dense_match="active")}
        return {"this": vit_cost(model, in_shape),
                **{name: vit_cost(build_model(variant, in_shape, num_classes), in_shape)
                   for name, variant in variants.items()}}
    moe = model if isinstance(model, MoEClassifier) else MoEClassifier(dataclasses.replace(spec, model="moe"),
                                                                      in_shape, num_classes)
    counts = moe_param_counts(moe)
    report = {"this": model_cost(model, in_shape), "moe": model_cost(moe, in_shape)}
    for match in ("params", "active"):
        dense = build_dense_matched(spec, in_shape, num_classes, counts["total" if match == "params" else "active"])
        report[f"dense_{match}"] = {**model_cost(dense, in_shape), "hidden": dense.hidden}
    return report


def describe_cost(report: dict) -> str:
    lines = []
    for name, c in report.items():
        lines.append(f"  {name:<13} params total {c['params_total']:>10,.0f}  active {c['params_active']:>10,.0f}"
                     f"  forward FLOPs/sample {c['flops_per_sample']:>13,.0f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run

def aux_coefficients(cfg: Config) -> dict[str, float]:
    """The auxiliary losses that enter the training loss, with their non-zero coefficients.
    The others are still computed and logged, but stay out of the loss, so the backward
    pass never visits them."""
    coefs = {name: getattr(cfg, f"{name}_coef") for name in AUX_NAMES}
    return {name: coef for name, coef in coefs.items() if coef != 0}


def lr_factor(schedule: str, step: int, total_steps: int, warmup_fraction: float = 0.0) -> float:
    """The learning rate at ``step`` as a fraction of --lr."""
    progress = min(step, total_steps) / max(total_steps, 1)
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":   # linear warm-up from 0, then linear decay to 0
        if progress < warmup_fraction:
            return progress / warmup_fraction
        return (1.0 - progress) / (1.0 - warmup_fraction)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum; the fused kernel when this build has it: an MoE
    carries E experts' worth of parameters, and on small batches their update, not the forward
    pass, dominates a step."""
    if cfg.optimizer == "sgd":
        make = lambda **fused: torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,  # noqa: E731
                                               nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay, **fused)
    else:
        make = lambda **fused: torch.optim.AdamW(model.parameters(), lr=cfg.lr,  # noqa: E731
                                                 weight_decay=cfg.weight_decay, **fused)
    try:
        return make(fused=True)
    except (RuntimeError, TypeError):
        return make()


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, coefs: dict[str, float],
               cluster: Cluster = distributed.SINGLE_PROCESS, batch_rows: int | None = None,
               precision: Precision = FULL, label_smoothing: float = 0.0):
    """One optimisation step: cross-entropy plus the weighted auxiliary losses of an MoE.

    Under torchrun, (x, y) is this rank's share of a global batch of ``batch_rows`` rows: it
    back-propagates its part of the global-batch loss and the gradients of the replicated
    parameters are summed over the ranks, which makes the step the one a single process
    would take on the whole batch (distributed.py).
    ``precision``: the forward pass under autocast (--amp), with loss scaling where it needs one.
    ``label_smoothing``: of the cross-entropy (which is then what the step returns).
    Raises FloatingPointError, before touching the weights, if the loss is not finite.
    Returns (model output, logits, cross-entropy of the whole batch).
    """
    with precision.autocast():
        output = model(x)
        logits = classifier_logits(output)
        if cluster.is_distributed:
            ce_part = F.cross_entropy(logits, y, reduction="sum", label_smoothing=label_smoothing) / batch_rows
            ce = distributed.all_sum(cluster, ce_part.detach())
        else:
            ce = ce_part = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss = ce_part
        aux = getattr(output, "aux", None)
        if aux:
            for name, coef in coefs.items():
                loss = loss + coef * aux[name]
    whole_batch_loss = loss if not cluster.is_distributed else loss.detach() - ce_part.detach() + ce
    value = whole_batch_loss.item()       # one host sync; torch.isfinite would add four small ops
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value}")
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss)
    distributed.sync_gradients(model, cluster)
    precision.step(optimizer)
    return output, logits, ce


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, dataset: data.Dataset, device: torch.device,
                 cluster: Cluster = distributed.SINGLE_PROCESS):
        self.cfg, self.run_dir, self.dataset, self.device, self.cluster = cfg, run_dir, dataset, device, cluster
        rng_state.seed_everything(cfg.seed)
        model = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)     # conv weights only; the rest is not 4-D
        self.cost = cost_report(model, cfg, dataset.in_shape, dataset.num_classes)   # of the whole model
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
        logs = RunLogs(self.run_dir, self.cluster.is_writer, layers=bool(self.moe_blocks))
        if resume:
            path = self.run_dir / "checkpoint.pt"
            try:
                self.load_state(distributed.load_on_writer(self.cluster, path, self.device))
            except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"error: --resume: {path} does not fit this run ({first_line}); "
                      "resume with the settings it was trained with, or start a new --run-name", file=sys.stderr)
                return EXIT_BAD_INPUT
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
        best = distributed.load_on_writer(self.cluster, self.run_dir / "best.pt", self.device)
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


def balance_selection(model, output, cluster: Cluster) -> None:
    """One step of loss-free balancing for every router of ``model``, on the loads of the
    whole batch (summed over the processes)."""
    routings = output.routings if isinstance(output, ViTOutput) else [output.routing]
    chosen = torch.stack([r.counts + r.dropped_counts() for r in routings])   # (L, E) before capacity
    for router, load in zip(model_routers(model), distributed.all_sum(cluster, chosen)):
        update_selection_bias(router, load)


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


# ----------------------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    rank, world_size, local_rank = distributed.world_from_env()
    try:
        validate(cfg)
        data.check_dataset_spec(cfg.dataset)
        distributed.check_fits_world(cfg, world_size)
        device = resolve_device(cfg.device, local_rank)
    except BAD_INPUT as error:
        if rank == 0:   # every rank parsed the same command line and found the same fault
            print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cluster = distributed.start(cfg, device.type)
    code = EXIT_PEER_FAILED      # until run() returns: an exception leaves the peers in doubt
    try:
        code = run(cfg, device, cluster)
        return code
    finally:
        distributed.stop(cluster, peers_alive=code != EXIT_PEER_FAILED)


def run(cfg: Config, device: torch.device, cluster: Cluster) -> int:
    try:
        run_dir = distributed.on_writer(cluster, lambda: prepare_run_dir(cfg), BAD_INPUT)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # The first process of each machine unpacks or decodes the data, the others then read it.
        dataset = distributed.local_first(
            cluster, lambda: data.load_dataset(cfg.dataset, data.resolve_data_dir(cfg.data_dir),
                                               val_fraction=cfg.val_fraction, seed=cfg.seed,
                                               image_size=cfg.image_size), BAD_INPUT)
        if cfg.arch == "vit":
            try:
                check_vit_fits(cfg.model_spec(), dataset.in_shape)
            except ValueError as error:
                raise ConfigError(str(error)) from None
    except BAD_INPUT as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except distributed.RefusedElsewhere:
        return EXIT_BAD_INPUT      # the rank that refused said why
    if cluster.is_writer:
        if cfg.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(cluster)
    trainer = Trainer(cfg, run_dir, dataset, device, cluster)
    trainer.say(f"{cfg.dataset} ({dataset.source}): train {len(dataset.train.labels)}, val {len(dataset.val.labels)}, "
                f"test {len(dataset.test.labels)}; device {device}; {cluster.describe()}\n{describe_cost(trainer.cost)}")
    if not cfg.resume and cluster.is_writer:
        write_json(run_dir / "config.json", {"config": dataclasses.asdict(cfg),
                                             "environment": environment(device, cluster),
                                             "dataset": {"source": dataset.source, "classes": dataset.classes,
                                                         "in_shape": list(dataset.in_shape)},
                                             "cost": trainer.cost})
    return trainer.run(resume=cfg.resume)


if __name__ == "__main__":
    sys.exit(main())
