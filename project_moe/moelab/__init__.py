"""moelab: Mixture-of-Experts layers, models and the training and study code around them.

What a user may import from here; everything else is importable from its module:

    layers/    routers, expert banks, the MoE layer, Soft MoE, auxiliary losses, mixed precision
    models/    the model spec, MoE and dense classifiers, trunks, the transformer room and the ViT,
               the builder, parameter and FLOP accounting
    data/      datasets as whole tensors, the batch loader
    training/  the run config and its command line, the step, the trainer, evaluation, run files
    distributed/  data and expert parallelism under torchrun
    study/     the grids, their runner, the results as DataFrames, the figures, the report
    bench/     the speed benchmarks and the GPU check

    from moelab import MoE, MLPExperts, build_router
    moe = MoE(build_router("topk", 784, 8, top_k=2), MLPExperts(8, 784, 128, 10))

The names below are imported on first use, so that ``import moelab.layers`` loads the layers
alone (torch, no pandas, no data or training code); moe_model.py re-exports the same names.
"""
from .exports import lazy_exports

_HOMES = {
    **dict.fromkeys(["MoE", "MoEOutput"], "layers.moe"),
    **dict.fromkeys(["MLPExperts", "ModuleExperts", "mlp"], "layers.experts"),
    **dict.fromkeys(["build_router", "Router", "SoftRouter", "HardRouter", "TopKRouter", "NoisyTopKRouter",
                     "GumbelTopKRouter", "ExpertChoiceRouter"], "layers.routers"),
    **dict.fromkeys(["Routing", "GATING_CHOICES"], "layers.routing"),
    "SoftMoE": "layers.soft_moe",
    "AUX_NAMES": "layers.aux_losses",
    "ModelSpec": "models.spec",
    "build_model": "models.builder",
    **dict.fromkeys(["MoEClassifier", "DenseClassifier", "build_dense_matched"], "models.classifier"),
    "ModelOutput": "models.output",
    "ViTClassifier": "models.vit",
    "ByteTransformer": "models.text",
    "model_cost": "models.cost",
    "Config": "training.config",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
