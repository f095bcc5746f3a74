"""Mixed precision for training and evaluation (``--amp``).

bf16 autocast on CPU and on GPUs that support bf16; float16 autocast with a gradient scaler
on older GPUs, where a small gradient would underflow to zero in float16 without one. Weights,
optimiser moments, logs and checkpoints stay float32; only the matmuls and convolutions of a
forward pass run in the lower precision. Router scores and their softmax stay float32
(routers.Router.router_logits): a small logit difference decides where a sample goes.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor


class Precision:
    """How a step computes: ``enabled`` False is plain float32 (every call below a no-op)."""

    def __init__(self, enabled: bool = False, device: torch.device | str = "cpu"):
        self.device_type = torch.device(device).type
        self.enabled = enabled
        self.dtype = lower_precision(self.device_type) if enabled else torch.float32
        # float16 gradients need loss scaling; bfloat16 has float32's exponent range and does not.
        self.scaler = torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None

    def autocast(self):
        """The forward pass's context."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step (skipped by the scaler when a float16 gradient overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def describe(self) -> str:
        if not self.enabled:
            return "float32"
        return f"autocast {str(self.dtype).removeprefix('torch.')}" + (" with loss scaling" if self.scaler else "")


FULL = Precision()


def lower_precision(device_type: str) -> torch.dtype:
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes matmuls in here, or None when autocast is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def float32_region(device_type: str):
    """A block that computes in float32 even inside an autocast region."""
    return torch.autocast(device_type, enabled=False)
