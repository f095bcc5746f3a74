"""Build any model of the study from its ModelSpec: the MoE classifier, its dense baseline,
or the ViT (with or without MoE blocks). Sits above moe_model.py and vit_model.py, which
know nothing of each other's builders."""
from __future__ import annotations

from torch import nn

from moe_model import MoEClassifier, ModelSpec, build_dense_matched, moe_param_counts
from vit_model import ViTClassifier


def build_model(spec: ModelSpec, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if spec.arch == "vit":
        return ViTClassifier(spec, in_shape, num_classes)
    moe = MoEClassifier(spec, in_shape, num_classes)
    if spec.model == "moe":
        return moe
    counts = moe_param_counts(moe)
    target = counts["total"] if spec.dense_match == "params" else counts["active"]
    return build_dense_matched(spec, in_shape, num_classes, target)
