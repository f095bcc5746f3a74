"""moelab: Mixture-of-Experts layers, models and the training and study code around them.

What a user may import from here; everything else is importable from its module:

    layers/    routers, expert banks, the MoE layer, Soft MoE, auxiliary losses, mixed precision
    models/    the model spec, MoE and dense classifiers, trunks, the transformer room and the ViT,
               the builder, parameter and FLOP accounting
    data/      datasets as whole tensors, the batch loader
    training/  the run config and its command line, the step, the trainer, evaluation, run files
    distributed.py  data and expert parallelism under torchrun
    study/     the grids, their runner, the results as DataFrames, the figures, the report
    bench/     the speed benchmarks and the GPU check

    from moelab import MoE, MLPExperts, build_router
    moe = MoE(build_router("topk", 784, 8, top_k=2), MLPExperts(8, 784, 128, 10))
"""
from .layers.aux_losses import AUX_NAMES
from .layers.experts import MLPExperts, ModuleExperts, mlp
from .layers.moe import MoE, MoEOutput
from .layers.routers import build_router
from .layers.routing import GATING_CHOICES, Routing
from .layers.soft_moe import SoftMoE
from .models.builder import build_model
from .models.classifier import DenseClassifier, MoEClassifier, build_dense_matched
from .models.spec import ModelSpec
from .models.vit import ViTClassifier
from .training.config import Config

__all__ = ["AUX_NAMES", "MLPExperts", "ModuleExperts", "mlp", "MoE", "MoEOutput", "build_router", "GATING_CHOICES",
           "Routing", "SoftMoE", "build_model", "DenseClassifier", "MoEClassifier", "build_dense_matched",
           "ModelSpec", "ViTClassifier", "Config"]
