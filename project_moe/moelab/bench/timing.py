"""What every benchmark shares: interleaved timing in rounds, ratios of medians with their
spread, operation counts, the machine line, and the table writers.

Machines are noisy, so absolute times mean little: candidates and references are interleaved
in rounds, every ratio is a ratio of medians, and the spread of the per-round ratios is shown.
"""
from __future__ import annotations

import csv
import io
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..training.provenance import cpu_model
from ..training.run_files import atomic_write_bytes


class Timer:
    """Wall time on CPU; CUDA events on a GPU (kernels are asynchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        """Milliseconds of one call of ``fn``."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def interleaved_times(candidates: dict[str, callable], timer: Timer, rounds: int, per_round: int,
                      warmup: int) -> dict[str, list[list[float]]]:
    """times[name][round] = per-call milliseconds, candidates run in turn within each round."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            # One untimed call first: the previous candidate leaves caches and the allocator
            # in its own state, and the first call would time that, not this candidate.
            fn()
            times[name].append([timer(fn) for _ in range(per_round)])
    return times


class OpCounter(TorchDispatchMode):
    """Counts the tensor operations dispatched to kernels (forward, backward and optimiser
    alike) while active. On a CPU each one has a fixed cost of a few microseconds whatever
    its size, which is what small tensors pay for."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    """Tensor operations dispatched by one call of ``fn``."""
    with OpCounter() as counter:
        fn()
    return counter.count


def ratio_with_spread(times: dict, name: str, reference: str) -> tuple[float, float, float]:
    """Median ratio over all calls, and min / max of the per-round median ratios."""
    flat = lambda rounds: [t for r in rounds for t in r]  # noqa: E731
    ratio = statistics.median(flat(times[name])) / statistics.median(flat(times[reference]))
    per_round = [statistics.median(a) / statistics.median(b) for a, b in zip(times[name], times[reference])]
    return ratio, min(per_round), max(per_round)


@dataclass
class LayerConfig:
    samples: int = 4096
    d_model: int = 256
    hidden: int = 512
    experts: int = 8
    k: int = 2


def minor_page_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def machine_line(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}, {os.cpu_count()} cores"
    return (f"{time.strftime('%Y-%m-%d')}  {name}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
            f"device {device.type}")


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, lambda handle: handle.write(text.getvalue().encode()))


class Tee:
    """A text stream that writes to several: the report is printed and kept."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.streams[0], name)   # isatty, encoding, ...: those of the console
