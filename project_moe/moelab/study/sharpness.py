"""Analyses of trained runs. For now one: the sharpness of the loss at the trained weights.

    python analysis.py sharpness RUN_DIR [RUN_DIR ...]                 # from project_moe/
    python analysis.py sharpness runs/mnist-moe-hard-e8-mlp-s* --samples 4096 --probes 64

For every run directory (written by train.py, with model.pt: the weights at the end of training,
not the best-validation ones that train.py tests; sweep.py deletes them) and for a fixed train
and test subset (the first --samples samples of each split), with H the Hessian of the mean
cross-entropy L(theta) = (1/N) sum_n CE(f(x_n; theta), y_n) over all model parameters theta:

  largest eigenvalue   power iteration  v <- Hv / ||Hv||,  lambda = v . Hv  (||v|| = 1), stopped
                       when |lambda_i - lambda_{i-1}| <= tol |lambda_i| or after --iters steps.
                       It converges to the eigenvalue of largest magnitude, with its sign: at a
                       minimum that is the largest eigenvalue; should a negative eigenvalue be
                       larger in magnitude than every positive one, that negative value comes out.
  trace                Hutchinson: tr(H) = E[z^T H z] for z with independent Rademacher (+-1)
                       entries; the mean over --probes draws and its standard error std / sqrt(P).
  loss curve           L(theta + t v / ||v||) along the top eigenvector v, t on a symmetric grid.

Hessian-vector products come from ``torch.func`` (forward-over-reverse: the directional
derivative of the gradient), batch by batch: Hv = (1/N) sum_batches H_batch v, where H_batch is
the Hessian of the summed loss of one batch, so memory is bounded by one evaluation batch.
Attention runs on PyTorch's math kernel during these products: the fused kernels cannot be
differentiated twice.

Routing. Top-k / argmax choices are piecewise constant in theta, so wherever they are defined
their derivative is zero: the Hessian here is the one of the loss with every routing decision
held fixed at the trained weights (the gate *values* still vary with the router weights). A
decision that flips within a step of size t is not seen by H; the loss curve, which re-routes
at every point, shows where that matters. Straight-through gates (``--hard-grad ste``,
``gumbel``) use a surrogate gradient; what is estimated for them is the derivative of that
surrogate. Expert-choice routing depends on the whole batch, so its batches have the run's
training batch size. The model is in evaluation mode: no dropout, no router noise, and the
auxiliary losses are not part of L.

Output (in --out): sharpness.csv, one row per run and split, and sharpness_curves.csv, one row
per run, split and t. Exit codes: 0 done, 2 bad input (nothing is written).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import data
from ..layers.experts import use_reference_experts
from ..models.builder import build_model
from ..models.classifier import count_params
from ..paths import PROJECT_DIR
from ..training.config import DEVICE_CHOICES, Config, ConfigError
from ..training.device import resolve_device
from ..training.exits import EXIT_BAD_INPUT
from ..training.provenance import DATA_DIR_TOKEN, PortablePaths
from ..training.run_files import RunFileError, atomic_write_bytes, load_checkpoint, read_config, refuse_to_replace

DEFAULT_OUT = PROJECT_DIR / "results" / "sharpness"
SPLITS = ("train", "test")
SHARPNESS_COLUMNS = ["run", "grid", "model", "gating", "experts", "top_k", "seed", "split", "n_samples", "loss",
                     "accuracy", "top_eigenvalue", "power_iterations", "converged", "trace", "trace_stderr",
                     "probes", "params"]
CURVE_COLUMNS = ["run", "grid", "split", "t", "loss"]
LEAVE_OUT = "restore it from a copy, or leave that run directory out"   # the way out of a damaged run file

Params = dict[str, Tensor]
HVP = Callable[[Params], Params]


# ----------------------------------------------------------------------------- vectors as dicts of tensors

def dot(a: Params, b: Params) -> Tensor:
    """<a, b> over all entries, accumulated in float64 (millions of float32 terms)."""
    return sum((a[k].double() * b[k].double()).sum() for k in a)


def scaled(a: Params, factor: float | Tensor) -> Params:
    return {k: t * factor for k, t in a.items()}


def shifted(params: Params, direction: Params, t: float) -> Params:
    return {k: p + t * direction[k] for k, p in params.items()}


def _draw(params_like: Params, sample: Callable[[torch.Size, torch.dtype], Tensor]) -> Params:
    # Drawn on the CPU generator, then moved: the same seed gives the same vectors on any device.
    return {k: sample(p.shape, p.dtype).to(p.device) for k, p in params_like.items()}


# ----------------------------------------------------------------------------- estimators

def hvp_fn(loss_fn: Callable[[Params], Tensor], params: Params) -> HVP:
    """v -> H v, H the Hessian of the scalar ``loss_fn`` at ``params`` (dicts of tensors).

    Forward-over-reverse (jvp of grad) costs a small multiple of one gradient and does not
    keep the graph of the backward pass. Should an op lack a forward-mode derivative (NotImplementedError),
    the product falls back, from then on, to reverse-over-reverse (vjp of grad): for a
    symmetric H, v^T H = (H v)^T, at the price of differentiating the backward pass.
    """
    gradient = grad(loss_fn)
    use_forward = True

    def hvp(v: Params) -> Params:
        nonlocal use_forward
        # Fused attention kernels (flash, memory-efficient) have neither forward-mode nor second
        # derivatives; the math kernel is built from ordinary ops that have both.
        with sdpa_kernel(SDPBackend.MATH):
            if use_forward:
                try:
                    return jvp(gradient, (params,), (v,))[1]
                except NotImplementedError:
                    use_forward = False
            return vjp(gradient, params)[1](v)[0]
    return hvp


@dataclass
class EigenEstimate:
    value: float        # Rayleigh quotient v . Hv of the last vector
    vector: Params      # that vector, unit norm over all entries together
    iterations: int     # Hessian-vector products spent
    converged: bool     # relative change of the value fell below tol


def top_eigenvalue(hvp: HVP, params_like: Params, iters: int, tol: float,
                   generator: torch.Generator) -> EigenEstimate:
    """Power iteration from a Gaussian start: the eigenvalue of largest magnitude, with its sign."""
    v = _draw(params_like, lambda shape, dtype: torch.randn(shape, generator=generator, dtype=dtype))
    v = scaled(v, 1.0 / dot(v, v).sqrt().item())
    value = None
    for step in range(1, iters + 1):
        hv = hvp(v)
        new_value = dot(v, hv).item()
        norm = dot(hv, hv).sqrt().item()
        done = norm == 0.0 or (value is not None and abs(new_value - value) <= tol * abs(new_value))
        value = new_value
        if done:
            return EigenEstimate(value, v, step, True)
        v = scaled(hv, 1.0 / norm)
    return EigenEstimate(value, v, iters, False)


@dataclass
class TraceEstimate:
    mean: float
    stderr: float            # std (ddof=1) / sqrt(probes); NaN for a single probe
    samples: list[float]     # z^T H z of every probe


def hutchinson_trace(hvp: HVP, params_like: Params, probes: int, generator: torch.Generator) -> TraceEstimate:
    """tr(H) = E[z^T H z], z Rademacher. Exact for a diagonal H, since z_i^2 = 1."""
    def rademacher(shape, dtype):
        return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1

    samples = []
    for _ in range(probes):
        z = _draw(params_like, rademacher)
        samples.append(dot(z, hvp(z)).item())
    values = torch.tensor(samples, dtype=torch.float64)
    stderr = (values.std() / math.sqrt(probes)).item() if probes > 1 else float("nan")
    return TraceEstimate(values.mean().item(), stderr, samples)


def loss_curve(loss_at: Callable[[Params], float], params: Params, direction: Params,
               ts: list[float]) -> list[float]:
    """loss_at(params + t d / ||d||) for every t."""
    unit = scaled(direction, 1.0 / dot(direction, direction).sqrt().item())
    return [loss_at(shifted(params, unit, t)) for t in ts]


def symmetric_grid(radius: float, points: int) -> list[float]:
    """``points`` (odd) evenly spaced values in [-radius, radius], the middle one exactly 0."""
    half = points // 2
    return [radius * i / half for i in range(-half, half + 1)]


# ----------------------------------------------------------------------------- a model as a function of its weights

Batches = list[tuple[Tensor, Tensor]]   # (x (B, C, H, W), y (B,)) on the device


def summed_loss(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[Params], Tensor]:
    """theta -> sum of the cross-entropy over one batch; buffers (BatchNorm) stay the model's.
    Switches ``model``'s MLP expert banks to plain autograd ops: the fused kernel's
    hand-written backward has no forward-mode or second derivative for torch.func."""
    use_reference_experts(model)

    def loss(params: Params) -> Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)).logits, y, reduction="sum")
    return loss


def mean_loss_hvp(model: nn.Module, params: Params, batches: Batches) -> HVP:
    """v -> H v of the mean loss over all samples of ``batches``, one batch in memory at a time."""
    per_batch = [hvp_fn(summed_loss(model, x, y), params) for x, y in batches]
    num_samples = sum(len(y) for _, y in batches)

    def hvp(v: Params) -> Params:
        total = {k: torch.zeros_like(p) for k, p in params.items()}
        for batch_hvp in per_batch:
            for k, value in batch_hvp(v).items():
                total[k] += value
        return scaled(total, 1.0 / num_samples)
    return hvp


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, params: Params, batches: Batches) -> tuple[float, float]:
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = functional_call(model, params, (x,)).logits   # (B, K)
        loss_sum += F.cross_entropy(logits.double(), y, reduction="sum").item()
        correct += (logits.argmax(dim=1) == y).sum().item()
        count += len(y)
    return loss_sum / count, correct / count


# ----------------------------------------------------------------------------- runs

class AnalysisError(ValueError):
    """Bad input; the message is one line saying what is wrong and how to fix it."""


@dataclass
class Run:
    path: Path
    cfg: Config

    @property
    def identity(self) -> dict:
        cfg = self.cfg
        return {"run": self.path.name, "grid": self.path.parent.name, "model": cfg.model, "gating": cfg.gating,
                "experts": cfg.experts, "top_k": cfg.top_k, "seed": cfg.seed}


def check_run(path: Path) -> Run:
    """A finished run with its weights, or AnalysisError before any work is done."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise AnalysisError(f"{path} is not a run directory (no config.json); pass directories written by "
                            "train.py")
    if not (path / "model.pt").is_file():
        raise AnalysisError(f"{path} has no model.pt: sharpness needs the trained weights; train the run to the "
                            "end with train.py and keep its weights (sweep.py deletes the *.pt of finished runs)")
    try:
        cfg = Config(**read_config(config_path, LEAVE_OUT))   # RunFileError if damaged
    except (KeyError, TypeError) as error:
        raise AnalysisError(f"{config_path} is not a config.json written by train.py ({error})") from None
    return Run(path, cfg)


