"""The training loop of one run: epochs of steps, evaluation after each, checkpoints, and the
logs of the run directory (schema in docs/run-files.md)."""
from __future__ import annotations

import itertools
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .. import data, distributed
from ..distributed import Cluster
from ..layers.capacity import selection_bias
from ..layers.experts import dispatch_report
from ..layers.precision import Precision
from ..models.builder import build_model, cost_report
from . import rng_state
from .checkpointing import Checkpoints
from .config import Config
from .epoch_sums import EpochSums
from .evaluation import (
    SplitResult,
    evaluate,
    train_batch_expert_rows,
)
from .exits import EXIT_BAD_INPUT, first_line
from .reporting import RunReport, epoch_line, metrics_row, test_scores, write_test_tables
from .run_files import RunFileError
from .run_logs import RunLogs
from .step import (
    aux_coefficients,
    balance_selection,
    lr_factor,
    make_optimizer,
    train_step,
)
from .step_timing import STEPS_PER_ROUND, step_time_ratio
from .tasks import task_for

# The split name of the test set's per-epoch rows in experts.csv and routing.csv (the weights of
# that epoch); "test" is the one evaluation of the selected weights at the end.
TEST_EACH_EPOCH = "test_epoch"


class Interrupted(Exception):
    pass


class Trainer:
    """One run's training: the epoch loop, evaluation after each epoch and the test at the end.
    Its collaborators: ``checkpoints`` (the run directory's checkpoints, checkpointing.py) and
    ``report`` (its console and summary.json, reporting.py), both of the run directory."""

    def __init__(self, cfg: Config, run_dir: Path, dataset: data.Dataset, device: torch.device,
                 cluster: Cluster, checkpoints: Checkpoints, report: RunReport):
        self.cfg, self.run_dir, self.dataset, self.device, self.cluster = cfg, run_dir, dataset, device, cluster
        self.checkpoints, self.report = checkpoints, report
        self.say = report.say
        rng_state.seed_everything(cfg.seed)
        self.task = task_for(dataset, cfg.combine, cfg.expert_variance)   # classification, or a regression
        self.spec = self.task.model_spec(cfg.model_spec())
        model = build_model(self.spec, dataset.in_shape, self.task.out_width).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)     # conv weights only; the rest is not 4-D
        self.cost = cost_report(model, self.spec, dataset.in_shape, self.task.out_width)   # of the whole model
        self.model = distributed.parallelize(model, cluster)
        self.precision = Precision(cfg.amp, device)
        self.routes = bool(self.model.routers())   # routing layers: auxiliary losses and load counts to log
        # The mixture routes whole samples (per-expert tables of its samples); a token model
        # routes the tokens of its MoE blocks (per-layer tables).
        self.mixture = self.routes and not self.model.routes_tokens
        self.moe_blocks = self.model.moe_blocks if self.model.routes_tokens else []
        # A language model: its samples are predicted bytes, its routing tables per byte kind.
        self.language = isinstance(dataset, data.TextDataset)
        # Routing tables per kind of token (kinds.csv): a language model's byte kinds, a graph's node kinds.
        self.token_kinds = len(dataset.classes) if self.language else \
            len(dataset.kinds) if isinstance(dataset, data.GraphDataset) else 0
        if cfg.compile:
            # In place: the module keeps its class, attributes and state_dict keys. Routed rows per
            # expert change every step: symbolic shapes from the start, or a recompilation per step.
            self.model.compile(dynamic=True if self.routes else None)
        self.dispatch_said = False   # dispatch_report printed (after the first step of a session)
        self.compile_seconds = None  # the first step's time with --compile (tracing and code generation)
        self.optimizer = make_optimizer(self.model, cfg)
        self.train_loader = data.loader_for(dataset, dataset.train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                            device=device, steps=cfg.steps_per_epoch, channels_last=cfg.channels_last)
        self.total_steps = cfg.epochs * len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.eval_loaders = evaluation_loaders(cfg, dataset, device)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_val_acc, self.best_epoch = -math.inf, -1   # the best validation score (SplitResult.score)
        self.best_val_r2 = math.nan                           # a regression: R^2 of that epoch
        routed_shape = (len(self.moe_blocks), cfg.experts) if self.moe_blocks else (cfg.experts,)
        self.accum = EpochSums(routed_shape, device, cluster, drops=cfg.drop_policy != "dropless",
                               objective=tuple(aux_coefficients(cfg)))
        self.elapsed_before = 0.0   # wall seconds spent in earlier sessions of a resumed run
        self.received_signal: int | None = None  # written only by the signal handler
        self.stop_signal: int | None = None      # the signal every rank agreed to stop on

    def _lr_factor(self, step: int) -> float:
        return lr_factor(self.cfg.lr_schedule, step, self.total_steps, self.cfg.warmup_fraction)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # ---- main loop

    def run(self, resume: bool) -> int:
        self.started = time.perf_counter()
        if resume and (refused := self.checkpoints.resume(self.load_state, layers=bool(self.moe_blocks),
                                                          kinds=bool(self.token_kinds))) is not None:
            return refused
        logs = RunLogs(self.run_dir, self.cluster.is_writer, layers=bool(self.moe_blocks),
                       kinds=bool(self.token_kinds))
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
            self.write_summary("interrupted", extra={"signal": signal.Signals(self.stop_signal).name})
            return self.report.stopped_by_signal(self.stop_signal, self.global_step)
        except FloatingPointError as error:
            self.write_summary("diverged", extra={"error": str(error)})
            return self.report.diverged(error)
        except RunFileError as error:      # best.pt, read back for the test
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except distributed.RefusedElsewhere:
            return EXIT_BAD_INPUT
        except RuntimeError as error:
            if not distributed.is_peer_failure(self.cluster, error):
                raise
            self.write_summary("failed", extra={"error": first_line(error)})
            return self.report.peer_failed(error)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

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
            # Every auxiliary loss on the steps that log them (every --log-every steps: they sample
            # the aux_* means of metrics.csv), those of the objective on the others.
            logs_aux = bool(cfg.log_every) and (self.global_step + 1) % cfg.log_every == 0
            batch_rows = y.numel()             # a language model's rows are its (B * T) predicted bytes
            x, y = distributed.shard(cluster, x, y)
            y = y.reshape(-1)
            try:
                output, logits, ce = train_step(model, self.optimizer, x, y, coefs, cluster, batch_rows,
                                                self.precision, cfg.label_smoothing, self.task, logs_aux)
            except FloatingPointError as error:
                raise FloatingPointError(f"{error} at epoch {self.epoch + 1}, step {self.global_step + 1}") from None
            if not self.dispatch_said:          # which expert dispatch this session's first step ran
                self.dispatch_said = True
                if line := dispatch_report(model):
                    self.say(line)
            if self.cfg.compile and self.compile_seconds is None:
                # The step that compiled: timed apart, and not counted in samples/s.
                self.compile_seconds = time.perf_counter() - tick
                self.say(f"compiled the model in the first step: {self.compile_seconds:.1f} s")
                tick = time.perf_counter()
            self.scheduler.step()
            if cfg.bias_balance_rate:
                balance_selection(self.model, output, cluster)
            self._accumulate(output, logits, ce, y, batch_rows, logs_aux)
            self.step_in_epoch += 1
            self.global_step += 1
            if self.mixture and cfg.log_every and self.global_step % cfg.log_every == 0:
                self.logs.train_batch(self.epoch + 1, self.global_step, train_batch_expert_rows(
                    output.mixture, y, cfg.experts, distributed.summer(cluster),
                    selection_bias(self.model.routers()[0]), self.task))
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

    def _accumulate(self, output, logits, ce, y, batch_rows: int, logs_aux: bool) -> None:
        self.accum.add(output, logits, ce, y, batch_rows, self.routes, self.task, logs_aux)

    def end_epoch(self) -> None:
        cfg, a = self.cfg, self.accum.totals()
        epoch = self.epoch + 1
        val = self._evaluate_split("val", epoch)
        if self.mixture and cfg.train_eval_size > 0:
            self._evaluate_split("train", epoch)
        if self.mixture:   # what each expert does on the test set as training goes (never used for selection)
            self._evaluate_split("test", epoch, log_as=TEST_EACH_EPOCH)
        row = metrics_row(epoch, self.global_step, self.scheduler.get_last_lr()[0], a, val,
                          self.accum.aux_means() if self.routes else None, drops=cfg.drop_policy != "dropless",
                          elapsed=self.elapsed(), bits=self.language)
        self.logs.metrics(row)
        if val.score > self.best_val_acc:
            self.best_val_acc, self.best_epoch, self.best_val_r2 = val.score, epoch, val.r2
            self.save_weights("best.pt", {"epoch": epoch})
        self.say(epoch_line(row, cfg.epochs, self.routes))
        self.epoch, self.step_in_epoch = epoch, 0
        self.accum.reset()
        self.save()

    def _eval_batches(self, split: str):
        """This rank's share of every evaluation batch of ``split``."""
        return distributed.shard_batches(self.cluster, self.eval_loaders[split].iter_epoch(0))

    def _evaluate_split(self, split: str, epoch: int, log_as: str | None = None) -> SplitResult:
        with self.precision.autocast():
            result = evaluate(self.model, self._eval_batches(split), self.dataset.num_classes,
                              reduce=distributed.summer(self.cluster), tta_flip=self.cfg.tta_flip,
                              kinds=self.token_kinds, task=self.task)
        self.logs.split(result, log_as or split, epoch, self.global_step)
        return result

    def finish(self) -> None:
        """Test once, with the weights that did best on validation."""
        self.save_weights("model.pt")
        self.load_best()
        test = self._evaluate_split("test", self.best_epoch)
        write_test_tables(self.model, self.dataset, self.task, self.cfg.arch, lambda: self._eval_batches("test"),
                          self.eval_loaders["test"], self.logs, self.cluster, self.run_dir, mixture=self.mixture,
                          token_layers=bool(self.moe_blocks), language=self.language)
        self.write_summary("completed", test=test, extra=self.time_step() if self.cfg.step_time_rounds else None)
        bits = f" ({test.loss / math.log(2):.4f} bits/byte)" if self.language else ""
        if self.task.name == "regression":
            self.say(f"test loss {test.loss:.4f} rmse {test.rmse:.4g} mae {test.mae:.4g} r2 {test.r2:.4f} (weights of "
                     f"epoch {self.best_epoch}, best val r2 {self.best_val_r2:.4f}); logs in {self.run_dir}")
            return
        self.say(f"test loss {test.loss:.4f}{bits} acc {test.acc:.4f} (weights of epoch {self.best_epoch}, "
                 f"best val acc {self.best_val_acc:.4f}); logs in {self.run_dir}")

    # ---- checkpoints and summary

    def state(self) -> dict:
        """The whole training state, as checkpoint.pt keeps it (every rank takes part)."""
        return {"model": distributed.model_state(self.model, self.cluster),
                "optimizer": distributed.optimizer_state(self.optimizer, self.model, self.cluster),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "best_val_r2": self.best_val_r2,
                "accum": self.accum.state_dict(), "elapsed": self.elapsed(), "rng": rng_state.capture(),
                "precision": self.precision.state_dict()}

    def load_state(self, state: dict) -> tuple[int, int]:
        """``state`` back into the trainer; returns the restored global step and best epoch."""
        distributed.load_model_state(self.model, state["model"], self.cluster)
        distributed.load_optimizer_state(self.optimizer, self.model, state["optimizer"], self.cluster)
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.best_val_r2 = state.get("best_val_r2", float("nan"))     # checkpoints from before regression
        self.accum.load_state_dict(state["accum"])
        self.elapsed_before = state["elapsed"]
        rng_state.restore(state["rng"])
        self.precision.load_state_dict(state.get("precision", {}))
        return self.global_step, self.best_epoch

    def save(self) -> None:
        self.checkpoints.save("checkpoint.pt", self.state())

    def save_weights(self, name: str, extra: dict | None = None) -> None:
        weights = distributed.model_state(self.model, self.cluster)
        self.checkpoints.save(name, {"model": weights, **extra} if extra is not None else weights)

    def load_best(self) -> None:
        """The weights of the best validation epoch, back into the model (for the test)."""
        distributed.load_model_state(self.model, self.checkpoints.read("best.pt")["model"], self.cluster)

    def write_summary(self, status: str, test: SplitResult | None = None, extra: dict | None = None) -> None:
        self.report.write_summary({
            "status": status, "epochs_done": self.epoch, "steps": self.global_step,
            "test_loss": test.loss if test else None,
            "test_bpb": test.loss / math.log(2) if test and self.language else None,
            "test_dropped": test.dropped if test and self.cfg.drop_policy != "dropless" else None,
            **test_scores(self.task.name, test, self.best_epoch, self.best_val_acc, self.best_val_r2),
            "best_epoch": self.best_epoch if self.best_epoch > 0 else None,
            **self.cost["this"], "cost": self.cost, "total_time_s": self.elapsed(),
            "processes": self.cluster.world_size, "precision": self.precision.describe(),
            "compile_s": self.compile_seconds, **(extra or {})})

    def time_step(self) -> dict:
        """--step-time-rounds: this model's training step against the dense network of its active
        width, measured here (step_timing.py); the ratio goes into summary.json."""
        if self.cluster.is_distributed:
            self.say("--step-time-rounds: not measured under torchrun (each process would time its share)")
            return {}
        batches = list(itertools.islice(self.train_loader.iter_epoch(0), STEPS_PER_ROUND + 1))
        timing = step_time_ratio(self.model, self.cfg, self.task, self.dataset.in_shape, batches, self.device,
                                 self.cfg.step_time_rounds)
        self.say(f"training step {timing['step_time_vs_dense_active']:.3f}x the dense network of its active width "
                 f"(rounds {timing['step_time_vs_dense_active_min']:.3f} to {timing['step_time_vs_dense_active_max']:.3f}, "
                 f"{timing['step_time_steps']} steps x {timing['step_time_rounds']} rounds, side by side)")
        return timing


