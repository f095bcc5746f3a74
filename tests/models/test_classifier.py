"""moelab/models/classifier.py: dense baselines of the size of an MoE classifier."""
import pytest
import torch

from moelab.models.builder import build_model
from moelab.models.classifier import count_params, moe_param_counts
from moelab.models.spec import ModelSpec

SHAPES = {"mnist": ((1, 28, 28), 10), "cifar": ((3, 32, 32), 10)}


@pytest.mark.parametrize("spec_kwargs,shape", [
    ({"gating": "hard"}, "mnist"),
    ({"gating": "topk", "experts": 16, "expert_hidden": 32}, "mnist"),
    ({"gating": "soft", "expert_type": "cnn"}, "mnist"),
    ({"gating": "topk", "expert_type": "cnn"}, "cifar"),
    ({"gating": "hard", "trunk": "cnn"}, "cifar"),
])
@pytest.mark.parametrize("match", ["params", "active"])
def test_dense_baseline_matches_moe_size(spec_kwargs, shape, match):
    in_shape, classes = SHAPES[shape]
    moe = build_model(ModelSpec(**spec_kwargs), in_shape, classes)
    dense = build_model(ModelSpec(model="dense", dense_match=match, **spec_kwargs), in_shape, classes)
    target = moe_param_counts(moe)["total" if match == "params" else "active"]
    assert abs(count_params(dense) - target) / target < 0.02
    assert dense(torch.zeros(2, *in_shape)).shape == (2, classes)