def load_model(run: Run, dataset: data.Dataset, device: torch.device) -> nn.Module:
    model = build_model(run.cfg.model_spec(), dataset.in_shape, dataset.num_classes)
    try:
        model.load_state_dict(load_checkpoint(run.path / "model.pt", fix=LEAVE_OUT))   # RunFileError if damaged
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise AnalysisError(f"{run.path / 'model.pt'} does not fit the model of its config.json "
                            f"({first_line})") from None
    return model.to(device).eval()


def head_batches(split: data.Split, dataset: data.Dataset, samples: int, batch_size: int, device) -> Batches:
    """The first ``samples`` samples of a split, normalised, in fixed batches kept on the device."""
    head = data.Split(split.images[:samples], split.labels[:samples])
    loader = data.BatchLoader(head, batch_size, dataset.mean, dataset.std, shuffle=False, augment=False, seed=0,
                              device=device)
    return list(loader.iter_epoch(0))


def split_sharpness(model: nn.Module, batches: Batches, args, split: str,
                    ts: list[float]) -> tuple[dict, list[float]]:
    """One row of sharpness.csv (without the run's identity) and the losses at ``ts`` of one split."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    hvp = mean_loss_hvp(model, params, batches)
    # Separate streams per estimator, so that changing --iters leaves the probes unchanged.
    power_gen = torch.Generator().manual_seed(data.derive_seed("power", args.seed, split))
    probe_gen = torch.Generator().manual_seed(data.derive_seed("hutchinson", args.seed, split))
    eigen = top_eigenvalue(hvp, params, args.iters, args.tol, power_gen)
    trace = hutchinson_trace(hvp, params, args.probes, probe_gen)
    loss, accuracy = loss_and_accuracy(model, params, batches)
    curve = loss_curve(lambda p: loss_and_accuracy(model, p, batches)[0], params, eigen.vector, ts)
    row = {"split": split, "n_samples": sum(len(y) for _, y in batches), "loss": loss, "accuracy": accuracy,
           "top_eigenvalue": eigen.value, "power_iterations": eigen.iterations, "converged": eigen.converged,
           "trace": trace.mean, "trace_stderr": trace.stderr, "probes": args.probes,
           "params": count_params(model)}
    return row, curve


def analyse_run(run: Run, args, device: torch.device, datasets: dict) -> tuple[list[dict], list[dict]]:
    cfg = run.cfg
    # A committed run names its data directory <data-dir> (provenance.py): --data-dir, or the default.
    recorded = None if cfg.data_dir and DATA_DIR_TOKEN in cfg.data_dir else cfg.data_dir
    data_dir = data.resolve_data_dir(args.data_dir or recorded)
    dataset_spec = PortablePaths(data_dir).local(cfg.dataset)
    key = (dataset_spec, str(data_dir), cfg.val_fraction, cfg.seed, cfg.image_size)
    if key not in datasets:   # runs of one grid share their dataset: decode it once
        datasets[key] = data.load_dataset(dataset_spec, data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                          image_size=cfg.image_size)
    dataset = datasets[key]
    model = load_model(run, dataset, device)
    # Expert-choice routing depends on the batch: keep the batches it was trained with.
    batch_size = cfg.batch_size if cfg.gating == "expert-choice" else args.batch_size
    rows, curves = [], []
    ts = symmetric_grid(args.radius, args.points)
    for split in SPLITS:
        batches = head_batches(getattr(dataset, split), dataset, args.samples, batch_size, device)
        row, curve = split_sharpness(model, batches, args, split, ts)
        rows.append({**run.identity, **row})
        curves += [{"run": run.path.name, "grid": run.path.parent.name, "split": split, "t": t, "loss": loss}
                   for t, loss in zip(ts, curve)]
    return rows, curves


# ----------------------------------------------------------------------------- command line

def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    frame = pd.DataFrame(rows, columns=columns)
    atomic_write_bytes(path, lambda handle: frame.to_csv(handle, index=False))


def print_table(rows: list[dict]) -> None:
    print(f"{'run':<40} {'split':<5} {'n':>6} {'loss':>8} {'acc':>7} {'lambda_max':>11} {'iters':>5} "
          f"{'trace':>11} {'+-':>9}")
    for r in rows:
        mark = "" if r["converged"] else "*"
        print(f"{r['run'][:40]:<40} {r['split']:<5} {r['n_samples']:>6} {r['loss']:>8.4f} {r['accuracy']:>7.4f} "
              f"{r['top_eigenvalue']:>11.4g} {str(r['power_iterations']) + mark:>5} {r['trace']:>11.4g} "
              f"{r['trace_stderr']:>9.3g}")
    if not all(r["converged"] for r in rows):
        print("* power iteration did not converge within --iters; raise --iters or loosen --tol")


def check_args(args) -> None:
    positive = {"--samples": args.samples, "--iters": args.iters, "--probes": args.probes,
                "--batch-size": args.batch_size, "--threads": 1 if args.threads is None else args.threads}
    for flag, value in positive.items():
        if value < 1:
            raise AnalysisError(f"{flag} must be a positive integer (got {value})")
    if not args.tol > 0:
        raise AnalysisError(f"--tol must be > 0 (got {args.tol})")
    if not args.radius > 0:
        raise AnalysisError(f"--radius must be > 0 (got {args.radius})")
    if args.points < 3 or args.points % 2 == 0:
        raise AnalysisError(f"--points must be odd and >= 3, so that t = 0 is on the grid (got {args.points})")


def output_paths(out: Path, overwrite: bool) -> tuple[Path, Path]:
    paths = out / "sharpness.csv", out / "sharpness_curves.csv"
    refusal = refuse_to_replace(paths, overwrite, "choose another --out")
    if refusal:
        raise AnalysisError(refusal)
    return paths


def sharpness(args) -> int:
    check_args(args)
    runs = [check_run(Path(path)) for path in args.runs]
    table_path, curves_path = output_paths(args.out, args.overwrite)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, curves, datasets = [], [], {}
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.path}", flush=True)
        run_rows, run_curves = analyse_run(run, args, device, datasets)
        rows += run_rows
        curves += run_curves
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(table_path, rows, SHARPNESS_COLUMNS)
    write_csv(curves_path, curves, CURVE_COLUMNS)
    print_table(rows)
    print(f"wrote {table_path} and {curves_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sharp = commands.add_parser("sharpness", help="top Hessian eigenvalue, Hessian trace and loss curve per run",
                                description="Top Hessian eigenvalue, Hessian trace and loss curve of trained runs "
                                            "(formulas and caveats: python analysis.py --help).")
    add = sharp.add_argument
    add("runs", nargs="+", metavar="RUN_DIR", help="run directories written by train.py, with model.pt")
    add("--samples", type=int, default=2048, help="first N samples of the train and test splits (%(default)s)")
    add("--batch-size", type=int, default=512,
        help="evaluation batch (%(default)s); expert-choice runs use their training batch size")
    add("--iters", type=int, default=100, help="power iterations at most (%(default)s)")
    add("--tol", type=float, default=1e-4, help="relative change of the eigenvalue that stops them (%(default)s)")
    add("--probes", type=int, default=32, help="Rademacher probes of the trace estimate (%(default)s)")
    add("--radius", type=float, default=1.0, help="loss curve over t in [-radius, radius] (%(default)s)")
    add("--points", type=int, default=21, help="points of the loss curve, odd (%(default)s)")
    add("--seed", type=int, default=0, help="seed of the power-iteration start and the probes (%(default)s)")
    add("--data-dir", default=None,
        help="dataset root (default: the run's --data-dir, else $MOE_DATA_DIR, else data/ at the repo root)")
    add("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks cuda when available")
    add("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    add("--out", type=Path, default=DEFAULT_OUT,
        help="directory of sharpness.csv and sharpness_curves.csv (default: results/sharpness in project_moe/)")
    add("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return sharpness(args)
    except (AnalysisError, ConfigError, data.DataError, RunFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
