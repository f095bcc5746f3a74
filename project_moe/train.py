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
import random
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
import stats
from config import Config, ConfigError, parse_args, validate
from evaluation import (LAYER_COLUMNS, PATCH_COLUMNS, SAMPLES_COLUMNS, SplitResult, evaluate, patch_routing,
                        sample_routing, train_batch_expert_rows)
from moe_model import (MoEClassifier, build_dense_matched, build_model, classifier_logits,
                       model_cost, moe_param_counts)
from run_files import CSVLog, atomic_write_bytes, read_json, save_checkpoint, write_json
from vit_model import ViTClassifier, check_vit_fits, vit_cost

AUX_NAMES = ("balance", "cv", "z", "entropy", "kl_uniform", "centroid")
METRICS_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                   *[f"aux_{name}" for name in AUX_NAMES], "train_load_cv", "val_load_cv",
                   "val_gate_entropy", "samples_per_s", "epoch_time_s", "wall_time_s"]
EXPERTS_COLUMNS = ["epoch", "step", "split", "expert", "n_samples", "n_routed", "frac_routed", "mean_gate",
                   "loss_routed", "acc_routed", "loss_all", "acc_all"]
ROUTING_COLUMNS = ["epoch", "step", "split", "expert", "class", "count", "gate_mass", "top1"]
ROUTED_SAMPLES = 1000   # test images whose routing is kept, to show what each expert sees
ROUTED_PATCH_IMAGES = 16  # ViT: test images whose per-patch routing is kept
# Settings that may change between a run and its resumption without changing its results.
RESUMABLE_DIFFERENCES = {"resume", "overwrite", "device", "threads", "data_dir", "out", "log_every", "expert_dispatch"}
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3
REPO_ROOT = Path(__file__).resolve().parent.parent


class Interrupted(Exception):
    pass


