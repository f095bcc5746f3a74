"""Everything that needs a GPU, in one command (about 8 minutes on one recent GPU):

    python gpu_check.py [--out DIR]

1. the CUDA tests (router invariants, dispatch equivalence, training with and without --amp
   and --compile, resume): ``python -m pytest -q -m cuda tests``;
2. ``bench.py layer`` on the GPU;
3. ``bench.py train`` at batch 128 and 1024, eager, --amp and --compile rows;
4. a 5-epoch MNIST run of the quickstart model (``train.py --experts 8 --gating hard``).

Every step writes under DIR (default: results/bench/gpu-<device name>/): its tables, its
output in <step>.log, and gpu_check.json with each step's exit status and seconds. A step that
fails or runs out of its time is recorded and the next one runs; the exit status is non-zero
if any step failed.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..paths import PROJECT_DIR, REPO_ROOT
from ..training.exits import EXIT_BAD_INPUT


def default_out() -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
    return PROJECT_DIR / "results" / "bench" / f"gpu-{name}"


def steps(out: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed), run in this order from project_moe/."""
    python = sys.executable
    # 100 steps per round: on a GPU an epoch of small steps is over in about a second, and the
    # compiled rows' compilation (timed apart) is what takes the time.
    bench_train = [python, "bench.py", "train", "--device", "cuda", "--rounds", "3", "--steps", "100",
                   "--modes", "eager", "amp", "compile"]
    return [
        ("cuda_tests", [python, "-m", "pytest", "-q", "-m", "cuda", str(REPO_ROOT / "tests")], 150),
        ("bench_layer", [python, "bench.py", "layer", "--device", "cuda", "--csv", str(out / "bench_layer.csv")], 45),
        ("bench_train_b128", bench_train + ["--batch-size", "128", "--csv", str(out / "bench_train_b128.csv")], 110),
        ("bench_train_b1024", bench_train + ["--batch-size", "1024", "--csv", str(out / "bench_train_b1024.csv")], 110),
        ("mnist_5_epochs", [python, "train.py", "--experts", "8", "--gating", "hard", "--device", "cuda",
                            "--out", str(out / "runs"), "--run-name", "mnist-hard-s0"], 50),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/bench/gpu-<device>)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: gpu_check.py needs a CUDA device and this machine has none; run it on a GPU machine",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    out = (args.out or default_out()).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; pass --out to write elsewhere", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.mkdir(parents=True, exist_ok=True)
    record = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": []}
    for name, command, allowed in steps(out):
        begin = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            try:
                code = subprocess.run(command, cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT, timeout=allowed).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        seconds = time.perf_counter() - begin
        record["steps"].append({"step": name, "exit": code, "seconds": round(seconds, 1), "allowed_s": allowed})
        print(f"{name:<20} exit {code}  {seconds:6.1f} s", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(step["exit"] == 0 for step in record["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
