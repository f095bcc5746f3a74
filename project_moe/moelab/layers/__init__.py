"""Layers: routers and their Routing record, expert banks, the MoE layer, Soft MoE, auxiliary losses, precision.

They need torch alone: ``from moelab.layers import MoE, build_router, MLPExperts`` loads no data,
training or study code."""
from .aux_losses import AUX_NAMES
from .experts import MLPExperts, ModuleExperts, mlp
from .moe import MoE, MoEOutput
from .routers import (
                      ExpertChoiceRouter,
                      GumbelTopKRouter,
                      HardRouter,
                      NoisyTopKRouter,
                      Router,
                      SoftRouter,
                      TopKRouter,
                      build_router,
)
from .routing import GATING_CHOICES, Routing
from .soft_moe import SoftMoE

__all__ = ["AUX_NAMES", "MLPExperts", "ModuleExperts", "mlp", "MoE", "MoEOutput", "Router", "SoftRouter",
           "HardRouter", "TopKRouter", "NoisyTopKRouter", "GumbelTopKRouter", "ExpertChoiceRouter", "build_router",
           "GATING_CHOICES", "Routing", "SoftMoE"]