# ----------------------------------------------------------------------------- setup

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(), "git_commit": git_commit(), "argv": sys.argv}


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


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; the fused kernel when this build has it: an MoE carries E experts' worth of
    parameters, and on small batches their update, not the forward pass, dominates a step."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, coefs: dict[str, float]):
    """One optimisation step: cross-entropy plus the weighted auxiliary losses of an MoE.

    Raises FloatingPointError, before touching the weights, if the loss is not finite.
    Returns (model output, logits, cross-entropy).
    """
    output = model(x)
    logits = classifier_logits(output)
    ce = F.cross_entropy(logits, y)
    loss = ce
    aux = getattr(output, "aux", None)
    if aux:
        for name, coef in coefs.items():
            loss = loss + coef * aux[name]
    if not torch.isfinite(loss).item():
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return output, logits, ce


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, dataset: data.Dataset, device: torch.device):
        self.cfg, self.run_dir, self.dataset, self.device = cfg, run_dir, dataset, device
        seed_everything(cfg.seed)
        self.model = build_model(cfg.model_spec(), dataset.in_shape, dataset.num_classes).to(device)
        self.is_moe = isinstance(self.model, MoEClassifier)
        # Models with routers: the MoE classifier, or a ViT with MoE blocks (routing tokens).
        self.moe_blocks = self.model.moe_blocks if isinstance(self.model, ViTClassifier) else []
        self.routes = self.is_moe or bool(self.moe_blocks)
        self.optimizer = make_optimizer(self.model, cfg)
        self.train_loader = data.BatchLoader(dataset.train, cfg.batch_size, dataset.mean, dataset.std,
                                             shuffle=True, augment=dataset.augment, seed=cfg.seed, device=device)
        self.total_steps = cfg.epochs * len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # Expert-choice routing depends on the batch: evaluate it in training-sized batches.
        eval_batch = cfg.batch_size if cfg.gating == "expert-choice" else max(cfg.batch_size, 1000)
        self.eval_loaders = {
            "train": data.BatchLoader(_head(dataset.train, cfg.train_eval_size), eval_batch, dataset.mean,
                                      dataset.std, shuffle=False, augment=False, seed=cfg.seed, device=device),
            "val": data.BatchLoader(dataset.val, eval_batch, dataset.mean, dataset.std, shuffle=False,
                                    augment=False, seed=cfg.seed, device=device),
            "test": data.BatchLoader(dataset.test, eval_batch, dataset.mean, dataset.std, shuffle=False,
                                     augment=False, seed=cfg.seed, device=device),
        }
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_val_acc, self.best_epoch = -1.0, -1
        self.accum = self._fresh_accumulators()
        self.elapsed_before = 0.0   # wall seconds spent in earlier sessions of a resumed run
        self.stop_signal: int | None = None

    def _lr_factor(self, step: int) -> float:
        if self.cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / max(self.total_steps, 1)))

    def _fresh_accumulators(self) -> dict:
        zero = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        routed_shape = (len(self.moe_blocks), self.cfg.experts) if self.moe_blocks else (self.cfg.experts,)
        return {"loss": zero(()), "correct": zero(()), "count": 0, "aux": zero(len(AUX_NAMES)),
                "routed": zero(*routed_shape), "train_seconds": 0.0}

    # ---- checkpointing

    def state(self) -> dict:
        accum = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.accum.items()}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "accum": accum, "elapsed": self.elapsed(),
                "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.accum = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in state["accum"].items()}
        self.elapsed_before = state["elapsed"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_numpy_from(rng["numpy"]))
        random.setstate(_python_from(rng["python"]))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save(self) -> None:
        save_checkpoint(self.run_dir / "checkpoint.pt", self.state())

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ---- main loop

    def run(self, resume: bool) -> int:
        self.started = time.perf_counter()
        logs = {"metrics": CSVLog(self.run_dir / "metrics.csv", METRICS_COLUMNS),
                "experts": CSVLog(self.run_dir / "experts.csv", EXPERTS_COLUMNS),
                "routing": CSVLog(self.run_dir / "routing.csv", ROUTING_COLUMNS)}
        if self.moe_blocks:
            logs["layers"] = CSVLog(self.run_dir / "layers.csv", ["epoch", "step", "split", *LAYER_COLUMNS])
        if resume:
            path = self.run_dir / "checkpoint.pt"
            try:
                self.load_state(torch.load(path, map_location=self.device, weights_only=True))
            except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                print(f"error: --resume: {path} does not fit this run ({first_line}); "
                      "resume with the settings it was trained with, or start a new --run-name", file=sys.stderr)
                return EXIT_BAD_INPUT
            for log in logs.values():
                log.keep_through_step(self.global_step)
            print(f"resumed {self.run_dir} at epoch {self.epoch + 1}, step {self.global_step}")
        self.logs = logs
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.epoch < self.cfg.epochs:
                self.train_epoch()
                self.end_epoch()
        except Interrupted:
            self.save()
            name = signal.Signals(self.stop_signal).name
            self.write_summary("interrupted", extra={"signal": name})
            print(f"{name}: stopped after step {self.global_step}; logs and checkpoint saved. "
                  f"Continue with: python train.py --resume --out {self.cfg.out} --run-name {self.run_dir.name}",
                  file=sys.stderr)
            return 128 + self.stop_signal
        except FloatingPointError as error:
            self.write_summary("diverged", extra={"error": str(error)})
            print(f"error: {error}; the last good checkpoint is {self.run_dir / 'checkpoint.pt'}. "
                  "Try a lower --lr or enable the router z-loss (--z-coef 1e-3)", file=sys.stderr)
            return EXIT_DIVERGED
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.finish()
        return 0

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum  # acted on after the current step, so no step is half-applied

    def train_epoch(self) -> None:
        cfg, model = self.cfg, self.model
        model.train()
        coefs = aux_coefficients(cfg)
        batches = self.train_loader.iter_epoch(self.epoch, start_step=self.step_in_epoch)
        bar = tqdm(batches, total=len(self.train_loader), initial=self.step_in_epoch, leave=False,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=None, mininterval=1.0)
        tick = time.perf_counter()
        for x, y in bar:
            try:
                output, logits, ce = train_step(model, self.optimizer, x, y, coefs)
            except FloatingPointError as error:
                raise FloatingPointError(f"{error} at epoch {self.epoch + 1}, step {self.global_step + 1}") from None
            self.scheduler.step()
            self._accumulate(output, logits, ce, y)
            self.step_in_epoch += 1
            self.global_step += 1
            if self.is_moe and cfg.log_every and self.global_step % cfg.log_every == 0:
                rows = train_batch_expert_rows(output, y, cfg.experts)
                self.logs["experts"].write([{"epoch": self.epoch + 1, "step": self.global_step,
                                             "split": "train_batch", **row} for row in rows])
            if bar.disable is False and self.global_step % 20 == 0:
                bar.set_postfix(self._postfix(), refresh=False)
            if self.stop_signal is not None:
                self.accum["train_seconds"] += time.perf_counter() - tick
                raise Interrupted
        self.accum["train_seconds"] += time.perf_counter() - tick
        bar.close()

    def _accumulate(self, output, logits, ce, y) -> None:
        a = self.accum
        n = y.shape[0]
        with torch.no_grad():
            a["loss"] += ce.detach().double() * n
            a["correct"] += (logits.argmax(dim=1) == y).sum()
            a["count"] += n
            if self.routes:
                a["aux"] += torch.stack([output.aux[name].detach() for name in AUX_NAMES]).double() * n
                a["routed"] += output.assignment_counts().double()

    def _postfix(self) -> dict:
        a = self.accum
        post = {"loss": f"{(a['loss'] / a['count']).item():.4f}", "acc": f"{(a['correct'] / a['count']).item():.4f}"}
        if self.routes:
            post["balance"] = f"{(a['aux'][0] / a['count']).item():.3f}"
        return post

    def end_epoch(self) -> None:
        cfg, a = self.cfg, self.accum
        epoch = self.epoch + 1
        val = self._evaluate_split("val", epoch)
        if self.is_moe and cfg.train_eval_size > 0:
            self._evaluate_split("train", epoch)
        count = max(a["count"], 1)
        aux = (a["aux"] / count).tolist() if self.routes else [float("nan")] * len(AUX_NAMES)
        # A ViT's load CV is the mean over its MoE blocks of each block's CV.
        train_load_cv = stats.load_cv(a["routed"]).mean().item() if self.routes else float("nan")
        row = {"epoch": epoch, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
               "train_loss": (a["loss"] / count).item(), "train_acc": (a["correct"] / count).item(),
               "val_loss": val.loss, "val_acc": val.acc,
               **{f"aux_{name}": value for name, value in zip(AUX_NAMES, aux)},
               "train_load_cv": train_load_cv, "val_load_cv": val.load_cv, "val_gate_entropy": val.gate_entropy,
               "samples_per_s": a["count"] / max(a["train_seconds"], 1e-9), "epoch_time_s": a["train_seconds"],
               "wall_time_s": self.elapsed()}
        self.logs["metrics"].write([row])
        if val.acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val.acc, epoch
            save_checkpoint(self.run_dir / "best.pt", {"model": self.model.state_dict(), "epoch": epoch})
        print(f"epoch {epoch:>3}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
              f"val loss {val.loss:.4f} acc {val.acc:.4f}"
              + (f"  balance {aux[0]:.3f} load-cv {val.load_cv:.3f}" if self.routes else "")
              + f"  {row['samples_per_s']:,.0f} samples/s")
        self.epoch, self.step_in_epoch = epoch, 0
        self.accum = self._fresh_accumulators()
        self.save()

    def _evaluate_split(self, split: str, epoch: int) -> SplitResult:
        loader = self.eval_loaders[split]
        result = evaluate(self.model, loader.iter_epoch(0), self.dataset.num_classes)
        common = {"epoch": epoch, "step": self.global_step, "split": split}
        self.logs["experts"].write([{**common, **row} for row in result.expert_rows])
        if split != "train":
            self.logs["routing"].write([{**common, **row} for row in result.routing_rows])
        if self.moe_blocks:
            self.logs["layers"].write([{**common, **row} for row in result.layer_rows])
        return result

    def finish(self) -> None:
        """Test once, with the weights that did best on validation."""
        save_checkpoint(self.run_dir / "model.pt", self.model.state_dict())
        best = torch.load(self.run_dir / "best.pt", map_location=self.device, weights_only=True)
        self.model.load_state_dict(best["model"])
        test = self._evaluate_split("test", self.best_epoch)
        if self.is_moe:
            rows = sample_routing(self.model, self.eval_loaders["test"].iter_epoch(0), ROUTED_SAMPLES)
            CSVLog(self.run_dir / "test_samples.csv", SAMPLES_COLUMNS).write(rows)
        if self.moe_blocks:
            rows = patch_routing(self.model, self.eval_loaders["test"].iter_epoch(0), ROUTED_PATCH_IMAGES)
            CSVLog(self.run_dir / "test_patches.csv", PATCH_COLUMNS).write(rows)
            images = self.dataset.test.images[:ROUTED_PATCH_IMAGES].cpu().numpy()          # (n, C, H, W) uint8
            atomic_write_bytes(self.run_dir / "test_patch_images.npy", lambda handle: np.save(handle, images))
        self.write_summary("completed", test=test)
        print(f"test loss {test.loss:.4f} acc {test.acc:.4f} (weights of epoch {self.best_epoch}, "
              f"best val acc {self.best_val_acc:.4f}); logs in {self.run_dir}")

    def write_summary(self, status: str, test: SplitResult | None = None, extra: dict | None = None) -> None:
        summary = {"status": status, "epochs_done": self.epoch, "steps": self.global_step,
                   "test_loss": test.loss if test else None, "test_acc": test.acc if test else None,
                   "best_val_acc": self.best_val_acc if self.best_epoch > 0 else None,
                   "best_epoch": self.best_epoch if self.best_epoch > 0 else None,
                   **self.cost["this"], "cost": self.cost, "total_time_s": self.elapsed(), **(extra or {})}
        write_json(self.run_dir / "summary.json", summary)


