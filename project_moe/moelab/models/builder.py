"""Build any model of the study from its ModelSpec: the MoE classifier, its dense baseline,
or the ViT (with or without MoE blocks). Sits above classifier.py and vit.py, which
know nothing of each other's builders."""
from __future__ import annotations

import dataclasses

from torch import nn

from .classifier import MoEClassifier, build_dense_matched, moe_param_counts
from .cost import model_cost
from .spec import ModelSpec
from .graph import GraphTransformer, graph_cost
from .text import ByteTransformer, text_cost
from .vit import ViTClassifier, vit_cost


def build_model(spec: ModelSpec, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``in_shape``: (C, H, W) of an image, (T,) of a byte sequence for --arch gpt, (F,) node
    features for --arch graph."""
    if spec.arch == "vit":
        return ViTClassifier(spec, in_shape, num_classes)
    if spec.arch == "gpt":
        return ByteTransformer(spec, in_shape[0], num_classes, spec.causal)
    if spec.arch == "graph":
        return GraphTransformer(spec, in_shape[0], num_classes)
    moe = MoEClassifier(spec, in_shape, num_classes)
    if spec.model == "moe":
        return moe
    counts = moe_param_counts(moe)
    target = counts["total"] if spec.dense_match == "params" else counts["active"]
    return build_dense_matched(spec, in_shape, num_classes, target)


def cost_report(model, spec: ModelSpec, in_shape, num_classes: int) -> dict:
    """Parameters and FLOPs of this model and of the models it is compared with."""
    if spec.arch in ("vit", "gpt", "graph"):
        cost = {"vit": lambda m: vit_cost(m, in_shape), "gpt": text_cost, "graph": graph_cost}[spec.arch]
        variants = {"moe": dataclasses.replace(spec, model="moe"),
                    "dense_params": dataclasses.replace(spec, model="dense", dense_match="params"),
                    "dense_active": dataclasses.replace(spec, model="dense", dense_match="active")}
        return {"this": cost(model),
                **{name: cost(build_model(variant, in_shape, num_classes)) for name, variant in variants.items()}}
    moe = model if isinstance(model, MoEClassifier) else MoEClassifier(dataclasses.replace(spec, model="moe"),
                                                                      in_shape, num_classes)
    counts = moe_param_counts(moe)
    report = {"this": model_cost(model, in_shape), "moe": model_cost(moe, in_shape)}
    for match in ("params", "active"):
        dense = build_dense_matched(spec, in_shape, num_classes, counts["total" if match == "params" else "active"])
        report[f"dense_{match}"] = {**model_cost(dense, in_shape), "hidden": dense.hidden}
    return report


def describe_cost(report: dict) -> str:
    lines = []
    for name, c in report.items():
        lines.append(f"  {name:<13} params total {c['params_total']:>10,.0f}  active {c['params_active']:>10,.0f}"
                     f"  forward FLOPs/sample {c['flops_per_sample']:>13,.0f}")
    return "\n".join(lines)
