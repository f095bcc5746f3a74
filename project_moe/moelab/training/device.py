"""The device a command runs on, from its --device flag."""
from __future__ import annotations

import torch

from .config import ConfigError


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