def _head(split: data.Split, size: int) -> data.Split:
    return data.Split(split.images[:size], split.labels[:size])


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def _numpy_from(state):
    return ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _python_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_from(state):
    return (state["version"], tuple(state["internal"].tolist()), state["gauss"])


# ----------------------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        validate(cfg)
        data.check_dataset_spec(cfg.dataset)
        device = resolve_device(cfg.device)
        run_dir = prepare_run_dir(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dataset = data.load_dataset(cfg.dataset, data.resolve_data_dir(cfg.data_dir), val_fraction=cfg.val_fraction,
                                    seed=cfg.seed, image_size=cfg.image_size)
        if cfg.arch == "vit":
            try:
                check_vit_fits(cfg.model_spec(), dataset.in_shape)
            except ValueError as error:
                raise ConfigError(str(error)) from None
    except (ConfigError, data.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if cfg.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run_dir, dataset, device)
    trainer.cost = cost_report(trainer.model, cfg, dataset.in_shape, dataset.num_classes)
    print(f"{cfg.dataset} ({dataset.source}): train {len(dataset.train.labels)}, val {len(dataset.val.labels)}, "
          f"test {len(dataset.test.labels)}; device {device}\n{describe_cost(trainer.cost)}")
    if not cfg.resume:
        write_json(run_dir / "config.json", {"config": dataclasses.asdict(cfg), "environment": environment(device),
                                             "dataset": {"source": dataset.source, "classes": dataset.classes,
                                                         "in_shape": list(dataset.in_shape)},
                                             "cost": trainer.cost})
    return trainer.run(resume=cfg.resume)


if __name__ == "__main__":
    sys.exit(main())
