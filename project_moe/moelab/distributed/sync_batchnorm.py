"""Batch normalisation over the whole batch of every rank (``nn.SyncBatchNorm`` refuses CPU tensors)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of every rank's input is the sum of the ranks'
    output gradients (each rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, x):
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over every rank
    (sum and sum of squares all-reduced, with gradient). Evaluation uses the running
    statistics, as BatchNorm2d does."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        count = x.new_tensor([x.numel() / channels])
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3)), count])   # (2C+1,)
        total = AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:channels] / n                                            # (C,)
        var = (total[channels:2 * channels] / n - mean.square()).clamp_min(0.0)   # (C,) biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1.0), momentum)
        scale = torch.rsqrt(var + self.eps) * (self.weight if self.affine else 1.0)   # (C,)
        shift = (self.bias if self.affine else 0.0) - mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def sync_batchnorm(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.BatchNorm2d:
                synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats).to(child.weight.device)
                synced.load_state_dict(child.state_dict())
                setattr(parent, name, synced)