def evaluation_loaders(cfg: Config, dataset, device: torch.device) -> dict:
    """The splits evaluated each epoch (train: its first --train-eval-size samples), in a fixed order.
    Expert-choice routing and expert capacities depend on the batch: they are evaluated in
    training-sized batches, with the same capacity rule as in training."""
    batch_dependent = cfg.gating == "expert-choice" or cfg.drop_policy != "dropless"
    size = cfg.batch_size if batch_dependent else max(cfg.batch_size, 1000)
    splits = {"val": dataset.val, "test": dataset.test}
    if isinstance(dataset.train, (data.Split, data.TableSplit)):   # the per-expert training statistics of the mixture
        splits["train"] = _head(dataset.train, cfg.train_eval_size)
    if isinstance(dataset, data.TextDataset):
        size = cfg.batch_size if batch_dependent else max(cfg.batch_size, 64)   # windows of --context bytes
    return {name: data.loader_for(dataset, split, size, shuffle=False, seed=cfg.seed, device=device,
                                  channels_last=cfg.channels_last) for name, split in splits.items()}


def _head(split, size: int):
    if isinstance(split, data.TableSplit):
        return data.TableSplit(split.features[:size], split.targets[:size], split.rows[:size])
    return data.Split(split.images[:size], split.labels[:size])
