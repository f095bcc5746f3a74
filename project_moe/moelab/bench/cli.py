"""Speed of the sparse MoE layer and of MoE training, as ratios to references timed in the same run.

    python bench.py layer    # MoE layer vs (a) dense MLP of the same active FLOPs, (b) soft routing
                             # over all experts, (c) a per-expert loop with boolean masks
    python bench.py train    # samples/s of one MNIST training epoch, MoE vs dense baselines
    python bench.py train --family vit --data-dir DIR   # the same for the CIFAR-10 ViTs of vit_convergence
    python bench.py train --family lm   # the byte-level language models of the lm grid (batch 32 x 128 bytes)
    python bench.py ep       # the MoE layer on 1 and 2 processes (expert parallel): compute, all-to-all, bytes
    python bench.py profile  # torch.profiler over MNIST training steps: dense vs hard MoE, operator by operator

Machines are noisy, so absolute times mean little: candidates and references are interleaved
in rounds, every ratio is a ratio of medians, and the spread of the per-round ratios is shown.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import torch

from ..training.config import DEVICE_CHOICES, ConfigError
from ..training.device import resolve_device
from ..training.exits import EXIT_BAD_INPUT
from ..training.run_files import atomic_write_bytes, refuse_to_replace
from .layer import bench_layer
from .profile import bench_profile
from .timing import Tee, machine_line, write_csv
from .training import FAMILIES, bench_train

DEFAULT_GRID = ("8:1", "8:2", "32:2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("layer", "train", "ep", "profile"))
    parser.add_argument("--config", nargs="+", default=list(DEFAULT_GRID), metavar="E:K",
                        help="layer: experts:k pairs to time (ep: the first one)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="ep: process counts to compare")
    parser.add_argument("--samples", type=int, default=4096, help="layer: batch size N")
    parser.add_argument("--d-model", type=int, default=256, help="layer: input and output width")
    parser.add_argument("--hidden", type=int, default=512, help="layer: hidden width of each expert")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=4, help="layer: timed calls per round and candidate")
    parser.add_argument("--warmup", type=int, default=3, help="layer: untimed calls first")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--data-dir", default=None, help="train: dataset root, as for train.py")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="train: batch size (default 128; --family lm: 32 windows, as in the lm grid)")
    parser.add_argument("--steps", type=int, default=None,
                        help="train: time this many steps per round (default: one epoch); "
                             "profile: profile this many steps (default 20)")
    parser.add_argument("--top", type=int, default=12, help="profile: operators printed per model")
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=("eager", "amp", "compile"),
                        help="train: also time the dense networks and the hard MoE under --amp and --compile")
    parser.add_argument("--family", default="mnist", choices=FAMILIES,
                        help="train: the MNIST mixtures, the CIFAR-10 ViTs of the convergence grid "
                             "(vit; needs DIR/cifar10-jpeg), or the language models of the lm grid (lm)")
    parser.add_argument("--vit-depth", type=int, default=6, help="train --family vit: blocks of the ViTs")
    parser.add_argument("--csv", type=Path, default=None,
                        help="where to write the table (default: bench_layer.csv or bench_train_b<batch>.csv "
                             "here); the printed report goes beside it as .txt")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing table")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (32 if args.family == "lm" else 128)
    if args.what in ("layer", "ep"):
        for spec in args.config:
            parts = spec.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[1]) <= int(parts[0]):
                parser.error(f"--config {spec!r}: expected E:K with 1 <= K <= E, e.g. 8:2")
    if args.family != "mnist" and (args.what != "train" or args.modes != ["eager"]):
        parser.error(f"--family {args.family}: only with train and --modes eager (amp and compile are timed on MNIST)")
    if args.what == "ep" and (1 not in args.processes or min(args.processes) < 1):
        parser.error("--processes: include 1 (the reference) and only positive counts, e.g. 1 2")
    train_table = {"mnist": f"bench_train_b{args.batch_size}.csv", "lm": f"bench_lm_b{args.batch_size}.csv",
                   "vit": f"bench_vit_d{args.vit_depth}_b{args.batch_size}.csv"}[args.family]
    path = args.csv or Path({"layer": "bench_layer.csv", "ep": "bench_ep.csv",
                             "profile": f"bench_profile_b{args.batch_size}.csv"}.get(args.what, train_table))
    if path.suffix != ".csv":
        parser.error(f"--csv {path}: the table's name must end in .csv (the printed report goes beside it as .txt)")
    report = path.with_suffix(".txt")
    refusal = refuse_to_replace((path, report), args.overwrite, "--csv to write elsewhere")
    if refusal:
        parser.exit(EXIT_BAD_INPUT, f"bench.py: error: {refusal}\n")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    try:
        device = resolve_device(args.device)
    except ConfigError as error:
        parser.exit(EXIT_BAD_INPUT, f"bench.py: error: {error}\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(Tee(sys.stdout, printed)):
        print(machine_line(device))
        if args.what == "ep":
            from .expert_parallel import (
                bench_expert_parallel,  # spawns processes; imported when asked for
            )
            rows = bench_expert_parallel(args)
        elif args.what == "profile":
            try:
                rows = bench_profile(args, device)
            except ConfigError as error:    # before anything is written
                parser.exit(EXIT_BAD_INPUT, f"bench.py: error: {error}\n")
        else:
            rows = bench_layer(args, device) if args.what == "layer" else bench_train(args, device)
        print(f"\nwrote {path} and {report.name}")
    # Written only once the run is over, each atomically: a failed run leaves the previous files intact.
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, rows)
    atomic_write_bytes(report, lambda handle: handle.write(printed.getvalue().encode()))
    return 0
